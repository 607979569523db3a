//! Two replicas racing on the same tickets: each ticket's approval goes to
//! one replica and its close (a second later in the source's time) to the
//! other, at the same moment. Whatever order they commit in, no closed
//! ticket may keep a live grant and every stored snapshot must be the
//! newest one.

use std::time::Duration;

use chrono::Utc;

use crate::helpers::{Backend, Receiver, TestDb};
use crate::payloads::{self, Issue};
use crate::proc::{free_port, wait_for, write_config, Serve};

const TICKETS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_on_one_ticket_never_leave_a_closed_ticket_granted() {
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

    let t = Utc::now();
    let mut sends = Vec::new();
    for n in 1..=TICKETS {
        let (a, b) = (&a, &b);
        sends.push(async move {
            let mut approved = Issue::new(n, t);
            approved.body = payloads::form(&format!("hooks/race-{n}"), "2h", None);
            approved.labels = vec!["access-approved"];
            let mut closed = Issue::new(n, t + chrono::Duration::seconds(1));
            closed.body = approved.body.clone();
            closed.labels = vec!["access-approved"];
            closed.state = "closed";
            let approve =
                payloads::github("labeled", &approved, "alice-gh", Some("access-approved"));
            let close = payloads::github("closed", &closed, "dave-gh", None);
            // Alternate which replica gets which, so both orders happen.
            let (first, second) = if n % 2 == 0 { (a, b) } else { (b, a) };
            let (approve_id, close_id) = (format!("approve-{n}"), format!("close-{n}"));
            let (ra, rc) = tokio::join!(
                first.github("issues", &approve_id, &approve),
                second.github("issues", &close_id, &close)
            );
            assert_eq!(ra.status(), 200);
            assert_eq!(rc.status(), 200);
        });
    }
    futures_util::future::join_all(sends).await;

    // Whatever was granted is being taken back; nothing stays live.
    wait_for(
        "no live grant on a closed ticket",
        Duration::from_secs(60),
        || async {
            a.grants()
                .await
                .iter()
                .all(|g| g["state"] == "revoked" || g["state"] == "failed")
        },
    )
    .await;
    let newest = (t + chrono::Duration::seconds(1)).timestamp();
    for n in 1..=TICKETS {
        let key = format!("github%3Aacme%2Faccess-requests%23{n}");
        let (status, body) = b.get(&format!("/v1/tickets/{key}")).await;
        assert_eq!(status, 200, "{body}");
        let snap = &body["snapshot"];
        assert_eq!(snap["status"], "closed", "ticket {n}: {snap}");
        let at = snap["updated_at"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp());
        assert_eq!(at, Some(newest), "ticket {n}: {snap}");
        for g in body["grants"].as_array().cloned().unwrap_or_default() {
            assert_eq!(g["revoke_reason"], "ticket_closed", "ticket {n}: {g}");
        }
    }
    let (_, v) = a.get("/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
}
