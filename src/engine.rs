//! The level-triggered core. A delivery updates its ticket's snapshot (an
//! older one never overwrites a newer one); the ticket's grants are then
//! reconciled to what `policy::decide` says the snapshot warrants. Grant
//! rows, their jobs and audit events are written in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::json;

use crate::audit::{self, NewEvent};
use crate::config::Config;
use crate::db::schema::{decisions, deliveries, grants, tickets};
use crate::db::{Conn, Db, StoreError};
use crate::dispatch;
use crate::domain::{rfc3339, to_micros, DenyReason, GrantState, RevokeReason, Source, TicketKey};
use crate::grants::Revocation;
use crate::grants::{GrantRow, LIVE};
use crate::jobs::kinds::{backlink, grant::GrantJob};
use crate::jobs::Job;
use crate::policy::{decide, Decision};
use crate::sources::Parsed;
use crate::ticket::{merge, Snapshot};

/// A webhook that passed its signature check and parsed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: Source,
    pub id: String,
    pub body_sha256: String,
    pub parsed: Parsed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted(Option<TicketKey>),
    Duplicate(Option<String>),
    Ignored(Option<TicketKey>),
}

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

/// What one delivery came to, and whether it scheduled job work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub outcome: Outcome,
    pub queued: bool,
}

#[derive(Insertable)]
#[diesel(table_name = deliveries)]
struct DeliveryRow<'a> {
    source: &'a str,
    delivery_id: &'a str,
    received_at: i64,
    body_sha256: &'a str,
    ticket: Option<String>,
    outcome: &'static str,
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

/// The batch's view of its tickets: read once, changed in memory, written
/// once at the end.
#[derive(Default)]
struct Tickets {
    /// A stored updated-at above this (the earliest of the batch's
    /// receive times plus the tolerance) was pinned by a sender's clock
    /// before that was refused, and may be replaced by an older time.
    heal_above: i64,
    rows: HashMap<String, TicketRow>,
    dirty: Vec<String>,
    decisions: Vec<NewDecision>,
    /// Grants by ticket, for tickets whose grants nothing in the batch has
    /// written yet (those are read again).
    grants: HashMap<String, Vec<GrantRow>>,
    /// Grants decided but not yet inserted: written with one statement
    /// (and their jobs with another) before anything reads grants again.
    created: Vec<GrantRow>,
}

impl Tickets {
    fn touch(&mut self, key: &str) {
        if !self.dirty.iter().any(|k| k == key) {
            self.dirty.push(key.to_string());
        }
    }
}

