//! Exit codes and messages of the command line, and SIGTERM.

use std::time::Duration;

use crate::helpers::{Backend, Receiver, TestDb};
use crate::proc::{command, free_port, write_config, Serve};

fn run(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = command(config).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "server"),
        ("[server]\nmax_body_bytes = \"lots\"\n", "server.max_body_bytes"),
        ("[sources.github]\nsecret_env = \"UNSET_SECRET_VAR\"\nrepositories = [\"a/b\"]\n", "sources.github.secret_env"),
        ("[providers.h]\nkind = \"http\"\nurl = \"http://x\"\nsecret_env = \"HOOKS\"\ntimeout = \"5 minutes\"\n", "providers.h.timeout"),
        ("[providers.h]\nkind = \"ldap\"\n", "providers.h.kind"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run(&path, &["check-config"]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(key), "{text}: {err}");
        assert!(!err.contains("whsec_"), "no secret in errors");
    }
    let (code, _, err) = run(&dir.path().join("missing.toml"), &["check-config"]);
    assert_eq!(code, 2, "{err}");
    let out = std::process::Command::new(crate::proc::bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn a_generated_token_key_without_keys_starts_and_says_what_to_set() {
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        "w.toml",
        &db.url,
        "http://127.0.0.1:9/x",
        port,
        "[providers.deploy]\nkind = \"token\"\n",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let keys = "[keys]\nsecret_env = \"WARRANT_KEYS_SECRET\"\n";
    assert!(text.contains(keys));
    std::fs::write(&config, text.replace(keys, "")).unwrap();
    let (code, _, err) = run(&config, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: providers.deploy") && err.contains("[keys]"),
        "{err}"
    );
    // The contract's own example has such a provider: warrant serves (and
    // revokes), and only that provider's credentials wait for `[keys]`.
    let mut serve = Serve::start(&config, port);
    serve.ready().await;
    let (status, jwks) = serve.get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(0));
    serve.kill9();
    let log = std::fs::read_to_string(config.with_extension(format!("{port}.log"))).unwrap();
    assert!(log.contains("[keys] secret_env"), "{log}");
}

#[tokio::test]
async fn audit_verify_exits_1_on_a_broken_chain() {
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "w.toml",
        &db.url,
        "http://127.0.0.1:9/x",
        free_port(),
        "",
    );
    let (code, out, err) = run(&config, &["migrate"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&config, &["audit", "verify"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"ok\":true"), "{out}");
    {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut c =
            diesel::sqlite::SqliteConnection::establish(db.url.trim_start_matches("sqlite://"))
                .unwrap();
        c.batch_execute("INSERT INTO audit_events (seq, at, type, actor, data, prev_hash, hash) VALUES (1, 0, 'forged', 'me', '{}', 'x', 'y')").unwrap();
    }
    let (code, out, _) = run(&config, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"first_bad\":1"), "{out}");
}

