//! Generated signing keys in storage (`signing_keys`): the rows, the lock
//! under which a replica decides to make one, and the reads and writes of
//! a rotation. Which key to make and when is `providers::token`'s.

use diesel::prelude::*;

use super::schema::signing_keys;
use super::{Conn, StoreError};
use crate::dispatch;

/// Keeps two replicas from generating two keys at once (PostgreSQL).
const KEY_LOCK: i64 = 7_426_210_002;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys)]
pub struct KeyRow {
    pub kid: String,
    pub alg: String,
    pub private_pem: String,
    pub public_jwk: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// Holds the key lock until the caller's transaction ends: PostgreSQL's
/// advisory lock; SQLite has one writer, whose transaction is the lock.
pub fn lock(conn: &mut Conn<'_>) -> Result<(), StoreError> {
    if let Conn::Postgres(c) = conn {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({KEY_LOCK})")).execute(&mut **c)?;
    }
    Ok(())
}

/// The newest key not retired.
pub fn current(conn: &mut Conn<'_>) -> Result<Option<KeyRow>, StoreError> {
    Ok(dispatch!(conn, c => signing_keys::table
        .filter(signing_keys::retired_at.is_null())
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .select(KeyRow::as_select())
        .first(c)
        .optional())?)
}

pub fn insert(conn: &mut Conn<'_>, row: &KeyRow) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::insert_into(signing_keys::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// Sets `retired_at` on every key not yet retired but `kid`.
pub fn retire_all_but(conn: &mut Conn<'_>, kid: &str, retired_at: i64) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::update(
        signing_keys::table
            .filter(signing_keys::retired_at.is_null())
            .filter(signing_keys::kid.ne(kid)),
    )
    .set(signing_keys::retired_at.eq(retired_at))
    .execute(c))?;
    Ok(())
}

/// Every key not retired by `at`, newest first.
pub fn unretired(conn: &mut Conn<'_>, at: i64) -> Result<Vec<KeyRow>, StoreError> {
    Ok(dispatch!(conn, c => signing_keys::table
        .filter(signing_keys::retired_at.is_null().or(signing_keys::retired_at.gt(at)))
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .select(KeyRow::as_select())
        .load(c))?)
}
