//! Signed-webhook load against the running server: closed-loop saturation
//! (many clients, each walking its own tickets through their life) and an
//! open-loop fixed offered rate (latency measured from the scheduled send
//! time, so a stalled server cannot hide its queue), plus approval→grant.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Mutex};

use crate::http::{now_us, Client, Receiver};
use crate::payloads::{Corpus, Ticket, APPROVE_STEP, STEPS};

pub struct Load {
    pub addr: SocketAddr,
    pub corpus: Corpus,
    seq: AtomicU64,
}

impl Load {
    pub fn new(addr: SocketAddr) -> Load {
        Load {
            addr,
            corpus: Corpus::new(),
            seq: AtomicU64::new(0),
        }
    }
}

/// What one load phase saw.
#[derive(Default)]
pub struct Outcome {
    /// Latency of every answered request, ms.
    pub latency_ms: Vec<f64>,
    pub accepted: u64,
    /// Anything that was not a 200 `accepted`: status or error, counted.
    pub other: BTreeMap<String, u64>,
    /// `(source, delivery id)` of every delivery acknowledged as accepted.
    pub acked: Vec<(String, String)>,
    /// Ticket key and send time (µs) of every accepted approval.
    pub approvals: Vec<(String, i64)>,
    pub body_bytes: Vec<usize>,
    pub elapsed: Duration,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        self.latency_ms.extend(o.latency_ms);
        self.accepted += o.accepted;
        for (k, v) in o.other {
            *self.other.entry(k).or_default() += v;
        }
        self.acked.extend(o.acked);
        self.approvals.extend(o.approvals);
        self.body_bytes.extend(o.body_bytes);
    }

    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn errors(&self) -> String {
        if self.other.is_empty() {
            "none".into()
        } else {
            self.other
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// Sends one step of one ticket; `started` is when latency counts from.
async fn send(
    load: &Load,
    client: &mut Client,
    t: &Ticket,
    step: u64,
    started: Option<Instant>,
    out: &mut Outcome,
) {
    let signed = t.signed(step, &load.corpus, load.seq.fetch_add(1, Ordering::Relaxed));
    let req = signed.request(load.addr);
    out.body_bytes.push(signed.body.len());
    let sent_us = now_us();
    let start = started.unwrap_or_else(Instant::now);
    match client.send(&req).await {
        Ok(r) => {
            out.latency_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let status = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string));
            if r.status == 200 && status.as_deref() == Some("accepted") {
                out.accepted += 1;
                out.acked
                    .push((signed.src.name().to_string(), signed.delivery.clone()));
                if step == APPROVE_STEP {
                    out.approvals.push((t.key(), sent_us));
                }
            } else {
                let what = format!("{} {}", r.status, status.unwrap_or_default());
                *out.other.entry(what.trim().to_string()).or_default() += 1;
            }
        }
        Err(e) => {
            *out.other.entry(format!("io: {}", e.kind())).or_default() += 1;
        }
    }
}

/// `clients` closed-loop senders for `dur`; client `c` walks tickets
/// `base + c`, `base + c + clients`, … through all their steps.
pub async fn saturate(
    load: Arc<Load>,
    clients: usize,
    dur: Duration,
    base: u64,
    epoch: DateTime<Utc>,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..clients as u64)
        .map(|c| {
            let load = load.clone();
            tokio::spawn(async move {
                let mut out = Outcome::default();
                let mut client = Client::new(load.addr);
                let mut n = base + c;
                'tickets: loop {
                    let t = Ticket::new(n, epoch);
                    for step in 0..STEPS {
                        if Instant::now() >= deadline {
                            break 'tickets;
                        }
                        send(&load, &mut client, &t, step, None, &mut out).await;
                    }
                    n += clients as u64;
                }
                out
            })
        })
        .collect();
    let mut all = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            all.merge(o);
        }
    }
    all.elapsed = start.elapsed();
    all
}

