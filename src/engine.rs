//! The level-triggered core. A delivery updates its ticket's snapshot (an
//! older one never overwrites a newer one); the ticket's grants are then
//! reconciled to what `policy::decide` says the snapshot warrants. Grant
//! rows, their jobs and audit events are written in one transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::json;

use crate::audit::{self, NewEvent};
use crate::config::Config;
use crate::db::schema::{decisions, deliveries, grants, tickets};
use crate::db::{Conn, Db, StoreError};
use crate::dispatch;
use crate::domain::{rfc3339, to_micros, DenyReason, GrantState, RevokeReason, Source, TicketKey};
use crate::grants::{GrantRow, LIVE};
use crate::jobs;
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

/// Records a delivery and, if it is new and carries a ticket, folds it in
/// and reconciles, inside the caller's transaction; the audit events it
/// produces go to `events`. Nothing is written for a duplicate.
pub fn ingest_in(
    conn: &mut Conn<'_>,
    config: &Config,
    now: DateTime<Utc>,
    d: &Delivery,
    events: &mut Vec<NewEvent>,
) -> Result<Outcome, StoreError> {
    let ticket_key = match &d.parsed {
        Parsed::Ticket(ev) => Some(ev.key.clone()),
        Parsed::Ignored { ticket, .. } => ticket.clone(),
    };
    let outcome = if matches!(d.parsed, Parsed::Ticket(_)) {
        "accepted"
    } else {
        "ignored"
    };
    let inserted = dispatch!(conn, c => diesel::insert_into(deliveries::table)
        .values((
            deliveries::source.eq(d.source.as_str()),
            deliveries::delivery_id.eq(&d.id),
            deliveries::received_at.eq(to_micros(now)),
            deliveries::body_sha256.eq(&d.body_sha256),
            deliveries::ticket.eq(ticket_key.as_ref().map(|k| k.as_str())),
            deliveries::outcome.eq(outcome),
        ))
        .on_conflict_do_nothing()
        .execute(c))?;
    if inserted == 0 {
        let ticket: Option<Option<String>> = dispatch!(conn, c => deliveries::table
            .filter(deliveries::source.eq(d.source.as_str()))
            .filter(deliveries::delivery_id.eq(&d.id))
            .select(deliveries::ticket)
            .first(c)
            .optional())?;
        return Ok(Outcome::Duplicate(ticket.flatten()));
    }
    let ev = match &d.parsed {
        Parsed::Ignored { ticket, .. } => return Ok(Outcome::Ignored(ticket.clone())),
        Parsed::Ticket(ev) => ev.clone(),
    };
    let key = ev.key.clone();
    events.push(
        NewEvent::new(
            "delivery.accepted",
            format!("{}:webhook", d.source),
            json!({ "source": d.source, "delivery": d.id, "body_sha256": d.body_sha256 }),
        )
        .ticket(key.as_str()),
    );
    let prev = load_ticket(conn, key.as_str())?;
    let prev_snap = prev
        .as_ref()
        .and_then(|r| serde_json::from_str::<Snapshot>(&r.snapshot).ok());
    match &prev {
        Some(row) if to_micros(ev.updated_at) < row.source_updated_at => {
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
        _ => {}
    }
    let snap = merge(prev_snap.as_ref(), ev);
    if prev_snap.as_ref() != Some(&snap) {
        save_snapshot(conn, &snap, prev.is_some(), now)?;
        events.push(
            NewEvent::new("ticket.snapshot", "warrant", snapshot_summary(&snap))
                .ticket(key.as_str()),
        );
    }
    let stored = prev.as_ref().and_then(|r| r.decision.as_deref());
    reconcile_with(conn, config, now, &snap, stored, events)?;
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

pub fn load_ticket(conn: &mut Conn<'_>, key: &str) -> Result<Option<TicketRow>, StoreError> {
    Ok(dispatch!(conn, c => tickets::table
        .find(key)
        .select(TicketRow::as_select())
        .first(c)
        .optional())?)
}

fn save_snapshot(
    conn: &mut Conn<'_>,
    snap: &Snapshot,
    exists: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(snap).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let at = to_micros(now);
    if exists {
        dispatch!(conn, c => diesel::update(tickets::table.find(snap.key.as_str()))
            .set((
                tickets::snapshot.eq(&json),
                tickets::source_updated_at.eq(to_micros(snap.updated_at)),
                tickets::updated_at.eq(at),
            ))
            .execute(c))?;
    } else {
        dispatch!(conn, c => diesel::insert_into(tickets::table)
            .values(TicketRow {
                key: snap.key.to_string(),
                source: snap.source.to_string(),
                source_updated_at: to_micros(snap.updated_at),
                snapshot: json.clone(),
                decision: None,
                created_at: at,
                updated_at: at,
            })
            .execute(c))?;
    }
    Ok(())
}

/// Re-decides one stored ticket now (timers, `warrant reconcile`, config changes).
pub fn reconcile_ticket(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
    key: &str,
) -> Result<bool, StoreError> {
    db.write(|conn| {
        let Some(row) = load_ticket(conn, key)? else {
            return Ok(false);
        };
        let snap: Snapshot =
            serde_json::from_str(&row.snapshot).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut events = Vec::new();
        reconcile_with(
            conn,
            config,
            now,
            &snap,
            row.decision.as_deref(),
            &mut events,
        )?;
        audit::append(conn, now, events)?;
        Ok(true)
    })
}

pub fn all_ticket_keys(db: &Db) -> Result<Vec<String>, StoreError> {
    db.read(|conn| Ok(dispatch!(conn, c => tickets::table.select(tickets::key).order(tickets::key.asc()).load(c))?))
}

/// Moves the ticket's grants toward the decision. Writes inside the caller's transaction.
fn reconcile_with(
    conn: &mut Conn<'_>,
    config: &Config,
    now: DateTime<Utc>,
    snap: &Snapshot,
    stored_decision: Option<&str>,
    events: &mut Vec<NewEvent>,
) -> Result<(), StoreError> {
    let key = snap.key.as_str();
    let decision = decide(snap, config, now);
    record_decision(conn, config, key, &decision, stored_decision, now, events)?;
    let all = crate::grants::of_ticket(conn, key)?;
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
            revoke(
                conn,
                config,
                g,
                d.reason.revoke_reason(),
                "warrant",
                None,
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
                    revoke(
                        conn,
                        config,
                        g,
                        RevokeReason::RequestChanged,
                        "warrant",
                        None,
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
                create_grant(
                    conn,
                    &row,
                    now,
                    events,
                    json!({ "policy": w.policy, "approver": w.approver }),
                )?;
            }
        }
        Decision::Deny { reason, .. } => {
            for g in &live {
                revoke(
                    conn,
                    config,
                    g,
                    reason.revoke_reason(),
                    "warrant",
                    None,
                    now,
                    events,
                )?;
            }
        }
    }
    Ok(())
}

/// Inserts a grant with its job and audit event.
pub fn create_grant(
    conn: &mut Conn<'_>,
    row: &GrantRow,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
    extra: serde_json::Value,
) -> Result<(), StoreError> {
    dispatch!(conn, c => diesel::insert_into(grants::table).values(row).execute(c))?;
    let run_at = crate::domain::from_micros(row.starts_at).max(now);
    jobs::enqueue_grant(conn, &row.id, run_at, now)?;
    events.push(
        NewEvent::new(
            "grant.created",
            "warrant",
            json!({
                "subject": row.subject, "account": row.account, "resource": row.resource,
                "state": row.state, "starts_at": rfc3339(crate::domain::from_micros(row.starts_at)),
                "expires_at": rfc3339(crate::domain::from_micros(row.expires_at)), "detail": extra,
            }),
        )
        .ticket(&row.ticket)
        .grant(&row.id),
    );
    Ok(())
}

fn record_decision(
    conn: &mut Conn<'_>,
    config: &Config,
    key: &str,
    decision: &Decision,
    stored: Option<&str>,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<(), StoreError> {
    let summary =
        serde_json::to_string(decision).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // The ticket row keeps the last recorded decision: the same one again
    // is not news, and needs no look-up of the history.
    if stored == Some(summary.as_str()) {
        return Ok(());
    }
    let outcome = match decision {
        Decision::Warrant(_) => "warrant",
        Decision::Deny { .. } => "deny",
    };
    let reason = decision.reason().map(|r| r.as_str().to_string());
    let detail = decision.detail();
    let last: Option<DecisionRow> = dispatch!(conn, c => decisions::table
        .filter(decisions::ticket.eq(key))
        .order(decisions::id.desc())
        .select(DecisionRow::as_select())
        .first(c)
        .optional())?;
    if let Some(l) = &last {
        if l.outcome == outcome && l.reason == reason && l.detail == detail {
            return Ok(());
        }
    }
    dispatch!(conn, c => diesel::insert_into(decisions::table)
        .values((
            decisions::ticket.eq(key),
            decisions::at.eq(to_micros(now)),
            decisions::outcome.eq(outcome),
            decisions::reason.eq(&reason),
            decisions::detail.eq(&detail),
        ))
        .execute(c))?;
    dispatch!(conn, c => diesel::update(tickets::table.find(key)).set(tickets::decision.eq(&summary)).execute(c))?;
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
            crate::backlinks::enqueue(
                conn,
                config,
                now,
                key,
                &crate::backlinks::denied(reason.as_str(), detail),
            )?;
        }
    }
    Ok(())
}

