//! Two `warrant serve` processes on one PostgreSQL database share the work:
//! deliveries dedupe across them, each grant is applied once and each
//! expiry fires exactly once at the provider.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::{Backend, Receiver, TestDb};
use crate::payloads::{self, Issue};
use crate::proc::{free_port, wait_for, write_config, Serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_database() {
    let Some(db) = TestDb::new(Backend::Postgres) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let (pa, pb) = (free_port(), free_port());
    let ca = write_config(dir.path(), "a.toml", &db.url, &receiver.url, pa, "");
    let cb = write_config(dir.path(), "b.toml", &db.url, &receiver.url, pb, "");
    let a = Serve::start(&ca, pa);
    a.ready().await;
    let b = Serve::start(&cb, pb);
    b.ready().await;

    // One delivery at both replicas: one accepts, the other sees a duplicate.
    let issue = Issue::new(100, chrono::Utc::now());
    let body = payloads::github("opened", &issue, "dave-gh", None);
    let (ra, rb) = tokio::join!(
        a.github("issues", "same-delivery", &body),
        b.github("issues", "same-delivery", &body)
    );
    let mut statuses = vec![
        ra.json::<serde_json::Value>().await.unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string(),
        rb.json::<serde_json::Value>().await.unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    statuses.sort();
    assert_eq!(statuses, vec!["accepted", "duplicate"]);

    const N: u64 = 20;
    for n in 1..=N {
        let replica = if n % 2 == 0 { &a } else { &b };
        replica.approved(n, "3s").await;
    }
    wait_for(
        "every grant expired and revoked",
        Duration::from_secs(60),
        || async {
            let g = a.grants().await;
            g.len() == N as usize && g.iter().all(|g| g["state"] == "revoked")
        },
    )
    .await;
    // Give a stray duplicate a moment to show up if there were one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for c in receiver.calls() {
        *count
            .entry(c.header("webhook-id").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(count.len(), 2 * N as usize, "{count:?}");
    assert!(
        count.values().all(|n| *n == 1),
        "each call exactly once: {count:?}"
    );
    for g in a.grants().await {
        assert_eq!(g["revoke_reason"], "expired");
    }
    let (_, v) = b.get("/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
}
