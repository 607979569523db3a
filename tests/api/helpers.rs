//! The test harness: the real app on port 0 against a fresh SQLite file or
//! a fresh PostgreSQL database, a loopback receiver that records provider
//! calls, signed webhook senders, and a clock the test moves.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use serde_json::Value;
use warrant::app::{App, Options};
use warrant::clock::ManualClock;
use warrant::config::Config;
use warrant::context::Context;
use warrant::crypto::signature::{sign_hub, sign_standard};

pub const GH_SECRET: &str = "gh-test-secret";
pub const JIRA_SECRET: &str = "jira-test-secret";
pub const SN_SECRET: &str = "whsec_c2VydmljZW5vdy10ZXN0LXNlY3JldC1rZXk=";
pub const HOOKS_SECRET: &str = "whsec_aG9va3MtdGVzdC1zZWNyZXQta2V5LTEyMzQ=";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const AUDITOR_TOKEN: &str = "auditor-token-for-tests";
pub const INTROSPECTOR_TOKEN: &str = "introspector-token-for-tests";
/// The `[keys]` key-encryption key: 32 bytes, base64.
pub const KEYS_SECRET: &str = "d2FycmFudC10ZXN0LWtleS1lbmNyeXB0aW9uLWtleSE=";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn pg_admin_url() -> String {
    std::env::var("WARRANT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether PostgreSQL tests can run. With `WARRANT_TEST_PG` set (CI), an
/// unreachable server fails the test instead of skipping it.
pub fn pg_available() -> bool {
    match PgConnection::establish(&pg_admin_url()) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var_os("WARRANT_TEST_PG").is_some() {
                panic!(
                    "PostgreSQL is unreachable at {} but WARRANT_TEST_PG is set: {e}",
                    pg_admin_url()
                );
            }
            eprintln!("skipping: PostgreSQL unreachable ({e})");
            false
        }
    }
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("warrant.db").display());
                Some(TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                if !pg_available() {
                    return None;
                }
                let name = format!("warrant_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::establish(&pg_admin_url()).expect("pg admin");
                admin
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .expect("create database");
                let base = pg_admin_url();
                let url = format!(
                    "{}/{name}",
                    base.rsplit_once('/').map(|(a, _)| a).unwrap_or(&base)
                );
                Some(TestDb {
                    url,
                    pg_name: Some(name),
                    _dir: None,
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            if let Ok(mut admin) = PgConnection::establish(&pg_admin_url()) {
                let _ =
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// One recorded provider call.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn action(&self) -> &str {
        self.body["action"].as_str().unwrap_or_default()
    }
}

/// A loopback HTTP receiver standing in for an `http` provider's endpoint.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    calls: Arc<Mutex<Vec<Recorded>>>,
    status: Arc<Mutex<u16>>,
    delay_ms: Arc<Mutex<u64>>,
    reply: Arc<Mutex<Option<String>>>,
    _handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let calls: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let status = Arc::new(Mutex::new(204u16));
        let delay_ms = Arc::new(Mutex::new(0u64));
        let reply: Arc<Mutex<Option<String>>> = Arc::default();
        let (c, s, d, r) = (
            calls.clone(),
            status.clone(),
            delay_ms.clone(),
            reply.clone(),
        );
        let server = actix_web::HttpServer::new(move || {
            let (c, s, d, r) = (c.clone(), s.clone(), d.clone(), r.clone());
            actix_web::App::new().default_service(actix_web::web::to(
                move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                    let (c, s, d, r) = (c.clone(), s.clone(), d.clone(), r.clone());
                    async move {
                        let delay = *d.lock().unwrap();
                        if delay > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                        let code = *s.lock().unwrap();
                        let reply = r.lock().unwrap().clone();
                        if code < 300 {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_string(),
                                        v.to_str().unwrap_or_default().to_string(),
                                    )
                                })
                                .collect();
                            let raw = body.to_vec();
                            let (method, path) = (req.method().to_string(), req.uri().to_string());
                            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            c.lock().unwrap().push(Recorded {
                                method,
                                path,
                                headers,
                                body,
                                raw,
                            });
                        }
                        let mut resp = actix_web::HttpResponse::build(
                            actix_web::http::StatusCode::from_u16(code).unwrap(),
                        );
                        match reply {
                            Some(json) if code < 300 => resp
                                .status(actix_web::http::StatusCode::OK)
                                .content_type("application/json")
                                .body(json),
                            _ => resp.finish(),
                        }
                    }
                },
            ))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/access"),
            calls,
            status,
            delay_ms,
            reply,
            _handle: handle,
        }
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }

    /// Makes every 2xx answer a 200 with this JSON body.
    pub fn reply_json(&self, body: &str) {
        *self.reply.lock().unwrap() = Some(body.to_string());
    }

    /// The base URL (scheme, host and port).
    pub fn base(&self) -> String {
        self.url.trim_end_matches("/access").to_string()
    }

    /// Makes every answer wait this long (calls still in flight when a process dies).
    pub fn delay(&self, ms: u64) {
        *self.delay_ms.lock().unwrap() = ms;
    }

    /// Makes the receiver answer `code` (and not record) until set back to 2xx.
    pub fn answer(&self, code: u16) {
        *self.status.lock().unwrap() = code;
    }
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
}

