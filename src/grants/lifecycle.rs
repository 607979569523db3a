//! A grant's life, written once for the engine, CI grants and the grant
//! job alike: creation (the row, its job and its audit event), a step from
//! one state to the next, and revocation (by a decision, an operator, a
//! pipeline's release or the timer). Each runs inside the caller's
//! transaction and pushes its audit events for the caller to append.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::json;

use super::job::GrantJob;
use super::{GrantRow, LIVE};
use crate::audit::NewEvent;
use crate::backlinks::job as backlink;
use crate::config::Config;
use crate::db::grants::{take_step, GrantMove};
use crate::db::jobs::Settle;
use crate::db::schema::grants;
use crate::db::{Conn, StoreError};
use crate::dispatch;
use crate::domain::{from_micros, rfc3339, to_micros, GrantState, RevokeReason};
use crate::queue::Job;

/// Inserts a grant with its job and audit event.
pub fn create(
    conn: &mut Conn<'_>,
    row: &GrantRow,
    events: &mut Vec<NewEvent>,
    extra: serde_json::Value,
) -> Result<(), StoreError> {
    insert(conn, std::slice::from_ref(row))?;
    events.push(created(row, extra));
    Ok(())
}

/// The audit event of a new grant.
pub fn created(row: &GrantRow, extra: serde_json::Value) -> NewEvent {
    NewEvent::new(
        "grant.created",
        "warrant",
        json!({
            "subject": row.subject, "account": row.account, "resource": row.resource,
            "state": row.state, "starts_at": rfc3339(from_micros(row.starts_at)),
            "expires_at": rfc3339(from_micros(row.expires_at)), "detail": extra,
        }),
    )
    .ticket(&row.ticket)
    .grant(&row.id)
}

/// When a new grant's job first runs: at its start, or at its creation if
/// it has started.
pub fn first_run(row: &GrantRow) -> i64 {
    row.starts_at.max(row.created_at)
}

/// Inserts new grants and schedules each one's job at its `first_run`. A
/// batch's grants on PostgreSQL are written by the engine's batch
/// statement instead; this serves single grants and SQLite.
pub fn insert(conn: &mut Conn<'_>, rows: &[GrantRow]) -> Result<(), StoreError> {
    for r in rows {
        dispatch!(conn, c => diesel::insert_into(grants::table).values(r).execute(c))?;
        GrantJob::new(&r.id).enqueue(conn, from_micros(first_run(r)), from_micros(r.created_at))?;
    }
    Ok(())
}

/// Moves a live grant's window to the one its ticket now warrants, in
/// place: a later end is an extension (`grant.extended`), an earlier end or
/// a later start a narrowing (`grant.narrowed`); the grant's job follows the
/// new start (pending) or end (active). A grant already applied keeps its
/// start. Nothing happens when the window is unchanged.
pub fn follow_window(
    conn: &mut Conn<'_>,
    g: &GrantRow,
    starts_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<(), StoreError> {
    let state = g.state();
    // A decision's start is never before now, so once a pending grant's
    // start has passed it would move with every re-decision: only a start
    // still ahead is followed.
    let start = if state == GrantState::Pending && starts_at > now {
        to_micros(starts_at)
    } else {
        g.starts_at
    };
    let end = to_micros(expires_at);
    if (start, end) == (g.starts_at, g.expires_at) {
        return Ok(());
    }
    let at = to_micros(now);
    if !crate::db::grants::set_window(conn, &g.id, start, end, at)? {
        return Ok(());
    }
    let moved = GrantRow {
        starts_at: start,
        expires_at: end,
        ..g.clone()
    };
    match state {
        GrantState::Pending => {
            GrantJob::new(&g.id).enqueue(conn, from_micros(first_run(&moved)), now)?
        }
        // After an extension the job runs now: a provider whose access
        // carries an end is told the new one (`ledger::plan_extend`).
        GrantState::Active if end > g.expires_at => GrantJob::new(&g.id).enqueue(conn, now, now)?,
        GrantState::Active => GrantJob::new(&g.id).enqueue(conn, from_micros(end), now)?,
        _ => {}
    }
    let kind = if end > g.expires_at {
        "grant.extended"
    } else {
        "grant.narrowed"
    };
    let t = |us: i64| rfc3339(from_micros(us));
    events.push(
        NewEvent::new(
            kind,
            "warrant",
            json!({
                "from": { "starts_at": t(g.starts_at), "expires_at": t(g.expires_at) },
                "to": { "starts_at": t(start), "expires_at": t(end) },
            }),
        )
        .ticket(&g.ticket)
        .grant(&g.id),
    );
    Ok(())
}

/// Who revokes a grant and why.
#[derive(Debug, Clone, Copy)]
pub struct Revocation<'a> {
    pub reason: RevokeReason,
    pub actor: &'a str,
    pub note: Option<&'a str>,
}

