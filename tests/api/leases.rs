//! Job leases: no two provider calls for one grant overlap. A run that
//! outlives its first lease keeps its job (the lease is renewed while the
//! provider call runs), a second claim meanwhile gets nothing, a close that
//! arrives during a slow grant call is applied after that call, and every
//! provider call ends within its provider's `timeout`.
//!
//! Leases on PostgreSQL run on the server's clock, which the test cannot
//! move, so the lease here is a short real one (3s) and the test waits past
//! it; the ManualClock is moved past it as well, for SQLite's leases.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use serde_json::Value;
use warrant::domain::to_micros;

use crate::backend_tests;
use crate::helpers::{t0, Backend, TestApp, ADMIN_TOKEN};
use crate::payloads::{self, Issue};

const KEY: &str = "github:acme/access-requests#42";
/// `jobs.lease` in these tests, in seconds.
const LEASE: u64 = 3;
/// How long the slow receiver takes per call: under the provider's 2s
/// timeout, so a grant call and then a revoke call in one run take longer
/// than one lease.
const SLOW_MS: u64 = 1800;

/// What the slow receiver saw: each call's start and end, in order, and
/// the most calls it ever had in flight for one grant.
#[derive(Debug, Default)]
struct Seen {
    in_flight: HashMap<String, usize>,
    most: usize,
    log: Vec<String>,
}

/// A provider endpoint that answers every call after a delay and counts
/// the calls in flight per grant (for `http`, the body's `grant_id`; for
/// `github_team`, the membership's path). A call the client gives up on
/// still counts until the receiver's handler ends.
#[derive(Clone)]
struct SlowReceiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
    delay_ms: Arc<AtomicU64>,
    _handle: actix_web::dev::ServerHandle,
}

/// Ends one call's stay in flight, also when its handler is dropped.
struct InFlight {
    seen: Arc<Mutex<Seen>>,
    grant: String,
    action: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut seen = self.seen.lock().unwrap();
        if let Some(n) = seen.in_flight.get_mut(&self.grant) {
            *n = n.saturating_sub(1);
        }
        seen.log.push(format!("{} end", self.action));
    }
}

