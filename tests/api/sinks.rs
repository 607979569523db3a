//! Audit sinks: every event reaches an `http` or `syslog` sink at least
//! once and in `seq` order, through failures, a receiver that is down for
//! a while, and a restart; on both backends, with real loopback receivers.
//! The sink passes run through `warrant::sinks::run_once`, and backoff is
//! waited out by moving the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Duration;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use warrant::clock::{Clock, ManualClock};

use crate::helpers::{t0, Backend, TestApp, ADMIN_TOKEN, HOOKS_SECRET};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};

backend_tests!(
    http_sink_delivers_every_event_in_order_after_500s,
    http_sink_that_is_down_gets_everything_once_it_is_up,
    syslog_receiver_gets_every_event_one_message_each,
    the_cursor_survives_a_restart,
    a_sink_held_by_another_replica_is_left_alone,
);

/// One POST the sink receiver got.
#[derive(Debug, Clone)]
struct Post {
    status: u16,
    webhook_id: String,
    signed: bool,
    body: Value,
}

/// A loopback receiver for an `http` sink: checks the Standard Webhooks
/// signature on the raw body, answers 500 to its first `fail_first` posts,
/// then 200 (401 to a bad signature), and records every post.
struct SinkReceiver {
    url: String,
    posts: Arc<Mutex<Vec<Post>>>,
    _handle: actix_web::dev::ServerHandle,
}

impl SinkReceiver {
    async fn start(listener: std::net::TcpListener, clock: ManualClock, fail_first: usize) -> Self {
        let port = listener.local_addr().unwrap().port();
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let p = posts.clone();
        let server = actix_web::HttpServer::new(move || {
            let (p, seen, clock) = (p.clone(), seen.clone(), clock.clone());
            actix_web::App::new().default_service(actix_web::web::to(
                move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                    let (p, seen, clock) = (p.clone(), seen.clone(), clock.clone());
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let key = warrant::crypto::signature::whsec_key(HOOKS_SECRET).unwrap();
                        let signed = warrant::crypto::signature::verify_standard(
                            &key,
                            header("webhook-id").as_deref(),
                            header("webhook-timestamp").as_deref(),
                            header("webhook-signature").as_deref(),
                            &body,
                            clock.now(),
                            Duration::seconds(300),
                        )
                        .is_ok();
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        let status = if !signed {
                            401
                        } else if n < fail_first {
                            500
                        } else {
                            200
                        };
                        p.lock().unwrap().push(Post {
                            status,
                            webhook_id: header("webhook-id").unwrap_or_default(),
                            signed,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        });
                        actix_web::HttpResponse::build(
                            actix_web::http::StatusCode::from_u16(status).unwrap(),
                        )
                        .finish()
                    }
                },
            ))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        SinkReceiver {
            url: format!("http://127.0.0.1:{port}/audit"),
            posts,
            _handle: handle,
        }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }
}

/// A loopback port with nothing listening on it (for now).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn http_sink(url: &str) -> String {
    format!(
        r#"
[[audit.sinks]]
name = "siem"
kind = "http"
url = "{url}"
secret_env = "HOOKS"
batch_size = 3
timeout = "2s"
"#
    )
}

fn syslog_sink(address: &str) -> String {
    format!(
        r#"
[[audit.sinks]]
name = "syslog"
kind = "syslog"
address = "{address}"
batch_size = 4
timeout = "5s"
"#
    )
}

/// Opens issues `from..to`: a few audit events each.
async fn open_issues(app: &TestApp, from: u64, to: u64) {
    for n in from..to {
        let issue = Issue::new(n, t0());
        let resp = app
            .post_github(
                "issues",
                &format!("open-{n}"),
                &payloads::github("opened", &issue, "dave-gh", None),
            )
            .await;
        assert_eq!(resp.status(), 200);
    }
}

