//! The audit trail tells the truth under load: `verify` during heavy
//! ingest checks one snapshot and never reports a break that is not there;
//! an export whose page cannot be read ends in an error the client sees.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::Connection;
use serde_json::Value;

use crate::helpers::{t0, Backend, TestApp, ADMIN_TOKEN};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};

/// Opens issues `first..first + count`, at most `rate` a second (none when
/// `rate` is 0); answers how many were accepted.
async fn open_issues(app: &TestApp, first: u64, count: u64, rate: u64) -> u64 {
    let start = tokio::time::Instant::now();
    let sends = (first..first + count).map(|n| async move {
        if let Some(us) = ((n - first) * 1_000_000).checked_div(rate) {
            tokio::time::sleep_until(start + Duration::from_micros(us)).await;
        }
        let issue = Issue::new(n, t0());
        let r = app
            .post_github(
                "issues",
                &format!("open-{n}"),
                &payloads::github("opened", &issue, "dave-gh", None),
            )
            .await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body}");
        u64::from(body["status"] == "accepted")
    });
    // Bounded concurrency when unpaced, so the client does not open a
    // connection per issue.
    let mut accepted = 0;
    if rate > 0 {
        for n in futures_util::future::join_all(sends).await {
            accepted += n;
        }
    } else {
        let sends: Vec<_> = sends.collect();
        let mut it = sends.into_iter();
        loop {
            let batch: Vec<_> = it.by_ref().take(32).collect();
            if batch.is_empty() {
                break;
            }
            for n in futures_util::future::join_all(batch).await {
                accepted += n;
            }
        }
    }
    accepted
}

async fn all_events(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = app
            .get_json(&format!("/v1/audit?limit=10000&after={after}"), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

/// `GET /v1/audit/verify` in a loop while ~500 webhooks/s arrive: every
/// answer is `ok`, and the last one counts every event of the trail.
async fn verify_during_ingest_is_always_ok(backend: Backend) {
    let app = app!(backend);
    const DELIVERIES: u64 = 1500;
    let done = AtomicBool::new(false);
    let verified = AtomicU64::new(0);
    let ingest = async {
        let accepted = open_issues(&app, 1000, DELIVERIES, 500).await;
        done.store(true, Ordering::SeqCst);
        accepted
    };
    let verify = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
            let (status, v) = app.get_json("/v1/audit/verify", ADMIN_TOKEN).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["ok"], true, "a verify during ingest: {v}");
            verified.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (accepted, ()) = tokio::join!(ingest, verify);
    assert_eq!(accepted, DELIVERIES);
    assert!(
        verified.load(Ordering::SeqCst) >= 3,
        "verify ran during the ingest"
    );
    let (status, v) = app.get_json("/v1/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(v["ok"], true, "{v}");
    let events = all_events(&app).await;
    assert!(events.len() as u64 >= DELIVERIES);
    assert_eq!(v["events"], events.len() as u64, "{v}");
    assert_eq!(v["head"], events.last().unwrap()["hash"]);
}

/// Reads an export to its end: the body, or the error that cut it off.
async fn export(app: &TestApp, format: &str) -> Result<Vec<u8>, reqwest::Error> {
    let r = app
        .client
        .get(format!("{}/v1/audit/export?format={format}", app.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(r.bytes().await?.to_vec())
}

/// An export whose second page cannot be read (the rows past the first
/// thousand lose their time, behind a view) ends with an error the client
/// sees, never a clean end that looks like the whole trail.
async fn export_that_fails_midway_is_cut_off(backend: Backend) {
    let app = app!(backend);
    let accepted = open_issues(&app, 2000, 1100, 0).await;
    assert_eq!(accepted, 1100);
    let events = all_events(&app).await.len();
    assert!(events > 1000);
    // Whole, the export is every event.
    let whole = export(&app, "jsonl").await.expect("a whole export");
    assert_eq!(whole.iter().filter(|b| **b == b'\n').count(), events);

    let sql = "ALTER TABLE audit_events RENAME TO audit_events_kept; \
         CREATE VIEW audit_events AS SELECT seq, CASE WHEN seq <= 1000 THEN at END AS at, \
         type, ticket, grant_id, actor, data, prev_hash, hash FROM audit_events_kept;";
    match backend {
        Backend::Sqlite => {
            let path = app.db.url.trim_start_matches("sqlite://");
            let mut c = diesel::sqlite::SqliteConnection::establish(path).unwrap();
            c.batch_execute(sql).unwrap();
        }
        Backend::Postgres => {
            let mut c = diesel::pg::PgConnection::establish(&app.db.url).unwrap();
            c.batch_execute(sql).unwrap();
        }
    }
    for format in ["jsonl", "csv"] {
        let cut = export(&app, format).await;
        assert!(
            cut.is_err(),
            "{format}: a failed page must not end the export cleanly ({} bytes)",
            cut.map(|b| b.len()).unwrap_or_default()
        );
    }
}

backend_tests!(
    verify_during_ingest_is_always_ok,
    export_that_fails_midway_is_cut_off
);
