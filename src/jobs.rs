//! Durable jobs: rows in `jobs` with a `run_at`, claimed under a lease
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer), retried
//! with capped, jittered exponential backoff. One job per grant drives it
//! through its life, and its lease is renewed while it runs (on
//! PostgreSQL's clock there, so replicas' clocks need not agree), and every
//! provider call ends before the lease could pass on: no two provider calls
//! for a grant ever overlap. The runner sleeps until the next job is due or
//! until this process enqueues one.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use rand::Rng;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::audit::NewEvent;
use crate::context::Context;
use crate::db::schema::{grants, jobs};
use crate::db::{Conn, Db, StoreError};
use crate::dispatch;
use crate::domain::{from_micros, to_micros, GrantState, RevokeReason};
use crate::grants::GrantRow;
use crate::metrics::JobLabels;
use crate::providers::{self, Action};

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub dedupe_key: String,
    pub payload: String,
    pub run_at: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub locked_by: Option<String>,
    pub locked_until: Option<i64>,
    pub version: i64,
    pub created_at: i64,
}

pub const GRANT: &str = "grant";

/// Schedules the grant's job at `run_at` (or moves it there), resetting its attempts.
pub fn enqueue_grant(
    conn: &mut Conn<'_>,
    grant_id: &str,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    enqueue(
        conn,
        GRANT,
        &format!("grant:{grant_id}"),
        &json!({ "grant_id": grant_id }).to_string(),
        run_at,
        now,
    )
}

pub fn enqueue(
    conn: &mut Conn<'_>,
    kind: &str,
    dedupe_key: &str,
    payload: &str,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let run_at = to_micros(run_at);
    dispatch!(conn, c => diesel::insert_into(jobs::table)
        .values((
            jobs::kind.eq(kind),
            jobs::dedupe_key.eq(dedupe_key),
            jobs::payload.eq(payload),
            jobs::run_at.eq(run_at),
            jobs::attempts.eq(0),
            jobs::version.eq(0i64),
            jobs::created_at.eq(to_micros(now)),
        ))
        .on_conflict(jobs::dedupe_key)
        .do_update()
        .set((
            jobs::run_at.eq(run_at),
            jobs::payload.eq(payload),
            jobs::attempts.eq(0),
            jobs::last_error.eq(None::<String>),
            jobs::version.eq(jobs::version + 1),
        ))
        .execute(c))?;
    Ok(())
}

pub fn delete_grant_job(conn: &mut Conn<'_>, grant_id: &str) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::delete(jobs::table.filter(jobs::dedupe_key.eq(format!("grant:{grant_id}")))).execute(c))?;
    Ok(())
}

const DUE: &str = "SELECT id FROM jobs WHERE run_at <= $1 \
                   AND (locked_until IS NULL OR locked_until < $1) ORDER BY run_at LIMIT $2";
const RETURNING: &str = "RETURNING id, kind, dedupe_key, payload, run_at, attempts, \
                         last_error, locked_by, locked_until, version, created_at";
/// PostgreSQL's own time, in microseconds since the epoch like every time
/// column here. `clock_timestamp()`, not `now()`: a lease is measured from
/// when its statement ran, not from when a long batch began.
const PG_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// Which clock a lease's `locked_until` is written and compared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseClock {
    /// The caller's `now` (warrant's clock): SQLite, whose one process
    /// has one clock.
    Caller,
    /// The database server's: replicas whose clocks disagree still agree
    /// on when a lease ends. Only `run_at` (when a job is due) stays in
    /// warrant's clock.
    Database,
}