/// Every event as `GET /v1/audit` shows it, in order.
async fn all_events(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get_json("/v1/audit?limit=10000", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap()
}

async fn run_sinks(app: &TestApp) -> warrant::sinks::Ran {
    warrant::sinks::run_once(&app.ctx).await.expect("sinks run")
}

/// What the accepted posts delivered, each event once in `seq` order,
/// after checking that every post was signed, that events come in order
/// within each post, and that an event received twice came again under
/// the same batch id.
fn delivered(posts: &[Post]) -> Vec<Value> {
    let mut by_seq: HashMap<i64, String> = HashMap::new();
    let mut out: Vec<Value> = Vec::new();
    for post in posts {
        assert!(post.signed, "unsigned post: {post:?}");
        assert_eq!(post.body["batch"], post.webhook_id.as_str(), "{post:?}");
        if post.status != 200 {
            continue;
        }
        let events = post.body["events"].as_array().unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        for e in events {
            let seq = e["seq"].as_i64().unwrap();
            match by_seq.get(&seq) {
                Some(batch) => {
                    assert_eq!(batch, &post.webhook_id, "seq {seq} again in another batch")
                }
                None => {
                    if let Some(last) = out.last() {
                        assert!(
                            last["seq"].as_i64().unwrap() < seq,
                            "seq {seq} out of order"
                        );
                    }
                    by_seq.insert(seq, post.webhook_id.clone());
                    out.push(e.clone());
                }
            }
        }
    }
    out
}

/// A metric's value in Prometheus text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn http_sink_delivers_every_event_in_order_after_500s(backend: Backend) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = app!(
        backend,
        &http_sink(&format!("http://127.0.0.1:{port}/audit"))
    );
    let receiver = SinkReceiver::start(listener, app.clock.clone(), 3).await;
    open_issues(&app, 1, 4).await;
    let events = all_events(&app).await;
    assert!(events.len() > 3, "{}", events.len());

    // The first post fails; the next waits out 1 s, then 2 s, then 4 s.
    let ran = run_sinks(&app).await;
    assert_eq!((ran.delivered, ran.failed), (0, 1));
    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "warrant_audit_sink_lag_events{sink=\"siem\"}"),
        Some(events.len() as f64),
        "{text}"
    );
    for wait in [1, 2, 4] {
        assert_eq!(run_sinks(&app).await, warrant::sinks::Ran::default());
        app.advance(Duration::seconds(wait) - Duration::milliseconds(1));
        assert_eq!(run_sinks(&app).await, warrant::sinks::Ran::default());
        app.advance(Duration::milliseconds(1));
        let ran = run_sinks(&app).await;
        if wait < 4 {
            assert_eq!((ran.delivered, ran.failed), (0, 1), "after {wait}s");
        } else {
            assert_eq!(ran.failed, 0, "after {wait}s");
            assert_eq!(ran.delivered, events.len());
        }
    }
    let posts = receiver.posts();
    let statuses: Vec<u16> = posts.iter().map(|p| p.status).collect();
    assert_eq!(&statuses[..4], &[500, 500, 500, 200], "{statuses:?}");
    // The failed batch came again as it was, under its id.
    assert!(posts[..4]
        .iter()
        .all(|p| p.webhook_id == posts[0].webhook_id));
    assert_eq!(posts[0].body, posts[3].body);
    assert_eq!(delivered(&posts), events);

    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "warrant_audit_sink_failures_total{sink=\"siem\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "warrant_audit_sink_lag_events{sink=\"siem\"}"),
        Some(0.0)
    );
    // Nothing new: nothing sent.
    assert_eq!(run_sinks(&app).await, warrant::sinks::Ran::default());
    assert_eq!(receiver.posts().len(), posts.len());
}

async fn http_sink_that_is_down_gets_everything_once_it_is_up(backend: Backend) {
    let port = closed_port();
    let app = app!(
        backend,
        &http_sink(&format!("http://127.0.0.1:{port}/audit"))
    );
    open_issues(&app, 1, 3).await;
    let mut failures = 0;
    for round in 0..4 {
        let ran = run_sinks(&app).await;
        assert_eq!(ran.delivered, 0, "round {round}");
        failures += ran.failed;
        open_issues(&app, 10 + round, 11 + round).await;
        app.advance(Duration::seconds(60));
    }
    assert_eq!(failures, 4);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let receiver = SinkReceiver::start(listener, app.clock.clone(), 0).await;
    let ran = run_sinks(&app).await;
    assert_eq!(ran.failed, 0);
    let events = all_events(&app).await;
    assert_eq!(ran.delivered, events.len());
    let posts = receiver.posts();
    assert!(posts.iter().all(|p| p.status == 200));
    assert_eq!(delivered(&posts), events);
    // Each event came once: nothing had reached the receiver before.
    let sent: usize = posts
        .iter()
        .map(|p| p.body["events"].as_array().unwrap().len())
        .sum();
    assert_eq!(sent, events.len());
}

/// One RFC 5424 message as the syslog receiver parsed it.
#[derive(Debug, Clone)]
struct Message {
    pri: String,
    version: String,
    timestamp: String,
    hostname: String,
    app_name: String,
    procid: String,
    msgid: String,
    structured_data: String,
    event: Value,
}

/// Splits a syslog message into its header fields and MSG (RFC 5424 §6).
fn parse_5424(msg: &[u8]) -> Message {
    let mut fields = Vec::new();
    let mut rest = msg;
    for _ in 0..7 {
        let sp = rest
            .iter()
            .position(|b| *b == b' ')
            .expect("a header field");
        fields.push(String::from_utf8(rest[..sp].to_vec()).unwrap());
        rest = &rest[sp + 1..];
    }
    let (pri_version, ts, host, app, procid, msgid, sd) = (
        &fields[0], &fields[1], &fields[2], &fields[3], &fields[4], &fields[5], &fields[6],
    );
    let close = pri_version.find('>').unwrap();
    assert!(pri_version.starts_with('<'));
    let body = rest
        .strip_prefix(b"\xEF\xBB\xBF")
        .expect("a UTF-8 MSG starts with the BOM");
    Message {
        pri: pri_version[1..close].to_string(),
        version: pri_version[close + 1..].to_string(),
        timestamp: ts.clone(),
        hostname: host.clone(),
        app_name: app.clone(),
        procid: procid.clone(),
        msgid: msgid.clone(),
        structured_data: sd.clone(),
        event: serde_json::from_slice(body).expect("MSG is the event's JSON"),
    }
}

