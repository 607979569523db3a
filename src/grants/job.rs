//! The grant job: one job per grant drives it through its life —
//! pending, granting (the provider call), active until it expires,
//! revoking (the provider call), revoked — and, after a grant failed with
//! a call that may have landed, takes that call back. Each step is
//! `grants::step`, written through the commit lanes; the provider calls
//! run under the job's lease.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ledger::{self, Apply, Extend, Remove};
use super::Step;
use crate::audit::NewEvent;
use crate::context::Context;
use crate::db::grants::GrantRow;
use crate::db::{Db, StoreError};
use crate::dispatch;
use crate::domain::{from_micros, GrantState, RevokeReason};
use crate::providers::Action;
use crate::queue::lease::{call_leased, extend_leased};
use crate::queue::{blocking, retry_at, Finish, Job, JobRow, Run};

/// The job of grant `grant_id`; `cleanup` when the grant failed and what
/// its last call may have applied is to be taken back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantJob {
    pub grant_id: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleanup: bool,
}

impl GrantJob {
    pub fn new(grant_id: &str) -> GrantJob {
        GrantJob {
            grant_id: grant_id.to_string(),
            cleanup: false,
        }
    }

    pub fn cleanup(grant_id: &str) -> GrantJob {
        GrantJob {
            grant_id: grant_id.to_string(),
            cleanup: true,
        }
    }
}

/// The grant a job row drives, if it is a grant job.
pub fn grant_id_of(job: &JobRow) -> Option<String> {
    if job.kind != GrantJob::KIND {
        return None;
    }
    GrantJob::decode(&job.payload).map(|j| j.grant_id)
}

impl Job for GrantJob {
    const KIND: &'static str = "grant";

    fn dedupe_key(&self) -> String {
        format!("{}:{}", Self::KIND, self.grant_id)
    }

    fn decode(payload: &str) -> Option<Self> {
        let payload: serde_json::Value = serde_json::from_str(payload).ok()?;
        Some(GrantJob {
            grant_id: payload.get("grant_id")?.as_str()?.to_string(),
            cleanup: payload
                .get("cleanup")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        })
    }

