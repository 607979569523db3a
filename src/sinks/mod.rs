//! Audit sinks: every event of the chain shipped to each `[[audit.sinks]]`
//! entry at least once, in `seq` order. Each sink has a durable cursor
//! (`db::sinks`): a pass reads the committed events after it, delivers
//! them as one batch through the sink's kind (`Sink`: one file per kind,
//! `http` and `syslog`), and only then moves the cursor. One replica at a
//! time delivers to a sink (`db::sinks::SinkLock`); a failed delivery
//! backs off (1 s doubling to 60 s, kept in the cursor row, so replicas
//! and restarts share it) and is retried forever, with the same events
//! under the same batch id. `run_once` is one pass over every sink (tests
//! drive it); `spawn` starts one supervised loop per sink where jobs run,
//! so a sink that hangs holds up nothing else.

pub mod http;
pub mod syslog;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::Event;
use crate::config::{SinkConfig, SinkKind};
use crate::context::Context;
use crate::db::sinks::{self as store, SinkLock};
use crate::db::StoreError;
use crate::domain::{from_micros, to_micros};
use crate::metrics::SinkLabels;

/// The pause after the first failed delivery; it doubles with each
/// failure in a row, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::seconds(1);
const MAX_BACKOFF: Duration = Duration::seconds(60);

/// How often an idle sink's loop looks for new events (and a waiting one
/// at its clock). Events reach a sink within about this long.
const POLL: StdDuration = StdDuration::from_secs(1);

/// Events delivered together, under one id.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `batch_id(sink, first seq, last seq)`: a resend of the same events
    /// has the same id, the receiver's idempotency key.
    pub id: String,
    /// In `seq` order, each as `GET /v1/audit` shows it.
    pub events: Vec<Event>,
}

/// Why a delivery failed. The text is scrubbed (`crate::redact`) where it
/// is made, so it may be logged as it is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where events go: one implementation per `SinkKind`. A delivery is done
/// only once the receiver has everything in the batch; anything else is an
/// error, and the same batch comes again.
pub trait Sink: Send + Sync {
    fn deliver<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// The sink a configured entry describes.
fn build(cfg: &SinkConfig, ctx: &Context) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match cfg.kind {
        SinkKind::Http => Box::new(http::HttpSink::new(cfg, ctx)?),
        SinkKind::Syslog => Box::new(syslog::SyslogSink::new(cfg, ctx)?),
    })
}

/// The id of the batch of events `first..=last` for `sink`: hashed, so it
/// names no URL and holds no `.` (Standard Webhooks ids may not).
pub fn batch_id(sink: &str, first: i64, last: i64) -> String {
    let h = Sha256::digest(format!("{sink}-{first}-{last}").as_bytes());
    format!("batch_{}", hex::encode(&h[..16]))
}

/// A sink's id fit for logs and metric labels: without URL credentials or
/// query (the id defaults to the URL).
pub fn label(id: &str) -> String {
    crate::redact::redact(id, &[])
}

/// How long to wait after `attempts` failures in a row.
pub fn backoff(attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    (FIRST_BACKOFF * 2i32.pow(doublings)).min(MAX_BACKOFF)
}

/// What one pass over a sink did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// The sink has every committed event.
    Idle,
    /// It is backing off after a failure, until then.
    Waiting(DateTime<Utc>),
    /// Another replica is delivering to it.
    Busy,
    /// A batch arrived; `more` when events remain after it.
    Delivered { events: usize, more: bool },
    /// The delivery failed; the next attempt not before `retry_at`.
    Failed { retry_at: DateTime<Utc> },
}

/// What `run_once` did over every sink.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    /// Events delivered (resent ones counted again).
    pub delivered: usize,
    /// Failed deliveries.
    pub failed: usize,
}

/// Delivers to every configured sink, one after the other, until each has
/// every committed event, fails, waits out its backoff, or is another
/// replica's. The supervised loops run the same passes (`deliver_once`).
pub async fn run_once(ctx: &Arc<Context>) -> Result<Ran, StoreError> {
    let mut ran = Ran::default();
    for cfg in &ctx.config.audit.sinks {
        loop {
            match deliver_once(ctx, cfg).await? {
                Pass::Delivered { events, more } => {
                    ran.delivered += events;
                    if !more {
                        break;
                    }
                }
                Pass::Failed { .. } => {
                    ran.failed += 1;
                    break;
                }
                Pass::Idle | Pass::Waiting(_) | Pass::Busy => break,
            }
        }
    }
    Ok(ran)
}

/// Runs `f` on the pool off the async threads.
async fn blocking<T: Send + 'static>(
    ctx: &Context,
    f: impl FnOnce(&crate::db::Db) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = ctx.db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

