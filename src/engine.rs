//! The level-triggered core. A delivery updates its ticket's snapshot (an
//! older one never overwrites a newer one); the ticket's grants are then
//! reconciled to what `policy::decide` says the snapshot warrants. Grant
//! rows, their jobs and audit events are written in one transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::json;

use crate::audit::{self, NewEvent};
use crate::backlinks::job as backlink;
use crate::config::Config;
use crate::db::deliveries::{self, NewDelivery};
use crate::db::schema::grants;
use crate::db::tickets::{self, NewDecision, TicketRow};
use crate::db::{Conn, Db, StoreError};
use crate::dispatch;
use crate::domain::{rfc3339, to_micros, DenyReason, GrantState, RevokeReason, Source, TicketKey};
use crate::grants::job::GrantJob;
use crate::grants::Revocation;
use crate::grants::{GrantRow, LIVE};
use crate::intake::{Delivery, Ingest, Ingested, Outcome};
use crate::policy::{decide, Decision};
use crate::queue::Job;
use crate::sources::Parsed;
use crate::ticket::{merge, Snapshot};

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

/// The engine as the commit lanes' intake handler: `ingest_batch`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fold;

impl Ingest for Fold {
    fn batch(
        &self,
        conn: &mut Conn<'_>,
        config: &Config,
        items: &[(DateTime<Utc>, &Delivery)],
    ) -> Result<Vec<(Ingested, Vec<NewEvent>)>, StoreError> {
        ingest_batch(conn, config, items)
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
        rows.push(NewDelivery {
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
    let inserted = deliveries::insert_new(conn, &rows)?;
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
    let earlier: Vec<&NewDelivery<'_>> = rows
        .iter()
        .filter(|r| !inserted.contains(&(r.source.to_string(), r.delivery_id.to_string())))
        .collect();
    if !earlier.is_empty() {
        let ids: Vec<&str> = earlier.iter().map(|r| r.delivery_id).collect();
        let mut sources: Vec<&str> = earlier.iter().map(|r| r.source).collect();
        sources.sort_unstable();
        sources.dedup();
        let stored = deliveries::tickets_of(conn, &sources, &ids)?;
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
        tickets::lock(conn, &keys)?;
        let (loaded, grants) = tickets::with_grants(conn, &keys)?;
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
    let jobs: Vec<GrantJob> = t.created.iter().map(|g| GrantJob::new(&g.id)).collect();
    let grant_jobs = tickets::GrantJobs {
        kind: GrantJob::KIND,
        dedupe_keys: jobs.iter().map(GrantJob::dedupe_key).collect(),
        payloads: jobs.iter().map(Job::payload).collect::<Result<_, _>>()?,
        run_at: t.created.iter().map(crate::grants::first_run).collect(),
    };
    tickets::flush(
        conn,
        &tickets::Batch {
            tickets: t.dirty.iter().filter_map(|k| t.rows.get(k)).collect(),
            decisions: &t.decisions,
            grants: &t.created,
            jobs: grant_jobs,
            heal_above: t.heal_above,
        },
        crate::grants::insert,
    )?;
    Ok(out)
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
        tickets::lock(conn, &[key.to_string()])?;
        let Some(row) = tickets::load(conn, key)? else {
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
            tickets::save_decisions(conn, std::slice::from_ref(&nd.row))?;
            tickets::set_decision(conn, key, &nd.summary)?;
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
    db.read(tickets::all_keys)
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
            crate::policy::ci::still_warranted(snap, config, now, &g.subject, &g.resource)
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
            // A live grant of the same access stays, whatever approval it
            // came from: a change that touches neither subject nor resource
            // never revokes, and its window follows the decision in place.
            let mut kept = false;
            for g in &live {
                let same = g.subject == w.subject && g.resource == resource;
                if same && !kept {
                    kept = true;
                    crate::grants::follow_window(conn, g, w.starts_at, w.expires_at, now, events)?;
                } else {
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
            let exists = kept
                || all.iter().any(|g| {
                    g.origin == w.origin && g.subject == w.subject && g.resource == resource
                });
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
