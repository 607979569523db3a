//! A database outage: webhooks answer 503 so senders retry, readiness
//! fails, nothing is half-written, and warrant recovers by itself — overdue
//! revocations run as soon as the database is back. The outage is a TCP
//! proxy in front of PostgreSQL that the test cuts and restores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{pg_admin_url, Backend, Receiver, TestDb};
use crate::payloads::{self, Issue};
use crate::proc::{free_port, wait_for, write_config, Serve};

struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Proxy { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_and_recovery() {
    let Some(db) = TestDb::new(Backend::Postgres) else {
        return;
    };
    let target: u16 = pg_admin_url()
        .rsplit_once(':')
        .and_then(|(_, p)| p.split('/').next()?.parse().ok())
        .unwrap_or(5432);
    let proxy = Proxy::start(target).await;
    let (head, name) = db.url.rsplit_once('/').unwrap();
    let host = head.rsplit_once(':').map(|(h, _)| h).unwrap();
    let url = format!("{host}:{}/{name}", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let port = free_port();
    let config = write_config(dir.path(), "w.toml", &url, &receiver.url, port, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("pool_size = 4", "pool_size = 4\nconnect_timeout = \"1s\"");
    std::fs::write(&config, text).unwrap();
    let serve = Serve::start(&config, port);
    serve.ready().await;

    // Long enough that the grant cannot expire before the cut on a busy machine.
    serve.approved(1, "8s").await;
    wait_for("grant active", Duration::from_secs(20), || async {
        serve
            .grants()
            .await
            .first()
            .is_some_and(|g| g["state"] == "active")
    })
    .await;
    let expires_at: chrono::DateTime<chrono::Utc> = serve.grants().await[0]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    proxy.cut();
    let client = reqwest::Client::new();
    wait_for("readyz 503", Duration::from_secs(20), || async {
        matches!(client.get(format!("{}/readyz", serve.base)).send().await, Ok(r) if r.status() == 503)
    })
    .await;
    let issue = Issue::new(2, chrono::Utc::now());
    let body = payloads::github("opened", &issue, "dave-gh", None);
    let r = serve.github("issues", "during-outage", &body).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    // The grant's window ends while the database is away.
    wait_for("the grant's expiry", Duration::from_secs(20), || async {
        chrono::Utc::now() > expires_at + chrono::Duration::milliseconds(500)
    })
    .await;
    assert_eq!(
        receiver.calls().len(),
        1,
        "nothing revoked while the database is away"
    );

    proxy.restore();
    serve.ready().await;
    wait_for(
        "overdue revocation runs",
        Duration::from_secs(15),
        || async { receiver.calls().iter().any(|c| c.action() == "revoke") },
    )
    .await;
    let g = serve.grants().await;
    assert_eq!(
        (g[0]["state"].as_str(), g[0]["revoke_reason"].as_str()),
        (Some("revoked"), Some("expired"))
    );
    // The delivery refused during the outage left nothing behind.
    let r: serde_json::Value = serve
        .github("issues", "during-outage", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "accepted");
    let (_, v) = serve.get("/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
}