/// Runs `f` with the lock off the async threads and hands the lock back
/// (`None` if `f` panicked: the lock was released as it unwound).
async fn with_lock<T: Send + 'static>(
    mut lock: SinkLock,
    f: impl FnOnce(&mut SinkLock) -> Result<T, StoreError> + Send + 'static,
) -> (Option<SinkLock>, Result<T, StoreError>) {
    match tokio::task::spawn_blocking(move || {
        let out = f(&mut lock);
        (lock, out)
    })
    .await
    {
        Ok((lock, out)) => (Some(lock), out),
        Err(e) => (None, Err(StoreError::Panicked(e.to_string()))),
    }
}

/// Releases the lock off the async threads (on PostgreSQL it runs a
/// statement).
async fn release(lock: Option<SinkLock>) {
    if let Some(lock) = lock {
        if tokio::task::spawn_blocking(move || drop(lock))
            .await
            .is_err()
        {
            tracing::warn!("releasing a sink lock panicked");
        }
    }
}

fn set_lag(ctx: &Context, labels: &SinkLabels, head: i64, cursor: i64) {
    ctx.metrics
        .sink_lag
        .get_or_create(labels)
        .set((head - cursor).max(0));
}

/// What a pass found under the lock.
enum Plan {
    /// Nothing to send now.
    Skip(Pass),
    /// Send these events, the last one at `last`; the head stood at `head`.
    Send {
        events: Vec<Event>,
        first: i64,
        last: i64,
        head: i64,
        attempts: i32,
    },
}

/// One pass over one sink: if it lacks committed events, is not backing
/// off and no other replica holds it, sends the batch after its cursor and
/// moves the cursor past it, or records the failure and its backoff.
pub async fn deliver_once(ctx: &Arc<Context>, cfg: &SinkConfig) -> Result<Pass, StoreError> {
    let id = cfg.id();
    let labels = SinkLabels { sink: label(&id) };
    let now = ctx.clock.now();
    // A look without the lock first: every replica reports the lag, and a
    // sink with nothing to do, or backing off, takes no lock.
    let look = id.clone();
    let (head, cursor) = blocking(ctx, move |db| {
        db.read(|c| Ok((store::head_seq(c)?, store::get(c, &look)?)))
    })
    .await?;
    set_lag(ctx, &labels, head, cursor.seq);
    if cursor.seq >= head {
        return Ok(Pass::Idle);
    }
    if to_micros(now) < cursor.retry_at {
        return Ok(Pass::Waiting(from_micros(cursor.retry_at)));
    }
    let key = id.clone();
    let Some(lock) = blocking(ctx, move |db| db.try_sink_lock(&key)).await? else {
        return Ok(Pass::Busy);
    };
    let (lock, pass) = locked_pass(ctx, cfg, id, &labels, lock, now).await;
    release(lock).await;
    pass
}

/// `deliver_once` once the lock is held; hands the lock back for release.
async fn locked_pass(
    ctx: &Arc<Context>,
    cfg: &SinkConfig,
    id: String,
    labels: &SinkLabels,
    lock: SinkLock,
    now: DateTime<Utc>,
) -> (Option<SinkLock>, Result<Pass, StoreError>) {
    let batch_size = cfg.batch_size.max(1) as i64;
    let sink = id.clone();
    // Read again under the lock: the replica that held it before may have
    // moved the cursor or failed meanwhile.
    let (lock, plan) = with_lock(lock, move |l| plan(l, &sink, batch_size, now)).await;
    let (lock, plan) = match (lock, plan) {
        (Some(lock), Ok(plan)) => (lock, plan),
        (lock, Err(e)) => return (lock, Err(e)),
        (None, Ok(_)) => return (None, Err(StoreError::Panicked("sink lock lost".into()))),
    };
    let (events, first, last, head, attempts) = match plan {
        Plan::Skip(pass) => return (Some(lock), Ok(pass)),
        Plan::Send {
            events,
            first,
            last,
            head,
            attempts,
        } => (events, first, last, head, attempts),
    };
    let batch = Batch {
        id: batch_id(&id, first, last),
        events,
    };
    let count = batch.events.len();
    let delivered = match build(cfg, ctx) {
        Ok(sink) => sink.deliver(&batch).await,
        Err(e) => Err(e),
    };
    let done = ctx.clock.now();
    match delivered {
        Ok(()) => {
            let sink = id.clone();
            let at = to_micros(done);
            let (lock, moved) = with_lock(lock, move |l| {
                l.write(|c| store::advance(c, &sink, last, at))
            })
            .await;
            if let Err(e) = moved {
                return (lock, Err(e));
            }
            set_lag(ctx, labels, head, last);
            tracing::debug!(sink = %labels.sink, batch = %batch.id, events = count, "audit sink delivered");
            (
                lock,
                Ok(Pass::Delivered {
                    events: count,
                    more: last < head,
                }),
            )
        }
        Err(e) => {
            ctx.metrics.sink_failures.get_or_create(labels).inc();
            let attempts = attempts.saturating_add(1);
            let wait = backoff(attempts);
            let retry_at = done + wait;
            tracing::warn!(
                sink = %labels.sink,
                batch = %batch.id,
                attempts,
                retry_in_s = wait.num_seconds(),
                error = %e,
                "audit sink delivery failed; it will be retried"
            );
            let sink = id.clone();
            let (at, until) = (to_micros(done), to_micros(retry_at));
            let (lock, recorded) = with_lock(lock, move |l| {
                l.write(|c| store::failed(c, &sink, attempts, until, at))
            })
            .await;
            (lock, recorded.map(|()| Pass::Failed { retry_at }))
        }
    }
}