impl LeaseClock {
    /// The clock of the runner's leases on this connection.
    fn of(conn: &Conn<'_>) -> LeaseClock {
        match conn {
            Conn::Postgres(_) => LeaseClock::Database,
            Conn::Sqlite(_) => LeaseClock::Caller,
        }
    }
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<i64, StoreError> {
    now.checked_add_signed(lease).map(to_micros).ok_or_else(|| {
        StoreError::Corrupt(format!("a lease of {lease} from {now} is out of range"))
    })
}

/// Takes up to `limit` due jobs for this instance, under a lease measured
/// from `now`, in one statement. A leased job's `run_at` moves to the
/// lease's end (when it is due again if its runner died), so the search
/// for due jobs walks past none of the jobs already running: a burst of
/// expiries costs each claim the same, not more the longer the burst.
/// (The runner on PostgreSQL measures its leases on the server's clock
/// instead; see `claim_due`.)
pub fn claim(
    db: &Db,
    instance: &str,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
) -> Result<Vec<JobRow>, StoreError> {
    use diesel::sql_types::BigInt;
    let now_us = to_micros(now);
    if db.backend() == "sqlite" {
        // SQLite's one write lock is not taken just to learn there is nothing to do.
        let any: Vec<JobId> = db.read(|conn| {
            Ok(
                dispatch!(conn, c => diesel::sql_query(DUE.replace('$', "?"))
                .bind::<BigInt, _>(now_us)
                .bind::<BigInt, _>(1i64)
                .load(c))?,
            )
        })?;
        if any.is_empty() {
            return Ok(Vec::new());
        }
    }
    db.write(|conn| claim_in(conn, instance, now, lease, limit, LeaseClock::Caller))
}

/// `claim` inside the caller's transaction, with the lease on `clock`.
fn claim_in(
    conn: &mut Conn<'_>,
    instance: &str,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
    clock: LeaseClock,
) -> Result<Vec<JobRow>, StoreError> {
    use diesel::sql_types::{BigInt, Text};
    let now_us = to_micros(now);
    let until = lease_end(now, lease)?;
    let lease_us = lease
        .num_microseconds()
        .ok_or_else(|| StoreError::Corrupt(format!("a lease of {lease} is out of range")))?;
    let mut claimed: Vec<JobRow> = match (conn, clock) {
        (Conn::Postgres(c), LeaseClock::Database) => {
            let sql = format!(
                "UPDATE jobs SET locked_by = $3, locked_until = (SELECT {PG_NOW}) + $5, run_at = $4 \
                 WHERE id IN (SELECT id FROM jobs WHERE run_at <= $1 \
                 AND (locked_until IS NULL OR locked_until < (SELECT {PG_NOW})) \
                 ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED) {RETURNING}"
            );
            crate::db::prepared::Statement::new(&sql)
                .bind::<BigInt, _>(now_us)
                .bind::<BigInt, _>(limit)
                .bind::<Text, _>(instance)
                .bind::<BigInt, _>(until)
                .bind::<BigInt, _>(lease_us)
                .load(&mut **c)?
        }
        (Conn::Postgres(c), LeaseClock::Caller) => {
            let sql = format!(
                "UPDATE jobs SET locked_by = $3, locked_until = $4, run_at = $4 \
                 WHERE id IN ({DUE} FOR UPDATE SKIP LOCKED) {RETURNING}"
            );
            crate::db::prepared::Statement::new(&sql)
                .bind::<BigInt, _>(now_us)
                .bind::<BigInt, _>(limit)
                .bind::<Text, _>(instance)
                .bind::<BigInt, _>(until)
                .load(&mut **c)?
        }
        // SQLite numbers `$N` parameters by first appearance; `?N` by N.
        (Conn::Sqlite(c), _) => {
            let sql = format!(
                "UPDATE jobs SET locked_by = $3, locked_until = $4, run_at = $4 \
                 WHERE id IN ({DUE}) {RETURNING}"
            )
            .replace('$', "?");
            diesel::sql_query(&sql)
                .bind::<BigInt, _>(now_us)
                .bind::<BigInt, _>(limit)
                .bind::<Text, _>(instance)
                .bind::<BigInt, _>(until)
                .load(&mut **c)?
        }
    };
    claimed.sort_by_key(|j| j.id);
    Ok(claimed)
}

/// How a lease renewal found the job.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    /// Still held; the lease now ends at this time (on its clock).
    Renewed(i64),
    /// The run itself settled the job (released or deleted it).
    Settled,
    /// Someone else holds it now: another instance, or this one again
    /// after the lease ran out.
    Lost { holder: String },
}