/// Splits a stream into octet-counted frames (RFC 6587 §3.4.1).
fn frames(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let sp = stream.iter().position(|b| *b == b' ').expect("MSG-LEN SP");
        let len: usize = std::str::from_utf8(&stream[..sp]).unwrap().parse().unwrap();
        assert!(
            !stream.starts_with(b"0"),
            "MSG-LEN starts with a nonzero digit"
        );
        out.push(stream[sp + 1..sp + 1 + len].to_vec());
        stream = &stream[sp + 1 + len..];
    }
    out
}

/// A syslog receiver on loopback TCP: reads each connection to its end,
/// records its messages, then closes it.
async fn syslog_receiver() -> (String, Arc<Mutex<Vec<Message>>>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let messages: Arc<Mutex<Vec<Message>>> = Arc::default();
    let connections = Arc::new(AtomicUsize::new(0));
    let (m, n) = (messages.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            let mut raw = Vec::new();
            socket.read_to_end(&mut raw).await.unwrap();
            let parsed: Vec<Message> = frames(&raw).iter().map(|f| parse_5424(f)).collect();
            m.lock().unwrap().extend(parsed);
            drop(socket);
        }
    });
    (address, messages, connections)
}

async fn syslog_receiver_gets_every_event_one_message_each(backend: Backend) {
    let (address, messages, connections) = syslog_receiver().await;
    let app = app!(backend, &syslog_sink(&address));
    open_issues(&app, 1, 4).await;
    let ran = run_sinks(&app).await;
    let events = all_events(&app).await;
    assert_eq!((ran.delivered, ran.failed), (events.len(), 0));
    // The sender waits for the receiver to close, which it does only once
    // it has recorded the connection's messages.
    let got = messages.lock().unwrap().clone();
    assert_eq!(got.len(), events.len());
    assert_eq!(
        connections.load(Ordering::SeqCst),
        events.len().div_ceil(4),
        "a connection per batch of 4"
    );
    for (m, e) in got.iter().zip(&events) {
        assert_eq!(m.event, *e);
        assert_eq!(m.pri, "110");
        assert_eq!(m.version, "1");
        assert_eq!(m.timestamp, e["at"].as_str().unwrap());
        assert_eq!(m.hostname, app.ctx.instance);
        assert_eq!(m.app_name, "warrant");
        assert!(m.procid.chars().all(|c| c.is_ascii_digit()), "{m:?}");
        assert_eq!(m.msgid, e["type"].as_str().unwrap());
        assert_eq!(m.structured_data, "-");
    }

    // Events appended later follow, and the earlier ones do not come again.
    open_issues(&app, 4, 5).await;
    run_sinks(&app).await;
    let all = all_events(&app).await;
    let got: Vec<Value> = messages
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.event.clone())
        .collect();
    assert_eq!(got, all);
}

async fn the_cursor_survives_a_restart(backend: Backend) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = http_sink(&format!("http://127.0.0.1:{port}/audit"));
    let first = app!(backend, &sink);
    let receiver = SinkReceiver::start(listener, first.clock.clone(), 0).await;
    open_issues(&first, 1, 3).await;
    run_sinks(&first).await;
    let before = all_events(&first).await;
    assert_eq!(delivered(&receiver.posts()), before);
    let posts_before = receiver.posts().len();

    // Another process on the same database: no memory of the first, only
    // the cursor it left.
    let second = first.restart_with(|t| format!("{t}\n{sink}")).await;
    open_issues(&second, 3, 5).await;
    let ran = run_sinks(&second).await;
    let after = all_events(&second).await;
    assert!(after.len() > before.len());
    assert_eq!(ran.delivered, after.len() - before.len());
    let posts = receiver.posts();
    let resumed = delivered(&posts[posts_before..]);
    assert_eq!(resumed, after[before.len()..].to_vec());
    assert_eq!(delivered(&posts), after);
}

async fn a_sink_held_by_another_replica_is_left_alone(backend: Backend) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = app!(
        backend,
        &http_sink(&format!("http://127.0.0.1:{port}/audit"))
    );
    let receiver = SinkReceiver::start(listener, app.clock.clone(), 0).await;
    open_issues(&app, 1, 3).await;
    let db = app.ctx.db.clone();
    let held = tokio::task::spawn_blocking(move || db.try_sink_lock("siem"))
        .await
        .unwrap()
        .unwrap()
        .expect("the lock is free");
    if backend == Backend::Postgres {
        // The lock is another session's: this process waits its turn.
        let pass = warrant::sinks::deliver_once(&app.ctx, &app.ctx.config.audit.sinks[0])
            .await
            .unwrap();
        assert_eq!(pass, warrant::sinks::Pass::Busy);
        assert!(receiver.posts().is_empty());
    }
    tokio::task::spawn_blocking(move || drop(held))
        .await
        .unwrap();
    run_sinks(&app).await;
    assert_eq!(delivered(&receiver.posts()), all_events(&app).await);
}