/// Under the lock: what to send, if anything. The batch in flight (if a
/// delivery failed or its sender died) is sent again as it was; otherwise
/// the next `batch_size` committed events make the batch, recorded as in
/// flight before they are sent.
fn plan(
    lock: &mut SinkLock,
    sink: &str,
    batch_size: i64,
    now: DateTime<Utc>,
) -> Result<Plan, StoreError> {
    let (head, cursor, rows) = lock.read(|c| {
        let head = store::head_seq(c)?;
        let cursor = store::get(c, sink)?;
        if cursor.seq >= head || to_micros(now) < cursor.retry_at {
            return Ok((head, cursor, Vec::new()));
        }
        let rows = match cursor.batch_end {
            Some(end) if end > cursor.seq => store::committed_after(
                c,
                cursor.seq,
                end.min(head),
                batch_size.max(end - cursor.seq),
            )?,
            _ => store::committed_after(c, cursor.seq, head, batch_size)?,
        };
        Ok((head, cursor, rows))
    })?;
    if cursor.seq >= head {
        return Ok(Plan::Skip(Pass::Idle));
    }
    if to_micros(now) < cursor.retry_at {
        return Ok(Plan::Skip(Pass::Waiting(from_micros(cursor.retry_at))));
    }
    let (Some(first), Some(last)) = (rows.first().map(|r| r.seq), rows.last().map(|r| r.seq))
    else {
        // The head is past the cursor but no row is: rows were deleted.
        // Moving on would skip them; the lag stays up and verify says where.
        tracing::error!(
            sink = %label(sink),
            after = cursor.seq,
            head,
            "no audit events between a sink's cursor and the head; is the chain intact?"
        );
        return Ok(Plan::Skip(Pass::Idle));
    };
    if cursor.batch_end != Some(last) {
        let at = to_micros(now);
        let after = cursor.seq;
        if !lock.write(|c| store::begin_batch(c, sink, after, last, at))? {
            // The cursor moved under us (another process on the same
            // SQLite file): look again next pass.
            return Ok(Plan::Skip(Pass::Busy));
        }
    }
    Ok(Plan::Send {
        events: rows.into_iter().map(Event::from).collect(),
        first,
        last,
        head,
        attempts: cursor.attempts,
    })
}

/// One sink's loop: a pass, then another at once while events remain, else
/// after `POLL`, until `stopped`.
pub async fn run_forever(ctx: Arc<Context>, cfg: SinkConfig, mut stopped: watch::Receiver<bool>) {
    let name = label(&cfg.id());
    loop {
        if *stopped.borrow() {
            break;
        }
        let wait = match deliver_once(&ctx, &cfg).await {
            Ok(Pass::Delivered { more: true, .. }) => StdDuration::ZERO,
            Ok(_) => POLL,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "audit sink pass failed");
                POLL
            }
        };
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = stopped.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Starts one supervised loop per configured sink (parts `audit-sink
/// NAME`).
pub fn spawn(ctx: Arc<Context>, stopped: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    ctx.config
        .audit
        .sinks
        .iter()
        .map(|cfg| {
            let name = format!("audit-sink {}", label(&cfg.id()));
            let (ctx, cfg, stop) = (ctx.clone(), cfg.clone(), stopped.clone());
            crate::supervisor::spawn(&ctx.health.clone(), &name, stopped.clone(), move || {
                run_forever(ctx.clone(), cfg.clone(), stop.clone())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let secs: Vec<i64> = (1..=9).map(|a| backoff(a).num_seconds()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0).num_seconds(), 1);
        assert_eq!(backoff(i32::MAX).num_seconds(), 60);
    }

    #[test]
    fn batch_ids_are_stable_and_distinct() {
        let a = batch_id("siem", 1, 100);
        assert_eq!(a, batch_id("siem", 1, 100));
        assert_ne!(a, batch_id("siem", 1, 101));
        assert_ne!(a, batch_id("other", 1, 100));
        assert!(a.starts_with("batch_") && !a.contains('.') && a.len() == 38);
    }

    #[test]
    fn labels_hold_no_credentials() {
        assert_eq!(
            label("https://u:p@siem.example/in?token=x"),
            "https://[redacted]@siem.example/in?[redacted]"
        );
        assert_eq!(label("siem"), "siem");
    }
}