    /// Moves the grant one or more steps along its life. `run.grant` is
    /// the grant as read at the claim, if it was.
    async fn run(self, ctx: &Arc<Context>, run: Run<'_>) -> Result<Finish, StoreError> {
        let Run {
            job,
            lease,
            grant: read,
        } = run;
        let GrantJob {
            grant_id: id,
            cleanup,
        } = self;
        let attempts = job.attempts;
        // The grant as the claim read it or the last step left it, so the next
        // step needs no read of its own.
        let mut known: Option<GrantRow> = read.filter(|g| g.id == id);
        for _ in 0..4 {
            let now = ctx.clock.now();
            let g = match known.take() {
                Some(g) => g,
                None => {
                    let gid = id.clone();
                    match blocking(ctx, move |db| db.read(|c| crate::db::grants::get(c, &gid)))
                        .await?
                    {
                        Some(g) => g,
                        None => return Ok(Finish::Done),
                    }
                }
            };
            let expires_at = from_micros(g.expires_at);
            match g.state() {
                GrantState::Pending => {
                    let starts_at = from_micros(g.starts_at);
                    if now < starts_at {
                        return Ok(Finish::At {
                            run_at: starts_at,
                            attempts,
                            error: None,
                        });
                    }
                    let step = Step::new(GrantState::Pending, GrantState::Granting, now);
                    transition(ctx, &g, step).await?;
                }
                GrantState::Granting if now >= expires_at => {
                    known = timer_revoke(ctx, &g, now).await?;
                }
                GrantState::Granting => {
                    let activate = activation(now, expires_at, job);
                    let wait = Finish::At {
                        run_at: later(now, LEDGER_WAIT_MS),
                        attempts,
                        error: None,
                    }
                    .settle(job);
                    match plan_apply(ctx, &g, activate, wait).await? {
                        None => continue,
                        Some(Apply::Shared { .. } | Apply::Wait { .. }) => {
                            return Ok(Finish::Settled)
                        }
                        Some(Apply::Call { alone }) => {
                            if alone && attempts == 0 {
                                note_preexisting(ctx, &g, now).await?;
                            }
                        }
                    }
                    let Some(answer) = call_leased(ctx, lease, &g, Action::Grant).await else {
                        return Ok(Finish::Lost);
                    };
                    match answer {
                        Ok(()) => {
                            let step = activation(now, expires_at, job);
                            if transition(ctx, &g, step).await? {
                                return Ok(Finish::Settled);
                            }
                        }
                        Err(e) => {
                            let n = attempts + 1;
                            let msg = e.to_string();
                            if e.is_permanent() {
                                // Refused before the provider saw anything:
                                // fail now, with nothing to take back.
                                let step = Step::new(GrantState::Granting, GrantState::Failed, now)
                                    .failure(&msg)
                                    .settling(Finish::Gone.settle(job));
                                if transition(ctx, &g, step).await? {
                                    return Ok(Finish::Settled);
                                }
                                continue;
                            }
                            if n >= ctx.config.jobs.apply_attempts as i32 {
                                let step = Step::new(GrantState::Granting, GrantState::Failed, now)
                                    .failure(&msg);
                                transition(ctx, &g, step).await?;
                                // A timed-out call may have landed: take it back, forever if need be.
                                let gid = g.id.clone();
                                blocking(ctx, move |db| {
                                    db.write(|c| GrantJob::cleanup(&gid).enqueue(c, now, now))
                                })
                                .await?;
                                return Ok(Finish::At {
                                    run_at: now,
                                    attempts: 0,
                                    error: None,
                                });
                            }
                            return retry_later(ctx, &g, "grant.apply_failed", attempts, msg, now)
                                .await;
                        }
                    }
                }
                GrantState::Active if now >= expires_at => {
                    known = timer_revoke(ctx, &g, now).await?;
                }
                GrantState::Active => {
                    if ctx.providers.carries_end(provider_of(&g)) {
                        if let Some(done) = tell_end(ctx, lease, &g, attempts, now).await? {
                            return Ok(done);
                        }
                    }
                    return Ok(Finish::At {
                        run_at: expires_at,
                        attempts: 0,
                        error: None,
                    });
                }
                GrantState::Revoking => {
                    let end = Step::new(GrantState::Revoking, GrantState::Revoked, now)
                        .settling(Finish::Gone.settle(job));
                    match plan_remove(ctx, &g, Some(end), now).await? {
                        None => continue,
                        Some(Remove::Kept { .. }) => {
                            observe_lag(ctx, &g, now);
                            return Ok(Finish::Settled);
                        }
                        Some(Remove::Call) => {}
                    }
                    match call_leased(ctx, lease, &g, Action::Revoke).await {
                        None => return Ok(Finish::Lost),
                        Some(Ok(())) => {
                            if let Some(still) = still_held(ctx, &g).await {
                                return retry_later(
                                    ctx,
                                    &g,
                                    "revoke.unverified",
                                    attempts,
                                    still,
                                    now,
                                )
                                .await;
                            }
                            let step = Step::new(GrantState::Revoking, GrantState::Revoked, now)
                                .settling(Finish::Gone.settle(job));
                            if transition(ctx, &g, step).await? {
                                observe_lag(ctx, &g, now);
                                return Ok(Finish::Settled);
                            }
                        }
                        Some(Err(e)) => {
                            return retry_later(
                                ctx,
                                &g,
                                "revoke.failed",
                                attempts,
                                e.to_string(),
                                now,
                            )
                            .await;
                        }
                    }
                }
                GrantState::Failed if cleanup => {
                    if plan_remove(ctx, &g, None, now).await? != Some(Remove::Call) {
                        return Ok(Finish::Gone);
                    }
                    match call_leased(ctx, lease, &g, Action::Revoke).await {
                        None => return Ok(Finish::Lost),
                        Some(Ok(())) => {
                            audit_only(ctx, &g, "grant.cleaned_up", json!({}), now).await?;
                            return Ok(Finish::Gone);
                        }
                        Some(Err(e)) => {
                            let msg = e.to_string();
                            return Ok(Finish::At {
                                run_at: retry_at(ctx, now, attempts),
                                attempts: attempts + 1,
                                error: Some(msg),
                            });
                        }
                    }
                }
                GrantState::Failed | GrantState::Revoked => return Ok(Finish::Gone),
            }
        }
        Ok(Finish::At {
            run_at: ctx.clock.now(),
            attempts,
            error: None,
        })
    }
}

/// The step to active, with the job's row then due at the grant's end.
fn activation(now: DateTime<Utc>, expires_at: DateTime<Utc>, job: &JobRow) -> Step {
    Step::new(GrantState::Granting, GrantState::Active, now).settling(
        Finish::At {
            run_at: expires_at,
            attempts: 0,
            error: None,
        }
        .settle(job),
    )
}

/// How long a grant waits for another grant of its access to settle
/// before it looks again (the other one's end wakes it sooner).
const LEDGER_WAIT_MS: i64 = 500;

/// `now` plus `ms`, or `now` at the end of time.
fn later(now: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
    now.checked_add_signed(chrono::Duration::milliseconds(ms))
        .unwrap_or(now)
}

/// The provider's name in a grant's resource.
fn provider_of(g: &GrantRow) -> &str {
    g.resource
        .split_once('/')
        .map_or(g.resource.as_str(), |(p, _)| p)
}

