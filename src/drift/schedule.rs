//! When drift checks run: every `[drift] interval` on the service's clock,
//! from a schedule kept in the database (`drift_checks`) so that replicas
//! share it, and under the check lock so that one replica at a time runs
//! a check. The loop is supervised like the sweeper.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{check, Report};
use crate::context::Context;
use crate::db::drift::{self as store, CheckLock};
use crate::db::StoreError;
use crate::domain::{from_micros, to_micros};
use crate::queue::blocking;

/// How soon to look again when the database cannot be reached or another
/// replica holds the lock (capped by the interval).
const RETRY: Duration = Duration::seconds(30);

/// What `run_if_due` did.
#[derive(Debug)]
pub enum Due {
    /// A check ran.
    Ran(Report),
    /// No check was due, or another replica was running one.
    Waiting,
}

/// Releases the check lock off the async threads (it runs a statement).
pub(super) async fn release(lock: CheckLock) {
    if tokio::task::spawn_blocking(move || drop(lock))
        .await
        .is_err()
    {
        tracing::warn!("releasing the drift check lock panicked");
    }
}

/// Runs a check if one is due on the clock (`[drift] interval` after the
/// last, by any replica) and no other replica is running one; answers
/// what it did and when to look again.
pub async fn run_if_due(ctx: &Arc<Context>) -> Result<(Due, DateTime<Utc>), StoreError> {
    let every = ctx.config.drift.interval.0;
    let now = ctx.clock.now();
    let next = |last: i64| from_micros(last) + every;
    let last = blocking(ctx, |db| db.read(store::last_check)).await?;
    if now < next(last) {
        return Ok((Due::Waiting, next(last)));
    }
    let Some(lock) = blocking(ctx, |db| db.try_drift_lock()).await? else {
        return Ok((Due::Waiting, now + RETRY.min(every)));
    };
    // Another replica may have finished a check between the read and the lock.
    let ran = async {
        let last = blocking(ctx, |db| db.read(store::last_check)).await?;
        if now < next(last) {
            return Ok((Due::Waiting, next(last)));
        }
        let report = check(ctx, None, now).await?;
        let at = to_micros(now);
        blocking(ctx, move |db| db.write(|c| store::set_last_check(c, at))).await?;
        Ok((Due::Ran(report), now + every))
    }
    .await;
    release(lock).await;
    ran
}

/// The loop: a check whenever one is due, until `stopped`.
pub async fn run_forever(ctx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    let every = ctx.config.drift.interval.0;
    loop {
        if *stopped.borrow() {
            break;
        }
        let next = match run_if_due(&ctx).await {
            Ok((Due::Ran(report), next)) => {
                tracing::info!(
                    providers = report.providers.len(),
                    drift = report.items.iter().filter(|i| i.outcome.is_drift()).count(),
                    errors = report.errors.len(),
                    "drift check done"
                );
                next
            }
            Ok((Due::Waiting, next)) => next,
            Err(e) => {
                tracing::warn!(error = %e, "drift check failed");
                ctx.clock.now() + RETRY.min(every)
            }
        };
        // The wait is read from the clock, and never longer than the
        // interval, so a clock that jumps is followed within one interval.
        let wait = (next - ctx.clock.now())
            .min(every)
            .to_std()
            .unwrap_or(StdDuration::ZERO)
            .max(StdDuration::from_millis(100));
        tokio::select! {
            _ = stopped.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Starts the loop under a supervisor (part `drift-checker`).
pub fn spawn(ctx: Arc<Context>, stopped: watch::Receiver<bool>) -> JoinHandle<()> {
    let health = ctx.health.clone();
    crate::supervisor::spawn(&health, "drift-checker", stopped.clone(), move || {
        run_forever(ctx.clone(), stopped.clone())
    })
}
