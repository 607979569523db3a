//! Per-ticket locks: folding a delivery into a ticket, a CI request under
//! it and a re-decision each read the ticket, decide and write, and two
//! replicas doing that at once for one ticket could otherwise each decide
//! on what the other is about to overwrite. On PostgreSQL a transaction
//! takes an advisory lock per ticket key, held until it ends; SQLite has
//! one writer, whose write transaction is the lock.

use diesel::sql_types::{Array, Text};
use diesel::RunQueryDsl;

use super::{Conn, StoreError};

/// Namespaces warrant's ticket locks among other advisory-lock users.
const TICKET_LOCK_SEED: i64 = 7_426_210_002;

/// Locks `keys` (in any order, repeats allowed) until the caller's
/// transaction ends. The locks are taken in the order of their lock ids,
/// so two transactions locking overlapping sets never deadlock on them.
pub fn lock(conn: &mut Conn<'_>, keys: &[String]) -> Result<(), StoreError> {
    let Conn::Postgres(c) = conn else {
        return Ok(());
    };
    if keys.is_empty() {
        return Ok(());
    }
    // The inner query sorts before the outer one calls the function, so
    // the locks are taken in that order.
    super::prepared::Statement::new(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended(k, $2) AS h FROM unnest($1::text[]) AS k \
          ORDER BY h OFFSET 0) AS sorted",
    )
    .bind::<Array<Text>, _>(keys)
    .bind::<diesel::sql_types::BigInt, _>(TICKET_LOCK_SEED)
    .execute(&mut **c)?;
    Ok(())
}
