//! Signing keys at rest, on both backends: the key the `token` provider
//! generates is stored sealed under the `[keys]` key-encryption key, a key
//! an older version stored in plain text is sealed at start; without the
//! key-encryption key warrant generates no key and refuses to issue the
//! credential (503 naming `[keys]`) instead of keeping a key it cannot
//! protect, and with a wrong one it refuses to start.

use std::sync::Arc;

use base64::Engine;
use diesel::connection::SimpleConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use secrecy::{ExposeSecret, SecretString};
use warrant::app::{App, AppError, Options};
use warrant::clock::ManualClock;
use warrant::config::Config;
use warrant::crypto::keys::SigningKey;
use warrant::crypto::sealed::{self, Kek};
use warrant::providers::token::sealed_for;

use crate::ci::{ask, deploy, gh_claims, ticket, Issuer, KEY};
use crate::helpers::{base_config, env, t0, Backend, TestApp, TestDb, KEYS_SECRET};
use crate::{app, backend_tests};
use serde_json::json;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    kid: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    private_pem: String,
}

/// What `signing_keys` holds, read with SQL as anyone with the database
/// would read it.
fn stored(backend: Backend, url: &str) -> Vec<(String, String)> {
    let sql = "SELECT kid, private_pem FROM signing_keys ORDER BY kid";
    let rows: Vec<Row> = match backend {
        Backend::Sqlite => {
            let path = url.trim_start_matches("sqlite://");
            let mut c = diesel::sqlite::SqliteConnection::establish(path).unwrap();
            // The app's writer may hold the file a moment.
            c.batch_execute("PRAGMA busy_timeout = 5000").unwrap();
            diesel::sql_query(sql).load(&mut c).unwrap()
        }
        Backend::Postgres => {
            let mut c = diesel::pg::PgConnection::establish(url).unwrap();
            diesel::sql_query(sql).load(&mut c).unwrap()
        }
    };
    rows.into_iter().map(|r| (r.kid, r.private_pem)).collect()
}

fn exec(backend: Backend, url: &str, sql: &str) {
    match backend {
        Backend::Sqlite => {
            let path = url.trim_start_matches("sqlite://");
            let mut c = diesel::sqlite::SqliteConnection::establish(path).unwrap();
            c.batch_execute("PRAGMA busy_timeout = 5000").unwrap();
            c.batch_execute(sql).unwrap();
        }
        Backend::Postgres => {
            let mut c = diesel::pg::PgConnection::establish(url).unwrap();
            c.batch_execute(sql).unwrap();
        }
    }
}

/// The base64 body of a PEM, and the DER bytes it encodes.
fn pem_body(pem: &str) -> (String, Vec<u8>) {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .unwrap();
    (body, der)
}

/// Checks that a stored key is sealed and shows nothing of `pem`: neither
/// its text, nor any line of it, nor its DER bytes.
fn assert_sealed_without(stored_text: &str, pem: &str) {
    assert!(stored_text.starts_with("sealed:v1:"), "{stored_text}");
    assert!(!stored_text.contains("BEGIN"), "{stored_text}");
    let (body, der) = pem_body(pem);
    assert!(!stored_text.contains(&body));
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stored_text.contains(line), "a line of the PEM is stored");
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(stored_text.trim_start_matches("sealed:v1:"))
        .unwrap();
    // The private scalar sits in the last 32+ bytes of the DER; no window
    // of the stored bytes is the DER or its tail.
    let tail = &der[der.len() - 32..];
    assert!(!raw.windows(tail.len()).any(|w| w == tail));
}

fn kek() -> Kek {
    Kek::from_secret(&SecretString::from(KEYS_SECRET)).unwrap()
}

/// The PEM a stored key seals, opened as only the holder of the KEK can.
fn open(kid: &str, text: &str) -> String {
    let pem = sealed::open(&kek(), &sealed_for(kid), text).expect("opens with the KEK");
    String::from_utf8(pem.expose_secret().clone()).unwrap()
}