/// Tells the provider of an active grant its later end after an extension
/// (`ledger::plan_extend`); `None` when there is nothing to tell. A failed
/// call is retried, but never past the grant's end, when the timer takes
/// over.
async fn tell_end(
    ctx: &Arc<Context>,
    lease: &crate::queue::Lease,
    g: &GrantRow,
    attempts: i32,
    now: DateTime<Utc>,
) -> Result<Option<Finish>, StoreError> {
    let planned = {
        let g = g.clone();
        ctx.commit
            .submit(&g.ticket.clone(), now, move |conn, _events| {
                ledger::plan_extend(conn, &g, now)
            })
            .await?
    };
    match planned {
        Extend::Nothing => return Ok(None),
        Extend::Wait => {
            return Ok(Some(Finish::At {
                run_at: later(now, LEDGER_WAIT_MS),
                attempts,
                error: None,
            }))
        }
        Extend::Call => {}
    }
    let expires_at = from_micros(g.expires_at);
    match extend_leased(ctx, lease, g).await {
        None => Ok(Some(Finish::Lost)),
        Some(Ok(())) => {
            let (id, ticket, until) = (g.id.clone(), g.ticket.clone(), g.expires_at);
            ctx.commit
                .submit(&g.ticket, now, move |conn, events| {
                    crate::db::access::set_told(conn, &id, until)?;
                    events.push(
                        NewEvent::new(
                            "grant.extension_applied",
                            "warrant",
                            json!({ "expires_at": crate::domain::rfc3339(from_micros(until)) }),
                        )
                        .ticket(&ticket)
                        .grant(&id),
                    );
                    Ok(())
                })
                .await?;
            Ok(Some(Finish::At {
                run_at: expires_at,
                attempts: 0,
                error: None,
            }))
        }
        Some(Err(e)) => {
            let retry = retry_later(
                ctx,
                g,
                "grant.extension_failed",
                attempts,
                e.to_string(),
                now,
            )
            .await?;
            // Past the grant's end the timer revokes, and a revocation
            // starts with its own backoff, not the extension's.
            Ok(Some(match retry {
                Finish::At {
                    run_at,
                    attempts,
                    error,
                } if run_at < expires_at => Finish::At {
                    run_at,
                    attempts,
                    error,
                },
                Finish::At { error, .. } => Finish::At {
                    run_at: expires_at,
                    attempts: 0,
                    error,
                },
                other => other,
            }))
        }
    }
}

/// `ledger::plan_apply` in the grant's commit lane.
async fn plan_apply(
    ctx: &Arc<Context>,
    g: &GrantRow,
    activate: Step,
    wait: Option<crate::db::jobs::Settle>,
) -> Result<Option<Apply>, StoreError> {
    let carries_end = ctx.providers.carries_end(provider_of(g));
    let (g, config, now) = (g.clone(), ctx.config.clone(), activate.now);
    let key = g.ticket.clone();
    ctx.commit
        .submit(&key, now, move |conn, events| {
            ledger::plan_apply(
                conn,
                &config,
                &g,
                carries_end,
                &activate,
                wait.as_ref(),
                events,
            )
        })
        .await
}

/// `ledger::plan_remove` in the grant's commit lane.
async fn plan_remove(
    ctx: &Arc<Context>,
    g: &GrantRow,
    end: Option<Step>,
    now: DateTime<Utc>,
) -> Result<Option<Remove>, StoreError> {
    let (g, config) = (g.clone(), ctx.config.clone());
    let key = g.ticket.clone();
    ctx.commit
        .submit(&key, now, move |conn, events| {
            ledger::plan_remove(conn, &config, &g, end.as_ref(), now, events)
        })
        .await
}

/// Before the first grant of an access is applied: if the provider lists
/// holders and already has the account, the access was standing, and the
/// ledger says so. A provider that cannot answer now changes nothing.
async fn note_preexisting(
    ctx: &Arc<Context>,
    g: &GrantRow,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let target = g.resource.split_once('/').map_or("", |(_, t)| t);
    let Ok(Some(true)) = ctx
        .providers
        .holds(provider_of(g), target, &g.account)
        .await
    else {
        return Ok(());
    };
    let g = g.clone();
    let key = g.ticket.clone();
    ctx.commit
        .submit(&key, now, move |conn, events| {
            ledger::preexisting(conn, &g, now, events)
        })
        .await
}

/// After a removal, a provider that lists holders is read back: the
/// access still held is an error worth retrying. `None` when it is gone
/// or the provider cannot say.
async fn still_held(ctx: &Arc<Context>, g: &GrantRow) -> Option<String> {
    let target = g.resource.split_once('/').map_or("", |(_, t)| t);
    match ctx
        .providers
        .holds(provider_of(g), target, &g.account)
        .await
    {
        Ok(Some(true)) => {
            ctx.metrics.revocations_unverified.inc();
            Some(format!(
                "the provider still lists `{}` in `{target}` after the removal",
                g.account
            ))
        }
        _ => None,
    }
}

