//! Tickets and their decisions in storage: the rows, the per-ticket
//! locks, the batch read of tickets beside their grants and the batch
//! write, each with its PostgreSQL form beside its SQLite form.
//!
//! Per-ticket locks: folding a delivery into a ticket, a CI request under
//! it and a re-decision each read the ticket, decide and write, and two
//! replicas doing that at once for one ticket could otherwise each decide
//! on what the other is about to overwrite. On PostgreSQL a transaction
//! takes an advisory lock per ticket key, held until it ends; SQLite has
//! one writer, whose write transaction is the lock.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{Array, Text};

use super::grants::GrantRow;
use super::schema::{decisions, grants, tickets};
use super::{Conn, StoreError};
use crate::dispatch;

/// Namespaces warrant's ticket locks among other advisory-lock users.
const TICKET_LOCK_SEED: i64 = 7_426_210_002;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = tickets)]
pub struct TicketRow {
    pub key: String,
    pub source: String,
    pub source_updated_at: i64,
    pub snapshot: String,
    pub decision: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = decisions)]
pub struct DecisionRow {
    pub id: i64,
    pub ticket: String,
    pub at: i64,
    pub outcome: String,
    pub reason: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = decisions)]
pub struct NewDecision {
    pub ticket: String,
    pub at: i64,
    pub outcome: String,
    pub reason: Option<String>,
    pub detail: String,
}

/// What a batch writes at its end: the changed tickets, the new decisions
/// and the grants decided but not yet inserted.
pub struct Batch<'a> {
    pub tickets: Vec<&'a TicketRow>,
    pub decisions: &'a [NewDecision],
    pub grants: &'a [GrantRow],
    /// Each new grant's job, as the job code writes it: on PostgreSQL the
    /// batch enqueues them inside its one statement.
    pub jobs: GrantJobs<'a>,
    /// A stored updated-at above this may be replaced by an older one (see
    /// the engine's `Tickets::heal_above`).
    pub heal_above: i64,
}

/// The rows of the new grants' jobs, in the order of `Batch::grants`. The
/// job code owns the kind, the keys and the payloads; storage only writes
/// them.
#[derive(Debug, Default)]
pub struct GrantJobs<'a> {
    pub kind: &'a str,
    pub dedupe_keys: Vec<String>,
    pub payloads: Vec<String>,
    pub run_at: Vec<i64>,
}

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

pub fn load(conn: &mut Conn<'_>, key: &str) -> Result<Option<TicketRow>, StoreError> {
    Ok(dispatch!(conn, c => tickets::table
        .find(key)
        .select(TicketRow::as_select())
        .first(c)
        .optional())?)
}

/// Every stored ticket's key, in order.
pub fn all_keys(conn: &mut Conn<'_>) -> Result<Vec<String>, StoreError> {
    Ok(dispatch!(conn, c => tickets::table
        .select(tickets::key)
        .order(tickets::key.asc())
        .load(c))?)
}

pub fn set_decision(conn: &mut Conn<'_>, key: &str, summary: &str) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::update(tickets::table.find(key))
        .set(tickets::decision.eq(summary))
        .execute(c))?;
    Ok(())
}

/// A ticket's decisions, oldest first.
pub fn decisions_of(conn: &mut Conn<'_>, key: &str) -> Result<Vec<DecisionRow>, StoreError> {
    Ok(dispatch!(conn, c => decisions::table
        .filter(decisions::ticket.eq(key))
        .order(decisions::id.asc())
        .select(DecisionRow::as_select())
        .load(c))?)
}

