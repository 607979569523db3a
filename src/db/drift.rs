//! Drift in storage: the findings (`drift_findings`, at most one open per
//! access), the live grants a check compares with the providers, the
//! shared schedule (`drift_checks`), and the lock that lets one replica at
//! a time run a check. What a check does is `crate::drift`'s.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};

use super::schema::{drift_checks, drift_findings, grants};
use super::{Conn, Db, Pool, StoreError};
use crate::dispatch;

/// The PostgreSQL advisory lock a running check holds.
const CHECK_LOCK: i64 = 7_426_210_003;

/// A finding's `state`: still held (`open`), taken away by warrant
/// (`removed`), or gone or warranted since (`resolved`).
pub const OPEN: &str = "open";
pub const REMOVED: &str = "removed";
pub const RESOLVED: &str = "resolved";

/// The grant states in which a grant holds its access at the provider, or
/// is putting it there or taking it away: access they cover is not drift.
pub const HOLDING: [&str; 3] = ["granting", "active", "revoking"];

#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq, Eq)]
#[diesel(table_name = drift_findings)]
pub struct FindingRow {
    pub id: String,
    pub provider: String,
    pub account: String,
    pub target: String,
    pub found_at: i64,
    pub resolved_at: Option<i64>,
    pub state: String,
}

/// What a check needs of a grant: which access it covers, and in what state.
#[derive(Debug, Clone, Queryable, PartialEq, Eq)]
pub struct HeldBy {
    pub id: String,
    pub account: String,
    pub resource: String,
    pub state: String,
}

/// The open findings of `provider` (every provider when `None`), in `id`
/// order after `after`, at most `limit`.
pub fn open(
    conn: &mut Conn<'_>,
    provider: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<FindingRow>, StoreError> {
    macro_rules! query {
        ($c:expr) => {{
            let mut q = drift_findings::table
                .filter(drift_findings::resolved_at.is_null())
                .select(FindingRow::as_select())
                .into_boxed();
            if let Some(p) = provider {
                q = q.filter(drift_findings::provider.eq(p));
            }
            if let Some(a) = after {
                q = q.filter(drift_findings::id.gt(a));
            }
            q.order(drift_findings::id.asc()).limit(limit).load($c)
        }};
    }
    Ok(dispatch!(conn, c => query!(c))?)
}

/// Open findings per provider.
pub fn open_counts(conn: &mut Conn<'_>) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(dispatch!(conn, c => drift_findings::table
        .filter(drift_findings::resolved_at.is_null())
        .group_by(drift_findings::provider)
        .select((drift_findings::provider, diesel::dsl::count_star()))
        .load(c))?)
}

/// Records new findings; answers the ids of those written. One already
/// open for the same access (another check got there first) is skipped.
/// On PostgreSQL one statement per thousand rows, the columns bound as
/// arrays; on SQLite one prepared single-row statement per row, which
/// needs no statement journal (a multi-row insert that may stop half way
/// keeps one).
pub fn insert(conn: &mut Conn<'_>, rows: &[FindingRow]) -> Result<Vec<String>, StoreError> {
    let mut written = Vec::with_capacity(rows.len());
    match conn {
        Conn::Postgres(c) => {
            use diesel::sql_types::{Array, BigInt, Text};
            #[derive(QueryableByName)]
            struct Id {
                #[diesel(sql_type = Text)]
                id: String,
            }
            let col = |f: fn(&FindingRow) -> &str, chunk: &[FindingRow]| {
                chunk.iter().map(|r| f(r).to_string()).collect::<Vec<_>>()
            };
            for chunk in rows.chunks(1000) {
                let ids: Vec<Id> = super::prepared::Statement::new(
                    "INSERT INTO drift_findings (id, provider, account, target, found_at, state) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                     $5::bigint[], $6::text[]) \
                     ON CONFLICT DO NOTHING RETURNING id",
                )
                .bind::<Array<Text>, _>(col(|r| &r.id, chunk))
                .bind::<Array<Text>, _>(col(|r| &r.provider, chunk))
                .bind::<Array<Text>, _>(col(|r| &r.account, chunk))
                .bind::<Array<Text>, _>(col(|r| &r.target, chunk))
                .bind::<Array<BigInt>, _>(chunk.iter().map(|r| r.found_at).collect::<Vec<i64>>())
                .bind::<Array<Text>, _>(col(|r| &r.state, chunk))
                .load(&mut **c)?;
                written.extend(ids.into_iter().map(|i| i.id));
            }
        }
        Conn::Sqlite(c) => {
            for row in rows {
                let n = diesel::insert_into(drift_findings::table)
                    .values(row)
                    .on_conflict_do_nothing()
                    .execute(&mut **c)?;
                if n > 0 {
                    written.push(row.id.clone());
                }
            }
        }
    }
    Ok(written)
}