pub fn base_config(db_url: &str, hooks_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 1048576

[database]
url = "{db_url}"
pool_size = 4

[[api.tokens]]
name = "security-admins"
role = "admin"
sha256 = "{admin}"

[[api.tokens]]
name = "auditors"
role = "auditor"
sha256 = "{auditor}"

[[api.tokens]]
name = "deploy-gate"
role = "introspector"
sha256 = "{introspector}"

[keys]
secret_env = "WARRANT_KEYS_SECRET"

[sources.github]
secret_env = "GH"
repositories = ["acme/access-requests"]
approval_label = "access-approved"

[sources.jira]
secret_env = "JIRA"
projects = ["OPS"]
approved_statuses = ["Approved"]
closed_statuses = ["Rejected", "Cancelled"]
[sources.jira.fields]
resource = "customfield_10100"
start = "customfield_10101"
end = "customfield_10102"
duration = "customfield_10103"
subject = "reporter"

[sources.servicenow]
secret_env = "SN"
[sources.servicenow.fields]
resource = "u_access_resource"
subject = "assigned_to"

[[identities]]
principal = "dave"
github = "dave-gh"
jira = "5b10ac8d82e05b22cc7d4ef5"
servicenow = "dave.jones"

[[identities]]
principal = "alice"
github = "alice-gh"
jira = "5b10a2844c20165700ede21g"
servicenow = "alice.smith"

[[identities]]
principal = "mallory"
github = "mallory-gh"

[[policies]]
name = "hooks"
resources = ["hooks/*"]
sources = ["github", "jira:OPS", "servicenow"]
subjects = ["*"]
approvers = ["alice", "bob"]
max_duration = "4h"
default_duration = "1h"

[providers.hooks]
kind = "http"
url = "{hooks_url}"
secret_env = "HOOKS"
timeout = "2s"

[jobs]
apply_attempts = 3
initial_backoff = "1s"
max_backoff = "10s"
lease = "30s"
"#,
        admin = warrant::api::auth::hash_token(ADMIN_TOKEN),
        auditor = warrant::api::auth::hash_token(AUDITOR_TOKEN),
        introspector = warrant::api::auth::hash_token(INTROSPECTOR_TOKEN),
    )
}

pub fn sign_github(raw: &[u8]) -> String {
    sign_hub(GH_SECRET.as_bytes(), raw)
}

