//! The `grants` table on both backends: the row, its reads, and a step
//! from one state to the next (taken only if the grant is still in the
//! first, its job's row settled in the same transaction). On PostgreSQL a
//! step changes both rows in one statement: it is the commonest write
//! after intake, and each statement is a round trip inside the batch.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};

use super::jobs::{release, settle, Settle};
use super::prepared::Statement;
use super::schema::grants;
use super::{Conn, StoreError};
use crate::dispatch;
use crate::domain::{to_micros, GrantState};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq, Eq)]
#[diesel(table_name = grants)]
pub struct GrantRow {
    pub id: String,
    pub ticket: String,
    pub subject: String,
    pub account: String,
    pub resource: String,
    pub state: String,
    pub origin: String,
    pub starts_at: i64,
    pub expires_at: i64,
    pub activated_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
    pub failure: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl GrantRow {
    pub fn state(&self) -> GrantState {
        self.state.parse().unwrap_or(GrantState::Failed)
    }
}

/// The states in which a grant may still be (or become) applied.
pub const LIVE: [&str; 3] = ["pending", "granting", "active"];

pub fn get(conn: &mut Conn<'_>, id: &str) -> Result<Option<GrantRow>, StoreError> {
    Ok(dispatch!(conn, c => grants::table
        .find(id)
        .select(GrantRow::as_select())
        .first(c)
        .optional())?)
}

/// The grants with these ids (those that exist), in no order.
pub fn by_ids(conn: &mut Conn<'_>, ids: &[String]) -> Result<Vec<GrantRow>, StoreError> {
    Ok(dispatch!(conn, c => grants::table
        .filter(grants::id.eq_any(ids))
        .select(GrantRow::as_select())
        .load(c))?)
}

pub fn of_ticket(conn: &mut Conn<'_>, ticket: &str) -> Result<Vec<GrantRow>, StoreError> {
    Ok(dispatch!(conn, c => grants::table
        .filter(grants::ticket.eq(ticket))
        .order(grants::created_at.asc())
        .select(GrantRow::as_select())
        .load(c))?)
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub ticket: Option<String>,
    pub subject: Option<String>,
    pub resource: Option<String>,
    pub state: Option<GrantState>,
    /// Active at this instant: activated at or before it, not yet revoked.
    pub active_at: Option<DateTime<Utc>>,
    pub after: Option<String>,
    pub limit: i64,
}

pub fn list(conn: &mut Conn<'_>, f: &Filter) -> Result<Vec<GrantRow>, StoreError> {
    macro_rules! query {
        ($c:expr) => {{
            let mut q = grants::table.select(GrantRow::as_select()).into_boxed();
            if let Some(t) = &f.ticket {
                q = q.filter(grants::ticket.eq(t));
            }
            if let Some(s) = &f.subject {
                q = q.filter(grants::subject.eq(s));
            }
            if let Some(r) = &f.resource {
                q = q.filter(grants::resource.eq(r));
            }
            if let Some(s) = f.state {
                q = q.filter(grants::state.eq(s.as_str()));
            }
            if let Some(at) = f.active_at {
                let at = to_micros(at);
                q = q
                    .filter(grants::activated_at.le(at))
                    .filter(grants::revoked_at.is_null().or(grants::revoked_at.gt(at)));
            }
            if let Some(after) = &f.after {
                q = q.filter(grants::id.gt(after));
            }
            q.order(grants::id.asc()).limit(f.limit).load($c)
        }};
    }
    Ok(dispatch!(conn, c => query!(c))?)
}

/// Moves a live grant's window in place (a narrowing, or an approved
/// extension); answers whether the grant was still live.
pub fn set_window(
    conn: &mut Conn<'_>,
    id: &str,
    starts_at: i64,
    expires_at: i64,
    at: i64,
) -> Result<bool, StoreError> {
    let n = dispatch!(conn, c => diesel::update(grants::table.find(id))
        .filter(grants::state.eq_any(LIVE))
        .set((
            grants::starts_at.eq(starts_at),
            grants::expires_at.eq(expires_at),
            grants::updated_at.eq(at),
        ))
        .execute(c))?;
    Ok(n > 0)
}

/// A grant's row moving from one state to the next.
pub struct GrantMove<'a> {
    pub id: &'a str,
    pub from: GrantState,
    pub to: GrantState,
    pub at: i64,
    pub activated_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub failure: Option<&'a str>,
}

