//! The audit trail: an append-only, hash-chained list of events. Every event
//! is written in the transaction of the change it records; `hash` is
//! SHA-256 over `prev_hash` and the event's canonical JSON, so changing,
//! deleting, inserting or reordering any row breaks verification there.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::db::audit::{self as store, Start};
use crate::db::{Conn, Db, StoreError};
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

pub use crate::db::audit::EventRow;

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone()));
    hash_with(prev_hash, e, &data)
}

/// `event_hash` for a row whose `data` is still at hand as a value.
fn hash_with(prev_hash: &str, e: &EventRow, data: &Value) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical(e, data).as_bytes());
    hex::encode(h.finalize())
}

/// The event as one JSON object with its keys in order, written directly
/// (it is the same text as serializing the object as a sorted map).
fn canonical(e: &EventRow, data: &Value) -> String {
    fn text(out: &mut String, s: &str) {
        out.push_str(&Value::String(s.to_string()).to_string());
    }
    fn maybe(out: &mut String, s: &Option<String>) {
        match s {
            Some(s) => text(out, s),
            None => out.push_str("null"),
        }
    }
    let mut out = String::with_capacity(256);
    out.push_str("{\"actor\":");
    text(&mut out, &e.actor);
    out.push_str(",\"at\":");
    out.push_str(&e.at.to_string());
    out.push_str(",\"data\":");
    out.push_str(&data.to_string());
    out.push_str(",\"grant_id\":");
    maybe(&mut out, &e.grant_id);
    out.push_str(",\"seq\":");
    out.push_str(&e.seq.to_string());
    out.push_str(",\"ticket\":");
    maybe(&mut out, &e.ticket);
    out.push_str(",\"type\":");
    text(&mut out, &e.type_);
    out.push('}');
    out
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
    let head = store::head_for_update(conn)?;
    let (rows, (seq, prev)) = chain(head, groups);
    store::write_rows(conn, &rows, seq, &prev)
}

/// The events as rows chained on from `head`, and the new head.
fn chain(
    head: (i64, String),
    groups: Vec<(DateTime<Utc>, Vec<NewEvent>)>,
) -> (Vec<EventRow>, (i64, String)) {
    let (mut seq, mut prev) = head;
    let mut rows = Vec::with_capacity(groups.iter().map(|(_, e)| e.len()).sum());
    for (at, events) in groups {
        let at = to_micros(at);
        for e in events {
            seq += 1;
            let mut row = EventRow {
                seq,
                at,
                type_: e.kind.to_string(),
                ticket: e.ticket,
                grant_id: e.grant_id,
                actor: e.actor,
                data: e.data.to_string(),
                prev_hash: prev,
                hash: String::new(),
            };
            row.hash = hash_with(&row.prev_hash, &row, &e.data);
            prev = row.hash.clone();
            rows.push(row);
        }
    }
    (rows, (seq, prev))
}

/// The chain's head as a batch writer last committed it. Writers that take
/// it hold it until their commit, so the next one starts from the right
/// head without reading it; a head another process or writer moved
/// meanwhile makes the guess fail, and the append reads the head instead.
#[derive(Debug, Default)]
pub struct Guess(std::sync::Mutex<Option<(i64, String)>>);

impl Guess {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `append_each`, starting from a guessed head. On PostgreSQL a right
/// guess costs one statement (it moves the head only if it is still the
/// guess, and inserts the rows only if it did), not three. Answers the new
/// head, to be remembered once the transaction commits.
pub fn append_guessing(
    conn: &mut Conn<'_>,
    groups: Vec<(DateTime<Utc>, Vec<NewEvent>)>,
    guess: Option<(i64, String)>,
) -> Result<Option<(i64, String)>, StoreError> {
    if groups.iter().all(|(_, events)| events.is_empty()) {
        return Ok(guess);
    }
    let guessed = match store::start(conn, guess)? {
        Start::Read(head) => {
            let (rows, (seq, prev)) = chain(head, groups);
            store::write_rows(conn, &rows, seq, &prev)?;
            return Ok(None);
        }
        // With nothing to go on, the first guess is the genesis; a wrong
        // one costs a statement that writes nothing.
        Start::Guessed(guess) => guess.unwrap_or_else(|| (0, GENESIS.to_string())),
    };
    let (mut rows, head) = chain(guessed.clone(), groups);
    if store::write_if_head(conn, &guessed, &head, &rows)? {
        return Ok(Some(head));
    }
    // Nothing was written: the head had moved on.
    let (mut seq, mut prev) = store::head_for_update(conn)?;
    for row in &mut rows {
        seq += 1;
        row.seq = seq;
        row.prev_hash = prev;
        row.hash = event_hash(&row.prev_hash, row);
        prev = row.hash.clone();
    }
    store::write_rows(conn, &rows, seq, &prev)?;
    Ok(Some((seq, prev)))
}

/// What `GET /v1/audit/verify` found walking the chain.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Verification {
    pub ok: bool,
    pub events: i64,
    pub head: String,
    pub first_bad: Option<i64>,
}

/// Walks the chain from the start, a page at a time, to the head it read
/// first, all in one snapshot (PostgreSQL: a REPEATABLE READ READ ONLY
/// transaction; SQLite: one read transaction). Events committed while it
/// runs are not seen, so a verify during ingest checks the chain as it
/// stood and never reports a break that is not there; a row the snapshot
/// holds past the head was not written by an append (which moves the head
/// in the same transaction), and is a break.
pub fn verify(db: &Db) -> Result<Verification, StoreError> {
    store::in_snapshot(db, verify_in)
}

/// `verify` inside its snapshot.
fn verify_in(conn: &mut Conn<'_>) -> Result<Verification, StoreError> {
    let (head_seq, head_hash) = store::head(conn)?;
    let mut expected_seq = 1i64;
    let mut prev = GENESIS.to_string();
    let mut count = 0i64;
    let mut after = 0i64;
    loop {
        let page = store::after(conn, after, 2000)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The hand-written canonical text is the sorted-map serialization the
    /// chain has always hashed, quotes, escapes and nulls included.
    #[test]
    fn canonical_text_is_the_sorted_object() {
        let cases = [
            (
                Some("jira:OPS-1"),
                None,
                json!({"b": 1, "a": [1.5, null, "x\"y"]}),
            ),
            (None, Some("0193-g"), json!("plain \\ text\n")),
            (Some("t"), Some("g"), json!({})),
        ];
        for (ticket, grant, data) in cases {
            let row = EventRow {
                seq: 42,
                at: -7,
                type_: "grant.created".into(),
                ticket: ticket.map(str::to_string),
                grant_id: grant.map(str::to_string),
                actor: "ci:\"w\"\u{1}é".into(),
                data: data.to_string(),
                prev_hash: GENESIS.into(),
                hash: String::new(),
            };
            let sorted = json!({
                "seq": row.seq, "at": row.at, "type": row.type_, "ticket": row.ticket,
                "grant_id": row.grant_id, "actor": row.actor, "data": data,
            });
            assert_eq!(canonical(&row, &data), sorted.to_string());
            assert_eq!(hash_with(GENESIS, &row, &data), event_hash(GENESIS, &row));
        }
    }
}
