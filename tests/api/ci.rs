//! CI deploy rights end to end: a pipeline's OIDC token (signed here with
//! an issuer key made for the test, its JWKS in a temporary file), a ticket
//! approved through a real signed GitHub webhook, the grant, its `token`
//! credential, introspection, and revocation when the ticket closes or the
//! pipeline is done.

use base64::Engine;
use chrono::Duration;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};

use crate::helpers::{t0, Backend, TestApp, ADMIN_TOKEN, AUDITOR_TOKEN, INTROSPECTOR_TOKEN};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};

pub(crate) const KEY: &str = "github:acme/access-requests#42";
const GH_ISS: &str = "https://token.actions.githubusercontent.com";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A CI issuer for the test: a P-256 key and its JWKS in a file.
pub(crate) struct Issuer {
    pub(crate) dir: tempfile::TempDir,
    key: p256::SecretKey,
    kid: String,
}

impl Issuer {
    pub(crate) fn new() -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let issuer = Issuer {
            dir,
            key,
            kid: "gh-test-1".into(),
        };
        let jwks = json!({ "keys": [issuer.jwk()] });
        std::fs::write(issuer.jwks_path(), jwks.to_string()).unwrap();
        issuer
    }

    fn jwks_path(&self) -> std::path::PathBuf {
        self.dir.path().join("github-jwks.json")
    }

    fn jwk(&self) -> Value {
        let p = self.key.public_key().to_encoded_point(false);
        json!({ "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap()) })
    }

    fn sign_with(&self, key: &p256::SecretKey, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        let der = key.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap()
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.key, &self.kid, claims)
    }

    /// The configuration for this issuer, a token provider and a policy
    /// that lets the CI principal take deploy targets under GitHub tickets.
    pub(crate) fn config(&self) -> String {
        self.config_with("")
    }

    /// Like `config`, with more keys for the token provider.
    pub(crate) fn config_with(&self, provider: &str) -> String {
        format!(
            r#"
[[policies]]
name = "deploys"
resources = ["deploy/*"]
sources = ["github", "ci"]
subjects = ["ci:acme/app", "ci:acme/other"]
approvers = ["alice"]
max_duration = "4h"

[providers.deploy]
kind = "token"
{provider}

[[ci.issuers]]
name = "github-actions"
issuer = "{GH_ISS}"
audience = "warrant"
jwks_file = "{}"

[[ci.trust]]
issuer = "github-actions"
principal = "ci:acme/app"
claims = {{ repository = "acme/app", environment = "production" }}
resources = ["deploy/production"]
max_duration = "30m"

[[ci.trust]]
issuer = "github-actions"
principal = "ci:acme/other"
claims = {{ sub = "repo:acme/other:*" }}
resources = ["deploy/*"]
max_duration = "30m"
"#,
            self.jwks_path().display()
        )
    }
}

/// Claims shaped like a GitHub Actions job's OIDC token in environment
/// `production` of `acme/app`, run 4242, attempt 1.
pub(crate) fn gh_claims(app: &TestApp) -> Value {
    let now = app.clock_now().timestamp();
    json!({
        "jti": "6f4b2c2e-1b1e-4c61-9d1c-6d0a3b7e2a11",
        "sub": "repo:acme/app:environment:production",
        "environment": "production",
        "aud": "warrant",
        "ref": "refs/heads/main",
        "sha": "d6cd1e2bd19e03a81132a23b2025920577f84e37",
        "repository": "acme/app",
        "repository_owner": "acme",
        "repository_owner_id": "6811672",
        "run_id": "4242",
        "run_number": "17",
        "run_attempt": "1",
        "repository_visibility": "private",
        "repository_id": "186853002",
        "actor_id": "21031067",
        "actor": "dave-gh",
        "workflow": "deploy",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "iss": GH_ISS,
        "nbf": now - 5,
        "exp": now + 300,
        "iat": now - 5,
    })
}