/// Moves the end of this runner's lease on `job` to a lease from now, if
/// the lease is still the one it holds: the row must still name this
/// instance and the end it last wrote, so a lease taken over, even by this
/// instance, is never extended. One small statement outside the commit
/// lanes (on PostgreSQL without a transaction of its own).
fn renew(
    db: &Db,
    job: i64,
    instance: &str,
    held: i64,
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<Renewal, StoreError> {
    use diesel::sql_types::{BigInt, Text};
    #[derive(QueryableByName)]
    struct Until {
        #[diesel(sql_type = BigInt)]
        locked_until: i64,
    }
    let renewed: Vec<Until> = if db.backend() == "postgres" {
        let lease_us = lease
            .num_microseconds()
            .ok_or_else(|| StoreError::Corrupt(format!("a lease of {lease} is out of range")))?;
        let sql = format!(
            "UPDATE jobs SET locked_until = (SELECT {PG_NOW}) + $1 \
             WHERE id = $2 AND locked_by = $3 AND locked_until = $4 RETURNING locked_until"
        );
        db.read(|conn| {
            Ok(dispatch!(conn, c => diesel::sql_query(&sql)
                .bind::<BigInt, _>(lease_us)
                .bind::<BigInt, _>(job)
                .bind::<Text, _>(instance)
                .bind::<BigInt, _>(held)
                .load(c))?)
        })?
    } else {
        let until = lease_end(now, lease)?;
        db.write(|conn| {
            Ok(dispatch!(conn, c => diesel::sql_query(
                "UPDATE jobs SET locked_until = ? WHERE id = ? AND locked_by = ? \
                 AND locked_until = ? RETURNING locked_until",
            )
            .bind::<BigInt, _>(until)
            .bind::<BigInt, _>(job)
            .bind::<Text, _>(instance)
            .bind::<BigInt, _>(held)
            .load(c))?)
        })?
    };
    if let Some(r) = renewed.first() {
        return Ok(Renewal::Renewed(r.locked_until));
    }
    let holder: Option<Option<String>> = db.read(|conn| {
        Ok(dispatch!(conn, c => jobs::table
            .find(job)
            .select(jobs::locked_by)
            .first::<Option<String>>(c)
            .optional())?)
    })?;
    Ok(match holder.flatten() {
        Some(holder) => Renewal::Lost { holder },
        None => Renewal::Settled,
    })
}

#[derive(QueryableByName)]
struct JobId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    #[allow(dead_code)]
    id: i64,
}

/// The next time any job falls due, if there is one.
pub fn next_due(db: &Db) -> Result<Option<DateTime<Utc>>, StoreError> {
    db.read(|conn| {
        let next: Option<i64> = dispatch!(conn, c => jobs::table
            .filter(jobs::locked_until.is_null())
            .select(diesel::dsl::min(jobs::run_at))
            .first(c))?;
        let leased: Option<i64> = match conn {
            // Leases are on the server's clock: what is left of the
            // soonest one, counted from this process's clock (the
            // runner's, outside tests).
            Conn::Postgres(c) => {
                #[derive(QueryableByName)]
                struct Left {
                    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
                    left: Option<i64>,
                }
                let left: Left = diesel::sql_query(format!(
                    "SELECT min(locked_until) - {PG_NOW} AS left FROM jobs \
                     WHERE locked_until IS NOT NULL"
                ))
                .get_result(&mut **c)?;
                left.left
                    .and_then(|us| to_micros(Utc::now()).checked_add(us))
            }
            Conn::Sqlite(c) => jobs::table
                .filter(jobs::locked_until.is_not_null())
                .select(diesel::dsl::min(jobs::locked_until))
                .first(&mut **c)?,
        };
        Ok([next, leased].into_iter().flatten().min().map(from_micros))
    })
}

