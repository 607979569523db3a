//! The runner: keeps up to `jobs.concurrency` jobs running, each under a
//! renewed lease; a job that panics fails alone and is retried; beside it
//! the sweeper gives any grant that needs work but has no job one.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::claim::{claim_due, Claimed};
use crate::audit::NewEvent;
use crate::context::Context;
use crate::db::jobs::next_due;
use crate::db::StoreError;
use crate::metrics::JobLabels;
use crate::queue::{blocking, finish_in, retry_at, Finish, Lease};

/// Runs one claimed job and settles its row.
async fn run_one(ctx: &Arc<Context>, claimed: Claimed) {
    let Claimed { job, grant, asked } = claimed;
    let kind = job.kind.clone();
    let (lease, renewing) = Lease::keep(ctx, &job, asked);
    let ran = super::kinds::run(ctx, &job, grant, &lease).await;
    renewing.abort();
    let ran = match ran {
        // Whoever holds the job now settles it.
        Ok(_) if lease.lost() => Ok(Finish::Lost),
        ran => ran,
    };
    let outcome = match ran {
        Ok(Finish::Lost) => "lost",
        Ok(how) => {
            let ok = how.succeeded();
            let settled = match how {
                Finish::Settled => Ok(()),
                how => blocking(ctx, move |db| db.write(|c| finish_in(c, &job, &how))).await,
            };
            match settled {
                Ok(()) if ok => "ok",
                Ok(()) => "retry",
                Err(_) => "error",
            }
        }
        Err(e) => {
            // The lease runs out and the job is taken up again.
            tracing::warn!(error = %e, job = job.id, "job could not run");
            "error"
        }
    };
    ctx.metrics
        .jobs
        .get_or_create(&JobLabels {
            kind,
            outcome: outcome.into(),
        })
        .inc();
}

/// Runs one claimed job; a panic while it runs fails that job alone: it is
/// audited (`job.panicked`) and retried after a backoff like a failed
/// provider call, and the runner goes on with the others.
async fn run_guarded(ctx: &Arc<Context>, claimed: Claimed) {
    use futures_util::FutureExt;
    let job = claimed.job.clone();
    let grant = claimed
        .grant
        .as_ref()
        .map(|g| (g.ticket.clone(), g.id.clone()));
    let Err(payload) = std::panic::AssertUnwindSafe(run_one(ctx, claimed))
        .catch_unwind()
        .await
    else {
        return;
    };
    let why = crate::supervisor::panic_text(payload.as_ref());
    tracing::error!(job = job.id, kind = %job.kind, panic = %why, "a job panicked; it will be retried");
    ctx.metrics
        .jobs
        .get_or_create(&JobLabels {
            kind: job.kind.clone(),
            outcome: "panic".into(),
        })
        .inc();
    let now = ctx.clock.now();
    let retry = Finish::At {
        run_at: retry_at(ctx, now, job.attempts),
        attempts: job.attempts.saturating_add(1),
        error: Some(format!("panicked: {why}")),
    };
    let lane = grant
        .as_ref()
        .map_or_else(|| format!("job:{}", job.id), |(t, _)| t.clone());
    let data = json!({ "job": job.id, "kind": job.kind, "attempt": job.attempts.saturating_add(1), "error": why });
    let settled = ctx
        .commit
        .submit(&lane, now, move |conn, events| {
            let mut e = NewEvent::new("job.panicked", "warrant", data.clone());
            if let Some((ticket, id)) = &grant {
                e = e.ticket(ticket).grant(id);
            }
            events.push(e);
            finish_in(conn, &job, &retry)
        })
        .await;
    if let Err(e) = settled {
        // The lease runs out and the job is taken up again.
        tracing::warn!(error = %e, "a panicked job could not be rescheduled");
    }
}

/// Claims one batch of due jobs and runs them all; returns how many ran.
pub async fn run_due(ctx: &Arc<Context>) -> Result<usize, StoreError> {
    let claimed = claim_due(ctx, ctx.config.jobs.concurrency).await?;
    let n = claimed.len();
    futures_util::future::join_all(claimed.into_iter().map(|c| run_guarded(ctx, c))).await;
    Ok(n)
}

/// Runs every job that is due now, until none is left (tests, `warrant reconcile`).
pub async fn run_pending(ctx: &Arc<Context>) -> Result<usize, StoreError> {
    let mut total = 0;
    for _ in 0..10_000 {
        let n = run_due(ctx).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total)
}

pub struct Runner;

/// How long a looked-up next due time is trusted.
const RECHECK: StdDuration = StdDuration::from_millis(20);

