//! The audit trail in storage: the event rows, the head row that chains
//! them, and the reads and writes of both, each with its PostgreSQL form
//! beside its SQLite form. Hashing and chaining are `crate::audit`'s.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::{audit_events, audit_head};
use super::{Conn, Db, StoreError};
use crate::dispatch;
use crate::domain::to_micros;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_events)]
pub struct EventRow {
    pub seq: i64,
    pub at: i64,
    pub type_: String,
    pub ticket: Option<String>,
    pub grant_id: Option<String>,
    pub actor: String,
    pub data: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The chain's head: the last event's `seq` and `hash`.
pub type Head = (i64, String);

/// Where an append chains from.
pub enum Start {
    /// The head, read and held (locked) until the transaction ends.
    Read(Head),
    /// A head the caller guessed, to be checked by `write_if_head`: on
    /// PostgreSQL a right guess saves the locked read.
    Guessed(Option<Head>),
}

/// Where an append starting from `guess` chains from. SQLite has one
/// writer, whose transaction already holds the head: reading it costs
/// less there than a guess that might be wrong.
pub fn start(conn: &mut Conn<'_>, guess: Option<Head>) -> Result<Start, StoreError> {
    match conn {
        Conn::Postgres(_) => Ok(Start::Guessed(guess)),
        Conn::Sqlite(_) => Ok(Start::Read(head_for_update(conn)?)),
    }
}

/// The head, locked until the transaction ends (SQLite: the write
/// transaction is the lock).
pub fn head_for_update(conn: &mut Conn<'_>) -> Result<Head, StoreError> {
    Ok(match conn {
        Conn::Postgres(c) => audit_head::table
            .filter(audit_head::id.eq(1))
            .select((audit_head::seq, audit_head::hash))
            .for_update()
            .first(&mut **c)?,
        Conn::Sqlite(c) => audit_head::table
            .filter(audit_head::id.eq(1))
            .select((audit_head::seq, audit_head::hash))
            .first(&mut **c)?,
    })
}

/// The head as it stands, without a lock.
pub fn head(conn: &mut Conn<'_>) -> Result<Head, StoreError> {
    Ok(dispatch!(conn, c => audit_head::table
        .filter(audit_head::id.eq(1))
        .select((audit_head::seq, audit_head::hash))
        .first(c))?)
}

/// Inserts chained rows and moves the head (locked by the caller) to them.
pub fn write_rows(
    conn: &mut Conn<'_>,
    rows: &[EventRow],
    seq: i64,
    prev: &str,
) -> Result<(), StoreError> {
    // Bound each statement's parameters (SQLite allows 32,766).
    for chunk in rows.chunks(500) {
        dispatch!(conn, c => diesel::insert_into(audit_events::table).values(chunk).execute(c))?;
    }
    dispatch!(conn, c => diesel::update(audit_head::table.filter(audit_head::id.eq(1)))
        .set((audit_head::seq.eq(seq), audit_head::hash.eq(prev)))
        .execute(c))?;
    Ok(())
}

/// Writes `rows` (chained from `guessed` to `head`) if the stored head is
/// still `guessed`; answers whether it was. Nothing is written otherwise.
/// On PostgreSQL one statement, which moves the head only if it is still
/// the guess and inserts the rows only if it did.
pub fn write_if_head(
    conn: &mut Conn<'_>,
    guessed: &Head,
    head: &Head,
    rows: &[EventRow],
) -> Result<bool, StoreError> {
    let Conn::Postgres(c) = conn else {
        if head_for_update(conn)? != *guessed {
            return Ok(false);
        }
        write_rows(conn, rows, head.0, &head.1)?;
        return Ok(true);
    };
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let col = |f: fn(&EventRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let written = super::prepared::Statement::new(
        "WITH moved AS (UPDATE audit_head SET seq = $1, hash = $2 \
         WHERE id = 1 AND seq = $3 AND hash = $4 RETURNING 1) \
         INSERT INTO audit_events (seq, at, type, ticket, grant_id, actor, data, prev_hash, hash) \
         SELECT * FROM unnest($5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], \
         $10::text[], $11::text[], $12::text[], $13::text[]) WHERE EXISTS (SELECT 1 FROM moved)",
    )
    .bind::<BigInt, _>(head.0)
    .bind::<Text, _>(&head.1)
    .bind::<BigInt, _>(guessed.0)
    .bind::<Text, _>(&guessed.1)
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.seq).collect::<Vec<i64>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.at).collect::<Vec<i64>>())
    .bind::<Array<Text>, _>(col(|r| r.type_.clone()))
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.ticket.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.grant_id.clone()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(col(|r| r.actor.clone()))
    .bind::<Array<Text>, _>(col(|r| r.data.clone()))
    .bind::<Array<Text>, _>(col(|r| r.prev_hash.clone()))
    .bind::<Array<Text>, _>(col(|r| r.hash.clone()))
    .execute(&mut **c)?;
    Ok(written == rows.len())
}

/// Runs `f` in one read snapshot (PostgreSQL: a REPEATABLE READ READ ONLY
/// transaction; SQLite: one read transaction), so it sees nothing
/// committed while it runs.
pub fn in_snapshot<T>(
    db: &Db,
    f: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    db.read(|conn| match conn {
        Conn::Postgres(c) => c
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(|c| f(&mut Conn::Postgres(c))),
        Conn::Sqlite(c) => c.transaction(|c| f(&mut Conn::Sqlite(c))),
    })
}

/// Up to `limit` events after `seq`, in order.
pub fn after(conn: &mut Conn<'_>, seq: i64, limit: i64) -> Result<Vec<EventRow>, StoreError> {
    Ok(dispatch!(conn, c => audit_events::table
        .filter(audit_events::seq.gt(seq))
        .order(audit_events::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(c))?)
}

/// Up to `limit` events about one ticket, in order.
pub fn of_ticket(conn: &mut Conn<'_>, key: &str, limit: i64) -> Result<Vec<EventRow>, StoreError> {
    Ok(dispatch!(conn, c => audit_events::table
        .filter(audit_events::ticket.eq(key))
        .order(audit_events::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(c))?)
}

/// What an auditor's page of events is narrowed to.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub ticket: Option<String>,
    pub grant: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub after: i64,
    pub limit: i64,
}

/// One page of events in `seq` order, after the cursor.
pub fn page(db: &Db, f: &Filter) -> Result<Vec<EventRow>, StoreError> {
    db.read(|conn| {
        macro_rules! q {
            ($c:expr) => {{
                let mut q = audit_events::table
                    .select(EventRow::as_select())
                    .into_boxed();
                q = q.filter(audit_events::seq.gt(f.after));
                if let Some(t) = &f.ticket {
                    q = q.filter(audit_events::ticket.eq(t));
                }
                if let Some(g) = &f.grant {
                    q = q.filter(audit_events::grant_id.eq(g));
                }
                if let Some(s) = f.since {
                    q = q.filter(audit_events::at.ge(to_micros(s)));
                }
                if let Some(u) = f.until {
                    q = q.filter(audit_events::at.lt(to_micros(u)));
                }
                q.order(audit_events::seq.asc()).limit(f.limit).load($c)
            }};
        }
        Ok(dispatch!(conn, c => q!(c))?)
    })
}