/// How a job run ends.
#[derive(Debug)]
enum Finish {
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
    fn succeeded(&self) -> bool {
        !matches!(self, Finish::At { error: Some(_), .. } | Finish::Lost)
    }
}

/// A grant's row moving from one state to the next.
struct GrantMove<'a> {
    id: &'a str,
    from: GrantState,
    to: GrantState,
    at: i64,
    activated_at: Option<i64>,
    revoked_at: Option<i64>,
    failure: Option<&'a str>,
}

/// Moves the grant if it is still in `from` and, only then, settles the
/// job as `then` says; answers whether the grant moved. On PostgreSQL both
/// rows change in one statement: a grant step is the commonest write after
/// intake, and each statement is a round trip inside the batch.
fn take_step(
    conn: &mut Conn<'_>,
    m: &GrantMove<'_>,
    then: Option<&(JobRow, Finish)>,
) -> Result<bool, StoreError> {
    use diesel::sql_types::{BigInt, Integer, Nullable, Text};
    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = BigInt)]
        grant: i64,
        #[diesel(sql_type = BigInt)]
        job: i64,
    }
    let Conn::Postgres(c) = conn else {
        let n = dispatch!(conn, c => diesel::update(grants::table.find(m.id).filter(grants::state.eq(m.from.as_str())))
            .set((
                grants::state.eq(m.to.as_str()),
                grants::updated_at.eq(m.at),
                grants::activated_at.eq(m.activated_at),
                grants::revoked_at.eq(m.revoked_at),
                grants::failure.eq(m.failure),
            ))
            .execute(c))?;
        if n == 0 {
            return Ok(false);
        }
        if let Some((job, how)) = then {
            finish_in(conn, job, how)?;
        }
        return Ok(true);
    };
    const GRANT: &str = "WITH g AS (UPDATE grants SET state = $1, updated_at = $2, \
        activated_at = $3, revoked_at = $4, failure = $5 WHERE id = $6 AND state = $7 RETURNING 1)";
    const COUNTS: &str =
        "SELECT (SELECT count(*) FROM g) AS grant, (SELECT count(*) FROM j) AS job";
    let job_sql = match then {
        None | Some((_, Finish::Settled | Finish::Lost)) => None,
        Some((_, Finish::Done)) => Some(
            "j AS (DELETE FROM jobs WHERE id = $8 AND version = $9 AND EXISTS (SELECT 1 FROM g) RETURNING 1)",
        ),
        Some((_, Finish::Gone)) => Some(
            "j AS (DELETE FROM jobs WHERE id = $8 AND EXISTS (SELECT 1 FROM g) RETURNING 1)",
        ),
        Some((_, Finish::At { .. })) => Some(
            "j AS (UPDATE jobs SET run_at = $10, attempts = $11, last_error = $12, locked_by = NULL, \
             locked_until = NULL WHERE id = $8 AND version = $9 AND EXISTS (SELECT 1 FROM g) RETURNING 1)",
        ),
    };
    use crate::db::prepared::Statement;
    fn bind_grant<'s>(q: Statement<'s>, m: &'s GrantMove<'_>) -> Statement<'s> {
        q.bind::<Text, _>(m.to.as_str())
            .bind::<BigInt, _>(m.at)
            .bind::<Nullable<BigInt>, _>(m.activated_at)
            .bind::<Nullable<BigInt>, _>(m.revoked_at)
            .bind::<Nullable<Text>, _>(m.failure)
            .bind::<Text, _>(m.id)
            .bind::<Text, _>(m.from.as_str())
    }
    let (Some(job_sql), Some((job, how))) = (job_sql, then) else {
        let sql = format!("{GRANT} SELECT count(*) AS grant, 0::bigint AS job FROM g");
        let n = bind_grant(Statement::new(&sql), m).get_result::<Moved>(&mut **c)?;
        return Ok(n.grant > 0);
    };
    let sql = format!("{GRANT}, {job_sql} {COUNTS}");
    let q = bind_grant(Statement::new(&sql), m)
        .bind::<BigInt, _>(job.id)
        .bind::<BigInt, _>(job.version);
    let moved: Moved = match how {
        Finish::At {
            run_at,
            attempts,
            error,
        } => q
            .bind::<BigInt, _>(to_micros(*run_at))
            .bind::<Integer, _>(*attempts)
            .bind::<Nullable<Text>, _>(error.as_deref())
            .get_result(&mut **c)?,
        _ => q.get_result(&mut **c)?,
    };
    if moved.grant == 0 {
        return Ok(false);
    }
    if moved.job == 0 && !matches!(how, Finish::Gone) {
        // As in `finish_in`: someone rescheduled the job while it ran;
        // their schedule wins and only the lease is released.
        diesel::update(jobs::table.filter(jobs::id.eq(job.id)))
            .set((
                jobs::locked_by.eq(None::<String>),
                jobs::locked_until.eq(None::<i64>),
            ))
            .execute(&mut **c)?;
    }
    Ok(true)
}

