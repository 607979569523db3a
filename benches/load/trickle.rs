//! Slow senders against real ones: many sockets each trickle a webhook body
//! one byte at a time (headers with a plausible `Content-Length` and
//! signature, then a byte a second), reconnecting whenever the server cuts
//! them off, while signed webhooks arrive at a fixed rate. What matters is
//! that the real ones stay accepted and fast.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the slow senders saw, counted.
#[derive(Default)]
pub struct Trickle {
    pub open: AtomicI64,
    pub timed_out: AtomicU64,
    pub busy: AtomicU64,
    pub other: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bytes: AtomicU64,
    stop: AtomicBool,
}

impl Trickle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn head(addr: SocketAddr, n: usize, round: u64) -> String {
    format!(
        "POST /webhooks/github HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-github-event: issues\r\nx-github-delivery: trickle-{n}-{round}\r\n\
         x-hub-signature-256: sha256={}\r\ncontent-length: 8192\r\n\r\n",
        "0".repeat(64)
    )
}

/// Starts `sockets` slow senders, their starts spread over `ramp`.
pub fn start(
    addr: SocketAddr,
    sockets: usize,
    every: Duration,
    ramp: Duration,
) -> (Arc<Trickle>, Vec<tokio::task::JoinHandle<()>>) {
    let t = Arc::new(Trickle::default());
    let tasks = (0..sockets)
        .map(|n| {
            let t = t.clone();
            let delay = ramp.mul_f64(n as f64 / sockets.max(1) as f64);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut round = 0u64;
                while !t.stopped() {
                    round += 1;
                    one(&t, addr, n, round, every).await;
                }
            })
        })
        .collect();
    (t, tasks)
}

/// One connection: the head, then a byte every `every` until the server
/// answers or closes, or the run stops.
async fn one(t: &Trickle, addr: SocketAddr, n: usize, round: u64, every: Duration) {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(_) => {
            t.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
    };
    let _ = s.set_nodelay(true);
    t.open.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = s.split();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    let mut tick = tokio::time::interval(every);
    let mut written_head = false;
    let outcome = loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => break answer,
                Ok(k) => {
                    answer.extend_from_slice(&buf[..k]);
                    if answer.windows(2).any(|w| w == b"\r\n") {
                        break answer;
                    }
                }
            },
            _ = tick.tick() => {
                if t.stopped() {
                    break Vec::new();
                }
                let sent = if written_head {
                    wr.write_all(b" ").await
                } else {
                    written_head = true;
                    wr.write_all(head(addr, n, round).as_bytes()).await
                };
                if sent.is_err() {
                    break answer;
                }
                t.bytes.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    t.open.fetch_sub(1, Ordering::Relaxed);
    let status = String::from_utf8_lossy(&outcome)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    match status.as_str() {
        "408" => t.timed_out.fetch_add(1, Ordering::Relaxed),
        "503" => t.busy.fetch_add(1, Ordering::Relaxed),
        "" if t.stopped() => 0,
        _ => t.other.fetch_add(1, Ordering::Relaxed),
    };
}

/// Raises this process's open-file limit (its soft limit, up to the hard
/// one) so that `want` sockets fit; the server, a child, inherits it.
/// Answers the soft limit in force.
// `rlim_t` is not `u64` on every platform.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if (lim.rlim_cur as u64) < want {
            let mut raised = lim;
            raised.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur as u64
}