pub fn env(name: &str) -> Option<String> {
    match name {
        "GH" => Some(GH_SECRET.into()),
        "JIRA" => Some(JIRA_SECRET.into()),
        "SN" => Some(SN_SECRET.into()),
        "HOOKS" => Some(HOOKS_SECRET.into()),
        "WARRANT_KEYS_SECRET" => Some(KEYS_SECRET.into()),
        "PROD_DB_URL" => Some(pg_admin_url()),
        "GH_TOKEN" => Some("ghp_test_token".into()),
        "JIRA_TOKEN" => Some("bot@example.com:jira-api-token".into()),
        "SN_TOKEN" => Some("warrant.bot:sn-password".into()),
        _ => None,
    }
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    /// What the app's workers share (database, clock, commit lanes, health).
    pub ctx: Arc<Context>,
    pub clock: ManualClock,
    pub receiver: Receiver,
    pub backend: Backend,
    handle: actix_web::dev::ServerHandle,
    pub db: TestDb,
}

impl TestApp {
    /// Starts the app with the base configuration plus `extra` TOML.
    pub async fn spawn(backend: Backend, extra: &str) -> Option<TestApp> {
        Self::spawn_edit(backend, extra, |t| t).await
    }

    /// Like `spawn`, with `edit` applied to the base configuration's text.
    pub async fn spawn_edit(
        backend: Backend,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Option<TestApp> {
        let db = TestDb::new(backend)?;
        let receiver = Receiver::start().await;
        let text = format!("{}\n{extra}", edit(base_config(&db.url, &receiver.url)));
        let config = Config::from_toml(&text, &env).expect("test config");
        let clock = ManualClock::new(t0());
        let options = Options {
            clock: Arc::new(clock.clone()),
            run_jobs: false,
            handle_signals: false,
            workers: Some(1),
        };
        let app = App::build(config, options).await.expect("app builds");
        let addr = format!("http://127.0.0.1:{}", app.port());
        let ctx = app.context();
        let handle = app.server_handle();
        tokio::spawn(app.run_until_stopped());
        Some(TestApp {
            addr,
            client: reqwest::Client::new(),
            ctx,
            clock,
            receiver,
            backend,
            handle,
            db,
        })
    }

    /// The Prometheus text of `GET /metrics`, with the gauges refreshed
    /// first: the app refreshes them every `server.metrics_refresh`, and a
    /// test does not wait for a timer.
    pub async fn metrics_text(&self) -> String {
        self.refresh_gauges().await;
        self.client
            .get(format!("{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// What the app's gauge refresher does at each tick, now.
    pub async fn refresh_gauges(&self) {
        let st = self.ctx.clone();
        tokio::task::spawn_blocking(move || {
            warrant::store::refresh_gauges(&st.db, &st.metrics, st.clock.now())
        })
        .await
        .unwrap()
        .expect("gauges refresh");
    }

    pub async fn run_jobs(&self) -> usize {
        warrant::jobs::run_pending(&self.ctx)
            .await
            .expect("jobs run")
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub async fn post_github(
        &self,
        event: &str,
        delivery: &str,
        body: &Value,
    ) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        self.client
            .post(format!("{}/webhooks/github", self.addr))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sign_hub(GH_SECRET.as_bytes(), &raw))
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_jira(&self, delivery: &str, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        self.client
            .post(format!("{}/webhooks/jira", self.addr))
            .header("X-Atlassian-Webhook-Identifier", delivery)
            .header("X-Hub-Signature", sign_hub(JIRA_SECRET.as_bytes(), &raw))
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_servicenow(&self, delivery: &str, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        let key = warrant::crypto::signature::whsec_key(SN_SECRET).unwrap();
        let ts = self.clock_now().timestamp();
        self.client
            .post(format!("{}/webhooks/servicenow", self.addr))
            .header("webhook-id", delivery)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign_standard(&key, delivery, ts, &raw))
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        use warrant::clock::Clock;
        self.clock.now()
    }

    pub async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.addr))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.addr))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The grants of a ticket, through the API.
    pub async fn grants_of(&self, ticket: &str) -> Vec<Value> {
        let q = percent_encoding::utf8_percent_encode(ticket, percent_encoding::NON_ALPHANUMERIC);
        let (status, body) = self
            .get_json(&format!("/v1/grants?ticket={q}"), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200, "{body}");
        body["grants"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let h = self.handle.clone();
        // Stop the server before the database goes away.
        drop(h.stop(false));
    }
}

/// Runs an async test body once per backend.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Starts the app or returns from the test when the backend is unavailable.
#[macro_export]
macro_rules! app {
    ($backend:expr) => {
        app!($backend, "")
    };
    ($backend:expr, $extra:expr) => {
        match $crate::helpers::TestApp::spawn($backend, $extra).await {
            Some(app) => app,
            None => return,
        }
    };
}

impl TestApp {
    /// A second app on this app's database and provider receiver, with
    /// `edit` applied to the base configuration: warrant restarted after a
    /// configuration change. Its clock starts at this app's time; the
    /// database stays this app's (dropping the second app keeps it).
    pub async fn restart_with(&self, edit: impl FnOnce(String) -> String) -> TestApp {
        let db = TestDb {
            url: self.db.url.clone(),
            pg_name: None,
            _dir: None,
        };
        let receiver = self.receiver.clone();
        let text = edit(base_config(&db.url, &receiver.url));
        let config = Config::from_toml(&text, &env).expect("test config");
        let clock = ManualClock::new(self.clock_now());
        let options = Options {
            clock: Arc::new(clock.clone()),
            run_jobs: false,
            handle_signals: false,
            workers: Some(1),
        };
        let app = App::build(config, options).await.expect("app builds");
        let addr = format!("http://127.0.0.1:{}", app.port());
        let ctx = app.context();
        let handle = app.server_handle();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            addr,
            client: reqwest::Client::new(),
            ctx,
            clock,
            receiver,
            backend: self.backend,
            handle,
            db,
        }
    }