/// Records deliveries in order and, for each new one that carries a
/// ticket, folds it in and reconciles, inside the caller's transaction.
/// The reads and writes every delivery needs (dedupe, the ticket, its
/// grants, the new snapshot and decision) are made once for the whole
/// batch; each delivery's audit events come back beside its outcome.
/// Nothing is written for a duplicate.
pub fn ingest_batch(
    conn: &mut Conn<'_>,
    config: &Config,
    items: &[(DateTime<Utc>, &Delivery)],
) -> Result<Vec<(Ingested, Vec<NewEvent>)>, StoreError> {
    // A repeat inside the batch is a duplicate of its first; the first of
    // each id is inserted, and the ids the database already had are
    // duplicates of the stored delivery.
    let mut firsts: HashMap<(&str, &str), usize> = HashMap::new();
    let mut rows = Vec::new();
    for (i, (now, d)) in items.iter().enumerate() {
        if firsts.contains_key(&(d.source.as_str(), d.id.as_str())) {
            continue;
        }
        firsts.insert((d.source.as_str(), d.id.as_str()), i);
        rows.push(DeliveryRow {
            source: d.source.as_str(),
            delivery_id: &d.id,
            received_at: to_micros(*now),
            body_sha256: &d.body_sha256,
            ticket: match &d.parsed {
                Parsed::Ticket(ev) => Some(ev.key.to_string()),
                Parsed::Ignored { ticket, .. } => ticket.as_ref().map(|t| t.to_string()),
            },
            outcome: if matches!(d.parsed, Parsed::Ticket(_)) {
                "accepted"
            } else {
                "ignored"
            },
        });
    }
    let inserted = insert_deliveries(conn, &rows)?;
    let fresh: Vec<bool> = items
        .iter()
        .enumerate()
        .map(|(i, (_, d))| {
            let k = (d.source.as_str(), d.id.as_str());
            firsts.get(&k) == Some(&i) && inserted.contains(&(k.0.to_string(), k.1.to_string()))
        })
        .collect();
    // The ticket each duplicate named: from this batch, or as stored.
    let mut seen: HashMap<(String, String), Option<String>> = rows
        .iter()
        .filter(|r| inserted.contains(&(r.source.to_string(), r.delivery_id.to_string())))
        .map(|r| {
            (
                (r.source.to_string(), r.delivery_id.to_string()),
                r.ticket.clone(),
            )
        })
        .collect();
    let earlier: Vec<&DeliveryRow<'_>> = rows
        .iter()
        .filter(|r| !inserted.contains(&(r.source.to_string(), r.delivery_id.to_string())))
        .collect();
    if !earlier.is_empty() {
        let ids: Vec<&str> = earlier.iter().map(|r| r.delivery_id).collect();
        let mut sources: Vec<&str> = earlier.iter().map(|r| r.source).collect();
        sources.sort_unstable();
        sources.dedup();
        let stored: Vec<(String, String, Option<String>)> = dispatch!(conn, c => deliveries::table
            .filter(deliveries::source.eq_any(&sources))
            .filter(deliveries::delivery_id.eq_any(&ids))
            .select((deliveries::source, deliveries::delivery_id, deliveries::ticket))
            .load(c))?;
        seen.extend(stored.into_iter().map(|(s, i, t)| ((s, i), t)));
    }

    let keys: Vec<String> = items
        .iter()
        .zip(&fresh)
        .filter_map(|((_, d), new)| match &d.parsed {
            Parsed::Ticket(ev) if *new => Some(ev.key.to_string()),
            _ => None,
        })
        .collect();
    let mut t = Tickets {
        heal_above: items
            .iter()
            .filter_map(|(now, _)| now.checked_add_signed(config.server.timestamp_tolerance.0))
            .map(to_micros)
            .min()
            .unwrap_or(i64::MAX),
        ..Tickets::default()
    };
    if !keys.is_empty() {
        // Read, decide and write under the tickets' locks, so another
        // replica folding a delivery of the same ticket waits for this
        // batch's commit instead of deciding on what it overwrites.
        crate::db::tickets::lock(conn, &keys)?;
        let (loaded, grants) = tickets_with_grants(conn, &keys)?;
        t.rows = loaded.into_iter().map(|r| (r.key.clone(), r)).collect();
        for k in &keys {
            t.grants.entry(k.clone()).or_default();
        }
        for g in grants {
            t.grants.entry(g.ticket.clone()).or_default().push(g);
        }
    }

    let mut out = Vec::with_capacity(items.len());
    for ((now, d), new) in items.iter().zip(fresh) {
        let mut events = Vec::new();
        let outcome = if !new {
            let k = (d.source.as_str().to_string(), d.id.clone());
            Outcome::Duplicate(seen.get(&k).cloned().flatten())
        } else {
            match &d.parsed {
                Parsed::Ignored { ticket, .. } => Outcome::Ignored(ticket.clone()),
                Parsed::Ticket(ev) => fold(conn, config, *now, d, ev, &mut t, &mut events)?,
            }
        };
        // Only these changes schedule jobs; anything else leaves the runner asleep.
        let queued = events
            .iter()
            .any(|e| matches!(e.kind, "grant.created" | "revoke.requested" | "decision"));
        out.push((Ingested { outcome, queued }, events));
    }
    flush_tickets(conn, &t)?;
    Ok(out)
}

