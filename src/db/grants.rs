//! Grant steps on both backends: a grant's row moves from one state to the
//! next only if it is still in the first, and its job's row is settled in
//! the same transaction. On PostgreSQL both rows change in one statement:
//! a grant step is the commonest write after intake, and each statement is
//! a round trip inside the batch.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};

use super::jobs::{release, settle, Settle};
use super::prepared::Statement;
use super::schema::grants;
use super::{Conn, StoreError};
use crate::dispatch;
use crate::domain::GrantState;

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
