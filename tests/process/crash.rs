//! SIGKILL at any moment loses nothing and repeats nothing harmful.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;

use crate::helpers::{Backend, Receiver, TestDb};
use crate::payloads;
use crate::proc::{free_port, wait_for, write_config, Serve};

const N: u64 = 12;
const EXTRA: &str = "";

async fn crash_mid_flight(backend: Backend) {
    let Some(db) = TestDb::new(backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.delay(250);
    let port = free_port();
    let config = write_config(dir.path(), "w.toml", &db.url, &receiver.url, port, EXTRA);
    // A short lease so the next process takes over what the dead one held.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("lease = \"30s\"", "lease = \"2s\"")
        // A provider call must end before its lease could pass on.
        .replace("timeout = \"2s\"", "timeout = \"1s\"");
    std::fs::write(&config, text).unwrap();

    let mut serve = Serve::start(&config, port);
    serve.ready().await;
    let mut issues = Vec::new();
    for n in 1..=N {
        issues.push(serve.approved(n, "1h").await);
    }
    wait_for(
        "some grant calls in flight",
        Duration::from_secs(20),
        || async { !receiver.calls().is_empty() },
    )
    .await;
    serve.kill9();

    let mut serve = Serve::start(&config, port);
    serve.ready().await;
    wait_for("every grant active", Duration::from_secs(60), || async {
        let g = serve.grants().await;
        g.len() == N as usize && g.iter().all(|g| g["state"] == "active")
    })
    .await;

    for issue in issues.iter_mut() {
        issue.state = "closed";
        issue.updated_at = Utc::now();
        let r = serve
            .github(
                "issues",
                &format!("close-{}", issue.number),
                &payloads::github("closed", issue, "dave-gh", None),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let before = receiver.calls().len();
    wait_for("some revoke calls", Duration::from_secs(20), || async {
        receiver.calls().len() > before
    })
    .await;
    serve.kill9();

    let serve = Serve::start(&config, port);
    serve.ready().await;
    wait_for("every grant revoked", Duration::from_secs(60), || async {
        serve.grants().await.iter().all(|g| g["state"] == "revoked")
    })
    .await;

    // Each grant was applied, then taken away; any repeat carried the same
    // idempotency key, and no grant call landed after its revoke.
    let grants = serve.grants().await;
    assert_eq!(grants.len(), N as usize);
    let calls = receiver.calls();
    let mut by_grant: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for c in &calls {
        let id = c.body["grant_id"].as_str().unwrap().to_string();
        assert_eq!(
            c.header("webhook-id").unwrap(),
            format!("{id}-{}", c.action())
        );
        by_grant.entry(id).or_default().push((
            c.action().to_string(),
            c.header("webhook-id").unwrap().to_string(),
        ));
    }
    for g in &grants {
        let id = g["id"].as_str().unwrap();
        assert_eq!(g["revoke_reason"], "ticket_closed");
        let seq = &by_grant[id];
        let first_revoke = seq
            .iter()
            .position(|(a, _)| a == "revoke")
            .expect("revoked at the provider");
        assert!(
            seq[..first_revoke].iter().any(|(a, _)| a == "grant"),
            "{id}: {seq:?}"
        );
        assert!(
            seq[first_revoke..].iter().all(|(a, _)| a == "revoke"),
            "{id}: {seq:?}"
        );
    }
    let (_, v) = serve.get("/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_sqlite() {
    crash_mid_flight(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_postgres() {
    crash_mid_flight(Backend::Postgres).await
}