/// The least time between two claims. Under load every approval and every
/// finished job wakes the runner; claiming on each wake cost a transaction
/// (and on PostgreSQL a WAL flush) per job. Waiting out the gap after a
/// claim that found work gathers what fell due meanwhile into one claim;
/// an idle runner claims at once.
const CLAIM_GAP: StdDuration = StdDuration::from_millis(10);

pub struct RunnerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunnerHandle {
    /// Stops claiming new jobs and waits for the ones in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Runner {
    /// Starts the job runner and the sweeper, each under a supervisor that
    /// restarts it if it ever panics or ends (see `supervisor`).
    pub fn spawn(ctx: Arc<Context>) -> RunnerHandle {
        let (stop, stopped) = watch::channel(false);
        let runner = {
            let (ctx, stopped) = (ctx.clone(), stopped.clone());
            crate::supervisor::spawn(
                &ctx.clone().health,
                "job-runner",
                stopped.clone(),
                move || run_loop(ctx.clone(), stopped.clone()),
            )
        };
        let sweeper = {
            let (ctx, stopped) = (ctx.clone(), stopped.clone());
            crate::supervisor::spawn(&ctx.clone().health, "sweeper", stopped.clone(), move || {
                sweep_loop(ctx.clone(), stopped.clone())
            })
        };
        RunnerHandle {
            stop,
            tasks: vec![runner, sweeper],
        }
    }
}

/// The safety net's loop: every `jobs.sweep_interval`, any grant that needs
/// work but has no job gets one. Beside the runner, so due jobs never wait
/// for it.
async fn sweep_loop(ctx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    let every = ctx.config.jobs.sweep_interval.std();
    loop {
        if *stopped.borrow() {
            break;
        }
        let now = ctx.clock.now();
        if let Err(e) = blocking(&ctx, move |db| crate::grants::job::sweep(db, now)).await {
            tracing::warn!(error = %e, "sweep failed");
        }
        tokio::select! {
            _ = stopped.changed() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Keeps up to `jobs.concurrency` jobs running: as soon as one ends its
/// slot is filled from the due jobs, so one slow provider call never holds
/// back the rest.
async fn run_loop(ctx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    let concurrency = ctx.config.jobs.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let freed = Arc::new(tokio::sync::Notify::new());
    let mut next_known: Option<(Instant, Option<DateTime<Utc>>)> = None;
    let mut last_claim: Option<Instant> = None;
    loop {
        if *stopped.borrow() {
            break;
        }
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                _ = stopped.changed() => {}
                _ = freed.notified() => {}
            }
            continue;
        }
        if let Some(gap) = last_claim.and_then(|t| CLAIM_GAP.checked_sub(t.elapsed())) {
            tokio::select! {
                _ = stopped.changed() => {}
                _ = tokio::time::sleep(gap) => {}
            }
            continue;
        }
        let started = Instant::now();
        let wait = match claim_due(&ctx, free).await {
            Ok(claimed) if !claimed.is_empty() => {
                last_claim = Some(started);
                for claimed in claimed {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Cannot happen (only this loop takes slots);
                        // the lease would hand the job on anyway.
                        break;
                    };
                    let (st, freed) = (ctx.clone(), freed.clone());
                    tokio::spawn(async move {
                        run_guarded(&st, claimed).await;
                        drop(permit);
                        freed.notify_one();
                    });
                }
                continue;
            }
            Ok(_) => {
                let now = ctx.clock.now();
                // Under load the runner wakes hundreds of times a second;
                // the next due time is looked up at most every RECHECK, and
                // the sleep never runs past it. A remembered time already
                // past was the job just claimed: look again rather than spin.
                let fresh = next_known.filter(|(checked, next)| {
                    checked.elapsed() < RECHECK && next.is_none_or(|t| t > now)
                });
                let next = match fresh {
                    Some((_, next)) => Ok(next),
                    None => blocking(&ctx, next_due).await.inspect(|next| {
                        next_known = Some((Instant::now(), *next));
                    }),
                };
                let cap = if fresh.is_some() {
                    RECHECK
                } else {
                    StdDuration::from_secs(1)
                };
                match next {
                    Ok(Some(t)) => (t - now).to_std().unwrap_or(StdDuration::ZERO).min(cap),
                    Ok(None) | Err(_) => cap,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "job runner cannot reach the database");
                StdDuration::from_secs(1)
            }
        };
        tokio::select! {
            _ = stopped.changed() => {}
            _ = ctx.wake.notified() => {}
            // A job that ended may have left work due now.
            _ = freed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Jobs in flight finish before the runner reports stopped.
    let _ = slots.acquire_many(concurrency as u32).await;
}
