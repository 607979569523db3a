//! The queue: claiming due jobs for this instance (with the grants they
//! drive, read in the same go), settling a run's row, and the backoff
//! between attempts. The statements themselves are `db::jobs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use rand::Rng;

use crate::context::Context;
use crate::db::grants::GrantRow;
use crate::db::jobs::{self as rows, JobRow, LeaseClock, Settle};
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

/// A claimed job with the grant it drives, read for the whole claim at once.
pub struct Claimed {
    pub job: JobRow,
    pub grant: Option<GrantRow>,
    /// Taken before the claim was sent: its lease surely lasts until this
    /// plus the lease's length.
    pub asked: Instant,
}

/// Claims up to `limit` due jobs under this instance's lease.
pub async fn claim_due(ctx: &Arc<Context>, limit: usize) -> Result<Vec<Claimed>, StoreError> {
    let now = ctx.clock.now();
    let instance = ctx.instance.clone();
    let lease = ctx.config.jobs.lease.0;
    let asked = Instant::now();
    if rows::claims_share_batch(&ctx.db) {
        // Under load the claim shares the next batch's transaction (and its
        // one WAL flush) instead of committing on its own.
        return ctx
            .commit
            .submit("jobs:claim", now, move |conn, _events| {
                let clock = LeaseClock::of(conn);
                let jobs = rows::claim_in(conn, &instance, now, lease, limit as i64, clock)?;
                with_grants(conn, jobs, asked)
            })
            .await;
    }
    blocking(ctx, move |db| {
        let jobs = rows::claim(db, &instance, now, lease, limit as i64)?;
        db.read(|conn| with_grants(conn, jobs, asked))
    })
    .await
}

/// Claimed jobs beside their grants, read in one query.
fn with_grants(
    conn: &mut Conn<'_>,
    jobs: Vec<JobRow>,
    asked: Instant,
) -> Result<Vec<Claimed>, StoreError> {
    let grant_of = super::kinds::grant::grant_id_of;
    let ids: Vec<String> = jobs.iter().filter_map(grant_of).collect();
    let mut grants: HashMap<String, GrantRow> = if ids.is_empty() {
        Default::default()
    } else {
        crate::db::grants::by_ids(conn, &ids)?
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect()
    };
    Ok(jobs
        .into_iter()
        .map(|job| {
            let grant = grant_of(&job).and_then(|id| grants.remove(&id));
            Claimed { job, grant, asked }
        })
        .collect())
}