fn observe_lag(ctx: &Arc<Context>, g: &GrantRow, now: DateTime<Utc>) {
    if g.revoke_reason.as_deref() == Some(RevokeReason::Expired.as_str()) {
        let lag = (now - from_micros(g.expires_at))
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e6;
        ctx.metrics.revocation_lag.observe(lag.max(0.0));
    }
}

/// The grant's window is over: start revoking it. Answers the grant as the
/// revocation left it (`None` if it had moved on meanwhile). The job that
/// runs this goes on to the provider call itself, so nothing is scheduled.
async fn timer_revoke(
    ctx: &Arc<Context>,
    g: &GrantRow,
    now: DateTime<Utc>,
) -> Result<Option<GrantRow>, StoreError> {
    let g = g.clone();
    let key = g.ticket.clone();
    ctx.commit
        .submit(&key, now, move |conn, events| {
            crate::grants::expire(conn, &g, now, events)
        })
        .await
}

/// Takes the step if the grant is still in its first state; answers whether
/// it did. The job's row is settled only when the step is taken.
async fn transition(ctx: &Arc<Context>, g: &GrantRow, step: Step) -> Result<bool, StoreError> {
    let g = g.clone();
    let config = ctx.config.clone();
    let key = g.ticket.clone();
    let now = step.now;
    ctx.commit
        .submit(&key, now, move |conn, events| {
            crate::grants::step(conn, &config, &g, &step, events)
        })
        .await
}

/// Records a failed provider call and schedules the next attempt.
async fn retry_later(
    ctx: &Arc<Context>,
    g: &GrantRow,
    kind: &'static str,
    attempts: i32,
    error: String,
    now: DateTime<Utc>,
) -> Result<Finish, StoreError> {
    let n = attempts + 1;
    audit_only(ctx, g, kind, json!({ "attempt": n, "error": error }), now).await?;
    Ok(Finish::At {
        run_at: retry_at(ctx, now, attempts),
        attempts: n,
        error: Some(error),
    })
}

async fn audit_only(
    ctx: &Arc<Context>,
    g: &GrantRow,
    kind: &'static str,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (ticket, id) = (g.ticket.clone(), g.id.clone());
    ctx.commit
        .submit(&g.ticket, now, move |_conn, events| {
            events.push(
                NewEvent::new(kind, "warrant", data.clone())
                    .ticket(&ticket)
                    .grant(&id),
            );
            Ok(())
        })
        .await
}

/// The safety net: any grant still needing work but without a job gets one.
/// The search is a read, so it never holds SQLite's write lock.
pub fn sweep(db: &Db, now: DateTime<Utc>) -> Result<usize, StoreError> {
    #[derive(QueryableByName)]
    struct Orphan {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let sql = format!(
        "SELECT g.id FROM grants g WHERE g.state IN ('pending', 'granting', 'active', 'revoking') \
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.dedupe_key = '{}:' || g.id) LIMIT 1000",
        GrantJob::KIND
    );
    let orphans: Vec<Orphan> =
        db.read(|conn| Ok(dispatch!(conn, c => diesel::sql_query(&sql).load(c))?))?;
    if orphans.is_empty() {
        return Ok(0);
    }
    db.write(|conn| {
        for o in &orphans {
            tracing::warn!(grant = %o.id, "grant had no job; rescheduling");
            GrantJob::new(&o.id).enqueue(conn, now, now)?;
        }
        Ok(orphans.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows written before jobs were typed read the same, and new rows are
    /// written byte for byte as before.
    #[test]
    fn grant_job_rows_are_as_they_were() {
        let job = GrantJob::new("g-1");
        assert_eq!(GrantJob::KIND, "grant");
        assert_eq!(job.dedupe_key(), "grant:g-1");
        assert_eq!(
            job.payload().unwrap(),
            json!({ "grant_id": "g-1" }).to_string()
        );
        let cleanup = GrantJob::cleanup("g-1");
        assert_eq!(cleanup.dedupe_key(), "grant:g-1");
        assert_eq!(
            cleanup.payload().unwrap(),
            json!({ "grant_id": "g-1", "cleanup": true }).to_string()
        );
        let read = GrantJob::decode(&cleanup.payload().unwrap()).unwrap();
        assert_eq!((read.grant_id.as_str(), read.cleanup), ("g-1", true));
        assert!(GrantJob::decode(r#"{"cleanup":true}"#).is_none());
        assert!(GrantJob::decode("not json").is_none());
    }
}
