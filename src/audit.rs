//! The audit trail: an append-only, hash-chained list of events. Every event
//! is written in the transaction of the change it records; `hash` is
//! SHA-256 over `prev_hash` and the event's canonical JSON, so changing,
//! deleting, inserting or reordering any row breaks verification there.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::db::schema::{audit_events, audit_head};
use crate::db::{Conn, Db, StoreError};
use crate::dispatch;
use crate::domain::{from_micros, rfc3339, to_micros};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub ticket: Option<String>,
    pub grant_id: Option<String>,
    pub actor: String,
    pub data: Value,
}

impl NewEvent {
    pub fn new(kind: &'static str, actor: impl Into<String>, data: Value) -> Self {
        NewEvent {
            kind,
            ticket: None,
            grant_id: None,
            actor: actor.into(),
            data,
        }
    }
    pub fn ticket(mut self, t: impl Into<String>) -> Self {
        self.ticket = Some(t.into());
        self
    }
    pub fn grant(mut self, g: impl Into<String>) -> Self {
        self.grant_id = Some(g.into());
        self
    }
}

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

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: i64,
    pub at: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub ticket: Option<String>,
    pub grant_id: Option<String>,
    pub actor: String,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Self {
        Event {
            seq: r.seq,
            at: rfc3339(from_micros(r.at)),
            kind: r.type_,
            ticket: r.ticket,
            grant_id: r.grant_id,
            actor: r.actor,
            data: serde_json::from_str(&r.data).unwrap_or(Value::Null),
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// The hash of one event given its predecessor's. The canonical JSON has
/// sorted keys and times as integer microseconds, so it is exact.
pub fn event_hash(prev_hash: &str, e: &EventRow) -> String {
    let EventRow {
        seq,
        at,
        type_: kind,
        ticket,
        grant_id,
        actor,
        data,
        ..
    } = e;
    let data: Value = serde_json::from_str(data).unwrap_or(Value::String(data.to_string()));
    let canonical = json!({
        "seq": seq,
        "at": at,
        "type": kind,
        "ticket": ticket,
        "grant_id": grant_id,
        "actor": actor,
        "data": data,
    });
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Appends events at the chain's head. Call last in a write transaction:
/// the head row stays locked until commit, which keeps the chain linear
/// across concurrent writers and replicas.
pub fn append(
    conn: &mut Conn<'_>,
    at: DateTime<Utc>,
    events: Vec<NewEvent>,
) -> Result<(), StoreError> {
    append_each(conn, vec![(at, events)])
}

/// Appends several changes' events, each group at its own time, with one
/// read and one update of the head (group commit).
pub fn append_each(
    conn: &mut Conn<'_>,
    groups: Vec<(DateTime<Utc>, Vec<NewEvent>)>,
) -> Result<(), StoreError> {
    if groups.iter().all(|(_, events)| events.is_empty()) {
        return Ok(());
    }
    let (mut seq, mut prev): (i64, String) = match conn {
        Conn::Postgres(c) => audit_head::table
            .filter(audit_head::id.eq(1))
            .select((audit_head::seq, audit_head::hash))
            .for_update()
            .first(&mut **c)?,
        Conn::Sqlite(c) => audit_head::table
            .filter(audit_head::id.eq(1))
            .select((audit_head::seq, audit_head::hash))
            .first(&mut **c)?,
    };
    let mut rows = Vec::with_capacity(groups.iter().map(|(_, e)| e.len()).sum());
    for (at, events) in groups {
        let at = to_micros(at);
        for e in events {
            seq += 1;
            let data = e.data.to_string();
            let mut row = EventRow {
                seq,
                at,
                type_: e.kind.to_string(),
                ticket: e.ticket,
                grant_id: e.grant_id,
                actor: e.actor,
                data,
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            row.hash = event_hash(&prev, &row);
            prev = row.hash.clone();
            rows.push(row);
        }
    }
    // Bound each statement's parameters (SQLite allows 32,766).
    for chunk in rows.chunks(500) {
        dispatch!(conn, c => diesel::insert_into(audit_events::table).values(chunk).execute(c))?;
    }
    dispatch!(conn, c => diesel::update(audit_head::table.filter(audit_head::id.eq(1)))
        .set((audit_head::seq.eq(seq), audit_head::hash.eq(&prev)))
        .execute(c))?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verification {
    pub ok: bool,
    pub events: i64,
    pub head: String,
    pub first_bad: Option<i64>,
}

/// Walks the chain from the start, a page at a time.
pub fn verify(db: &Db) -> Result<Verification, StoreError> {
    db.read(|conn| {
        let (head_seq, head_hash): (i64, String) = dispatch!(conn, c => audit_head::table
            .filter(audit_head::id.eq(1))
            .select((audit_head::seq, audit_head::hash))
            .first(c))?;
        let mut expected_seq = 1i64;
        let mut prev = GENESIS.to_string();
        let mut count = 0i64;
        let mut after = 0i64;
        loop {
            let page: Vec<EventRow> = dispatch!(conn, c => audit_events::table
                .filter(audit_events::seq.gt(after))
                .order(audit_events::seq.asc())
                .limit(2000)
                .select(EventRow::as_select())
                .load(c))?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for row in &page {
                count += 1;
                let recomputed = event_hash(&prev, row);
                if row.seq != expected_seq || row.prev_hash != prev || row.hash != recomputed {
                    return Ok(Verification {
                        ok: false,
                        events: count,
                        head: head_hash,
                        first_bad: Some(row.seq.min(expected_seq)),
                    });
                }
                prev = row.hash.clone();
                expected_seq += 1;
            }
        }
        // A row deleted from the end leaves the head ahead of the rows.
        if expected_seq - 1 != head_seq || prev != head_hash {
            return Ok(Verification {
                ok: false,
                events: count,
                head: head_hash,
                first_bad: Some(expected_seq),
            });
        }
        Ok(Verification {
            ok: true,
            events: count,
            head: head_hash,
            first_bad: None,
        })
    })
}