/// Opens issue 42 asking for `deploy/production` for two hours; alice
/// approves it unless `approve` is false.
pub(crate) async fn ticket(app: &TestApp, approve: bool) -> Issue<'static> {
    let mut issue = Issue::new(42, t0());
    issue.body = payloads::form("deploy/production", "2h", None);
    let r = app
        .post_github(
            "issues",
            "open-42",
            &payloads::github("opened", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    if approve {
        issue.labels = vec!["access-approved"];
        issue.updated_at = t0() + Duration::seconds(1);
        let r = app
            .post_github(
                "issues",
                "label-42",
                &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    issue
}

pub(crate) async fn ask(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    app.post_json("/v1/ci/grants", token, body).await
}

pub(crate) fn deploy() -> Value {
    json!({ "ticket": KEY, "resource": "deploy/production", "duration": "15m" })
}

async fn release(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let resp = app
        .client
        .delete(format!("{}/v1/ci/grants/{id}", app.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn introspect(app: &TestApp, credential: &str) -> Value {
    let resp = app
        .client
        .post(format!("{}/v1/introspect", app.addr))
        .bearer_auth(INTROSPECTOR_TOKEN)
        .form(&[("token", credential)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn grant(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get_json(&format!("/v1/grants/{id}"), ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The `iss` of provider `deploy`'s credentials by default: the service's
/// URL (`http://{listen}`, as the test configuration sets no `public_url`)
/// and the provider's name.
const DEFAULT_ISS: &str = "http://127.0.0.1:0/providers/deploy";

/// Checks a credential against `GET /.well-known/jwks.json`, with the
/// default `iss` and `aud`; returns its claims.
async fn verify_credential(app: &TestApp, credential: &str) -> Value {
    verify_credential_as(app, credential, DEFAULT_ISS, "deploy/production").await
}

/// Checks a credential against `GET /.well-known/jwks.json`, and that the
/// key it names is published for `iss`; returns its claims.
async fn verify_credential_as(app: &TestApp, credential: &str, iss: &str, aud: &str) -> Value {
    let (status, jwks) = app.get_json("/.well-known/jwks.json", "").await;
    assert_eq!(status, 200, "{jwks}");
    let header = jsonwebtoken::decode_header(credential).unwrap();
    let kid = header.kid.expect("the credential names its key");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the credential's key is published")
        .clone();
    assert!(
        jwk["iss"].as_array().unwrap().contains(&json!(iss)),
        "the key is published for {iss}: {jwk}"
    );
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
    let mut v = Validation::new(header.alg);
    // The test's clock is not the system's: exp is compared by hand.
    v.validate_exp = false;
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(credential, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .expect("the credential verifies against the published keys")
        .claims
}

async fn grant_credential_and_same_run(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    ticket(&app, true).await;
    // The ticket's human subject has no policy for deploy targets: the
    // ticket itself grants nothing to people.
    assert!(app.grants_of(KEY).await.is_empty());

    let token = issuer.sign(&gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let g = &body["grant"];
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["subject"], "ci:acme/app");
    assert_eq!(g["resource"], "deploy/production");
    assert_eq!(g["ticket"], KEY);
    assert_eq!(g["state"], "granting");
    assert_eq!(g["starts_at"], "2026-11-25T10:00:00Z");
    assert_eq!(g["expires_at"], "2026-11-25T10:15:00Z");

    let credential = body["credential"].as_str().expect("a token credential");
    assert_eq!(
        jsonwebtoken::decode_header(credential).unwrap().alg,
        Algorithm::ES256
    );
    let claims = verify_credential(&app, credential).await;
    assert_eq!(claims["sub"], "ci:acme/app");
    assert_eq!(claims["resource"], "deploy/production");
    assert_eq!(claims["ticket"], KEY);
    assert_eq!(claims["grant_id"], id.as_str());
    assert_eq!(claims["iat"], t0().timestamp());
    assert_eq!(claims["exp"], (t0() + Duration::minutes(15)).timestamp());

    // The same run asks again: the same grant, not a second one.
    let (status, again) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["grant"]["id"], id.as_str());
    assert!(again["credential"].is_string());
    assert_eq!(app.grants_of(KEY).await.len(), 1);

    // The job applies it like any grant.
    app.run_jobs().await;
    assert_eq!(grant(&app, &id).await["state"], "active");

    let active = introspect(&app, credential).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["sub"], "ci:acme/app");
    assert_eq!(active["grant_id"], id.as_str());
    assert_eq!(active["resource"], "deploy/production");
    assert_eq!(active["ticket"], KEY);
    assert_eq!(active["exp"], (t0() + Duration::minutes(15)).timestamp());
    assert_eq!(active["iss"], DEFAULT_ISS);
    assert_eq!(active["aud"], "deploy/production");
    // JSON works as well as a form; an introspector's API token is required.
    let (status, body) = app
        .post_json(
            "/v1/introspect",
            INTROSPECTOR_TOKEN,
            &json!({ "token": credential }),
        )
        .await;
    assert_eq!((status, body["active"].clone()), (200, json!(true)));
    let (status, _) = app
        .post_json("/v1/introspect", "nope", &json!({ "token": credential }))
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post_json("/v1/introspect", INTROSPECTOR_TOKEN, &json!({}))
        .await;
    assert_eq!(status, 400);
    // Anything that is not a live credential is exactly inactive.
    assert_eq!(
        introspect(&app, "garbage").await,
        json!({ "active": false })
    );
    let forged = issuer.sign(&json!({
        "iss": DEFAULT_ISS, "aud": "deploy/production", "sub": "ci:acme/app", "resource": "deploy/production",
        "ticket": KEY, "grant_id": id, "exp": t0().timestamp() + 600,
    }));
    assert_eq!(introspect(&app, &forged).await, json!({ "active": false }));

    // Another attempt of the run is another run: a grant of its own.
    let mut c = gh_claims(&app);
    c["run_attempt"] = json!("2");
    let (status, other) = ask(&app, &issuer.sign(&c), &deploy()).await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["grant"]["id"], id.as_str());

    // The audit trail says who asked, with which claims, and what came of it.
    let q = percent_encoding::utf8_percent_encode(KEY, percent_encoding::NON_ALPHANUMERIC);
    let (status, audit) = app
        .get_json(&format!("/v1/audit?ticket={q}"), AUDITOR_TOKEN)
        .await;
    assert_eq!(status, 200);
    let requests: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "ci.request")
        .collect();
    assert_eq!(requests.len(), 3, "{audit}");
    let first = requests[0];
    assert_eq!(first["actor"], "ci:acme/app");
    assert_eq!(first["grant_id"], id.as_str());
    assert_eq!(first["data"]["outcome"], "granted");
    assert_eq!(first["data"]["run"], "4242/1");
    assert_eq!(
        first["data"]["claims"],
        json!({ "repository": "acme/app", "environment": "production" })
    );
    assert_eq!(requests[1]["data"]["outcome"], "existing");

    // When the grant's time is up the credential is no longer active.
    app.advance(Duration::minutes(15));
    assert_eq!(
        introspect(&app, credential).await,
        json!({ "active": false })
    );
    // Nor does the run get a fresh credential for it, even before the timer ran.
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (409, json!("grant_ended")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    app.run_jobs().await;
    let g = grant(&app, &id).await;
    assert_eq!(
        (g["state"].clone(), g["revoke_reason"].clone()),
        (json!("revoked"), json!("expired"))
    );
}

async fn refused_tokens(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    ticket(&app, true).await;
    let now = app.clock_now().timestamp();

    let unauthorized = |what: &'static str| {
        move |(status, body): (u16, Value)| {
            assert_eq!(status, 401, "{what}: {body}");
            assert!(body["message"].is_string(), "{what}: {body}");
            body
        }
    };

    let resp = app
        .client
        .post(format!("{}/v1/ci/grants", app.addr))
        .json(&deploy())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no token");

    let mut c = gh_claims(&app);
    c["aud"] = json!("sts.amazonaws.com");
    let body = unauthorized("wrong aud")(ask(&app, &issuer.sign(&c), &deploy()).await);
    assert!(body["message"].as_str().unwrap().contains("audience"));

    let mut c = gh_claims(&app);
    c["exp"] = json!(now - 61);
    c["iat"] = json!(now - 400);
    c["nbf"] = json!(now - 400);
    let body = unauthorized("expired")(ask(&app, &issuer.sign(&c), &deploy()).await);
    assert!(body["message"].as_str().unwrap().contains("expired"));

    let mut c = gh_claims(&app);
    c["nbf"] = json!(now + 120);
    c["iat"] = json!(now + 120);
    let body = unauthorized("not yet valid")(ask(&app, &issuer.sign(&c), &deploy()).await);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("not valid before"));

    let stranger = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let forged = issuer.sign_with(&stranger, &issuer.kid, &gh_claims(&app));
    let body = unauthorized("bad signature")(ask(&app, &forged, &deploy()).await);
    assert!(body["message"].as_str().unwrap().contains("signature"));

    let unknown = issuer.sign_with(&stranger, "gh-test-unknown", &gh_claims(&app));
    let body = unauthorized("unknown kid")(ask(&app, &unknown, &deploy()).await);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("gh-test-unknown"));

    let payload = b64(gh_claims(&app).to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let body = unauthorized("alg none")(ask(&app, &none, &deploy()).await);
    assert!(body["message"].as_str().unwrap().contains("`none`"));
    let none_signed = format!("{}.{payload}.c2ln", b64(br#"{"alg":"none","typ":"JWT"}"#));
    unauthorized("alg none with a signature")(ask(&app, &none_signed, &deploy()).await);

    // The issuer's public key as an HMAC secret: the classic confusion.
    let public_pem = issuer
        .key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    for secret in [
        public_pem.as_bytes().to_vec(),
        issuer.jwk().to_string().into_bytes(),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(issuer.kid.clone());
        let hs =
            jsonwebtoken::encode(&h, &gh_claims(&app), &EncodingKey::from_secret(&secret)).unwrap();
        let body = unauthorized("HS256")(ask(&app, &hs, &deploy()).await);
        assert!(body["message"].as_str().unwrap().contains("HS256"));
    }

    let mut c = gh_claims(&app);
    c["iss"] = json!("https://gitlab.example.com");
    unauthorized("unknown issuer")(ask(&app, &issuer.sign(&c), &deploy()).await);

    // A validly signed token of a repository no rule trusts.
    let mut c = gh_claims(&app);
    c["repository"] = json!("evil/app");
    c["sub"] = json!("repo:evil/app:environment:production");
    let (status, body) = ask(&app, &issuer.sign(&c), &deploy()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "untrusted");
    // The right repository outside its environment.
    let mut c = gh_claims(&app);
    c["environment"] = json!("staging");
    let (status, body) = ask(&app, &issuer.sign(&c), &deploy()).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (403, json!("untrusted")),
        "{body}"
    );
    // A resource its rule does not list.
    let (status, body) = ask(
        &app,
        &issuer.sign(&gh_claims(&app)),
        &json!({ "ticket": KEY, "resource": "deploy/staging", "duration": "15m" }),
    )
    .await;
    assert_eq!(
        (status, body["reason"].clone()),
        (403, json!("resource_not_trusted")),
        "{body}"
    );
    // A resource the ticket does not ask for.
    let mut c = gh_claims(&app);
    c["sub"] = json!("repo:acme/other:ref:refs/heads/main");
    let (status, body) = ask(
        &app,
        &issuer.sign(&c),
        &json!({ "ticket": KEY, "resource": "deploy/staging" }),
    )
    .await;
    assert_eq!(
        (status, body["reason"].clone()),
        (403, json!("resource_not_requested")),
        "{body}"
    );
    // A body that is not the request.
    let (status, _) = ask(
        &app,
        &issuer.sign(&gh_claims(&app)),
        &json!({ "ticket": "nope" }),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = ask(
        &app,
        &issuer.sign(&gh_claims(&app)),
        &json!({ "ticket": KEY, "resource": "deploy/production", "duration": "soon" }),
    )
    .await;
    assert_eq!(status, 400);

    assert!(app.grants_of(KEY).await.is_empty(), "nothing was granted");
}

async fn unknown_and_unapproved_tickets(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    let token = issuer.sign(&gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 404, "{body}");

    ticket(&app, false).await;
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "not_approved");
    assert!(body["message"].as_str().unwrap().contains("not approved"));
    assert!(app.grants_of(KEY).await.is_empty());

    // Out of its window: just over two hours after the approval.
    let mut issue = Issue::new(42, t0());
    issue.body = payloads::form("deploy/production", "2h", None);
    issue.labels = vec!["access-approved"];
    issue.updated_at = t0() + Duration::seconds(1);
    app.post_github(
        "issues",
        "label-42",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.advance(Duration::hours(2) + Duration::seconds(1));
    let token = issuer.sign(&gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (409, json!("window_over")),
        "{body}"
    );
}

async fn ticket_closed_while_the_job_runs(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    let mut issue = ticket(&app, true).await;
    let token = issuer.sign(&gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let id = body["grant"]["id"].as_str().unwrap().to_string();
    let credential = body["credential"].as_str().unwrap().to_string();
    app.run_jobs().await;
    assert_eq!(introspect(&app, &credential).await["active"], true);

    app.advance(Duration::minutes(5));
    issue.state = "closed";
    issue.updated_at = t0() + Duration::minutes(5);
    let r = app
        .post_github(
            "issues",
            "close-42",
            &payloads::github("closed", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Inactive at once, before the revocation has run.
    assert_eq!(
        introspect(&app, &credential).await,
        json!({ "active": false })
    );
    app.run_jobs().await;
    let g = grant(&app, &id).await;
    assert_eq!(g["state"], "revoked");
    assert_eq!(g["revoke_reason"], "ticket_closed");
    assert_eq!(
        introspect(&app, &credential).await,
        json!({ "active": false })
    );

    // The run asks again: the ticket no longer warrants it.
    let token = issuer.sign(&gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (409, json!("ticket_closed")),
        "{body}"
    );
}

async fn an_unrelated_ticket_event_keeps_the_ci_grant(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    let mut issue = ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let id = body["grant"]["id"].as_str().unwrap().to_string();
    app.run_jobs().await;
    // Someone else's label: the ticket still warrants the pipeline's grant.
    issue.labels = vec!["access-approved", "triage"];
    issue.updated_at = t0() + Duration::minutes(1);
    let r = app
        .post_github(
            "issues",
            "triage-42",
            &payloads::github("labeled", &issue, "bob-gh", Some("triage")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    assert_eq!(grant(&app, &id).await["state"], "active");
    // Withdrawing the approval takes it away.
    issue.labels = vec!["triage"];
    issue.updated_at = t0() + Duration::minutes(2);
    app.post_github(
        "issues",
        "unlabel-42",
        &payloads::github("unlabeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let g = grant(&app, &id).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("approval_withdrawn"))
    );
}

async fn the_run_releases_its_grant(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    ticket(&app, true).await;
    let token = issuer.sign(&gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let id = body["grant"]["id"].as_str().unwrap().to_string();
    let credential = body["credential"].as_str().unwrap().to_string();
    app.run_jobs().await;

    // Another CI identity may not release it, nor may an untrusted one.
    let mut other = gh_claims(&app);
    other["repository"] = json!("acme/other");
    other["sub"] = json!("repo:acme/other:ref:refs/heads/main");
    let (status, body) = release(&app, &issuer.sign(&other), &id).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (403, json!("not_holder")),
        "{body}"
    );
    let mut evil = gh_claims(&app);
    evil["repository"] = json!("evil/app");
    let (status, _) = release(&app, &issuer.sign(&evil), &id).await;
    assert_eq!(status, 403);
    let (status, _) = release(&app, "not-a-jwt", &id).await;
    assert_eq!(status, 401);
    let (status, _) = release(&app, &token, "0190d4b6-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404);
    assert_eq!(grant(&app, &id).await["state"], "active");

    // The run itself, in a later job of the same run (a fresh token).
    app.advance(Duration::minutes(3));
    let done = issuer.sign(&gh_claims(&app));
    let (status, body) = release(&app, &done, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["grant"]["state"], "revoking");
    assert_eq!(body["grant"]["revoke_reason"], "ci_done");
    assert_eq!(
        introspect(&app, &credential).await,
        json!({ "active": false })
    );
    app.run_jobs().await;
    let g = grant(&app, &id).await;
    assert_eq!(
        (g["state"].clone(), g["revoke_reason"].clone()),
        (json!("revoked"), json!("ci_done"))
    );
    // Releasing again changes nothing.
    let (status, body) = release(&app, &done, &id).await;
    assert_eq!(
        (status, body["grant"]["state"].clone()),
        (200, json!("revoked"))
    );
    // The same run does not get its grant back.
    let (status, body) = ask(&app, &done, &deploy()).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (409, json!("grant_ended")),
        "{body}"
    );
}

async fn people_grants_are_not_ci_grants(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    // A person's grant on another ticket (the base config's hooks policy).
    let mut issue = Issue::new(7, t0());
    issue.body = payloads::form("hooks/orders-db", "1h", None);
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "label-7",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    let grants = app.grants_of("github:acme/access-requests#7").await;
    assert_eq!(grants.len(), 1);
    let id = grants[0]["id"].as_str().unwrap();
    let (status, body) = release(&app, &issuer.sign(&gh_claims(&app)), id).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (403, json!("not_holder")),
        "{body}"
    );
    // The generated key is published from the first start on.
    let (status, jwks) = app.get_json("/.well-known/jwks.json", "").await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
}

async fn a_key_file_signs_credentials(backend: Backend) {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let issuer = Issuer::new();
    let signing = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let path = issuer.dir.path().join("warrant-signing.pem");
    std::fs::write(
        &path,
        signing.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let extra = format!(
        "key_file = \"{}\"\nissuer = \"warrant-prod\"",
        path.display()
    );
    let app = app!(backend, &issuer.config_with(&extra));
    ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let credential = body["credential"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(credential).unwrap().alg,
        Algorithm::EdDSA
    );
    let (_, jwks) = app.get_json("/.well-known/jwks.json", "").await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let active = introspect(&app, credential).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["iss"], "warrant-prod");
    assert_eq!(jwks["keys"][0]["iss"], json!(["warrant-prod"]));
}

async fn other_providers_grant_without_a_credential(backend: Backend) {
    let issuer = Issuer::new();
    let rule = r#"
[[ci.trust]]
issuer = "github-actions"
principal = "ci:acme/app"
claims = { repository = "acme/app" }
resources = ["hooks/*"]
max_duration = "10m"
"#;
    let app = app!(backend, &format!("{}{rule}", issuer.config()));
    // The base configuration's `hooks` policy allows any subject from GitHub.
    let mut issue = Issue::new(9, t0());
    issue.body = payloads::form("hooks/orders-db", "1h", None);
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "label-9",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    let key = "github:acme/access-requests#9";
    let (status, body) = ask(
        &app,
        &issuer.sign(&gh_claims(&app)),
        &json!({ "ticket": key, "resource": "hooks/orders-db" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["credential"], Value::Null);
    assert_eq!(body["grant"]["expires_at"], "2026-11-25T10:10:00Z");
    let id = body["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.grants_of(key).await.len(),
        2,
        "dave's and the pipeline's"
    );

    app.run_jobs().await;
    let calls = app.receiver.calls();
    let ci_call = calls
        .iter()
        .find(|c| c.body["grant_id"] == id.as_str())
        .expect("the provider is called for the CI grant");
    assert_eq!(ci_call.action(), "grant");
    assert_eq!(ci_call.body["subject"], "ci:acme/app");
    assert_eq!(ci_call.body["target"], "orders-db");
    assert_eq!(grant(&app, &id).await["state"], "active");
}

async fn jwks_url_is_fetched_cached_and_fetched_again(backend: Backend) {
    let issuer = Issuer::new();
    // The issuer's keys at a URL: the loopback receiver serves them.
    let config = issuer.config();
    let Some(app) = TestApp::spawn_edit(backend, "", |base| {
        let start = base.find("http://127.0.0.1:").unwrap();
        let end = start + base[start..].find("/access").unwrap();
        let url = format!("{}/jwks", &base[start..end]);
        let jwks_file = format!("jwks_file = \"{}\"", issuer.jwks_path().display());
        format!(
            "{base}\n{}",
            config.replace(&jwks_file, &format!("jwks_url = \"{url}\""))
        )
    })
    .await
    else {
        return;
    };
    let fetches = || {
        app.receiver
            .calls()
            .iter()
            .filter(|c| c.method == "GET" && c.path == "/jwks")
            .count()
    };
    app.receiver
        .reply_json(&json!({ "keys": [issuer.jwk()] }).to_string());
    ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(fetches(), 1);
    let (status, _) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 200);
    assert_eq!(fetches(), 1, "the keys are cached");

    // The issuer rotates to a new key.
    let next = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let next_jwk = {
        let p = next.public_key().to_encoded_point(false);
        json!({ "kty": "EC", "crv": "P-256", "kid": "gh-test-2", "use": "sig", "alg": "ES256",
                "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap()) })
    };
    app.receiver
        .reply_json(&json!({ "keys": [issuer.jwk(), next_jwk] }).to_string());
    // Within the minute of the last load, an unknown kid does not load again.
    app.advance(Duration::seconds(30));
    let token = issuer.sign_with(&next, "gh-test-2", &gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("gh-test-2"),
        "{body}"
    );
    assert_eq!(fetches(), 1);
    // After it, the unknown kid loads the keys again, once.
    app.advance(Duration::seconds(31));
    let token = issuer.sign_with(&next, "gh-test-2", &gh_claims(&app));
    let (status, body) = ask(&app, &token, &deploy()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fetches(), 2);
}

async fn credentials_carry_audience_and_issuer(backend: Backend) {
    let issuer = Issuer::new();
    // A second token provider shares the generated key.
    let extra = format!(
        "{}\n[providers.staging]\nkind = \"token\"\n",
        issuer.config()
    );
    let app = app!(backend, &extra);
    ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let credential = body["credential"].as_str().unwrap();
    // By default: the resource as audience, the service's URL and the
    // provider's name as issuer.
    let claims = verify_credential(&app, credential).await;
    assert_eq!(claims["aud"], "deploy/production");
    assert_eq!(claims["iss"], DEFAULT_ISS);
    let (_, jwks) = app.get_json("/.well-known/jwks.json", "").await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(
        jwks["keys"][0]["iss"],
        json!([DEFAULT_ISS, "http://127.0.0.1:0/providers/staging"])
    );
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part: {jwks}"
    );

    // `public_url` moves the default issuer; `audience` replaces the resource.
    let with_url = |base: String| {
        base.replace(
            "[server]\n",
            "[server]\npublic_url = \"https://warrant.example.com/\"\n",
        )
    };
    let scoped = app
        .restart_with(|base| {
            format!(
                "{}\n{}",
                with_url(base),
                issuer.config_with("audience = \"deploy-api\"")
            )
        })
        .await;
    let (status, body) = ask(&scoped, &issuer.sign(&gh_claims(&scoped)), &deploy()).await;
    assert_eq!(status, 200, "{body}");
    let scoped_credential = body["credential"].as_str().unwrap();
    let iss = "https://warrant.example.com/providers/deploy";
    let claims = verify_credential_as(&scoped, scoped_credential, iss, "deploy-api").await;
    assert_eq!(
        (claims["iss"].as_str(), claims["aud"].as_str()),
        (Some(iss), Some("deploy-api"))
    );
    let active = introspect(&scoped, scoped_credential).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(
        (active["iss"].as_str(), active["aud"].as_str()),
        (Some(iss), Some("deploy-api"))
    );
    // A credential of another issuer or audience is not this provider's.
    assert_eq!(
        introspect(&scoped, credential).await,
        json!({ "active": false })
    );
    drop(scoped);

    // A configured issuer is kept as it is.
    let named = app
        .restart_with(|base| {
            format!(
                "{}\n{}",
                with_url(base),
                issuer.config_with("issuer = \"https://idp.acme.test/deploy\"")
            )
        })
        .await;
    let (status, body) = ask(&named, &issuer.sign(&gh_claims(&named)), &deploy()).await;
    assert_eq!(status, 200, "{body}");
    let named_credential = body["credential"].as_str().unwrap();
    let claims = verify_credential_as(
        &named,
        named_credential,
        "https://idp.acme.test/deploy",
        "deploy/production",
    )
    .await;
    assert_eq!(claims["iss"], "https://idp.acme.test/deploy");
    assert_eq!(introspect(&named, named_credential).await["active"], true);
    assert_eq!(
        introspect(&named, scoped_credential).await,
        json!({ "active": false })
    );
}

async fn introspection_needs_the_introspector_role(backend: Backend) {
    let issuer = Issuer::new();
    let app = app!(backend, &issuer.config());
    ticket(&app, true).await;
    let (status, body) = ask(&app, &issuer.sign(&gh_claims(&app)), &deploy()).await;
    assert_eq!(status, 201, "{body}");
    let credential = body["credential"].as_str().unwrap();
    let id = body["grant"]["id"].as_str().unwrap();
    let token = json!({ "token": credential });
    for (who, bearer) in [("admin", ADMIN_TOKEN), ("auditor", AUDITOR_TOKEN)] {
        let (status, body) = app.post_json("/v1/introspect", bearer, &token).await;
        assert_eq!(status, 403, "{who}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("introspector"),
            "{who}: {body}"
        );
    }
    let (status, body) = app
        .post_json("/v1/introspect", INTROSPECTOR_TOKEN, &token)
        .await;
    assert_eq!(
        (status, body["active"].clone()),
        (200, json!(true)),
        "{body}"
    );

    // The introspector reads and changes nothing else.
    let q = percent_encoding::utf8_percent_encode(KEY, percent_encoding::NON_ALPHANUMERIC);
    for path in [
        "/v1/grants".to_string(),
        format!("/v1/grants/{id}"),
        "/v1/access?provider=deploy&account=ci&target=production".to_string(),
        format!("/v1/tickets/{q}"),
        "/v1/audit".to_string(),
        "/v1/audit/export".to_string(),
        "/v1/audit/verify".to_string(),
        "/v1/drift".to_string(),
    ] {
        let (status, body) = app.get_json(&path, INTROSPECTOR_TOKEN).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("POST /v1/introspect"),
            "{path}: {body}"
        );
    }
    let (status, _) = app
        .post_json(
            &format!("/v1/grants/{id}/revoke"),
            INTROSPECTOR_TOKEN,
            &json!({ "reason": "no" }),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(grant(&app, id).await["state"], "granting");
}

backend_tests!(
    an_unrelated_ticket_event_keeps_the_ci_grant,
    jwks_url_is_fetched_cached_and_fetched_again,
    other_providers_grant_without_a_credential,
    a_key_file_signs_credentials,
    grant_credential_and_same_run,
    refused_tokens,
    unknown_and_unapproved_tickets,
    ticket_closed_while_the_job_runs,
    the_run_releases_its_grant,
    people_grants_are_not_ci_grants,
    credentials_carry_audience_and_issuer,
    introspection_needs_the_introspector_role,
);
