//! What an unauthenticated request may cost: metric labels from fixed
//! sets, webhook bodies bounded in time (408), in number read at once
//! (503) and in size (413), and provider errors in the trail and the API
//! without a URL's credentials or query.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{t0, Backend, TestApp, ADMIN_TOKEN};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};

/// The base configuration with these `[server]` keys added.
async fn spawn_server(backend: Backend, server_keys: &str) -> Option<TestApp> {
    let keys = server_keys.to_string();
    TestApp::spawn_edit(backend, "", move |t| {
        t.replacen(
            "max_body_bytes = 1048576",
            &format!("max_body_bytes = 1048576\n{keys}"),
            1,
        )
    })
    .await
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.addr.trim_start_matches("http://");
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

fn webhook_head(content_length: usize) -> String {
    format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: warrant\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: issues\r\nX-GitHub-Delivery: slow\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// Reads until the status line is complete (or the peer closes), at most
/// `within`; answers the status code and the head read.
async fn read_status(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> (u16, String) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within {within:?}");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// A tiny deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn word(&mut self, alphabet: &[u8], min: usize, max: usize) -> String {
        let len = min + (self.next() as usize) % (max - min + 1);
        (0..len)
            .map(|_| alphabet[(self.next() as usize) % alphabet.len()] as char)
            .collect()
    }
}

const KNOWN_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

fn series(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// Hundreds of requests with made-up methods and paths add no series:
/// every method outside the standard ones is `other`, every path that
/// matches no route is `unmatched`.
async fn metric_labels_are_a_fixed_set(backend: Backend) {
    let app = app!(backend);
    let send = |method: String, path: String| {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.client.request(m, format!("{}{path}", app.addr)).send()
    };
    // Every label set the random requests can reach, once.
    assert_eq!(
        send("XYZZY".into(), "/zz/warm".into())
            .await
            .unwrap()
            .status(),
        404
    );
    // A request is counted as its response goes out, so a scrape may not
    // yet show the one before it: take as `before` a scrape whose series the
    // next scrape repeats.
    let mut before = app.metrics_text().await;
    for _ in 0..50 {
        let again = app.metrics_text().await;
        if series(&again).len() == series(&before).len() {
            break;
        }
        before = again;
    }

    let mut rng = Lcg(0x5eed);
    let upper = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let path_chars = b"abcdefghijklmnopqrstuvwxyz0123456789-_~%";
    for _ in 0..300 {
        let method = loop {
            let m = rng.word(upper, 3, 12);
            if !KNOWN_METHODS.contains(&m.as_str()) {
                break m;
            }
        };
        let path = format!(
            "/zz/{}/{}",
            rng.word(path_chars, 1, 20),
            rng.word(path_chars, 1, 20)
        );
        let r = send(method.clone(), path.clone()).await.unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
    }
    let after = app.metrics_text().await;
    assert_eq!(
        series(&before).len(),
        series(&after).len(),
        "new series appeared:\n{after}"
    );
    for line in series(&after) {
        if let Some(labels) = line.strip_prefix("warrant_http_requests_total{") {
            let method = labels
                .split("method=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap();
            assert!(
                KNOWN_METHODS.contains(&method) || method == "other",
                "{line}"
            );
            let route = labels
                .split("route=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap();
            assert!(route == "unmatched" || !route.starts_with("/zz"), "{line}");
        }
    }
    assert!(
        after.contains(
            r#"warrant_http_requests_total{method="other",route="unmatched",status="404"} 301"#
        ),
        "{after}"
    );
}

/// A scrape only renders: the grant gauges move when the refresher runs
/// (at start, then every `server.metrics_refresh`, here an hour), not when
/// `/metrics` is asked.
async fn scrapes_do_not_query_the_database(backend: Backend) {
    let Some(app) = spawn_server(backend, "metrics_refresh = \"1h\"").await else {
        return;
    };
    let scrape = || async {
        app.client
            .get(format!("{}/metrics", app.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // The refresh at start.
    let mut refreshed = false;
    for _ in 0..250 {
        if scrape()
            .await
            .contains(r#"warrant_grants{state="granting"} 0"#)
        {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refreshed, "the gauges are set at start");
    let mut issue = Issue::new(61, t0());
    let open = payloads::github("opened", &issue, "dave-gh", None);
    assert_eq!(
        app.post_github("issues", "open-61", &open).await.status(),
        200
    );
    issue.labels = vec!["access-approved"];
    issue.updated_at = t0() + chrono::Duration::seconds(1);
    let label = payloads::github("labeled", &issue, "alice-gh", Some("access-approved"));
    assert_eq!(
        app.post_github("issues", "label-61", &label).await.status(),
        200
    );
    assert_eq!(
        app.grants_of("github:acme/access-requests#61").await.len(),
        1
    );
    let text = scrape().await;
    assert!(
        text.contains(r#"warrant_grants{state="granting"} 0"#),
        "{text}"
    );
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"warrant_grants{state="granting"} 1"#),
        "{text}"
    );
}

/// Headers that promise a body, then nothing: 408 once `read_timeout`
/// (1 s here) has passed. A body that keeps trickling but takes longer in
/// all is cut off the same way.
async fn body_that_never_arrives_gets_408(backend: Backend) {
    let Some(app) = spawn_server(backend, "read_timeout = \"1s\"").await else {
        return;
    };
    let mut s = connect(&app).await;
    let started = Instant::now();
    s.write_all(webhook_head(1000).as_bytes()).await.unwrap();
    let (code, head) = read_status(&mut s, Duration::from_secs(15)).await;
    assert_eq!(code, 408, "{head}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // One byte every 100 ms: never idle for long, still over the limit.
    let (mut rd, mut wr) = connect(&app).await.into_split();
    wr.write_all(webhook_head(1000).as_bytes()).await.unwrap();
    let started = Instant::now();
    let reader = tokio::spawn(async move { read_status(&mut rd, Duration::from_secs(15)).await });
    for _ in 0..100 {
        if reader.is_finished() || wr.write_all(b" ").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, head) = reader.await.unwrap();
    assert_eq!(code, 408, "{head}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"warrant_webhooks_total{source="github",outcome="timeout"} 2"#),
        "{metrics}"
    );
}

/// A body over `max_body_bytes` is 413, whether its length is declared (refused
/// before it is read) or only found while reading a chunked body.
async fn body_over_the_limit_gets_413(backend: Backend) {
    let Some(app) = TestApp::spawn_edit(backend, "", |t| {
        t.replacen("max_body_bytes = 1048576", "max_body_bytes = 1000", 1)
    })
    .await
    else {
        return;
    };
    // Declared, and not sent at all.
    let mut s = connect(&app).await;
    s.write_all(webhook_head(1001).as_bytes()).await.unwrap();
    let (code, head) = read_status(&mut s, Duration::from_secs(5)).await;
    assert_eq!(code, 413, "{head}");

    // Chunked: two chunks of 800 bytes, all sent before the answer.
    let mut s = connect(&app).await;
    let chunk = format!("320\r\n{}\r\n", "x".repeat(800));
    let req = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: warrant\r\nX-GitHub-Event: issues\r\n\
         X-GitHub-Delivery: big\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (code, head) = read_status(&mut s, Duration::from_secs(5)).await;
    assert_eq!(code, 413, "{head}");
}

/// With `max_inflight_bodies` bodies being read, one more is answered 503
/// with `Retry-After` at once; when the slow senders go, intake resumes.
async fn bodies_read_at_once_are_bounded(backend: Backend) {
    let Some(app) = spawn_server(backend, "read_timeout = \"60s\"\nmax_inflight_bodies = 2").await
    else {
        return;
    };
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&app).await;
        s.write_all(webhook_head(1000).as_bytes()).await.unwrap();
        s.write_all(b"{").await.unwrap();
        slow.push(s);
    }
    let issue = Issue::new(8, t0());
    let body = payloads::github("opened", &issue, "dave-gh", None);
    // The slow senders' handlers start as their headers arrive.
    let mut refused = None;
    for _ in 0..100 {
        let started = Instant::now();
        let r = app.post_github("issues", "busy", &body).await;
        if r.status() == 503 {
            refused = Some((
                started.elapsed(),
                r.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string()),
                r.json::<serde_json::Value>().await.unwrap(),
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (took, retry_after, answer) = refused.expect("a third body is refused");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(answer["error"], "busy");

    drop(slow);
    let mut accepted = false;
    for _ in 0..100 {
        let r = app.post_github("issues", "busy", &body).await;
        if r.status() == 200 {
            accepted = true;
            break;
        }
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "intake resumes once the slow senders are gone");
}

/// An `http` provider whose URL holds credentials and a token fails; the
/// failure is in the trail and on the grant, naming the endpoint without
/// either.
async fn provider_errors_hold_no_credentials(backend: Backend) {
    // A port this test holds for its whole run, so no other test's server
    // can take it: every connection is closed unanswered, so each call
    // fails with an error that names the URL.
    let refuser = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = refuser.local_addr().unwrap().port();
    let _refusing = tokio::spawn(async move {
        while let Ok((stream, _)) = refuser.accept().await {
            drop(stream);
        }
    });
    let extra = format!(
        r#"
[providers.leaky]
kind = "http"
url = "http://user:s3cr3t@127.0.0.1:{port}/x?token=zq-abc-tok"
secret_env = "HOOKS"
timeout = "2s"

[[policies]]
name = "leaky"
resources = ["leaky/*"]
sources = ["github"]
subjects = ["*"]
approvers = ["alice"]
max_duration = "4h"
default_duration = "1h"
"#
    );
    let app = app!(backend, &extra);
    let mut issue = Issue::new(51, t0());
    issue.body = payloads::form("leaky/orders", "1h", None);
    let r = app
        .post_github(
            "issues",
            "open-51",
            &payloads::github("opened", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    issue.labels = vec!["access-approved"];
    issue.updated_at = t0() + chrono::Duration::seconds(1);
    let r = app
        .post_github(
            "issues",
            "label-51",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Every attempt fails (connection refused) until the grant gives up.
    for _ in 0..6 {
        app.run_jobs().await;
        app.advance(chrono::Duration::seconds(20));
    }
    let grants = app.grants_of("github:acme/access-requests#51").await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    let id = grants[0]["id"].as_str().unwrap().to_string();
    let (status, grant) = app.get_json(&format!("/v1/grants/{id}"), ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let (status, audit) = app.get_json("/v1/audit?limit=1000", ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let export = app
        .client
        .get(format!("{}/v1/audit/export", app.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed: Vec<&serde_json::Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "grant.apply_failed")
        .collect();
    assert!(!failed.is_empty(), "{audit}");
    let error = failed[0]["data"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("127.0.0.1"),
        "the endpoint is named: {error}"
    );
    for text in [grant.to_string(), audit.to_string(), export] {
        for secret in ["s3cr3t", "zq-abc-tok", "user:"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

backend_tests!(
    metric_labels_are_a_fixed_set,
    scrapes_do_not_query_the_database,
    body_that_never_arrives_gets_408,
    body_over_the_limit_gets_413,
    bodies_read_at_once_are_bounded,
    provider_errors_hold_no_credentials,
);