/// Request `i` of an open-loop run: `window` tickets in flight at once,
/// each stepping once every `window` requests, so a ticket's deliveries
/// leave in order and well apart.
fn ticket_step(i: u64, window: u64, base: u64) -> (u64, u64) {
    let round = i / window;
    let slot = i % window;
    (base + (round / STEPS) * window + slot, round % STEPS)
}

/// `rate` requests per second for `dur`, whatever the answers; latency
/// from each request's scheduled time.
pub async fn fixed_rate(
    load: Arc<Load>,
    rate: f64,
    dur: Duration,
    workers: usize,
    base: u64,
    epoch: DateTime<Utc>,
) -> Outcome {
    let total = (rate * dur.as_secs_f64()).round() as u64;
    // A second between two deliveries of one ticket, so a slow answer
    // does not let the next step overtake the previous one.
    let window = (rate.round() as u64).max(1);
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let load = load.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut out = Outcome::default();
                let mut client = Client::new(load.addr);
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((i, scheduled)) = next else { break };
                    let (n, step) = ticket_step(i, window, base);
                    let t = Ticket::new(n, epoch);
                    send(&load, &mut client, &t, step, Some(scheduled), &mut out).await;
                }
                out
            })
        })
        .collect();
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    for i in 0..total {
        let at = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        if tx.send((i, at)).is_err() {
            break;
        }
    }
    drop(tx);
    let mut all = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            all.merge(o);
        }
    }
    all.elapsed = start.elapsed();
    all
}

/// Waits until the receiver has seen a grant call for every approval, or
/// `timeout`; returns approval→grant in ms and how many never came.
pub async fn grants_arrived(
    receiver: &Receiver,
    from: usize,
    approvals: &[(String, i64)],
    timeout: Duration,
) -> (Vec<f64>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut first: HashMap<String, i64> = HashMap::new();
        for c in receiver.since(from) {
            if c.action == "grant" {
                first.entry(c.ticket).or_insert(c.at_us);
            }
        }
        let lat: Vec<f64> = approvals
            .iter()
            .filter_map(|(k, sent)| first.get(k).map(|at| (at - sent) as f64 / 1e3))
            .collect();
        let missing = approvals.len() - lat.len();
        if missing == 0 || Instant::now() >= deadline {
            return (lat, missing);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Approvals one at a time on an otherwise idle server: each ticket gets
/// steps 0–2, then the approval, whose grant call is awaited before its
/// last step and the next ticket.
pub async fn idle_approvals(
    load: Arc<Load>,
    receiver: &Receiver,
    count: u64,
    base: u64,
    epoch: DateTime<Utc>,
) -> (Vec<f64>, Outcome) {
    let mut out = Outcome::default();
    let mut lat = Vec::new();
    let mut client = Client::new(load.addr);
    for n in base..base + count {
        let t = Ticket::new(n, epoch);
        for step in 0..APPROVE_STEP {
            send(&load, &mut client, &t, step, None, &mut out).await;
        }
        let mark = receiver.len();
        let before = out.approvals.len();
        send(&load, &mut client, &t, APPROVE_STEP, None, &mut out).await;
        if out.approvals.len() > before {
            let (l, _) = grants_arrived(
                receiver,
                mark,
                &out.approvals[before..],
                Duration::from_secs(10),
            )
            .await;
            lat.extend(l);
        }
        for step in APPROVE_STEP + 1..STEPS {
            send(&load, &mut client, &t, step, None, &mut out).await;
        }
    }
    (lat, out)
}

pub fn spread(bytes: &[usize]) -> String {
    if bytes.is_empty() {
        return "-".into();
    }
    let min = bytes.iter().min().copied().unwrap_or(0);
    let max = bytes.iter().max().copied().unwrap_or(0);
    let avg = bytes.iter().sum::<usize>() / bytes.len();
    format!(
        "{:.1}–{:.1} KB (avg {:.1})",
        min as f64 / 1024.0,
        max as f64 / 1024.0,
        avg as f64 / 1024.0
    )
}