/// The stored tickets among `keys` and all their grants (oldest first). On
/// PostgreSQL one statement: each ticket's row beside each of its grants.
pub fn with_grants(
    conn: &mut Conn<'_>,
    keys: &[String],
) -> Result<(Vec<TicketRow>, Vec<GrantRow>), StoreError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    #[derive(QueryableByName)]
    struct Joined {
        #[diesel(sql_type = Nullable<Text>)]
        t_key: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        t_source: Option<String>,
        #[diesel(sql_type = Nullable<BigInt>)]
        t_source_updated_at: Option<i64>,
        #[diesel(sql_type = Nullable<Text>)]
        t_snapshot: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        t_decision: Option<String>,
        #[diesel(sql_type = Nullable<BigInt>)]
        t_created_at: Option<i64>,
        #[diesel(sql_type = Nullable<BigInt>)]
        t_updated_at: Option<i64>,
        #[diesel(sql_type = Nullable<Text>)]
        id: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        ticket: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        subject: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        account: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        resource: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        state: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        origin: Option<String>,
        #[diesel(sql_type = Nullable<BigInt>)]
        starts_at: Option<i64>,
        #[diesel(sql_type = Nullable<BigInt>)]
        expires_at: Option<i64>,
        #[diesel(sql_type = Nullable<BigInt>)]
        activated_at: Option<i64>,
        #[diesel(sql_type = Nullable<BigInt>)]
        revoked_at: Option<i64>,
        #[diesel(sql_type = Nullable<Text>)]
        revoke_reason: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        failure: Option<String>,
        #[diesel(sql_type = Nullable<BigInt>)]
        created_at: Option<i64>,
        #[diesel(sql_type = Nullable<BigInt>)]
        updated_at: Option<i64>,
    }
    let Conn::Postgres(c) = conn else {
        let tickets: Vec<TicketRow> = dispatch!(conn, c => tickets::table
            .filter(tickets::key.eq_any(keys))
            .select(TicketRow::as_select())
            .load(c))?;
        let grants: Vec<GrantRow> = dispatch!(conn, c => grants::table
            .filter(grants::ticket.eq_any(keys))
            .order(grants::created_at.asc())
            .select(GrantRow::as_select())
            .load(c))?;
        return Ok((tickets, grants));
    };
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    // Grants are probed one ticket at a time. `ticket = ANY($1)` is
    // estimated at 0.5% of the table per key until the table is analyzed,
    // which made a batch of twenty keys scan a table of a few thousand
    // grants whole (1 ms a batch); `OFFSET 0` keeps the planner from
    // flattening the lateral back into that join.
    let joined: Vec<Joined> = super::prepared::Statement::new(
        "SELECT t.key AS t_key, t.source AS t_source, t.source_updated_at AS t_source_updated_at, \
           t.snapshot AS t_snapshot, t.decision AS t_decision, t.created_at AS t_created_at, \
           t.updated_at AS t_updated_at, g.* \
         FROM unnest($1::text[]) AS k(key) \
         LEFT JOIN tickets t ON t.key = k.key \
         LEFT JOIN LATERAL (SELECT * FROM grants WHERE ticket = k.key OFFSET 0) g ON true \
         ORDER BY g.created_at",
    )
    .bind::<Array<Text>, _>(&keys)
    .load(&mut **c)?;
    let mut tickets: HashMap<String, TicketRow> = HashMap::new();
    let mut grants = Vec::new();
    let missing = |what: &str| StoreError::Corrupt(format!("a joined {what} column is null"));
    for j in joined {
        if let Some(key) = j.t_key {
            if let std::collections::hash_map::Entry::Vacant(slot) = tickets.entry(key.clone()) {
                slot.insert(TicketRow {
                    key,
                    source: j.t_source.ok_or_else(|| missing("ticket"))?,
                    source_updated_at: j.t_source_updated_at.ok_or_else(|| missing("ticket"))?,
                    snapshot: j.t_snapshot.ok_or_else(|| missing("ticket"))?,
                    decision: j.t_decision,
                    created_at: j.t_created_at.ok_or_else(|| missing("ticket"))?,
                    updated_at: j.t_updated_at.ok_or_else(|| missing("ticket"))?,
                });
            }
        }
        if let Some(id) = j.id {
            grants.push(GrantRow {
                id,
                ticket: j.ticket.ok_or_else(|| missing("grant"))?,
                subject: j.subject.ok_or_else(|| missing("grant"))?,
                account: j.account.ok_or_else(|| missing("grant"))?,
                resource: j.resource.ok_or_else(|| missing("grant"))?,
                state: j.state.ok_or_else(|| missing("grant"))?,
                origin: j.origin.ok_or_else(|| missing("grant"))?,
                starts_at: j.starts_at.ok_or_else(|| missing("grant"))?,
                expires_at: j.expires_at.ok_or_else(|| missing("grant"))?,
                activated_at: j.activated_at,
                revoked_at: j.revoked_at,
                revoke_reason: j.revoke_reason,
                failure: j.failure,
                created_at: j.created_at.ok_or_else(|| missing("grant"))?,
                updated_at: j.updated_at.ok_or_else(|| missing("grant"))?,
            });
        }
    }
    Ok((tickets.into_values().collect(), grants))
}

/// Writes a batch's changed tickets, new decisions and new grants. On
/// PostgreSQL one statement, which also enqueues each grant's job; on
/// SQLite `insert_grants` writes the grants and their jobs first.
pub fn flush(
    conn: &mut Conn<'_>,
    b: &Batch<'_>,
    insert_grants: impl FnOnce(&mut Conn<'_>, &[GrantRow]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if let Conn::Postgres(c) = conn {
        return flush_postgres(c, b);
    }
    insert_grants(conn, b.grants)?;
    for &r in &b.tickets {
        dispatch!(conn, c => diesel::insert_into(tickets::table)
            .values(r.clone())
            .on_conflict(tickets::key)
            .do_update()
            .set((
                tickets::snapshot.eq(&r.snapshot),
                tickets::source_updated_at.eq(r.source_updated_at),
                tickets::decision.eq(&r.decision),
                tickets::updated_at.eq(r.updated_at),
            ))
            .execute(c))?;
    }
    save_decisions(conn, b.decisions)
}