/// `audit verify --checkpoints`: 0 with the checkpoints a running service
/// wrote, 1 once the chain's tail is cut behind the latest one, 2 without a
/// key to check them with.
#[tokio::test]
async fn audit_verify_checks_the_chain_against_checkpoints() {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let lf = ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;
    std::fs::write(
        dir.path().join("key.pem"),
        key.to_pkcs8_pem(lf).unwrap().as_bytes(),
    )
    .unwrap();
    let public = dir.path().join("key.pub");
    std::fs::write(&public, key.verifying_key().to_public_key_pem(lf).unwrap()).unwrap();
    let cp = dir.path().join("cp");
    let audit = format!(
        "[audit]\ncheckpoint_dir = \"{}\"\ncheckpoint_key_file = \"{}\"\ncheckpoint_interval = \"1s\"\n",
        cp.display(),
        dir.path().join("key.pem").display()
    );
    let port = free_port();
    let config = write_config(
        dir.path(),
        "w.toml",
        &db.url,
        "http://127.0.0.1:9/x",
        port,
        &audit,
    );
    // A running service records a webhook and writes a checkpoint.
    let serve = Serve::start(&config, port);
    serve.ready().await;
    serve.approved(1, "1h").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&cp).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(serve);
    let args = ["audit", "verify", "--checkpoints", cp.to_str().unwrap()];
    let (code, out, err) = run(&config, &args);
    assert_eq!(code, 0, "{out}{err}");
    let with_key = [&args[..], &["--public-key", public.to_str().unwrap()]].concat();
    let (code, out, err) = run(&config, &with_key);
    assert_eq!(code, 0, "{out}{err}");
    {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut c =
            diesel::sqlite::SqliteConnection::establish(db.url.trim_start_matches("sqlite://"))
                .unwrap();
        // Events may have followed the last checkpoint before the service
        // stopped: cut from the last checkpointed event on, so the cut is
        // behind a checkpoint however the timing fell.
        let covered = std::fs::read_dir(&cp)
            .unwrap()
            .map(|f| {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                v["seq"].as_i64().unwrap()
            })
            .max()
            .unwrap();
        c.batch_execute(&format!("DELETE FROM audit_events WHERE seq >= {covered}; UPDATE audit_head SET seq = {covered} - 1, hash = coalesce((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), hash);")).unwrap();
    }
    let (code, out, err) = run(&config, &with_key);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("tail was cut"), "{err}");
    let other = dir.path().join("other.pub");
    std::fs::write(&other, "not a key").unwrap();
    let bad = [&args[..], &["--public-key", other.to_str().unwrap()]].concat();
    let (code, _, err) = run(&config, &bad);
    assert_eq!(code, 2, "{err}");
    assert!(err.ends_with('\n'), "{err:?}");
}

/// `grants list`, `audit verify` and `audit export` run with only the
/// database settings: no source, provider or sink secret is set.
#[tokio::test]
async fn reading_commands_need_only_the_database() {
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "w.toml",
        &db.url,
        "http://127.0.0.1:9/x",
        free_port(),
        "",
    );
    let (code, out, err) = run(&config, &["migrate"]);
    assert_eq!(code, 0, "{out}{err}");
    let bare = |args: &[&str]| {
        let mut cmd = command(&config);
        for var in ["GH", "JIRA", "SN", "HOOKS", "PROD_DB_URL"] {
            cmd.env_remove(var);
        }
        let out = cmd.args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &["grants", "list"][..],
        &["grants", "list", "--json"],
        &["audit", "verify"],
        &["audit", "export", "--format", "csv"],
    ] {
        let (code, err) = bare(args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let (code, err) = bare(&["check-config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("secret_env") && err.ends_with('\n'), "{err:?}");
}

#[tokio::test]
async fn sigterm_stops_cleanly_with_exit_0() {
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let port = free_port();
    let config = write_config(dir.path(), "w.toml", &db.url, &receiver.url, port, "");
    let mut serve = Serve::start(&config, port);
    serve.ready().await;
    serve.approved(1, "1h").await;
    serve.sigterm();
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `warrant simulate` parses a saved body through the source's own parser
/// (the `X-GitHub-Event` header given by `--event`) and decides it, for
/// each source; a body that is not JSON exits 1 saying so.
#[test]
fn simulate_parses_each_source_and_decides() {
    use crate::payloads::{github, jira, servicenow, Change, Issue, JiraIssue};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "w.toml",
        "sqlite://unused.db",
        "http://127.0.0.1:9/x",
        free_port(),
        "",
    );
    let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let file = dir.path().join("body.json");
    let simulate = |source: &str, body: &[u8], event: &str| {
        std::fs::write(&file, body).unwrap();
        let f = file.to_str().unwrap();
        run(
            &config,
            &[
                "simulate",
                "--source",
                source,
                "--file",
                f,
                "--event",
                event,
                "--at",
                "2026-12-01T10:00:00Z",
            ],
        )
    };
    let issue = Issue::new(7, at);
    let body = serde_json::to_vec(&github("opened", &issue, "dave-gh", None)).unwrap();
    let (code, out, err) = simulate("github", &body, "issues");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "accepted", "{out}");
    assert_eq!(v["ticket"], "github:acme/access-requests#7", "{out}");
    assert_eq!(v["decision"]["reason"], "not_approved", "{out}");

    let (code, out, err) = simulate("github", &body, "ping");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "ignored", "{out}");

    let body = serde_json::to_vec(&jira(
        "jira:issue_created",
        &JiraIssue::new("OPS-3"),
        "5b10ac8d82e05b22cc7d4ef5",
        at,
        None,
    ))
    .unwrap();
    let (code, out, err) = simulate("jira", &body, "issues");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["ticket"].as_str()),
        (Some("accepted"), Some("jira:OPS-3")),
        "{out}"
    );

    let change = Change {
        number: "CHG0030001",
        state: serde_json::json!("-2"),
        approval: "requested",
        approved_by: serde_json::Value::Null,
        assigned_to: "dave.jones",
        resource: "hooks/billing",
        start: at,
        end: at + chrono::Duration::hours(1),
        updated: at,
    };
    let body = serde_json::to_vec(&servicenow(&change)).unwrap();
    let (code, out, err) = simulate("servicenow", &body, "issues");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["ticket"].as_str()),
        (Some("accepted"), Some("servicenow:CHG0030001")),
        "{out}"
    );

    let (code, _, err) = simulate("jira", b"not json", "issues");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not JSON"), "{err}");
}