/// Builds the app from `text` as `warrant serve` would start it, with the
/// environment `env`.
async fn build(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<App, AppError> {
    let config = Config::from_toml(text, env).expect("config loads");
    let options = Options {
        clock: Arc::new(ManualClock::new(t0())),
        run_jobs: false,
        handle_signals: false,
        workers: Some(1),
    };
    App::build(config, options).await
}

const KEYS_SECTION: &str = "[keys]\nsecret_env = \"WARRANT_KEYS_SECRET\"\n";

async fn generated_keys_are_sealed_in_the_database(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let credential = body["credential"].as_str().unwrap();
    let kid = jsonwebtoken::decode_header(credential)
        .unwrap()
        .kid
        .unwrap();

    let rows = stored(backend, &app.db.url);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (stored_kid, text) = &rows[0];
    assert_eq!(stored_kid, &kid, "the credential's key is the stored one");
    let pem = open(stored_kid, text);
    assert_eq!(SigningKey::from_pem(&pem).unwrap().kid(), kid);
    assert_sealed_without(text, &pem);
    // Bound to its row: under another key id it does not open.
    assert!(sealed::open(&kek(), &sealed_for("another-kid"), text).is_err());
}

async fn plaintext_keys_are_sealed_at_start(backend: Backend) {
    // An older version's database: migrated, with a key in plain text.
    let older = app!(backend);
    let (key, pem) = SigningKey::generate().unwrap();
    let jwk = key.public_jwk().to_string().replace('\'', "''");
    exec(
        backend,
        &older.db.url,
        &format!(
            "INSERT INTO signing_keys (kid, alg, private_pem, public_jwk, created_at, retired_at) \
             VALUES ('{}', 'ES256', '{pem}', '{jwk}', {}, NULL)",
            key.kid(),
            t0().timestamp_micros()
        ),
    );
    assert!(stored(backend, &older.db.url)[0].1.contains("BEGIN"));

    let issuer = Issuer::new();
    let app = older
        .restart_with(|base| format!("{base}\n{}", issuer.config()))
        .await;
    let rows = stored(backend, &app.db.url);
    assert_eq!(rows.len(), 1, "the key is kept, not replaced: {rows:?}");
    assert_eq!(rows[0].0, key.kid());
    assert_sealed_without(&rows[0].1, &pem);
    assert_eq!(open(&rows[0].0, &rows[0].1), pem);

    // It still signs, and is still published.
    ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let credential = body["credential"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(credential).unwrap();
    assert_eq!(header.kid.as_deref(), Some(key.kid()));
    let (_, jwks) = app.get_json("/.well-known/jwks.json", "").await;
    assert_eq!(jwks["keys"][0]["kid"], key.kid(), "{jwks}");
}

async fn no_key_is_kept_without_a_key_encryption_key(backend: Backend) {
    let issuer = Issuer::new();
    // A token provider without key_file and no `[keys]`: warrant starts and
    // serves everything else, but will not keep the provider's key in the
    // clear, so a request for its credential is 503 and says what to set.
    let Some(app) = TestApp::spawn_edit(backend, &issuer.config(), |base| {
        assert!(base.contains(KEYS_SECTION));
        base.replace(KEYS_SECTION, "")
    })
    .await
    else {
        return;
    };
    ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "not_configured");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("[keys] secret_env"), "{message}");
    assert!(message.contains("providers.deploy"), "{message}");
    assert!(stored(backend, &app.db.url).is_empty());
    assert!(
        app.grants_of(KEY).await.is_empty(),
        "no grant without its credential"
    );
    let (status, jwks) = app.get_json("/.well-known/jwks.json", "").await;
    assert_eq!((status, jwks), (200, json!({ "keys": [] })));
    let (status, _) = app.get_json("/readyz", "").await;
    assert_eq!(status, 200);

    // With a key_file nothing enters the database, so none is needed.
    let Some(db) = TestDb::new(backend) else {
        return;
    };
    let base = base_config(&db.url, "http://127.0.0.1:9/access");
    let without = base.replace(KEYS_SECTION, "");
    let (_, pem) = SigningKey::generate().unwrap();
    let path = issuer.dir.path().join("signing.pem");
    std::fs::write(&path, pem).unwrap();
    let with_file = issuer.config_with(&format!("key_file = \"{}\"", path.display()));
    let app = build(&format!("{without}\n{with_file}"), &env)
        .await
        .expect("starts with a key_file and no [keys]");
    let handle = app.server_handle();
    let served = tokio::spawn(app.run_until_stopped());
    handle.stop(false).await;
    served.await.unwrap().unwrap();
    assert!(stored(backend, &db.url).is_empty());
}

async fn a_wrong_key_encryption_key_stops_the_start(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    let before = stored(backend, &app.db.url);
    assert_eq!(before.len(), 1);
    let base = base_config(&app.db.url, &app.receiver.url);
    let wrong = base.replace("WARRANT_KEYS_SECRET", "OTHER_KEK");
    let text = format!("{wrong}\n{}", issuer.config());
    let other_kek = |name: &str| match name {
        "OTHER_KEK" => Some(base64::engine::general_purpose::STANDARD.encode([9u8; 32])),
        other => env(other),
    };
    let message = build(&text, &other_kek)
        .await
        .err()
        .expect("start fails")
        .to_string();
    assert!(message.contains(&before[0].0), "names the key: {message}");
    assert!(message.contains("[keys] secret_env"), "{message}");
    assert_eq!(stored(backend, &app.db.url), before, "nothing changed");
}

backend_tests!(
    generated_keys_are_sealed_in_the_database,
    plaintext_keys_are_sealed_at_start,
    no_key_is_kept_without_a_key_encryption_key,
    a_wrong_key_encryption_key_stops_the_start,
);