/// `flush` on PostgreSQL: the new grants, their jobs (scheduled as
/// `jobs::enqueue_grant` would), the decisions and the tickets in one
/// statement, each table's rows as column arrays.
/// Every statement is a round trip (and a parse and a plan) inside the
/// batch's transaction; this was four.
fn flush_postgres(c: &mut diesel::PgConnection, b: &Batch<'_>) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let tickets = &b.tickets;
    if tickets.is_empty() && b.decisions.is_empty() && b.grants.is_empty() {
        return Ok(());
    }
    fn col<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let g = b.grants;
    let d = b.decisions;
    super::prepared::Statement::new(
        "WITH new_grants AS (\
           INSERT INTO grants (id, ticket, subject, account, resource, state, origin, starts_at, \
             expires_at, activated_at, revoked_at, revoke_reason, failure, created_at, updated_at) \
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
             $12::text[], $13::text[], $14::bigint[], $15::bigint[])), \
         new_jobs AS (\
           INSERT INTO jobs (kind, dedupe_key, payload, run_at, attempts, version, created_at) \
           SELECT $33::text, k, p, r, 0, 0, c FROM unnest($16::text[], $17::text[], $18::bigint[], \
             $19::bigint[]) AS u(k, p, r, c) \
           ON CONFLICT (dedupe_key) DO UPDATE SET run_at = excluded.run_at, \
             payload = excluded.payload, attempts = 0, last_error = NULL, version = jobs.version + 1), \
         new_decisions AS (\
           INSERT INTO decisions (ticket, at, outcome, reason, detail) \
           SELECT * FROM unnest($20::text[], $21::bigint[], $22::text[], $23::text[], $24::text[])) \
         INSERT INTO tickets (key, source, source_updated_at, snapshot, decision, created_at, updated_at) \
         SELECT * FROM unnest($25::text[], $26::text[], $27::bigint[], $28::text[], $29::text[], \
           $30::bigint[], $31::bigint[]) \
         ON CONFLICT (key) DO UPDATE SET snapshot = excluded.snapshot, \
           source_updated_at = excluded.source_updated_at, decision = excluded.decision, \
           updated_at = excluded.updated_at \
         WHERE tickets.source_updated_at <= excluded.source_updated_at \
           OR tickets.source_updated_at > $32",
    )
    .bind::<Array<Text>, _>(col(g, |r| r.id.clone()))
    .bind::<Array<Text>, _>(col(g, |r| r.ticket.clone()))
    .bind::<Array<Text>, _>(col(g, |r| r.subject.clone()))
    .bind::<Array<Text>, _>(col(g, |r| r.account.clone()))
    .bind::<Array<Text>, _>(col(g, |r| r.resource.clone()))
    .bind::<Array<Text>, _>(col(g, |r| r.state.clone()))
    .bind::<Array<Text>, _>(col(g, |r| r.origin.clone()))
    .bind::<Array<BigInt>, _>(col(g, |r| r.starts_at))
    .bind::<Array<BigInt>, _>(col(g, |r| r.expires_at))
    .bind::<Array<Nullable<BigInt>>, _>(col(g, |r| r.activated_at))
    .bind::<Array<Nullable<BigInt>>, _>(col(g, |r| r.revoked_at))
    .bind::<Array<Nullable<Text>>, _>(col(g, |r| r.revoke_reason.clone()))
    .bind::<Array<Nullable<Text>>, _>(col(g, |r| r.failure.clone()))
    .bind::<Array<BigInt>, _>(col(g, |r| r.created_at))
    .bind::<Array<BigInt>, _>(col(g, |r| r.updated_at))
    .bind::<Array<Text>, _>(&b.jobs.dedupe_keys)
    .bind::<Array<Text>, _>(&b.jobs.payloads)
    .bind::<Array<BigInt>, _>(&b.jobs.run_at)
    .bind::<Array<BigInt>, _>(col(g, |r| r.created_at))
    .bind::<Array<Text>, _>(col(d, |r| r.ticket.clone()))
    .bind::<Array<BigInt>, _>(col(d, |r| r.at))
    .bind::<Array<Text>, _>(col(d, |r| r.outcome.clone()))
    .bind::<Array<Nullable<Text>>, _>(col(d, |r| r.reason.clone()))
    .bind::<Array<Text>, _>(col(d, |r| r.detail.clone()))
    .bind::<Array<Text>, _>(col(tickets, |r| r.key.clone()))
    .bind::<Array<Text>, _>(col(tickets, |r| r.source.clone()))
    .bind::<Array<BigInt>, _>(col(tickets, |r| r.source_updated_at))
    .bind::<Array<Text>, _>(col(tickets, |r| r.snapshot.clone()))
    .bind::<Array<Nullable<Text>>, _>(col(tickets, |r| r.decision.clone()))
    .bind::<Array<BigInt>, _>(col(tickets, |r| r.created_at))
    .bind::<Array<BigInt>, _>(col(tickets, |r| r.updated_at))
    .bind::<BigInt, _>(b.heal_above)
    .bind::<Text, _>(b.jobs.kind)
    .execute(c)?;
    Ok(())
}

pub fn save_decisions(conn: &mut Conn<'_>, rows: &[NewDecision]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    match conn {
        Conn::Postgres(c) => {
            diesel::insert_into(decisions::table)
                .values(rows)
                .execute(&mut **c)?;
        }
        Conn::Sqlite(c) => {
            for r in rows {
                diesel::insert_into(decisions::table)
                    .values(r)
                    .execute(&mut **c)?;
            }
        }
    }
    Ok(())
}