/// Settles the job's row inside the caller's transaction.
fn finish_in(conn: &mut Conn<'_>, job: &JobRow, how: &Finish) -> Result<(), StoreError> {
    let n = match how {
        Finish::Settled | Finish::Lost => return Ok(()),
        Finish::Done => dispatch!(conn, c => diesel::delete(
            jobs::table.filter(jobs::id.eq(job.id)).filter(jobs::version.eq(job.version)),
        )
        .execute(c))?,
        Finish::Gone => {
            dispatch!(conn, c => diesel::delete(jobs::table.filter(jobs::id.eq(job.id))).execute(c))?
                .max(1)
        }
        Finish::At {
            run_at,
            attempts,
            error,
        } => dispatch!(conn, c => diesel::update(
            jobs::table.filter(jobs::id.eq(job.id)).filter(jobs::version.eq(job.version)),
        )
        .set((
            jobs::run_at.eq(to_micros(*run_at)),
            jobs::attempts.eq(*attempts),
            jobs::last_error.eq(error),
            jobs::locked_by.eq(None::<String>),
            jobs::locked_until.eq(None::<i64>),
        ))
        .execute(c))?,
    };
    if n == 0 {
        // Someone rescheduled the job while it ran (a revocation, say):
        // their schedule wins; only the lease is released.
        dispatch!(conn, c => diesel::update(jobs::table.filter(jobs::id.eq(job.id)))
            .set((jobs::locked_by.eq(None::<String>), jobs::locked_until.eq(None::<i64>)))
            .execute(c))?;
    }
    Ok(())
}

fn backoff(ctx: &Context, attempts: i32) -> Duration {
    let cfg = &ctx.config.jobs;
    let base = cfg.initial_backoff.0.num_milliseconds().max(1);
    let cap = cfg.max_backoff.0.num_milliseconds().max(base);
    let exp = base.saturating_mul(1i64 << attempts.clamp(0, 30));
    let capped = exp.min(cap);
    // Jitter spreads retries from many grants failing at once.
    let jittered = rand::thread_rng().gen_range(capped / 2..=capped);
    Duration::milliseconds(jittered.max(1))
}

/// A claimed job with the grant it drives, read for the whole claim at once.
struct Claimed {
    job: JobRow,
    grant: Option<GrantRow>,
    /// Taken before the claim was sent: its lease surely lasts until this
    /// plus the lease's length.
    asked: Instant,
}

fn grant_id_of(job: &JobRow) -> Option<String> {
    if job.kind != GRANT {
        return None;
    }
    let payload: serde_json::Value = serde_json::from_str(&job.payload).ok()?;
    payload.get("grant_id")?.as_str().map(str::to_string)
}