/// Closes those of the findings `ids` that are still open, as `state` at
/// `at`; answers the rows it closed.
pub fn close(
    conn: &mut Conn<'_>,
    ids: &[String],
    state: &str,
    at: i64,
) -> Result<Vec<FindingRow>, StoreError> {
    let mut closed = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let rows: Vec<FindingRow> = dispatch!(conn, c => diesel::update(
            drift_findings::table
                .filter(drift_findings::id.eq_any(chunk))
                .filter(drift_findings::resolved_at.is_null()),
        )
        .set((
            drift_findings::resolved_at.eq(at),
            drift_findings::state.eq(state),
        ))
        .returning(FindingRow::as_returning())
        .get_results(c))?;
        closed.extend(rows);
    }
    Ok(closed)
}

/// The grants of `provider` in one of `states`, in one query.
pub fn grants_in(
    conn: &mut Conn<'_>,
    provider: &str,
    states: &[&str],
) -> Result<Vec<HeldBy>, StoreError> {
    let prefix = format!("{provider}/");
    // `_` in a provider name matches any character in LIKE: the prefix is
    // checked exactly below.
    let rows: Vec<HeldBy> = dispatch!(conn, c => grants::table
        .filter(grants::state.eq_any(states))
        .filter(grants::resource.like(format!("{prefix}%")))
        .select((grants::id, grants::account, grants::resource, grants::state))
        .load(c))?;
    Ok(rows
        .into_iter()
        .filter(|g| g.resource.starts_with(&prefix))
        .collect())
}

/// Whether a grant in a holding state covers `account` on `resource` now.
pub fn covered(conn: &mut Conn<'_>, resource: &str, account: &str) -> Result<bool, StoreError> {
    let n: i64 = dispatch!(conn, c => grants::table
        .filter(grants::state.eq_any(HOLDING))
        .filter(grants::resource.eq(resource))
        .filter(grants::account.eq(account))
        .count()
        .get_result(c))?;
    Ok(n > 0)
}

/// When the last check ran (microseconds; 0 before the first).
pub fn last_check(conn: &mut Conn<'_>) -> Result<i64, StoreError> {
    let at: Option<i64> = dispatch!(conn, c => drift_checks::table
        .filter(drift_checks::id.eq(1))
        .select(drift_checks::checked_at)
        .first(c)
        .optional())?;
    Ok(at.unwrap_or(0))
}

pub fn set_last_check(conn: &mut Conn<'_>, at: i64) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::update(drift_checks::table.filter(drift_checks::id.eq(1)))
        .set(drift_checks::checked_at.eq(at))
        .execute(c))?;
    Ok(())
}

/// The right to run a check, held until dropped. On PostgreSQL a session
/// advisory lock on a connection kept for the purpose: a replica that dies
/// mid-check loses its session and the lock with it. SQLite serves one
/// process, whose loop runs one check at a time.
pub struct CheckLock {
    held: Option<PooledConnection<ConnectionManager<PgConnection>>>,
}

impl std::fmt::Debug for CheckLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckLock(held: {})", self.held.is_some())
    }
}

impl Drop for CheckLock {
    fn drop(&mut self) {
        if let Some(mut c) = self.held.take() {
            if let Err(e) = c.batch_execute(&format!("SELECT pg_advisory_unlock({CHECK_LOCK})")) {
                // A broken connection has lost its session, and the lock
                // with it.
                tracing::warn!(error = %e, "cannot release the drift check lock");
            }
        }
    }
}

impl Db {
    /// Takes the check lock if no other process holds it (`None` if one
    /// does). Blocks: call it off the async threads, and drop the lock
    /// there too.
    pub fn try_drift_lock(&self) -> Result<Option<CheckLock>, StoreError> {
        #[derive(QueryableByName)]
        struct Got {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            got: bool,
        }
        match &self.pool {
            Pool::Sqlite(..) => Ok(Some(CheckLock { held: None })),
            Pool::Postgres(p) => {
                let mut c = p.get()?;
                let got: Got =
                    diesel::sql_query(format!("SELECT pg_try_advisory_lock({CHECK_LOCK}) AS got"))
                        .get_result(&mut *c)?;
                Ok(got.got.then_some(CheckLock { held: Some(c) }))
            }
        }
    }
}
