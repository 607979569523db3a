//! The checkpoints the replicas have made, on both backends: the next one
//! is decided under a lock (a PostgreSQL advisory lock; SQLite's single
//! writer), so two replicas never make two for one chain length nor leave
//! a gap between them.

use diesel::prelude::*;

use super::schema::audit_checkpoints;
use super::{Conn, StoreError};
use crate::dispatch;

/// Namespaces the checkpoint lock among other advisory-lock users.
const CHECKPOINT_LOCK: i64 = 7_426_210_006;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_checkpoints)]
pub struct CheckpointRow {
    pub seq: i64,
    /// The checkpoint as its file holds it (JSON).
    pub body: String,
    /// Its own hash, which the next checkpoint names as `prev`.
    pub digest: String,
    pub created_at: i64,
}

/// Holds the checkpoint lock until the caller's transaction ends.
pub fn lock(conn: &mut Conn<'_>) -> Result<(), StoreError> {
    if let Conn::Postgres(c) = conn {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({CHECKPOINT_LOCK})"))
            .execute(&mut **c)?;
    }
    Ok(())
}

/// The latest checkpoint.
pub fn last(conn: &mut Conn<'_>) -> Result<Option<CheckpointRow>, StoreError> {
    Ok(dispatch!(conn, c => audit_checkpoints::table
        .order(audit_checkpoints::seq.desc())
        .select(CheckpointRow::as_select())
        .first(c)
        .optional())?)
}

pub fn insert(conn: &mut Conn<'_>, row: &CheckpointRow) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::insert_into(audit_checkpoints::table).values(row).execute(c))?;
    Ok(())
}

/// Checkpoints after `seq`, oldest first, at most `limit`.
pub fn after(conn: &mut Conn<'_>, seq: i64, limit: i64) -> Result<Vec<CheckpointRow>, StoreError> {
    Ok(dispatch!(conn, c => audit_checkpoints::table
        .filter(audit_checkpoints::seq.gt(seq))
        .order(audit_checkpoints::seq.asc())
        .limit(limit)
        .select(CheckpointRow::as_select())
        .load(c))?)
}

/// The chain's event hash at `seq`, if the chain holds that event.
pub fn event_hash_at(conn: &mut Conn<'_>, seq: i64) -> Result<Option<String>, StoreError> {
    use super::schema::audit_events;
    Ok(dispatch!(conn, c => audit_events::table
        .filter(audit_events::seq.eq(seq))
        .select(audit_events::hash)
        .first(c)
        .optional())?)
}
