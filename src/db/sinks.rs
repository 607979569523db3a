//! Audit sinks in storage: each sink's cursor row (`sink_cursors`: the last
//! `seq` it received, the batch in flight, its backoff), the committed
//! events after a cursor, and the per-sink lock that lets one replica at a
//! time deliver to a sink. What a sink does with the events is
//! `crate::sinks`'s.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use sha2::{Digest, Sha256};

use super::audit::EventRow;
use super::schema::{audit_events, sink_cursors};
use super::{Conn, Db, Pool, StoreError};
use crate::dispatch;

/// The first key of the two-key PostgreSQL advisory locks that sinks hold;
/// the second is drawn from the sink's id. The two-key space is apart from
/// the one-key locks of migrations and drift checks.
const SINK_LOCK_CLASS: i32 = 742_621_007;

/// Where a sink stands.
#[derive(Debug, Clone, Queryable, Selectable, PartialEq, Eq)]
#[diesel(table_name = sink_cursors)]
pub struct CursorRow {
    pub sink: String,
    /// The last event `seq` the sink has received (0 before the first).
    pub seq: i64,
    pub updated_at: i64,
    /// The last `seq` of the batch being delivered: a resend carries the
    /// same events, so the same batch id.
    pub batch_end: Option<i64>,
    /// Failed attempts in a row.
    pub attempts: i32,
    /// When the next attempt may start (microseconds; 0: at once).
    pub retry_at: i64,
}

impl CursorRow {
    /// A sink that has received nothing yet.
    fn fresh(sink: &str) -> CursorRow {
        CursorRow {
            sink: sink.to_string(),
            seq: 0,
            updated_at: 0,
            batch_end: None,
            attempts: 0,
            retry_at: 0,
        }
    }
}

/// The sink's cursor; a sink never seen stands at 0 (nothing is written).
pub fn get(conn: &mut Conn<'_>, sink: &str) -> Result<CursorRow, StoreError> {
    let row: Option<CursorRow> = dispatch!(conn, c => sink_cursors::table
        .filter(sink_cursors::sink.eq(sink))
        .select(CursorRow::as_select())
        .first(c)
        .optional())?;
    Ok(row.unwrap_or_else(|| CursorRow::fresh(sink)))
}

/// Writes the sink's row at 0 if it has none, so updates find it.
fn ensure(conn: &mut Conn<'_>, sink: &str, now: i64) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::insert_into(sink_cursors::table)
        .values((
            sink_cursors::sink.eq(sink),
            sink_cursors::seq.eq(0i64),
            sink_cursors::updated_at.eq(now),
            sink_cursors::attempts.eq(0),
            sink_cursors::retry_at.eq(0i64),
        ))
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// Records that the events after `after` up to `end` are being delivered,
/// if the cursor still stands at `after`; answers whether it did.
pub fn begin_batch(
    conn: &mut Conn<'_>,
    sink: &str,
    after: i64,
    end: i64,
    now: i64,
) -> Result<bool, StoreError> {
    ensure(conn, sink, now)?;
    let n = dispatch!(conn, c => diesel::update(
        sink_cursors::table
            .filter(sink_cursors::sink.eq(sink))
            .filter(sink_cursors::seq.eq(after)),
    )
    .set((
        sink_cursors::batch_end.eq(Some(end)),
        sink_cursors::updated_at.eq(now),
    ))
    .execute(c))?;
    Ok(n == 1)
}

/// Moves the cursor to `to` once the sink has received every event up to
/// it, and clears the batch and the backoff. The cursor only moves
/// forward: a replica that delivered an older batch late moves nothing.
pub fn advance(conn: &mut Conn<'_>, sink: &str, to: i64, now: i64) -> Result<bool, StoreError> {
    ensure(conn, sink, now)?;
    let n = dispatch!(conn, c => diesel::update(
        sink_cursors::table
            .filter(sink_cursors::sink.eq(sink))
            .filter(sink_cursors::seq.lt(to)),
    )
    .set((
        sink_cursors::seq.eq(to),
        sink_cursors::batch_end.eq(None::<i64>),
        sink_cursors::attempts.eq(0),
        sink_cursors::retry_at.eq(0i64),
        sink_cursors::updated_at.eq(now),
    ))
    .execute(c))?;
    Ok(n == 1)
}

/// Records a failed attempt: `attempts` in a row, the next one not before
/// `retry_at`.
pub fn failed(
    conn: &mut Conn<'_>,
    sink: &str,
    attempts: i32,
    retry_at: i64,
    now: i64,
) -> Result<(), StoreError> {
    ensure(conn, sink, now)?;
    dispatch!(conn, c => diesel::update(sink_cursors::table.filter(sink_cursors::sink.eq(sink)))
        .set((
            sink_cursors::attempts.eq(attempts),
            sink_cursors::retry_at.eq(retry_at),
            sink_cursors::updated_at.eq(now),
        ))
        .execute(c))?;
    Ok(())
}

/// The chain's last committed `seq` (0 before the first event).
pub fn head_seq(conn: &mut Conn<'_>) -> Result<i64, StoreError> {
    Ok(super::audit::head(conn)?.0)
}

/// Up to `limit` events after `after` and at most `upto`, in order. Read
/// `upto` from the head first: the head moves in the transaction that
/// writes the rows under it, so every row up to it is committed, and none
/// is passed over for one that commits later.
pub fn committed_after(
    conn: &mut Conn<'_>,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<EventRow>, StoreError> {
    Ok(dispatch!(conn, c => audit_events::table
        .filter(audit_events::seq.gt(after))
        .filter(audit_events::seq.le(upto))
        .order(audit_events::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(c))?)
}

/// The right to deliver to one sink, held until dropped. On PostgreSQL a
/// session advisory lock on a pooled connection that the holder also reads
/// and writes through: a replica that dies loses its session, and the lock
/// with it, at once. SQLite serves one process, which runs one loop per
/// sink.
pub struct SinkLock {
    held: Held,
}

enum Held {
    Sqlite(Db),
    Postgres {
        conn: PooledConnection<ConnectionManager<PgConnection>>,
        key: i32,
    },
}

impl std::fmt::Debug for SinkLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.held {
            Held::Sqlite(_) => write!(f, "SinkLock(sqlite)"),
            Held::Postgres { key, .. } => write!(f, "SinkLock(postgres {key})"),
        }
    }
}

