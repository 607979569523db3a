//! Audit sinks in real processes: two `warrant serve` replicas on one
//! PostgreSQL database, both configured with one `http` sink, deliver
//! every event once in order between them (one holds the sink at a time),
//! and the survivor carries on after the other is SIGKILLed.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Backend, Receiver, TestDb, HOOKS_SECRET};
use crate::payloads::{self, Issue};
use crate::proc::{free_port, wait_for, write_config, Serve};

/// The events the receiver got, each once in `seq` order; panics if a post
/// is unsigned, out of order, or repeats an event under another batch id.
fn delivered(receiver: &Receiver) -> Vec<Value> {
    let key = warrant::crypto::signature::whsec_key(HOOKS_SECRET).unwrap();
    let mut by_seq: HashMap<i64, String> = HashMap::new();
    let mut out: Vec<Value> = Vec::new();
    for call in receiver.calls() {
        let id = call.header("webhook-id").unwrap_or_default().to_string();
        warrant::crypto::signature::verify_standard(
            &key,
            call.header("webhook-id"),
            call.header("webhook-timestamp"),
            call.header("webhook-signature"),
            &call.raw,
            chrono::Utc::now(),
            chrono::Duration::seconds(300),
        )
        .expect("a signed batch");
        assert_eq!(call.body["batch"], id.as_str());
        for e in call.body["events"].as_array().unwrap() {
            let seq = e["seq"].as_i64().unwrap();
            match by_seq.get(&seq) {
                Some(batch) => assert_eq!(batch, &id, "seq {seq} again in another batch"),
                None => {
                    if let Some(last) = out.last() {
                        assert!(
                            last["seq"].as_i64().unwrap() < seq,
                            "seq {seq} out of order"
                        );
                    }
                    by_seq.insert(seq, id.clone());
                    out.push(e.clone());
                }
            }
        }
    }
    out
}

async fn open(replica: &Serve, n: u64) {
    let issue = Issue::new(n, chrono::Utc::now());
    let r = replica
        .github(
            "issues",
            &format!("open-{n}"),
            &payloads::github("opened", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
}

async fn events(replica: &Serve) -> Vec<Value> {
    let (status, body) = replica.get("/v1/audit?limit=10000").await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_sink_and_the_survivor_of_a_sigkill_carries_on() {
    let Some(db) = TestDb::new(Backend::Postgres) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let provider = Receiver::start().await;
    let sink = Receiver::start().await;
    let extra = format!(
        "[[audit.sinks]]\nname = \"siem\"\nkind = \"http\"\nurl = \"{}\"\n\
         secret_env = \"HOOKS\"\nbatch_size = 5\n",
        sink.url
    );
    let (pa, pb) = (free_port(), free_port());
    let ca = write_config(dir.path(), "a.toml", &db.url, &provider.url, pa, &extra);
    let cb = write_config(dir.path(), "b.toml", &db.url, &provider.url, pb, &extra);
    let mut a = Serve::start(&ca, pa);
    a.ready().await;
    let b = Serve::start(&cb, pb);
    b.ready().await;

    for n in 1..=6 {
        open(if n % 2 == 0 { &a } else { &b }, n).await;
    }
    let all = events(&a).await;
    assert!(all.len() >= 6);
    wait_for(
        "every event at the sink",
        Duration::from_secs(30),
        || async { delivered(&sink).len() == all.len() },
    )
    .await;
    assert_eq!(delivered(&sink), all);

    a.kill9();
    for n in 7..=9 {
        open(&b, n).await;
    }
    let all = events(&b).await;
    wait_for(
        "every event at the sink after the SIGKILL",
        Duration::from_secs(30),
        || async { delivered(&sink).len() == all.len() },
    )
    .await;
    assert_eq!(delivered(&sink), all);
}
