//! The hash chain: verification finds any tampering, on both backends.

use diesel::connection::SimpleConnection;
use serde_json::Value;

use crate::backend_tests;
use crate::helpers::{t0, Backend, TestApp, ADMIN_TOKEN, AUDITOR_TOKEN};
use crate::payloads::{self, Issue};

fn exec(app: &TestApp, sql: &str) {
    match app.backend {
        Backend::Sqlite => {
            use diesel::Connection;
            let path = app.db.url.trim_start_matches("sqlite://");
            let mut c = diesel::sqlite::SqliteConnection::establish(path).unwrap();
            c.batch_execute(sql).unwrap();
        }
        Backend::Postgres => {
            use diesel::Connection;
            let mut c = diesel::pg::PgConnection::establish(&app.db.url).unwrap();
            c.batch_execute(sql).unwrap();
        }
    }
}

async fn verify(app: &TestApp) -> Value {
    let (status, body) = app.get_json("/v1/audit/verify", AUDITOR_TOKEN).await;
    assert_eq!(status, 200);
    body
}

async fn with_events(backend: Backend) -> Option<TestApp> {
    let app = TestApp::spawn(backend, "").await?;
    let mut issue = Issue::new(3, t0());
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "a",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    Some(app)
}

async fn chain_verifies_and_exports(backend: Backend) {
    let Some(app) = with_events(backend).await else {
        return;
    };
    let v = verify(&app).await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["events"].as_i64().unwrap() >= 5, "{v}");
    let jsonl = app
        .client
        .get(format!("{}/v1/audit/export?format=jsonl", app.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(jsonl.lines().count() as i64, v["events"].as_i64().unwrap());
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev_hash"], warrant::audit::GENESIS);
    let csv = app
        .client
        .get(format!("{}/v1/audit/export?format=csv", app.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("seq,at,type,ticket,grant_id,actor,data,prev_hash,hash\n"));
    assert_eq!(
        csv.lines().count() as i64,
        v["events"].as_i64().unwrap() + 1
    );
    // Cursor paging never skips or repeats.
    let (_, p1) = app.get_json("/v1/audit?limit=2", AUDITOR_TOKEN).await;
    let next = p1["next"].as_i64().unwrap();
    let (_, p2) = app
        .get_json(&format!("/v1/audit?limit=2&after={next}"), AUDITOR_TOKEN)
        .await;
    assert_eq!(p2["events"][0]["seq"].as_i64().unwrap(), next + 1);
}

async fn tampering_is_found(backend: Backend) {
    let cases = [
        (
            "UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2",
            2,
        ),
        ("DELETE FROM audit_events WHERE seq = 3", 3),
        (
            "UPDATE audit_events SET data = '{\"x\":1}' WHERE seq = 1",
            1,
        ),
        ("UPDATE audit_events SET seq = seq + 1000 WHERE seq = 2", 2),
        // Two rows swapped: the chain is out of order at the first.
        ("UPDATE audit_events SET seq = -1 WHERE seq = 2; UPDATE audit_events SET seq = 2 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = -1", 2),
        // A forged row with a plausible link to its predecessor still fails.
        ("INSERT INTO audit_events (seq, at, type, actor, data, prev_hash, hash) SELECT seq + 100000, at, 'grant.created', 'me', '{}', hash, hash FROM audit_events WHERE seq = 1", 0),
    ];
    for (sql, bad) in cases {
        let Some(app) = with_events(backend).await else {
            return;
        };
        exec(&app, sql);
        let v = verify(&app).await;
        assert_eq!(v["ok"], false, "{sql}: {v}");
        if bad > 0 {
            assert_eq!(v["first_bad"], bad, "{sql}: {v}");
        }
    }
    // Deleting the newest row is found through the head.
    let Some(app) = with_events(backend).await else {
        return;
    };
    let n = verify(&app).await["events"].as_i64().unwrap();
    exec(&app, &format!("DELETE FROM audit_events WHERE seq = {n}"));
    let v = verify(&app).await;
    assert_eq!(
        (v["ok"].as_bool(), v["first_bad"].as_i64()),
        (Some(false), Some(n)),
        "{v}"
    );
}

async fn concurrent_writers_keep_one_chain(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, "").await else {
        return;
    };
    let sends = (1..=40u64).map(|n| {
        let app = &app;
        async move {
            let mut issue = Issue::new(n, t0());
            issue.labels = vec!["access-approved"];
            let body = payloads::github("labeled", &issue, "alice-gh", Some("access-approved"));
            app.post_github("issues", &format!("c{n}"), &body)
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    app.run_jobs().await;
    let v = verify(&app).await;
    assert_eq!(v["ok"], true, "{v}");
    // Delivery, snapshot, decision, grant created, grant applied: five each.
    assert_eq!(v["events"], 40 * 5, "{v}");
}

/// Batches start from the head the last batch committed; a write outside
/// the batches (a revocation by hand) moves the head under them, and the
/// next batch must notice and chain on from the real head.
async fn writes_beside_the_batches_keep_one_chain(backend: Backend) {
    let Some(app) = with_events(backend).await else {
        return;
    };
    let grants = app.grants_of("github:acme/access-requests#3").await;
    let id = grants[0]["id"].as_str().unwrap().to_string();
    let (status, body) = app
        .post_json(
            &format!("/v1/grants/{id}/revoke"),
            ADMIN_TOKEN,
            &serde_json::json!({ "reason": "manual" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = verify(&app).await["events"].as_i64().unwrap();
    for n in 4..=6u64 {
        let issue = Issue::new(n, t0());
        let status = app
            .post_github(
                "issues",
                &format!("b{n}"),
                &payloads::github("opened", &issue, "a", None),
            )
            .await
            .status();
        assert_eq!(status, 200);
    }
    app.run_jobs().await;
    let v = verify(&app).await;
    assert_eq!(v["ok"], true, "{v}");
    // Each opened issue: delivery, snapshot, decision; the revocation's
    // provider call adds its own event.
    assert!(
        v["events"].as_i64().unwrap() >= before + 9,
        "{v} after {before}"
    );
}

backend_tests!(
    chain_verifies_and_exports,
    tampering_is_found,
    concurrent_writers_keep_one_chain,
    writes_beside_the_batches_keep_one_chain
);