/// `warrant drift` exits 0 when what the provider holds is warranted, 1
/// when it finds a membership granted by hand (and prints it), and 2 for
/// a provider that is not configured.
#[test]
fn drift_exits_1_when_it_finds_drift() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    if !crate::helpers::pg_available() {
        return;
    }
    let s = uuid::Uuid::new_v4().simple().to_string();
    let (role, account) = (format!("wt_cr_{}", &s[..10]), format!("wt_ca_{}", &s[..10]));
    /// Drops the test's roles when it ends, passed or failed.
    struct DropRoles(String, String);
    impl Drop for DropRoles {
        fn drop(&mut self) {
            if let Ok(mut admin) = diesel::PgConnection::establish(&crate::helpers::pg_admin_url())
            {
                let _ = admin.batch_execute(&format!(
                    "DROP ROLE IF EXISTS {}; DROP ROLE IF EXISTS {};",
                    self.1, self.0
                ));
            }
        }
    }
    let mut admin = diesel::PgConnection::establish(&crate::helpers::pg_admin_url()).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; CREATE ROLE {account} NOLOGIN;"
        ))
        .unwrap();
    let _roles = DropRoles(role.clone(), account.clone());
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[providers.prod-db]\nkind = \"postgres\"\nurl_env = \"PROD_DB_URL\"\ntimeout = \"5s\"\n\
         [[policies]]\nname = \"db\"\nresources = [\"prod-db/{role}\"]\nsources = [\"github\"]\n\
         approvers = [\"alice\"]\nmax_duration = \"4h\"\n"
    );
    let config = write_config(
        dir.path(),
        "w.toml",
        &db.url,
        "http://127.0.0.1:9/x",
        free_port(),
        &extra,
    );
    let (code, out, err) = run(&config, &["drift"]);
    assert_eq!(code, 0, "{out}{err}");
    admin
        .batch_execute(&format!("GRANT {role} TO {account}"))
        .unwrap();
    let (code, out, err) = run(&config, &["drift"]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains(&account))
        .unwrap_or_default();
    assert!(
        line.contains("prod-db") && line.contains(&role) && line.ends_with("found"),
        "{out}"
    );
    // Seen before: still drift, now `open`.
    let (code, out, err) = run(&config, &["drift", "--provider", "prod-db", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let item: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            item["account"].as_str(),
            item["outcome"].as_str(),
            item["mode"].as_str()
        ),
        (Some(account.as_str()), Some("open"), Some("report")),
        "{out}"
    );
    let (code, _, err) = run(&config, &["drift", "--provider", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--provider") && err.ends_with('\n'), "{err}");
}