/// Starts revoking a live grant. A pending grant was never applied, so it
/// is revoked at once; any other goes to `revoking` and its job runs now.
pub fn revoke(
    conn: &mut Conn<'_>,
    config: &Config,
    g: &GrantRow,
    why: Revocation<'_>,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<bool, StoreError> {
    let at = to_micros(now);
    let (to, revoked_at) = if g.state() == GrantState::Pending {
        (GrantState::Revoked, Some(at))
    } else {
        (GrantState::Revoking, None)
    };
    if !request(conn, g, &LIVE, to, revoked_at, why, at, events)? {
        return Ok(false);
    }
    let Revocation { reason, actor, .. } = why;
    if to == GrantState::Revoked {
        crate::db::jobs::delete_by_key(conn, &GrantJob::new(&g.id).dedupe_key())?;
        backlink::enqueue(
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
        GrantJob::new(&g.id).enqueue(conn, now, now)?;
    }
    Ok(true)
}

/// The grant's window is over: it starts revoking, if it is still as read.
/// Answers the grant as the revocation left it (`None` if it had moved on
/// meanwhile). The grant job that calls this goes on to the provider call
/// itself, so nothing is scheduled.
pub fn expire(
    conn: &mut Conn<'_>,
    g: &GrantRow,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<Option<GrantRow>, StoreError> {
    let at = to_micros(now);
    let why = Revocation {
        reason: RevokeReason::Expired,
        actor: "timer",
        note: None,
    };
    let from = [g.state.as_str()];
    if !request(
        conn,
        g,
        &from,
        GrantState::Revoking,
        g.revoked_at,
        why,
        at,
        events,
    )? {
        return Ok(None);
    }
    Ok(Some(GrantRow {
        state: GrantState::Revoking.to_string(),
        revoke_reason: Some(why.reason.as_str().to_string()),
        updated_at: at,
        ..g.clone()
    }))
}

/// Moves the grant to `to` with the revocation's reason if it is in one of
/// `from`, and records the request; answers whether it moved.
#[allow(clippy::too_many_arguments)]
fn request(
    conn: &mut Conn<'_>,
    g: &GrantRow,
    from: &[&str],
    to: GrantState,
    revoked_at: Option<i64>,
    why: Revocation<'_>,
    at: i64,
    events: &mut Vec<NewEvent>,
) -> Result<bool, StoreError> {
    let changed = dispatch!(conn, c => diesel::update(grants::table.find(&g.id))
        .filter(grants::state.eq_any(from.to_vec()))
        .set((
            grants::state.eq(to.as_str()),
            grants::revoke_reason.eq(why.reason.as_str()),
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
            why.actor,
            json!({ "reason": why.reason, "from": g.state, "note": why.note }),
        )
        .ticket(&g.ticket)
        .grant(&g.id),
    );
    Ok(true)
}

/// One step of a grant's life: from one state to the next, and optionally
/// the job's own row settled in the same transaction.
pub struct Step {
    pub from: GrantState,
    pub to: GrantState,
    pub now: DateTime<Utc>,
    pub failure: Option<String>,
    pub then: Option<Settle>,
}

impl Step {
    pub fn new(from: GrantState, to: GrantState, now: DateTime<Utc>) -> Step {
        Step {
            from,
            to,
            now,
            failure: None,
            then: None,
        }
    }
    pub fn failure(mut self, why: &str) -> Step {
        self.failure = Some(why.to_string());
        self
    }
    /// Settles the job's row as `then` says, only if the step is taken.
    pub fn settling(mut self, then: Option<Settle>) -> Step {
        self.then = then;
        self
    }
}

/// Takes the step if the grant is still in its first state; answers whether
/// it did. An active grant's and a revoked one's note goes on the ticket.
pub fn step(
    conn: &mut Conn<'_>,
    config: &Config,
    g: &GrantRow,
    step: &Step,
    events: &mut Vec<NewEvent>,
) -> Result<bool, StoreError> {
    let Step {
        from,
        to,
        now,
        ref failure,
        ref then,
    } = *step;
    let at = to_micros(now);
    // The step's own column changes with the state, in one statement.
    let activated_at = if to == GrantState::Active {
        Some(at)
    } else {
        g.activated_at
    };
    let revoked_at = if to == GrantState::Revoked {
        Some(at)
    } else {
        g.revoked_at
    };
    let failed = if to == GrantState::Failed {
        failure.clone()
    } else {
        g.failure.clone()
    };
    let moved = GrantMove {
        id: &g.id,
        from,
        to,
        at,
        activated_at,
        revoked_at,
        failure: failed.as_deref(),
    };
    if !take_step(conn, &moved, then.as_ref())? {
        return Ok(false);
    }
    if matches!(
        to,
        GrantState::Active | GrantState::Revoked | GrantState::Failed
    ) {
        super::ledger::wake_waiting(conn, g, now)?;
    }
    let (kind, data) = match to {
        GrantState::Active => {
            let active = GrantRow {
                activated_at: Some(at),
                ..g.clone()
            };
            let text = crate::backlinks::granted(&active);
            backlink::enqueue(conn, config, now, &g.ticket, &text)?;
            (
                "grant.applied",
                json!({ "resource": g.resource, "account": g.account }),
            )
        }
        GrantState::Revoked => {
            let reason = g.revoke_reason.clone().unwrap_or_default();
            let text = crate::backlinks::revoked(g, &reason);
            backlink::enqueue(conn, config, now, &g.ticket, &text)?;
            (
                "grant.revoked",
                json!({ "reason": g.revoke_reason, "applied": true }),
            )
        }
        GrantState::Failed => ("grant.failed", json!({ "error": failure })),
        GrantState::Granting => ("grant.starting", json!({})),
        other => ("grant.state", json!({ "ctx": other })),
    };
    events.push(
        NewEvent::new(kind, "warrant", data)
            .ticket(&g.ticket)
            .grant(&g.id),
    );
    Ok(true)
}
