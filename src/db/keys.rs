//! Generated signing keys in storage (`signing_keys`): the rows, the lock
//! under which a replica decides to make one (or seals the keys an older
//! version left in plain text), and the reads and writes of a rotation.
//! Which key to make and when, and the sealing itself, are
//! `providers::token`'s.

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
    /// The PKCS#8 PEM sealed under the `[keys]` key-encryption key
    /// (`sealed:v1:…`); versions before sealing wrote the PEM itself.
    #[diesel(column_name = private_pem)]
    pub private_key: String,
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

/// The `LIKE` pattern of a sealed value (`crypto::sealed`); anything else
/// is a PEM an older version wrote.
fn sealed_pattern() -> String {
    format!("{}%", crate::crypto::sealed::MARK)
}

/// Every key still in plain text, retired or not: sealing must reach them all.
pub fn unsealed(conn: &mut Conn<'_>) -> Result<Vec<KeyRow>, StoreError> {
    Ok(dispatch!(conn, c => signing_keys::table
        .filter(signing_keys::private_pem.not_like(sealed_pattern()))
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .select(KeyRow::as_select())
        .load(c))?)
}

/// The newest sealed key, retired or not.
pub fn newest_sealed(conn: &mut Conn<'_>) -> Result<Option<KeyRow>, StoreError> {
    Ok(dispatch!(conn, c => signing_keys::table
        .filter(signing_keys::private_pem.like(sealed_pattern()))
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .select(KeyRow::as_select())
        .first(c)
        .optional())?)
}

/// Replaces a key's stored private part (with its sealed form).
pub fn set_private_key(
    conn: &mut Conn<'_>,
    kid: &str,
    private_key: &str,
) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::update(signing_keys::table.filter(signing_keys::kid.eq(kid)))
        .set(signing_keys::private_pem.eq(private_key))
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