    /// `warrant reconcile`: every stored ticket decided again under this
    /// app's configuration and clock.
    pub fn reconcile_all(&self) {
        let now = self.clock_now();
        for key in warrant::engine::all_ticket_keys(&self.ctx.db).expect("ticket keys") {
            warrant::engine::reconcile_ticket(&self.ctx.db, &self.ctx.config, now, &key)
                .expect("reconcile");
        }
    }

    /// The audit events of one ticket, oldest first.
    pub async fn events_of(&self, ticket: &str) -> Vec<Value> {
        let q = percent_encoding::utf8_percent_encode(ticket, percent_encoding::NON_ALPHANUMERIC);
        let (status, body) = self
            .get_json(&format!("/v1/audit?ticket={q}&limit=1000"), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().cloned().unwrap_or_default()
    }
}

/// Opens and approves GitHub issue `n` by erin (who has an identity in the
/// base configuration) for `resource`.
pub async fn erin_requests(
    app: &TestApp,
    n: u64,
    resource: &str,
) -> crate::payloads::Issue<'static> {
    let mut issue = crate::payloads::Issue::new(n, t0());
    issue.author = "erin-gh";
    issue.body = crate::payloads::form(resource, "1h", None);
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            &format!("erin-{n}"),
            &crate::payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    issue
}

/// Closes erin's issue a minute on, and runs the jobs.
pub async fn erin_closes(app: &TestApp, mut issue: crate::payloads::Issue<'static>) {
    issue.state = "closed";
    issue.updated_at = app.clock_now() + Duration::minutes(1);
    app.advance(Duration::minutes(1));
    let r = app
        .post_github(
            "issues",
            &format!("erin-{}-closed", issue.number),
            &crate::payloads::github("closed", &issue, "erin-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
}

/// The key of issue `n` in the watched repository.
pub fn issue_key(n: u64) -> String {
    format!("github:acme/access-requests#{n}")
}