/// Claims up to `limit` due jobs under this instance's lease.
async fn claim_due(ctx: &Arc<Context>, limit: usize) -> Result<Vec<Claimed>, StoreError> {
    let now = ctx.clock.now();
    let instance = ctx.instance.clone();
    let lease = ctx.config.jobs.lease.0;
    let asked = Instant::now();
    if ctx.db.backend() == "postgres" {
        // Under load the claim shares the next batch's transaction (and its
        // one WAL flush) instead of committing on its own.
        return ctx
            .commit
            .submit("jobs:claim", now, move |conn, _events| {
                let clock = LeaseClock::of(conn);
                let jobs = claim_in(conn, &instance, now, lease, limit as i64, clock)?;
                with_grants(conn, jobs, asked)
            })
            .await;
    }
    blocking(ctx, move |db| {
        let jobs = claim(db, &instance, now, lease, limit as i64)?;
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
    let ids: Vec<String> = jobs.iter().filter_map(grant_id_of).collect();
    let mut grants: std::collections::HashMap<String, GrantRow> = if ids.is_empty() {
        Default::default()
    } else {
        dispatch!(conn, c => grants::table
            .filter(grants::id.eq_any(&ids))
            .select(GrantRow::as_select())
            .load::<GrantRow>(c))?
        .into_iter()
        .map(|g| (g.id.clone(), g))
        .collect()
    };
    Ok(jobs
        .into_iter()
        .map(|job| {
            let grant = grant_id_of(&job).and_then(|id| grants.remove(&id));
            Claimed { job, grant, asked }
        })
        .collect())
}

/// A claimed job's lease for as long as its run lasts: renewed every
/// third of its length, so a run that outlives one lease keeps its job,
/// and a runner that dies lets it go within one lease.
struct Lease {
    job: i64,
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
    fn keep(ctx: &Arc<Context>, job: &JobRow, asked: Instant) -> (Arc<Lease>, JoinHandle<()>) {
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

    fn lose(&self) {
        self.held().lost = true;
    }

    fn lost(&self) -> bool {
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
async fn call_leased(
    ctx: &Arc<Context>,
    lease: &Lease,
    g: &GrantRow,
    action: Action,
) -> Option<Result<(), providers::ProviderError>> {
    let left = lease.left();
    if left.is_zero() {
        return None;
    }
    match tokio::time::timeout(left, ctx.providers.call(g, action)).await {
        Ok(answer) => Some(answer),
        Err(_) => {
            lease.lose();
            tracing::error!(
                job = lease.job,
                grant = %g.id,
                action = action.as_str(),
                "LEASE LOST: the job's lease could not be renewed and ran out during \
                 its provider call; the call is abandoned"
            );
            None
        }
    }
}

/// Runs one claimed job and settles its row.
async fn run_one(ctx: &Arc<Context>, claimed: Claimed) {
    let Claimed { job, grant, asked } = claimed;
    let kind = job.kind.clone();
    let (lease, renewing) = Lease::keep(ctx, &job, asked);
    let ran = run_job(ctx, &job, grant, &lease).await;
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
        run_at: now
            .checked_add_signed(backoff(ctx, job.attempts))
            .unwrap_or(now),
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

async fn blocking<T: Send + 'static>(
    ctx: &Arc<Context>,
    f: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = ctx.db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

async fn run_job(
    ctx: &Arc<Context>,
    job: &JobRow,
    grant: Option<GrantRow>,
    lease: &Lease,
) -> Result<Finish, StoreError> {
    match job.kind.as_str() {
        GRANT => run_grant_job(ctx, job, grant, lease).await,
        crate::backlinks::KIND => run_backlink_job(ctx, job).await,
        other => {
            tracing::error!(kind = other, job = job.id, "unknown job kind; dropping it");
            Ok(Finish::Done)
        }
    }
}

/// Writes one note on a ticket; dropped after a while, since it grants nothing.
async fn run_backlink_job(ctx: &Arc<Context>, job: &JobRow) -> Result<Finish, StoreError> {
    let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
    let ticket = payload["ticket"].as_str().unwrap_or_default().to_string();
    let text = payload["text"].as_str().unwrap_or_default().to_string();
    let now = ctx.clock.now();
    let (kind, data, finish) = match crate::backlinks::deliver(ctx, &ticket, &text).await {
        Ok(()) => ("backlink.sent", json!({ "text": text }), Finish::Done),
        Err(e) if job.attempts + 1 >= crate::backlinks::ATTEMPTS => (
            "backlink.failed",
            json!({ "text": text, "error": e, "gave_up": true }),
            Finish::Done,
        ),
        Err(e) => {
            tracing::warn!(%ticket, error = %e, "back-link not delivered; will retry");
            return Ok(Finish::At {
                run_at: now + backoff(ctx, job.attempts),
                attempts: job.attempts + 1,
                error: Some(e),
            });
        }
    };
    let job = job.clone();
    let key = ticket.clone();
    ctx.commit
        .submit(&key, now, move |conn, events| {
            events.push(NewEvent::new(kind, "warrant", data.clone()).ticket(&ticket));
            finish_in(conn, &job, &finish)
        })
        .await?;
    Ok(Finish::Settled)
}

/// Moves one grant one or more steps along its life.
/// `read` is the grant as read at the claim, if it was.
async fn run_grant_job(
    ctx: &Arc<Context>,
    job: &JobRow,
    read: Option<GrantRow>,
    lease: &Lease,
) -> Result<Finish, StoreError> {
    let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
    let Some(id) = payload
        .get("grant_id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
    else {
        return Ok(Finish::Done);
    };
    let cleanup = payload
        .get("cleanup")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
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
                match blocking(ctx, move |db| db.read(|c| crate::grants::get(c, &gid))).await? {
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
                let Some(answer) = call_leased(ctx, lease, &g, Action::Grant).await else {
                    return Ok(Finish::Lost);
                };
                match answer {
                    Ok(()) => {
                        let step = Step::new(GrantState::Granting, GrantState::Active, now).then(
                            job,
                            Finish::At {
                                run_at: expires_at,
                                attempts: 0,
                                error: None,
                            },
                        );
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
                                .then(job, Finish::Gone);
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
                                db.write(|c| {
                                    enqueue(
                                        c,
                                        GRANT,
                                        &format!("grant:{gid}"),
                                        &json!({ "grant_id": gid, "cleanup": true }).to_string(),
                                        now,
                                        now,
                                    )
                                })
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
                return Ok(Finish::At {
                    run_at: expires_at,
                    attempts: 0,
                    error: None,
                });
            }
            GrantState::Revoking => match call_leased(ctx, lease, &g, Action::Revoke).await {
                None => return Ok(Finish::Lost),
                Some(Ok(())) => {
                    let step = Step::new(GrantState::Revoking, GrantState::Revoked, now)
                        .then(job, Finish::Gone);
                    if transition(ctx, &g, step).await? {
                        if g.revoke_reason.as_deref() == Some(RevokeReason::Expired.as_str()) {
                            let lag =
                                (now - expires_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
                            ctx.metrics.revocation_lag.observe(lag.max(0.0));
                        }
                        return Ok(Finish::Settled);
                    }
                }
                Some(Err(e)) => {
                    return retry_later(ctx, &g, "revoke.failed", attempts, e.to_string(), now)
                        .await;
                }
            },
            GrantState::Failed if cleanup => {
                match call_leased(ctx, lease, &g, Action::Revoke).await {
                    None => return Ok(Finish::Lost),
                    Some(Ok(())) => {
                        audit_only(ctx, &g, "grant.cleaned_up", json!({}), now).await?;
                        return Ok(Finish::Gone);
                    }
                    Some(Err(e)) => {
                        let msg = e.to_string();
                        return Ok(Finish::At {
                            run_at: now + backoff(ctx, attempts),
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
    ctx
        .commit
        .submit(&key, now, move |conn, events| {
            let at = to_micros(now);
            let reason = RevokeReason::Expired.as_str();
            let n = dispatch!(conn, c => diesel::update(grants::table.find(&g.id).filter(grants::state.eq(&g.state)))
                .set((
                    grants::state.eq(GrantState::Revoking.as_str()),
                    grants::revoke_reason.eq(reason),
                    grants::updated_at.eq(at),
                ))
                .execute(c))?;
            if n == 0 {
                return Ok(None);
            }
            events.push(
                NewEvent::new(
                    "revoke.requested",
                    "timer",
                    json!({ "reason": RevokeReason::Expired, "from": g.state, "note": null }),
                )
                .ticket(&g.ticket)
                .grant(&g.id),
            );
            Ok(Some(GrantRow {
                state: GrantState::Revoking.to_string(),
                revoke_reason: Some(reason.to_string()),
                updated_at: at,
                ..g.clone()
            }))
        })
        .await
}

/// One step of a grant's life: from one state to the next, and optionally
/// the job's own row settled in the same transaction.
struct Step {
    from: GrantState,
    to: GrantState,
    now: DateTime<Utc>,
    failure: Option<String>,
    then: Option<(JobRow, Finish)>,
}

impl Step {
    fn new(from: GrantState, to: GrantState, now: DateTime<Utc>) -> Step {
        Step {
            from,
            to,
            now,
            failure: None,
            then: None,
        }
    }
    fn failure(mut self, why: &str) -> Step {
        self.failure = Some(why.to_string());
        self
    }
    fn then(mut self, job: &JobRow, how: Finish) -> Step {
        self.then = Some((job.clone(), how));
        self
    }
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
            let Step {
                from,
                to,
                ref failure,
                ref then,
                ..
            } = step;
            let at = to_micros(now);
            // The step's own column changes with the state, in one statement.
            let activated_at = if to == GrantState::Active {
                Some(at)
            } else {
                g.activated_at
            };
            let revoked_at = if to == GrantState::Revoked {
                Some(at)
            } else {
                g.revoked_at
            };
            let failed = if to == GrantState::Failed {
                failure.clone()
            } else {
                g.failure.clone()
            };
            let moved = GrantMove {
                id: &g.id,
                from,
                to,
                at,
                activated_at,
                revoked_at,
                failure: failed.as_deref(),
            };
            if !take_step(conn, &moved, then.as_ref())? {
                return Ok(false);
            }
            let (kind, data) = match to {
                GrantState::Active => {
                    let active = GrantRow {
                        activated_at: Some(at),
                        ..g.clone()
                    };
                    crate::backlinks::enqueue(
                        conn,
                        &config,
                        now,
                        &g.ticket,
                        &crate::backlinks::granted(&active),
                    )?;
                    (
                        "grant.applied",
                        json!({ "resource": g.resource, "account": g.account }),
                    )
                }
                GrantState::Revoked => {
                    let reason = g.revoke_reason.clone().unwrap_or_default();
                    crate::backlinks::enqueue(
                        conn,
                        &config,
                        now,
                        &g.ticket,
                        &crate::backlinks::revoked(&g, &reason),
                    )?;
                    (
                        "grant.revoked",
                        json!({ "reason": g.revoke_reason, "applied": true }),
                    )
                }
                GrantState::Failed => ("grant.failed", json!({ "error": failure })),
                GrantState::Granting => ("grant.starting", json!({})),
                other => ("grant.state", json!({ "ctx": other })),
            };
            events.push(
                NewEvent::new(kind, "warrant", data)
                    .ticket(&g.ticket)
                    .grant(&g.id),
            );
            Ok(true)
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
        run_at: now + backoff(ctx, attempts),
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
    let sql = "SELECT g.id FROM grants g WHERE g.state IN ('pending', 'granting', 'active', 'revoking') \
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.dedupe_key = 'grant:' || g.id) LIMIT 1000";
    let orphans: Vec<Orphan> =
        db.read(|conn| Ok(dispatch!(conn, c => diesel::sql_query(sql).load(c))?))?;
    if orphans.is_empty() {
        return Ok(0);
    }
    db.write(|conn| {
        for o in &orphans {
            tracing::warn!(grant = %o.id, "grant had no job; rescheduling");
            enqueue_grant(conn, &o.id, now, now)?;
        }
        Ok(orphans.len())
    })
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
        if let Err(e) = blocking(&ctx, move |db| sweep(db, now)).await {
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