/// Starts revoking a live grant. A pending grant was never applied, so it
/// is revoked at once; any other goes to `revoking` and its job runs now.
#[allow(clippy::too_many_arguments)]
pub fn revoke(
    conn: &mut Conn<'_>,
    config: &Config,
    g: &GrantRow,
    reason: RevokeReason,
    actor: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<bool, StoreError> {
    let at = to_micros(now);
    let (to, revoked_at) = if g.state() == GrantState::Pending {
        (GrantState::Revoked, Some(at))
    } else {
        (GrantState::Revoking, None)
    };
    let changed = dispatch!(conn, c => diesel::update(grants::table.find(&g.id))
        .filter(grants::state.eq_any(LIVE))
        .set((
            grants::state.eq(to.as_str()),
            grants::revoke_reason.eq(reason.as_str()),
            grants::revoked_at.eq(revoked_at),
            grants::updated_at.eq(at),
        ))
        .execute(c))?;
    if changed == 0 {
        return Ok(false);
    }
    events.push(
        NewEvent::new(
            "revoke.requested",
            actor,
            json!({ "reason": reason, "from": g.state, "note": note }),
        )
        .ticket(&g.ticket)
        .grant(&g.id),
    );
    if to == GrantState::Revoked {
        jobs::delete_grant_job(conn, &g.id)?;
        crate::backlinks::enqueue(
            conn,
            config,
            now,
            &g.ticket,
            &crate::backlinks::revoked(g, reason.as_str()),
        )?;
        events.push(
            NewEvent::new(
                "grant.revoked",
                actor,
                json!({ "reason": reason, "applied": false }),
            )
            .ticket(&g.ticket)
            .grant(&g.id),
        );
    } else {
        jobs::enqueue_grant(conn, &g.id, now, now)?;
    }
    Ok(true)
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
            revoke(conn, config, &g, reason, actor, note, now, &mut events)?;
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