impl SinkLock {
    /// Runs `f` outside an explicit transaction. Blocks.
    pub fn read<T>(
        &mut self,
        f: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &mut self.held {
            Held::Sqlite(db) => db.read(f),
            Held::Postgres { conn, .. } => f(&mut Conn::Postgres(conn)),
        }
    }

    /// Runs `f` in a write transaction. Blocks.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &mut self.held {
            Held::Sqlite(db) => db.write(f),
            Held::Postgres { conn, .. } => conn.transaction(|c| f(&mut Conn::Postgres(c))),
        }
    }
}

impl Drop for SinkLock {
    fn drop(&mut self) {
        if let Held::Postgres { conn, key } = &mut self.held {
            let sql = format!("SELECT pg_advisory_unlock({SINK_LOCK_CLASS}, {key})");
            if let Err(e) = conn.batch_execute(&sql) {
                // A broken connection has lost its session, and the lock
                // with it.
                tracing::warn!(error = %e, "cannot release a sink lock");
            }
        }
    }
}

/// The lock's second key: the sink id's first four hash bytes. Two sinks
/// that share one only take turns.
fn lock_key(sink: &str) -> i32 {
    let h = Sha256::digest(sink.as_bytes());
    i32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

impl Db {
    /// Takes the sink's lock if no other process holds it (`None` if one
    /// does). Blocks: call it off the async threads, and drop the lock
    /// there too.
    pub fn try_sink_lock(&self, sink: &str) -> Result<Option<SinkLock>, StoreError> {
        #[derive(QueryableByName)]
        struct Got {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            got: bool,
        }
        match &self.pool {
            Pool::Sqlite(..) => Ok(Some(SinkLock {
                held: Held::Sqlite(self.clone()),
            })),
            Pool::Postgres(p) => {
                let mut conn = p.get()?;
                let key = lock_key(sink);
                let got: Got = diesel::sql_query("SELECT pg_try_advisory_lock($1, $2) AS got")
                    .bind::<diesel::sql_types::Integer, _>(SINK_LOCK_CLASS)
                    .bind::<diesel::sql_types::Integer, _>(key)
                    .get_result(&mut *conn)?;
                Ok(got.got.then_some(SinkLock {
                    held: Held::Postgres { conn, key },
                }))
            }
        }
    }
}
