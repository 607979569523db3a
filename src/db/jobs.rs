//! The `jobs` table on both backends: upserting a job by its dedupe key,
//! claiming due jobs under a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL; SQLite has one writer), renewing a lease, settling a run.
//! On PostgreSQL leases are measured on the server's clock, so replicas'
//! clocks need not agree; SQLite's one process has one clock. What a job
//! means is `jobs`' business; this file only stores rows.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::schema::jobs;
use super::{Conn, Db, StoreError};
use crate::dispatch;
use crate::domain::{from_micros, to_micros};

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

/// Schedules a job at `run_at`, or moves the job with the same dedupe key
/// there, resetting its attempts.
pub fn upsert(
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

/// Brings the jobs with these dedupe keys forward to `now` if they were
/// due later; a job being run keeps its lease and its version.
pub fn wake(
    conn: &mut Conn<'_>,
    dedupe_keys: &[String],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if dedupe_keys.is_empty() {
        return Ok(());
    }
    let now = to_micros(now);
    dispatch!(conn, c => diesel::update(
        jobs::table
            .filter(jobs::dedupe_key.eq_any(dedupe_keys))
            .filter(jobs::run_at.gt(now)),
    )
    .set(jobs::run_at.eq(now))
    .execute(c))?;
    Ok(())
}

/// Deletes the job with this dedupe key, if there is one.
pub fn delete_by_key(conn: &mut Conn<'_>, dedupe_key: &str) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::delete(jobs::table.filter(jobs::dedupe_key.eq(dedupe_key))).execute(c))?;
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
pub enum LeaseClock {
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
    pub fn of(conn: &Conn<'_>) -> LeaseClock {
        match conn {
            Conn::Postgres(_) => LeaseClock::Database,
            Conn::Sqlite(_) => LeaseClock::Caller,
        }
    }
}

/// Whether a claim should share the next group-commit batch's transaction
/// (and its one WAL flush) instead of committing on its own: on
/// PostgreSQL, yes; SQLite's one writer gains nothing by it.
pub fn claims_share_batch(db: &Db) -> bool {
    db.backend() == "postgres"
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<i64, StoreError> {
    now.checked_add_signed(lease).map(to_micros).ok_or_else(|| {
        StoreError::Corrupt(format!("a lease of {lease} from {now} is out of range"))
    })
}

fn lease_micros(lease: Duration) -> Result<i64, StoreError> {
    lease
        .num_microseconds()
        .ok_or_else(|| StoreError::Corrupt(format!("a lease of {lease} is out of range")))
}

#[derive(QueryableByName)]
struct JobId {
    #[diesel(sql_type = BigInt)]
    #[allow(dead_code)]
    id: i64,
}

/// Takes up to `limit` due jobs for this instance, under a lease measured
/// from `now`, in one statement. A leased job's `run_at` moves to the
/// lease's end (when it is due again if its runner died), so the search
/// for due jobs walks past none of the jobs already running: a burst of
/// expiries costs each claim the same, not more the longer the burst.
/// (The runner on PostgreSQL measures its leases on the server's clock
/// instead; see `jobs::claim::claim_due`.)
pub fn claim(
    db: &Db,
    instance: &str,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
) -> Result<Vec<JobRow>, StoreError> {
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
pub fn claim_in(
    conn: &mut Conn<'_>,
    instance: &str,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
    clock: LeaseClock,
) -> Result<Vec<JobRow>, StoreError> {
    let now_us = to_micros(now);
    let until = lease_end(now, lease)?;
    let lease_us = lease_micros(lease)?;
    let mut claimed: Vec<JobRow> = match (conn, clock) {
        (Conn::Postgres(c), LeaseClock::Database) => {
            let sql = format!(
                "UPDATE jobs SET locked_by = $3, locked_until = (SELECT {PG_NOW}) + $5, run_at = $4 \
                 WHERE id IN (SELECT id FROM jobs WHERE run_at <= $1 \
                 AND (locked_until IS NULL OR locked_until < (SELECT {PG_NOW})) \
                 ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED) {RETURNING}"
            );
            super::prepared::Statement::new(&sql)
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
            super::prepared::Statement::new(&sql)
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
pub enum Renewal {
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
pub fn renew(
    db: &Db,
    job: i64,
    instance: &str,
    held: i64,
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<Renewal, StoreError> {
    #[derive(QueryableByName)]
    struct Until {
        #[diesel(sql_type = BigInt)]
        locked_until: i64,
    }
    let renewed: Vec<Until> = if db.backend() == "postgres" {
        let lease_us = lease_micros(lease)?;
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
                    #[diesel(sql_type = Nullable<BigInt>)]
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

/// How a run leaves its job's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done: deleted, unless someone rescheduled it meanwhile (`version`).
    Delete { id: i64, version: i64 },
    /// Deleted whatever happened meanwhile.
    Drop { id: i64 },
    /// Due again at `run_at`, unless someone rescheduled it meanwhile.
    Reschedule {
        id: i64,
        version: i64,
        run_at: i64,
        attempts: i32,
        error: Option<String>,
    },
}

impl Settle {
    pub fn job(&self) -> i64 {
        match self {
            Settle::Delete { id, .. } | Settle::Drop { id } | Settle::Reschedule { id, .. } => *id,
        }
    }
}

/// Settles the job's row inside the caller's transaction.
pub fn settle(conn: &mut Conn<'_>, how: &Settle) -> Result<(), StoreError> {
    let n = match how {
        Settle::Delete { id, version } => dispatch!(conn, c => diesel::delete(
            jobs::table.filter(jobs::id.eq(id)).filter(jobs::version.eq(version)),
        )
        .execute(c))?,
        Settle::Drop { id } => {
            dispatch!(conn, c => diesel::delete(jobs::table.filter(jobs::id.eq(id))).execute(c))?
                .max(1)
        }
        Settle::Reschedule {
            id,
            version,
            run_at,
            attempts,
            error,
        } => dispatch!(conn, c => diesel::update(
            jobs::table.filter(jobs::id.eq(id)).filter(jobs::version.eq(version)),
        )
        .set((
            jobs::run_at.eq(run_at),
            jobs::attempts.eq(attempts),
            jobs::last_error.eq(error),
            jobs::locked_by.eq(None::<String>),
            jobs::locked_until.eq(None::<i64>),
        ))
        .execute(c))?,
    };
    if n == 0 {
        release(conn, how.job())?;
    }
    Ok(())
}

/// Someone rescheduled the job while it ran (a revocation, say): their
/// schedule wins; only the lease is released.
pub fn release(conn: &mut Conn<'_>, id: i64) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::update(jobs::table.filter(jobs::id.eq(id)))
        .set((jobs::locked_by.eq(None::<String>), jobs::locked_until.eq(None::<i64>)))
        .execute(c))?;
    Ok(())
}