/// Moves the grant if it is still in `from` and, only then, settles the
/// job as `then` says; answers whether the grant moved.
pub fn take_step(
    conn: &mut Conn<'_>,
    m: &GrantMove<'_>,
    then: Option<&Settle>,
) -> Result<bool, StoreError> {
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
        if let Some(how) = then {
            settle(conn, how)?;
        }
        return Ok(true);
    };
    const GRANT: &str = "WITH g AS (UPDATE grants SET state = $1, updated_at = $2, \
        activated_at = $3, revoked_at = $4, failure = $5 WHERE id = $6 AND state = $7 RETURNING 1)";
    const COUNTS: &str =
        "SELECT (SELECT count(*) FROM g) AS grant, (SELECT count(*) FROM j) AS job";
    fn bind_grant<'s>(q: Statement<'s>, m: &'s GrantMove<'_>) -> Statement<'s> {
        q.bind::<Text, _>(m.to.as_str())
            .bind::<BigInt, _>(m.at)
            .bind::<Nullable<BigInt>, _>(m.activated_at)
            .bind::<Nullable<BigInt>, _>(m.revoked_at)
            .bind::<Nullable<Text>, _>(m.failure)
            .bind::<Text, _>(m.id)
            .bind::<Text, _>(m.from.as_str())
    }
    let Some(how) = then else {
        let sql = format!("{GRANT} SELECT count(*) AS grant, 0::bigint AS job FROM g");
        let n = bind_grant(Statement::new(&sql), m).get_result::<Moved>(&mut **c)?;
        return Ok(n.grant > 0);
    };
    let moved: Moved = match how {
        Settle::Delete { id, version } => {
            let sql = format!(
                "{GRANT}, j AS (DELETE FROM jobs WHERE id = $8 AND version = $9 \
                 AND EXISTS (SELECT 1 FROM g) RETURNING 1) {COUNTS}"
            );
            bind_grant(Statement::new(&sql), m)
                .bind::<BigInt, _>(*id)
                .bind::<BigInt, _>(*version)
                .get_result(&mut **c)?
        }
        Settle::Drop { id } => {
            // `$9` stays bound (and unused) so the text is the one it always was.
            let sql = format!(
                "{GRANT}, j AS (DELETE FROM jobs WHERE id = $8 \
                 AND EXISTS (SELECT 1 FROM g) RETURNING 1) {COUNTS}"
            );
            bind_grant(Statement::new(&sql), m)
                .bind::<BigInt, _>(*id)
                .bind::<BigInt, _>(0i64)
                .get_result(&mut **c)?
        }
        Settle::Reschedule {
            id,
            version,
            run_at,
            attempts,
            error,
        } => {
            let sql = format!(
                "{GRANT}, j AS (UPDATE jobs SET run_at = $10, attempts = $11, last_error = $12, \
                 locked_by = NULL, locked_until = NULL WHERE id = $8 AND version = $9 \
                 AND EXISTS (SELECT 1 FROM g) RETURNING 1) {COUNTS}"
            );
            bind_grant(Statement::new(&sql), m)
                .bind::<BigInt, _>(*id)
                .bind::<BigInt, _>(*version)
                .bind::<BigInt, _>(*run_at)
                .bind::<Integer, _>(*attempts)
                .bind::<Nullable<Text>, _>(error.as_deref())
                .get_result(&mut **c)?
        }
    };
    if moved.grant == 0 {
        return Ok(false);
    }
    if moved.job == 0 && !matches!(how, Settle::Drop { .. }) {
        // As in `settle`: someone rescheduled the job while it ran; their
        // schedule wins and only the lease is released.
        release(conn, how.job())?;
    }
    Ok(true)
}
