//! Claiming due jobs for this instance, with the grants they drive read
//! in the same go (which job drives which grant is the grant job kind's to
//! say). The statements themselves are `db::jobs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::context::Context;
use crate::db::grants::GrantRow;
use crate::db::jobs::{self as rows, JobRow, LeaseClock};
use crate::db::{Conn, StoreError};
use crate::queue::blocking;

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
    let grant_of = crate::grants::job::grant_id_of;
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
