//! Settling a run's row and the backoff between attempts. The statements
//! themselves are `db::jobs`.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rand::Rng;

use crate::context::Context;
use crate::db::jobs::{self as rows, JobRow, Settle};
use crate::db::{Conn, Db, StoreError};
use crate::domain::to_micros;

/// How a job run ends.
#[derive(Debug)]
pub enum Finish {
    Done,
    /// The grant is final: the job goes, even if something rescheduled it
    /// while it ran (its own revocation did), so it is not claimed again
    /// only to be deleted.
    Gone,
    At {
        run_at: DateTime<Utc>,
        attempts: i32,
        error: Option<String>,
    },
    /// Already written, in the transaction of the run's last step.
    Settled,
    /// The job's lease passed on while it ran: whoever holds it now owns
    /// its row, so nothing more of this run is written.
    Lost,
}

impl Finish {
    pub fn succeeded(&self) -> bool {
        !matches!(self, Finish::At { error: Some(_), .. } | Finish::Lost)
    }

    /// What this ending writes to `job`'s row, if anything.
    pub fn settle(&self, job: &JobRow) -> Option<Settle> {
        let (id, version) = (job.id, job.version);
        match self {
            Finish::Settled | Finish::Lost => None,
            Finish::Done => Some(Settle::Delete { id, version }),
            Finish::Gone => Some(Settle::Drop { id }),
            Finish::At {
                run_at,
                attempts,
                error,
            } => Some(Settle::Reschedule {
                id,
                version,
                run_at: to_micros(*run_at),
                attempts: *attempts,
                error: error.clone(),
            }),
        }
    }
}

/// Settles the job's row inside the caller's transaction.
pub fn finish_in(conn: &mut Conn<'_>, job: &JobRow, how: &Finish) -> Result<(), StoreError> {
    match how.settle(job) {
        Some(s) => rows::settle(conn, &s),
        None => Ok(()),
    }
}

/// The wait before attempt `attempts + 1`: exponential, capped, jittered.
pub fn backoff(ctx: &Context, attempts: i32) -> Duration {
    let cfg = &ctx.config.jobs;
    let base = cfg.initial_backoff.0.num_milliseconds().max(1);
    let cap = cfg.max_backoff.0.num_milliseconds().max(base);
    let exp = base.saturating_mul(1i64 << attempts.clamp(0, 30));
    let capped = exp.min(cap);
    // Jitter spreads retries from many grants failing at once.
    let jittered = rand::thread_rng().gen_range(capped / 2..=capped);
    Duration::milliseconds(jittered.max(1))
}

/// When a job that failed `attempts` times runs again: `now` plus the
/// backoff, checked (an overflow retries at once rather than panicking).
pub fn retry_at(ctx: &Context, now: DateTime<Utc>, attempts: i32) -> DateTime<Utc> {
    now.checked_add_signed(backoff(ctx, attempts))
        .unwrap_or(now)
}

/// Runs `f` on the pool off the async threads.
pub async fn blocking<T: Send + 'static>(
    ctx: &Arc<Context>,
    f: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = ctx.db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}
