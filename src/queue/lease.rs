//! A running job's lease: renewed every third of its length while the run
//! lasts (on PostgreSQL's clock there, so replicas' clocks need not agree),
//! and every provider call ends before the lease could pass on, so no two
//! provider calls for one grant ever overlap.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use tokio::task::JoinHandle;

use super::settle::blocking;
use crate::context::Context;
use crate::db::grants::GrantRow;
use crate::db::jobs::{renew, JobRow, Renewal};
use crate::providers::{self, Action};

/// A claimed job's lease for as long as its run lasts: renewed every
/// third of its length, so a run that outlives one lease keeps its job,
/// and a runner that dies lets it go within one lease.
pub struct Lease {
    pub job: i64,
    held: std::sync::Mutex<Held>,
}

struct Held {
    /// The lease's end as this runner last wrote it (on its clock).
    until: i64,
    /// Until when the lease surely holds, on this process's monotonic
    /// clock: taken before the statement that set `until` was sent.
    surely: Instant,
    /// Whether the lease passed to someone else (or could have).
    lost: bool,
}

impl Lease {
    /// Starts renewing the lease the claim took; the renewals stop when
    /// the returned task is aborted.
    pub fn keep(ctx: &Arc<Context>, job: &JobRow, asked: Instant) -> (Arc<Lease>, JoinHandle<()>) {
        let length = ctx.config.jobs.lease.0;
        let lease = Arc::new(Lease {
            job: job.id,
            held: std::sync::Mutex::new(Held {
                until: job.locked_until.unwrap_or_default(),
                surely: asked + length.to_std().unwrap_or_default(),
                lost: job.locked_until.is_none(),
            }),
        });
        let every = (length / 3)
            .to_std()
            .unwrap_or_default()
            .max(StdDuration::from_millis(100));
        let (st, kept) = (ctx.clone(), lease.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(held) = kept.until() else {
                    return;
                };
                let asked = Instant::now();
                let (job, instance, now) = (kept.job, st.instance.clone(), st.clock.now());
                match blocking(&st, move |db| renew(db, job, &instance, held, now, length)).await {
                    Ok(Renewal::Renewed(until)) => kept.renewed(until, asked, length),
                    Ok(Renewal::Settled) => return,
                    Ok(Renewal::Lost { holder }) => {
                        kept.lose();
                        tracing::error!(
                            job,
                            holder = %holder,
                            instance = %st.instance,
                            "LEASE LOST: another runner took this job while it ran; \
                             this run stops before its next provider call"
                        );
                        return;
                    }
                    // The next beat tries again; if none succeeds before
                    // the lease could end, the run gives the job up.
                    Err(e) => tracing::warn!(job, error = %e, "cannot renew a job's lease"),
                }
            }
        });
        (lease, task)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease's end as last written, unless it is lost.
    fn until(&self) -> Option<i64> {
        let held = self.held();
        (!held.lost).then_some(held.until)
    }

    fn renewed(&self, until: i64, asked: Instant, length: Duration) {
        let mut held = self.held();
        held.until = until;
        held.surely = asked + length.to_std().unwrap_or_default();
    }

    pub fn lose(&self) {
        self.held().lost = true;
    }

    pub fn lost(&self) -> bool {
        self.held().lost
    }

    /// How long the lease surely holds from now (zero once it is lost).
    fn left(&self) -> StdDuration {
        let held = self.held();
        if held.lost {
            return StdDuration::ZERO;
        }
        held.surely.saturating_duration_since(Instant::now())
    }
}

/// A provider call under the job's lease: not made once the lease is
/// lost, and abandoned if the lease could end before it answers (when
/// renewals keep failing), so two runners' calls for one grant never
/// overlap. `None` when the lease is (or may be) gone.
pub async fn call_leased(
    ctx: &Arc<Context>,
    lease: &Lease,
    g: &GrantRow,
    action: Action,
) -> Option<Result<(), providers::ProviderError>> {
    leased(lease, g, action.as_str(), ctx.providers.call(g, action)).await
}

/// `call_leased` for telling the provider an active grant's later end.
pub async fn extend_leased(
    ctx: &Arc<Context>,
    lease: &Lease,
    g: &GrantRow,
) -> Option<Result<(), providers::ProviderError>> {
    leased(lease, g, "extend", ctx.providers.extend(g)).await
}

async fn leased(
    lease: &Lease,
    g: &GrantRow,
    what: &str,
    call: impl std::future::Future<Output = Result<(), providers::ProviderError>>,
) -> Option<Result<(), providers::ProviderError>> {
    let left = lease.left();
    if left.is_zero() {
        return None;
    }
    match tokio::time::timeout(left, call).await {
        Ok(answer) => Some(answer),
        Err(_) => {
            lease.lose();
            tracing::error!(
                job = lease.job,
                grant = %g.id,
                action = what,
                "LEASE LOST: the job's lease could not be renewed and ran out during \
                 its provider call; the call is abandoned"
            );
            None
        }
    }
}
