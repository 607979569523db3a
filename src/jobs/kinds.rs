//! Every job kind, registered in one place: `run` hands a claimed row to
//! the type its `kind` names. A new kind is a file beside what it drives
//! implementing `queue::Job`, and one line in `run`.

use std::sync::Arc;

use crate::backlinks::job::Backlink;
use crate::context::Context;
use crate::db::grants::GrantRow;
use crate::db::StoreError;
use crate::grants::job::GrantJob;
use crate::queue::{Finish, Job, JobRow, Lease, Run};

/// Runs one claimed job as its kind says.
pub async fn run(
    ctx: &Arc<Context>,
    job: &JobRow,
    grant: Option<GrantRow>,
    lease: &Lease,
) -> Result<Finish, StoreError> {
    let run = Run { job, lease, grant };
    match job.kind.as_str() {
        GrantJob::KIND => start::<GrantJob>(ctx, run).await,
        Backlink::KIND => start::<Backlink>(ctx, run).await,
        other => {
            tracing::error!(kind = other, job = job.id, "unknown job kind; dropping it");
            Ok(Finish::Done)
        }
    }
}

async fn start<J: Job>(ctx: &Arc<Context>, run: Run<'_>) -> Result<Finish, StoreError> {
    match J::decode(&run.job.payload) {
        Some(job) => job.run(ctx, run).await,
        None => Ok(Finish::Done),
    }
}