impl SlowReceiver {
    async fn start(delay_ms: u64) -> SlowReceiver {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let (s, d) = (seen.clone(), delay.clone());
        let server = actix_web::HttpServer::new(move || {
            let (s, d) = (s.clone(), d.clone());
            actix_web::App::new().default_service(actix_web::web::to(
                move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                    let (seen, d) = (s.clone(), d.clone());
                    async move {
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let grant = body["grant_id"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| req.path().to_string());
                        let action = match (body["action"].as_str(), req.method().as_str()) {
                            (Some(a), _) => a.to_string(),
                            (None, "DELETE") => "revoke".to_string(),
                            (None, _) => "grant".to_string(),
                        };
                        let guard = {
                            let mut s = seen.lock().unwrap();
                            let n = s.in_flight.entry(grant.clone()).or_default();
                            *n += 1;
                            let n = *n;
                            s.most = s.most.max(n);
                            s.log.push(format!("{action} start"));
                            InFlight {
                                seen: seen.clone(),
                                grant,
                                action,
                            }
                        };
                        let ms = d.load(Ordering::SeqCst);
                        tokio::time::sleep(StdDuration::from_millis(ms)).await;
                        drop(guard);
                        actix_web::HttpResponse::NoContent().finish()
                    }
                },
            ))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind slow receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        SlowReceiver {
            url: format!("http://127.0.0.1:{port}/access"),
            seen,
            delay_ms: delay,
            _handle: handle,
        }
    }

    fn base(&self) -> String {
        self.url.trim_end_matches("/access").to_string()
    }

    fn log(&self) -> Vec<String> {
        self.seen.lock().unwrap().log.clone()
    }

    fn most(&self) -> usize {
        self.seen.lock().unwrap().most
    }

    fn in_flight(&self) -> usize {
        self.seen.lock().unwrap().in_flight.values().sum()
    }

    fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// The app with its `hooks` provider at `slow` and a short lease.
async fn spawn_slow(backend: Backend, slow: &SlowReceiver, extra: &str) -> Option<TestApp> {
    let url = slow.url.clone();
    TestApp::spawn_edit(backend, extra, move |text| {
        text.lines()
            .map(|l| {
                if l.starts_with("url = \"http://127.0.0.1:") {
                    format!("url = \"{url}\"")
                } else if l == "lease = \"30s\"" {
                    format!("lease = \"{LEASE}s\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await
}

async fn open_and_approve(app: &TestApp, resource: &str) -> Issue<'static> {
    let mut issue = Issue::new(42, t0());
    issue.body = payloads::form(resource, "2h", None);
    let r = app
        .post_github(
            "issues",
            "open-42",
            &payloads::github("opened", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
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
    issue
}

async fn only_grant(app: &TestApp) -> Value {
    let grants = app.grants_of(KEY).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    grants[0].clone()
}

/// The grant job's `run_at` and `locked_until`, read from the database.
fn job_times(app: &TestApp) -> (i64, Option<i64>) {
    use warrant::db::schema::jobs;
    let q = jobs::table
        .filter(jobs::kind.eq("grant"))
        .select((jobs::run_at, jobs::locked_until));
    match app.backend {
        Backend::Sqlite => {
            let path = app.db.url.trim_start_matches("sqlite://");
            let mut c = diesel::sqlite::SqliteConnection::establish(path).unwrap();
            q.first(&mut c).unwrap()
        }
        Backend::Postgres => {
            let mut c = diesel::pg::PgConnection::establish(&app.db.url).unwrap();
            q.first(&mut c).unwrap()
        }
    }
}

fn near(a: i64, b: DateTime<Utc>) -> bool {
    (a - to_micros(b)).abs() < 2_000_000
}

async fn wait_until(what: &str, within: StdDuration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "waited {within:?} for {what}");
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

/// A grant call answers slowly; the ticket is closed while it is in flight.
/// The same run then revokes, so the run lasts longer than its first lease:
/// a second claim past that lease (on both clocks) gets nothing, because
/// the lease was renewed. The receiver saw grant, then revoke, never two
/// calls at once, and the grant ends revoked.
async fn a_close_during_a_slow_grant_call_is_applied_after_it(backend: Backend) {
    let slow = SlowReceiver::start(SLOW_MS).await;
    let Some(app) = spawn_slow(backend, &slow, "").await else {
        return;
    };
    let mut issue = open_and_approve(&app, "hooks/orders-db").await;
    assert_eq!(only_grant(&app).await["state"], "granting");

    let st = app.ctx.clone();
    let app_now = app.clock_now();
    let first = tokio::spawn(async move { warrant::jobs::run_due(&st).await });
    wait_until("the grant call", StdDuration::from_secs(10), || {
        slow.log().contains(&"grant start".to_string())
    })
    .await;
    // The claim was made before the call started: its lease ends by then.
    let claimed_by = Instant::now();
    // When the job is due again stays on warrant's clock; the lease's end
    // is on the database's (PostgreSQL's own clock; SQLite's one process
    // uses warrant's). The test's clock is days behind the real one.
    let lease = Duration::seconds(LEASE as i64);
    let (run_at, locked_until) = job_times(&app);
    assert_eq!(run_at, to_micros(app_now + lease));
    let locked_until = locked_until.expect("the job is leased");
    match backend {
        Backend::Sqlite => assert_eq!(locked_until, run_at),
        Backend::Postgres => assert!(
            near(locked_until, Utc::now() + lease),
            "the lease ends {}s after the server's now",
            (locked_until - to_micros(Utc::now())) / 1_000_000
        ),
    }

    issue.state = "closed";
    issue.updated_at = t0() + Duration::seconds(2);
    let r = app
        .post_github(
            "issues",
            "close-42",
            &payloads::github("closed", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    let g = only_grant(&app).await;
    assert_eq!(g["state"], "revoking", "{g}");
    assert_eq!(
        slow.log(),
        ["grant start"],
        "the close waits for the grant call in flight"
    );

    // Past the first lease on warrant's clock (SQLite's leases) and on the
    // server's (PostgreSQL's), while the first run is still going: its
    // grant call and then its revoke call take 2 x 1.8s.
    app.advance(Duration::seconds(LEASE as i64 + 1));
    let past_lease = claimed_by + StdDuration::from_millis(LEASE * 1000 + 300);
    tokio::time::sleep(past_lease.saturating_duration_since(Instant::now())).await;
    assert!(
        !first.is_finished(),
        "the first run is still in flight (log: {:?})",
        slow.log()
    );
    if backend == Backend::Postgres {
        // A replica whose clock runs an hour ahead cannot take the lease
        // either: it is measured on the server's clock.
        app.advance(Duration::hours(1));
    }
    let again = warrant::jobs::run_due(&app.ctx).await.unwrap();
    assert_eq!(
        again,
        0,
        "a second claim took the job while its run was in flight (log: {:?})",
        slow.log()
    );

    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(
        slow.log(),
        ["grant start", "grant end", "revoke start", "revoke end"],
        "grant, then revoke, one at a time"
    );
    assert_eq!(slow.most(), 1, "never two calls at once for one grant");
    let g = only_grant(&app).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed")),
        "{g}"
    );
    // Nothing is left to run: the job is gone, not waiting for its lease.
    app.advance(Duration::seconds(LEASE as i64 + 1));
    assert_eq!(app.run_jobs().await, 0);
    assert_eq!(slow.log().len(), 4);
}

/// A provider call that does not answer within its provider's `timeout`
/// is abandoned and counts as a failed attempt (audited, retried with
/// backoff); the retry applies the grant. `github_team` has no deadline of
/// its own, so this is the one every call gets.
async fn a_call_past_its_timeout_is_a_failed_attempt(backend: Backend) {
    let slow = SlowReceiver::start(2500).await;
    let extra = format!(
        r#"
[providers.gh]
kind = "github_team"
api_url = "{}"
org = "acme"
token_env = "GH_TOKEN"
timeout = "1s"

[[policies]]
name = "teams"
resources = ["gh/*"]
sources = ["github"]
approvers = ["alice"]
max_duration = "4h"
default_duration = "1h"
"#,
        slow.base()
    );
    let Some(app) = spawn_slow(backend, &slow, &extra).await else {
        return;
    };
    open_and_approve(&app, "gh/platform").await;
    let started = Instant::now();
    assert_eq!(warrant::jobs::run_due(&app.ctx).await.unwrap(), 1);
    let took = started.elapsed();
    assert!(
        took >= StdDuration::from_millis(900) && took < StdDuration::from_millis(2400),
        "the call was abandoned at its 1s timeout, not at the receiver's answer ({took:?})"
    );
    let g = only_grant(&app).await;
    assert_eq!(g["state"], "granting", "{g}");
    let q = g["id"].as_str().unwrap();
    let (_, audit) = app
        .get_json(&format!("/v1/audit?grant={q}"), ADMIN_TOKEN)
        .await;
    let failed: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "grant.apply_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{audit}");
    assert!(
        failed[0]["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within 1s")),
        "{}",
        failed[0]
    );

    // The abandoned call ends at the receiver; then the retry, due after
    // its backoff, applies the grant.
    wait_until(
        "the abandoned call to end",
        StdDuration::from_secs(5),
        || slow.in_flight() == 0,
    )
    .await;
    slow.set_delay(0);
    assert_eq!(
        warrant::jobs::run_due(&app.ctx).await.unwrap(),
        0,
        "not before its backoff"
    );
    app.advance(Duration::seconds(2));
    app.run_jobs().await;
    assert_eq!(only_grant(&app).await["state"], "active");
    assert_eq!(
        slow.log(),
        ["grant start", "grant end", "grant start", "grant end"]
    );
    assert_eq!(slow.most(), 1);
}

backend_tests!(
    a_close_during_a_slow_grant_call_is_applied_after_it,
    a_call_past_its_timeout_is_a_failed_attempt,
);
