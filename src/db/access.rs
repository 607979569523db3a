//! The access ledger on both backends: which live grants hold one access
//! (provider/target and account), the lock under which a replica decides
//! whether to call the provider for it, and each grant's part in it
//! (`held`: its own call applied the access; `shared`: it rode on another's).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::grants::GrantRow;
use super::schema::{grant_access, grants};
use super::{Conn, StoreError};
use crate::dispatch;
use crate::domain::GrantState;

/// Namespaces the access locks among other advisory-lock users (the ticket
/// locks use their own seed).
const ACCESS_LOCK_SEED: i64 = 7_426_210_005;

/// A grant's part in its access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Its own provider call applied the access.
    Held,
    /// Another live grant's call applied it; this one rides on it.
    Shared,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Held => "held",
            Role::Shared => "shared",
        }
    }
}

/// What the ledger records of one grant.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = grant_access)]
pub struct AccessRow {
    pub grant_id: String,
    pub role: String,
    pub preexisting: bool,
    pub updated_at: i64,
    /// The end the provider was last told, for access that carries one.
    pub told_until: Option<i64>,
}

/// Locks the access `resource` × `account` until the caller's transaction
/// ends. On SQLite the single writer's transaction is the lock.
pub fn lock(conn: &mut Conn<'_>, resource: &str, account: &str) -> Result<(), StoreError> {
    let Conn::Postgres(c) = conn else {
        return Ok(());
    };
    // The separator (a control character) cannot occur in a resource the
    // decisions accept, so two accesses never share a key by concatenation.
    let key = format!("{resource}\u{1f}{account}");
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
        .bind::<Text, _>(key)
        .bind::<BigInt, _>(ACCESS_LOCK_SEED)
        .execute(&mut **c)?;
    Ok(())
}

/// The other grants of the same access as `g` that hold it or are about
/// to (granting, active, revoking), in no order: one indexed read, however
/// many questions the ledger asks of them. Without an ORDER BY on purpose:
/// SQLite would walk `grants_live_expiry` (state, expires_at) through every
/// grant in those states to find the few of this access.
pub fn others(conn: &mut Conn<'_>, g: &GrantRow) -> Result<Vec<GrantRow>, StoreError> {
    Ok(dispatch!(conn, c => grants::table
        .filter(grants::resource.eq(&g.resource))
        .filter(grants::account.eq(&g.account))
        .filter(grants::state.eq_any(HOLDING))
        .filter(grants::id.ne(&g.id))
        .limit(SHARING_LIMIT)
        .select(GrantRow::as_select())
        .load(c))?)
}

/// The states in which a grant holds its access at the provider, or is
/// about to.
const HOLDING: [&str; 3] = ["granting", "active", "revoking"];

/// Of `others`, the one in `state` that ends last.
pub fn last_ending(others: &[GrantRow], state: GrantState) -> Option<&GrantRow> {
    others.iter().filter(|o| o.state() == state).max_by(|a, b| {
        a.expires_at
            .cmp(&b.expires_at)
            .then_with(|| b.id.cmp(&a.id))
    })
}

/// Of `others`, those being applied now, oldest first.
pub fn granting(others: &[GrantRow]) -> Vec<&GrantRow> {
    let mut rows: Vec<&GrantRow> = others
        .iter()
        .filter(|o| o.state() == GrantState::Granting)
        .collect();
    rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    rows
}

/// How many grants of one access in one state are looked at: more than
/// any real sharing; past it the choice among them is merely arbitrary.
const SHARING_LIMIT: i64 = 1000;

/// The live grants (pending through revoking) holding an access, oldest
/// first.
pub fn holding(
    conn: &mut Conn<'_>,
    resource: &str,
    account: &str,
) -> Result<Vec<GrantRow>, StoreError> {
    Ok(dispatch!(conn, c => grants::table
        .filter(grants::resource.eq(resource))
        .filter(grants::account.eq(account))
        .filter(grants::state.eq_any(["pending", "granting", "active", "revoking"]))
        .order((grants::created_at.asc(), grants::id.asc()))
        .select(GrantRow::as_select())
        .load(c))?)
}

/// Records grant `id`'s part in its access; `preexisting` is kept once set.
pub fn set_role(
    conn: &mut Conn<'_>,
    id: &str,
    role: Role,
    preexisting: bool,
    at: i64,
) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::insert_into(grant_access::table)
        .values((
            grant_access::grant_id.eq(id),
            grant_access::role.eq(role.as_str()),
            grant_access::preexisting.eq(preexisting),
            grant_access::updated_at.eq(at),
        ))
        .on_conflict(grant_access::grant_id)
        .do_update()
        .set((
            grant_access::role.eq(role.as_str()),
            grant_access::updated_at.eq(at),
        ))
        .execute(c))?;
    if preexisting {
        dispatch!(conn, c => diesel::update(grant_access::table.find(id))
            .set(grant_access::preexisting.eq(true))
            .execute(c))?;
    }
    Ok(())
}

/// Records that the provider is being told grant `id`'s access lasts
/// until `until`.
pub fn set_told(conn: &mut Conn<'_>, id: &str, until: i64) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::update(grant_access::table.find(id))
        .set(grant_access::told_until.eq(until))
        .execute(c))?;
    Ok(())
}

pub fn get(conn: &mut Conn<'_>, id: &str) -> Result<Option<AccessRow>, StoreError> {
    Ok(dispatch!(conn, c => grant_access::table
        .find(id)
        .select(AccessRow::as_select())
        .first(c)
        .optional())?)
}

/// The ledger rows of these grants (those that have one).
pub fn of(conn: &mut Conn<'_>, ids: &[String]) -> Result<Vec<AccessRow>, StoreError> {
    Ok(dispatch!(conn, c => grant_access::table
        .filter(grant_access::grant_id.eq_any(ids))
        .select(AccessRow::as_select())
        .load(c))?)
}