/// The stored tickets among `keys` and all their grants (oldest first). On
/// PostgreSQL one statement: each ticket's row beside each of its grants.
fn tickets_with_grants(
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
    let joined: Vec<Joined> = crate::db::prepared::Statement::new(
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

/// One new delivery's ticket event: the snapshot, the decision, the grants.
fn fold(
    conn: &mut Conn<'_>,
    config: &Config,
    now: DateTime<Utc>,
    d: &Delivery,
    ev: &crate::ticket::TicketEvent,
    t: &mut Tickets,
    events: &mut Vec<NewEvent>,
) -> Result<Outcome, StoreError> {
    let key = ev.key.clone();
    let k = key.to_string();
    events.push(
        NewEvent::new(
            "delivery.accepted",
            format!("{}:webhook", d.source),
            json!({ "source": d.source, "delivery": d.id, "body_sha256": d.body_sha256 }),
        )
        .ticket(key.as_str()),
    );
    // A sender's clock ahead of ours by more than the webhook tolerance
    // would pin the ticket: every genuine later event would look older.
    // Such a time counts as the time warrant received it, and so does a
    // stored one that got in before this rule did.
    use crate::ticket::ApprovalSignal::{Given, Stated};
    let limit = now
        .checked_add_signed(config.server.timestamp_tolerance.0)
        .unwrap_or(now);
    let approval_ahead =
        matches!(&ev.approval, Given { at, .. } | Stated { at, .. } if *at > limit);
    let mut clamped;
    let ev = if ev.updated_at > limit || approval_ahead {
        events.push(
            NewEvent::new(
                "ticket.clock_ahead",
                "warrant",
                json!({
                    "delivery": d.id,
                    "sent_updated_at": rfc3339(ev.updated_at),
                    "counted_as": rfc3339(now),
                }),
            )
            .ticket(key.as_str()),
        );
        clamped = ev.clone();
        if clamped.updated_at > limit {
            clamped.updated_at = now;
        }
        if let Given { at, .. } | Stated { at, .. } = &mut clamped.approval {
            if *at > limit {
                *at = now;
            }
        }
        &clamped
    } else {
        ev
    };
    let prev = t.rows.get(&k);
    if let Some(row) = prev {
        let stored = if row.source_updated_at > to_micros(limit) {
            to_micros(now)
        } else {
            row.source_updated_at
        };
        if to_micros(ev.updated_at) < stored {
            events.push(
                NewEvent::new(
                    "ticket.stale",
                    "warrant",
                    json!({ "delivery": d.id, "updated_at": rfc3339(ev.updated_at) }),
                )
                .ticket(key.as_str()),
            );
            return Ok(Outcome::Accepted(Some(key)));
        }
    }
    let prev_snap = prev.and_then(|r| serde_json::from_str::<Snapshot>(&r.snapshot).ok());
    let stored_decision = prev.and_then(|r| r.decision.clone());
    let snap = merge(prev_snap.as_ref(), ev.clone());
    // A new or edited request is read back on the ticket before anyone
    // approves it; one that this very event approves gets the grant's note.
    let unapproved = snap
        .approval
        .as_ref()
        .is_none_or(|a| a.fingerprint != snap.request_fingerprint());
    let reread = prev_snap
        .as_ref()
        .is_none_or(|p| p.request_fingerprint() != snap.request_fingerprint());
    if snap.status == crate::ticket::TicketStatus::Open && unapproved && reread {
        backlink::enqueue(conn, config, now, &k, &crate::backlinks::read_back(&snap))?;
    }
    if prev_snap.as_ref() != Some(&snap) {
        let json = serde_json::to_string(&snap).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let at = to_micros(now);
        let row = t.rows.entry(k.clone()).or_insert_with(|| TicketRow {
            key: k.clone(),
            source: snap.source.to_string(),
            source_updated_at: 0,
            snapshot: String::new(),
            decision: None,
            created_at: at,
            updated_at: at,
        });
        row.snapshot = json;
        row.source_updated_at = to_micros(snap.updated_at);
        row.updated_at = at;
        t.touch(&k);
        events.push(
            NewEvent::new("ticket.snapshot", "warrant", snapshot_summary(&snap))
                .ticket(key.as_str()),
        );
    }
    let grants = match t.grants.get(&k) {
        Some(g) => g.clone(),
        None => {
            crate::grants::insert(conn, &std::mem::take(&mut t.created))?;
            crate::grants::of_ticket(conn, &k)?
        }
    };
    let before = events.len();
    let decided = reconcile_with(
        conn,
        config,
        now,
        &snap,
        stored_decision.as_deref(),
        &grants,
        &mut t.created,
        events,
    )?;
    if let Some(nd) = decided {
        if let Some(row) = t.rows.get_mut(&k) {
            row.decision = Some(nd.summary.clone());
            t.touch(&k);
        }
        t.decisions.push(nd.row);
    }
    if events[before..].iter().any(|e| e.kind != "decision") {
        // This ticket's grants changed: read them again if it comes up.
        t.grants.remove(&k);
    }
    Ok(Outcome::Accepted(Some(key)))
}

/// Inserts the rows that are new; answers which were (by source and id).
fn insert_deliveries(
    conn: &mut Conn<'_>,
    rows: &[DeliveryRow<'_>],
) -> Result<HashSet<(String, String)>, StoreError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(match conn {
        Conn::Postgres(c) => {
            use diesel::sql_types::{Array, BigInt, Nullable, Text};
            #[derive(QueryableByName)]
            struct Key {
                #[diesel(sql_type = Text)]
                source: String,
                #[diesel(sql_type = Text)]
                delivery_id: String,
            }
            // Column arrays keep the text the same for any batch size, so
            // the statement stays prepared.
            let col = |f: fn(&DeliveryRow<'_>) -> String| rows.iter().map(f).collect::<Vec<_>>();
            crate::db::prepared::Statement::new(
                "INSERT INTO deliveries (source, delivery_id, received_at, body_sha256, ticket, outcome) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                   $6::text[]) \
                 ON CONFLICT DO NOTHING RETURNING source, delivery_id",
            )
            .bind::<Array<Text>, _>(col(|r| r.source.to_string()))
            .bind::<Array<Text>, _>(col(|r| r.delivery_id.to_string()))
            .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.received_at).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(col(|r| r.body_sha256.to_string()))
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.ticket.clone()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(col(|r| r.outcome.to_string()))
            .load::<Key>(&mut **c)?
            .into_iter()
            .map(|k| (k.source, k.delivery_id))
            .collect()
        }
        Conn::Sqlite(c) => {
            let mut new = HashSet::new();
            for row in rows {
                let n = diesel::insert_into(deliveries::table)
                    .values(row)
                    .on_conflict_do_nothing()
                    .execute(&mut **c)?;
                if n > 0 {
                    new.insert((row.source.to_string(), row.delivery_id.to_string()));
                }
            }
            new
        }
    })
}

/// Writes the batch's changed tickets and new decisions.
fn flush_tickets(conn: &mut Conn<'_>, t: &Tickets) -> Result<(), StoreError> {
    use diesel::upsert::excluded;
    if let Conn::Postgres(c) = conn {
        return flush_postgres(c, t);
    }
    crate::grants::insert(conn, &t.created)?;
    let rows: Vec<&TicketRow> = t.dirty.iter().filter_map(|k| t.rows.get(k)).collect();
    if !rows.is_empty() {
        match conn {
            Conn::Postgres(c) => {
                diesel::insert_into(tickets::table)
                    .values(rows.iter().map(|r| (*r).clone()).collect::<Vec<_>>())
                    .on_conflict(tickets::key)
                    .do_update()
                    .set((
                        tickets::snapshot.eq(excluded(tickets::snapshot)),
                        tickets::source_updated_at.eq(excluded(tickets::source_updated_at)),
                        tickets::decision.eq(excluded(tickets::decision)),
                        tickets::updated_at.eq(excluded(tickets::updated_at)),
                    ))
                    .execute(&mut **c)?;
            }
            Conn::Sqlite(c) => {
                for r in rows {
                    diesel::insert_into(tickets::table)
                        .values(r.clone())
                        .on_conflict(tickets::key)
                        .do_update()
                        .set((
                            tickets::snapshot.eq(&r.snapshot),
                            tickets::source_updated_at.eq(r.source_updated_at),
                            tickets::decision.eq(&r.decision),
                            tickets::updated_at.eq(r.updated_at),
                        ))
                        .execute(&mut **c)?;
                }
            }
        }
    }
    save_decisions(conn, &t.decisions)
}

/// `flush_tickets` on PostgreSQL: the new grants, their jobs (scheduled as
/// `grants::insert` would), the decisions and the tickets in one
/// statement, each table's rows as column arrays.
/// Every statement is a round trip (and a parse and a plan) inside the
/// batch's transaction; this was four.
fn flush_postgres(c: &mut diesel::PgConnection, t: &Tickets) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let tickets: Vec<&TicketRow> = t.dirty.iter().filter_map(|k| t.rows.get(k)).collect();
    if tickets.is_empty() && t.decisions.is_empty() && t.created.is_empty() {
        return Ok(());
    }
    fn col<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let g = &t.created;
    let d = &t.decisions;
    let jobs: Vec<GrantJob> = col(g, |r| GrantJob::new(&r.id));
    let payloads = jobs
        .iter()
        .map(Job::payload)
        .collect::<Result<Vec<_>, _>>()?;
    let sql = format!(
        "WITH new_grants AS (\
           INSERT INTO grants (id, ticket, subject, account, resource, state, origin, starts_at, \
             expires_at, activated_at, revoked_at, revoke_reason, failure, created_at, updated_at) \
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
             $12::text[], $13::text[], $14::bigint[], $15::bigint[])), \
         new_jobs AS (\
           INSERT INTO jobs (kind, dedupe_key, payload, run_at, attempts, version, created_at) \
           SELECT '{kind}', k, p, r, 0, 0, c FROM unnest($16::text[], $17::text[], $18::bigint[], \
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
        kind = GrantJob::KIND
    );
    crate::db::prepared::Statement::new(&sql)
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
        .bind::<Array<Text>, _>(col(&jobs, GrantJob::dedupe_key))
        .bind::<Array<Text>, _>(payloads)
        .bind::<Array<BigInt>, _>(col(g, crate::grants::first_run))
        .bind::<Array<BigInt>, _>(col(g, |r| r.created_at))
        .bind::<Array<Text>, _>(col(d, |r| r.ticket.clone()))
        .bind::<Array<BigInt>, _>(col(d, |r| r.at))
        .bind::<Array<Text>, _>(col(d, |r| r.outcome.clone()))
        .bind::<Array<Nullable<Text>>, _>(col(d, |r| r.reason.clone()))
        .bind::<Array<Text>, _>(col(d, |r| r.detail.clone()))
        .bind::<Array<Text>, _>(col(&tickets, |r| r.key.clone()))
        .bind::<Array<Text>, _>(col(&tickets, |r| r.source.clone()))
        .bind::<Array<BigInt>, _>(col(&tickets, |r| r.source_updated_at))
        .bind::<Array<Text>, _>(col(&tickets, |r| r.snapshot.clone()))
        .bind::<Array<Nullable<Text>>, _>(col(&tickets, |r| r.decision.clone()))
        .bind::<Array<BigInt>, _>(col(&tickets, |r| r.created_at))
        .bind::<Array<BigInt>, _>(col(&tickets, |r| r.updated_at))
        .bind::<BigInt, _>(t.heal_above)
        .execute(c)?;
    Ok(())
}

fn save_decisions(conn: &mut Conn<'_>, rows: &[NewDecision]) -> Result<(), StoreError> {
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

fn snapshot_summary(s: &Snapshot) -> serde_json::Value {
    json!({
        "status": s.status,
        "source_status": s.source_status,
        "approved": s.approved,
        "approvers": s.approval.as_ref().map(|a| a.approvers.clone()),
        "approved_at": s.approval.as_ref().map(|a| rfc3339(a.at)),
        "request": s.request,
        "request_error": s.request_error,
        "updated_at": rfc3339(s.updated_at),
    })
}

pub fn load_ticket(conn: &mut Conn<'_>, key: &str) -> Result<Option<TicketRow>, StoreError> {
    Ok(dispatch!(conn, c => tickets::table
        .find(key)
        .select(TicketRow::as_select())
        .first(c)
        .optional())?)
}

/// The engine's own revocation: a decision no longer warrants the grant.
fn warrant(reason: RevokeReason) -> Revocation<'static> {
    Revocation {
        reason,
        actor: "warrant",
        note: None,
    }
}

/// Re-decides one stored ticket now (timers, `warrant reconcile`, config changes).
pub fn reconcile_ticket(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
    key: &str,
) -> Result<bool, StoreError> {
    db.write(|conn| {
        crate::db::tickets::lock(conn, &[key.to_string()])?;
        let Some(row) = load_ticket(conn, key)? else {
            return Ok(false);
        };
        let snap: Snapshot =
            serde_json::from_str(&row.snapshot).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut events = Vec::new();
        let grants = crate::grants::of_ticket(conn, key)?;
        let mut created = Vec::new();
        let decided = reconcile_with(
            conn,
            config,
            now,
            &snap,
            row.decision.as_deref(),
            &grants,
            &mut created,
            &mut events,
        )?;
        crate::grants::insert(conn, &created)?;
        if let Some(nd) = decided {
            save_decisions(conn, std::slice::from_ref(&nd.row))?;
            dispatch!(conn, c => diesel::update(tickets::table.find(key))
                .set(tickets::decision.eq(&nd.summary))
                .execute(c))?;
        }
        audit::append(conn, now, events)?;
        Ok(true)
    })
}

/// Re-decides every ticket that holds live grants but that warrant no longer
/// watches (its source, repository or project was dropped from the
/// configuration), so its grants are revoked at start, not only at the
/// next `warrant reconcile`. Answers how many tickets it re-decided.
pub fn close_unwatched(db: &Db, config: &Config, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let keys: Vec<String> = db.read(|conn| {
        Ok(dispatch!(conn, c => grants::table
            .filter(grants::state.eq_any(LIVE))
            .select(grants::ticket)
            .distinct()
            .load(c))?)
    })?;
    let mut n = 0;
    for key in keys {
        let watched = key
            .parse::<TicketKey>()
            .is_ok_and(|k| config.watches(k.source(), &project_of(&k)));
        if !watched {
            reconcile_ticket(db, config, now, &key)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The project a key names: a GitHub `OWNER/REPO`, a Jira project key, the
/// ServiceNow table.
fn project_of(key: &TicketKey) -> String {
    let rest = key.as_str().split_once(':').map_or("", |(_, rest)| rest);
    match key.source() {
        Source::Github => rest
            .rsplit_once('#')
            .map_or(rest, |(repo, _)| repo)
            .to_string(),
        Source::Jira => rest
            .rsplit_once('-')
            .map_or(rest, |(project, _)| project)
            .to_string(),
        Source::Servicenow => "change_request".to_string(),
    }
}

pub fn all_ticket_keys(db: &Db) -> Result<Vec<String>, StoreError> {
    db.read(|conn| Ok(dispatch!(conn, c => tickets::table.select(tickets::key).order(tickets::key.asc()).load(c))?))
}

/// A decision that differs from the ticket's last one, for the caller to store.
struct Decided {
    row: NewDecision,
    summary: String,
}

/// Moves the ticket's grants (`all`, as stored) toward the decision, writing
/// inside the caller's transaction; answers the decision if it is new, for
/// the caller to store. New grants go to `created`, for the caller to insert
/// with `grants::insert` (a batch inserts all of its own at once).
#[allow(clippy::too_many_arguments)]
fn reconcile_with(
    conn: &mut Conn<'_>,
    config: &Config,
    now: DateTime<Utc>,
    snap: &Snapshot,
    stored_decision: Option<&str>,
    all: &[GrantRow],
    created: &mut Vec<GrantRow>,
    events: &mut Vec<NewEvent>,
) -> Result<Option<Decided>, StoreError> {
    let key = snap.key.as_str();
    let decision = decide(snap, config, now);
    let decided = record_decision(conn, config, key, &decision, stored_decision, now, events)?;
    // A pipeline's grant answers to the ticket for its own principal and
    // resource, not to the decision about the ticket's human subject.
    let (ci, live): (Vec<&GrantRow>, Vec<&GrantRow>) = all
        .iter()
        .filter(|g| g.state().is_live())
        .partition(|g| g.origin.starts_with("ci:"));
    for g in ci {
        if let Err(d) =
            crate::ci::decide::still_warranted(snap, config, now, &g.subject, &g.resource)
        {
            crate::grants::revoke(
                conn,
                config,
                g,
                warrant(d.reason.revoke_reason()),
                now,
                events,
            )?;
        }
    }
    match &decision {
        Decision::Warrant(w) => {
            let resource = w.resource.to_string();
            for g in &live {
                let same = g.origin == w.origin && g.subject == w.subject && g.resource == resource;
                if !same {
                    crate::grants::revoke(
                        conn,
                        config,
                        g,
                        warrant(RevokeReason::RequestChanged),
                        now,
                        events,
                    )?;
                }
            }
            let exists = all
                .iter()
                .any(|g| g.origin == w.origin && g.subject == w.subject && g.resource == resource);
            if !exists {
                let row = GrantRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    ticket: key.to_string(),
                    subject: w.subject.clone(),
                    account: w.account.clone(),
                    resource,
                    state: if w.starts_at > now {
                        GrantState::Pending
                    } else {
                        GrantState::Granting
                    }
                    .to_string(),
                    origin: w.origin.clone(),
                    starts_at: to_micros(w.starts_at),
                    expires_at: to_micros(w.expires_at),
                    activated_at: None,
                    revoked_at: None,
                    revoke_reason: None,
                    failure: None,
                    created_at: to_micros(now),
                    updated_at: to_micros(now),
                };
                events.push(crate::grants::created(
                    &row,
                    json!({ "policy": w.policy, "approver": w.approver }),
                ));
                created.push(row);
            }
        }
        Decision::Deny { reason, .. } => {
            for g in &live {
                crate::grants::revoke(
                    conn,
                    config,
                    g,
                    warrant(reason.revoke_reason()),
                    now,
                    events,
                )?;
            }
        }
    }
    Ok(decided)
}

fn record_decision(
    conn: &mut Conn<'_>,
    config: &Config,
    key: &str,
    decision: &Decision,
    stored: Option<&str>,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<Option<Decided>, StoreError> {
    let summary =
        serde_json::to_string(decision).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let outcome = match decision {
        Decision::Warrant(_) => "warrant",
        Decision::Deny { .. } => "deny",
    };
    let reason = decision.reason().map(|r| r.as_str().to_string());
    let detail = decision.detail();
    // The ticket row keeps the last recorded decision: the same one again
    // is not news.
    if let Some(stored) = stored {
        if stored == summary {
            return Ok(None);
        }
        let last: serde_json::Value = serde_json::from_str(stored).unwrap_or_default();
        if let Decision::Deny { .. } = decision {
            if last["outcome"] == outcome
                && last["reason"].as_str() == reason.as_deref()
                && last["detail"].as_str() == Some(detail.as_str())
            {
                return Ok(None);
            }
        }
    }
    events.push(
        NewEvent::new(
            "decision",
            "warrant",
            json!({ "outcome": outcome, "reason": reason, "detail": detail }),
        )
        .ticket(key),
    );
    // "Not approved yet" and "closed" are the ticket's own state, not news.
    if let Decision::Deny { reason, detail } = decision {
        if !matches!(reason, DenyReason::NotApproved | DenyReason::TicketClosed) {
            backlink::enqueue(
                conn,
                config,
                now,
                key,
                &crate::backlinks::denied(reason.as_str(), detail),
            )?;
        }
    }
    Ok(Some(Decided {
        row: NewDecision {
            ticket: key.to_string(),
            at: to_micros(now),
            outcome: outcome.to_string(),
            reason,
            detail,
        },
        summary,
    }))
}

/// An operator's revocation, through the API or the CLI.
pub fn revoke_by_hand(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
    id: &str,
    reason: RevokeReason,
    actor: &str,
    note: Option<&str>,
) -> Result<Option<GrantRow>, StoreError> {
    db.write(|conn| {
        let Some(g) = crate::grants::get(conn, id)? else {
            return Ok(None);
        };
        let mut events = Vec::new();
        if g.state().is_live() {
            let why = Revocation {
                reason,
                actor,
                note,
            };
            crate::grants::revoke(conn, config, &g, why, now, &mut events)?;
        } else {
            events.push(
                NewEvent::new(
                    "revoke.noop",
                    actor,
                    json!({ "state": g.state, "note": note }),
                )
                .ticket(&g.ticket)
                .grant(&g.id),
            );
        }
        audit::append(conn, now, events)?;
        crate::grants::get(conn, id)
    })
}
