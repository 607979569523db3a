//! Shared access: access is (provider, account, target), and several live
//! grants may hold the same one. The provider is told to apply it when the
//! first of them becomes active and to remove it only when the last one
//! ends; each grant still has its own life, reason and audit events.
//!
//! Both decisions are taken under the access's lock (`db::access::lock`,
//! an advisory lock on PostgreSQL, the single writer on SQLite), reading
//! the other grants as committed, so two replicas deciding for the same
//! access see each other's answers. The rules keep access present while
//! any grant holding it is live, and never let an apply and a removal of
//! one access run at once:
//! - a grant about to be applied waits while another grant of the access
//!   is revoking (its removal may be in flight), or is being applied;
//! - it shares an active grant's access instead of calling, unless the
//!   provider's access carries an end and its own end is later (then the
//!   provider hears the later end);
//! - a grant being revoked keeps the access, without a call, while another
//!   grant of it is being applied or active;
//! - an active grant extended past every other active grant of an access
//!   that carries an end tells the provider its new end (`plan_extend`).

use chrono::{DateTime, Utc};
use serde_json::json;

use super::job::GrantJob;
use super::{step, GrantRow, Step};
use crate::audit::NewEvent;
use crate::config::Config;
use crate::db::access::{self, Role};
use crate::db::jobs::Settle;
use crate::db::{Conn, StoreError};
use crate::domain::{to_micros, GrantState};
use crate::queue::Job;

/// What to do before calling the provider to apply a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// Call the provider. `alone`: no other grant holds the access, so
    /// finding it already held means it was there before warrant.
    Call { alone: bool },
    /// The grant rode on another's access and is now active.
    Shared { with: String },
    /// Another grant of the access must settle first; try again shortly.
    Wait { on: String },
}

/// Decides, under the access's lock, whether grant `g` (in `granting`)
/// calls its provider. On `Shared` the grant has stepped to active by
/// `activate`; `None` when the grant had moved on meanwhile.
#[allow(clippy::too_many_arguments)]
pub fn plan_apply(
    conn: &mut Conn<'_>,
    config: &Config,
    g: &GrantRow,
    carries_end: bool,
    activate: &Step,
    wait: Option<&Settle>,
    events: &mut Vec<NewEvent>,
) -> Result<Option<Apply>, StoreError> {
    access::lock(conn, &g.resource, &g.account)?;
    let others = access::others(conn, g)?;
    if let Some(r) = access::last_ending(&others, GrantState::Revoking) {
        return waiting(conn, wait, r);
    }
    let active = access::last_ending(&others, GrantState::Active);
    if let Some(h) = active.filter(|h| !carries_end || h.expires_at >= g.expires_at) {
        if !step(conn, config, g, activate, events)? {
            return Ok(None);
        }
        access::set_role(conn, &g.id, Role::Shared, false, to_micros(activate.now))?;
        note(events, &g.id, "grant.applied", "shared_with", &h.id);
        return Ok(Some(Apply::Shared { with: h.id.clone() }));
    }
    // Two calls for one access at once can collide at the provider
    // (PostgreSQL refuses a concurrent GRANT of one membership), so one
    // grant calls and the others wait: the one already calling, else the
    // oldest. A grant already calling never waits on a granting one, so
    // two never wait on each other.
    let granting = access::granting(&others);
    let calling = !granting.is_empty()
        && access::get(conn, &g.id)?.is_some_and(|a| a.role == Role::Held.as_str());
    if !calling && !granting.is_empty() {
        let ids: Vec<String> = granting.iter().map(|o| o.id.clone()).collect();
        let roles = access::of(conn, &ids)?;
        let first = granting.iter().find(|o| {
            roles
                .iter()
                .any(|a| a.grant_id == o.id && a.role == Role::Held.as_str())
                || (o.created_at, o.id.as_str()) < (g.created_at, g.id.as_str())
        });
        if let Some(o) = first {
            return waiting(conn, wait, o);
        }
    }
    access::set_role(conn, &g.id, Role::Held, false, to_micros(activate.now))?;
    if carries_end {
        access::set_told(conn, &g.id, g.expires_at)?;
    }
    // A later end than an active holder's: this grant now holds the access
    // at the provider, the one that ended first rides on it.
    if let Some(h) = active {
        access::set_role(conn, &h.id, Role::Shared, false, to_micros(activate.now))?;
    }
    Ok(Some(Apply::Call {
        alone: active.is_none(),
    }))
}

/// What to do for an active grant whose end moved later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    /// Nothing to tell: the provider knows this end, another active grant
    /// of the access outlasts it, or the grant moved on meanwhile.
    Nothing,
    /// Tell the provider the grant's end.
    Call,
    /// Another grant of the access is being applied or removed: look again
    /// shortly, so two calls for one access never overlap.
    Wait,
}

/// Decides, under the access's lock, whether the provider of active grant
/// `g`, whose access carries an end, must hear `g`'s end again: after an
/// extension, when no other active grant of the access already outlasts
/// it and the provider was last told an earlier end. The grant is read
/// again under the lock, so one that was revoked or moved meanwhile is
/// left alone. A grant that rode on another's access then holds it, and
/// the other rides on it. The caller records the told end
/// (`access::set_told`) once the provider took it, so a failed call is
/// asked again.
pub fn plan_extend(
    conn: &mut Conn<'_>,
    g: &GrantRow,
    now: DateTime<Utc>,
) -> Result<Extend, StoreError> {
    access::lock(conn, &g.resource, &g.account)?;
    let current = crate::db::grants::get(conn, &g.id)?;
    if !current.is_some_and(|c| c.state() == GrantState::Active && c.expires_at == g.expires_at) {
        return Ok(Extend::Nothing);
    }
    let mine = access::get(conn, &g.id)?;
    if mine
        .as_ref()
        .and_then(|a| a.told_until)
        .is_some_and(|told| told >= g.expires_at)
    {
        return Ok(Extend::Nothing);
    }
    let others = access::others(conn, g)?;
    let active = access::last_ending(&others, GrantState::Active);
    if active.is_some_and(|h| h.expires_at >= g.expires_at) {
        return Ok(Extend::Nothing);
    }
    if others
        .iter()
        .any(|o| matches!(o.state(), GrantState::Granting | GrantState::Revoking))
    {
        return Ok(Extend::Wait);
    }
    let at = to_micros(now);
    if mine.is_none_or(|a| a.role != Role::Held.as_str()) {
        access::set_role(conn, &g.id, Role::Held, false, at)?;
        if let Some(h) = active {
            access::set_role(conn, &h.id, Role::Shared, false, at)?;
        }
    }
    Ok(Extend::Call)
}

/// Waits on grant `on`. The job's row is rescheduled here, under the
/// access's lock, so `on` cannot settle (and wake this one through
/// `wake_waiting`) between the look and the reschedule.
fn waiting(
    conn: &mut Conn<'_>,
    wait: Option<&Settle>,
    on: &GrantRow,
) -> Result<Option<Apply>, StoreError> {
    if let Some(how) = wait {
        crate::db::jobs::settle(conn, how)?;
    }
    Ok(Some(Apply::Wait { on: on.id.clone() }))
}

/// What to do before calling the provider to remove a grant's access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remove {
    Call,
    /// Another live grant holds the access: it stays, and this grant has
    /// ended by `end` without a call.
    Kept {
        by: String,
    },
}

/// Decides, under the access's lock, whether grant `g` (revoking, or failed
/// with its call to take back) calls its provider to remove the access.
/// With `end`, a kept access ends the grant by that step; `None` when the
/// grant had moved on meanwhile.
pub fn plan_remove(
    conn: &mut Conn<'_>,
    config: &Config,
    g: &GrantRow,
    end: Option<&Step>,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<Option<Remove>, StoreError> {
    access::lock(conn, &g.resource, &g.account)?;
    let others = access::others(conn, g)?;
    let keeper = access::last_ending(&others, GrantState::Active)
        .or_else(|| access::last_ending(&others, GrantState::Granting))
        .cloned();
    let Some(keeper) = keeper else {
        // Access the provider held before warrant's first grant of it, for
        // an account kept out of drift checks, is standing access the team
        // chose to keep: the grant ends, the access stays.
        let standing = config.drift.is_exempt(&g.account)
            && access::get(conn, &g.id)?.is_some_and(|a| a.preexisting);
        if !standing {
            return Ok(Some(Remove::Call));
        }
        if let Some(end) = end {
            if !step(conn, config, g, end, events)? {
                return Ok(None);
            }
        }
        note(
            events,
            &g.id,
            "grant.revoked",
            "kept",
            "standing access of an exempt account",
        );
        return Ok(Some(Remove::Kept {
            by: "standing".into(),
        }));
    };
    if let Some(end) = end {
        if !step(conn, config, g, end, events)? {
            return Ok(None);
        }
    }
    let at = to_micros(now);
    if keeper.state() == GrantState::Active
        && access::get(conn, &g.id)?.is_some_and(|a| a.role == Role::Held.as_str())
    {
        access::set_role(conn, &keeper.id, Role::Held, false, at)?;
    }
    if end.is_some() {
        note(events, &g.id, "grant.revoked", "kept_by", &keeper.id);
    } else {
        events.push(
            NewEvent::new(
                "grant.cleaned_up",
                "warrant",
                json!({ "kept_by": keeper.id }),
            )
            .ticket(&g.ticket)
            .grant(&g.id),
        );
    }
    Ok(Some(Remove::Kept {
        by: keeper.id.clone(),
    }))
}

/// Adds `key: value` to the data of grant `id`'s last `kind` event: a
/// shared apply or a kept removal is told in the grant's own event, not
/// in one of its own.
fn note(events: &mut [NewEvent], id: &str, kind: &str, key: &str, value: &str) {
    let last = events
        .iter_mut()
        .rev()
        .find(|e| e.kind == kind && e.grant_id.as_deref() == Some(id));
    if let Some(serde_json::Value::Object(data)) = last.map(|e| &mut e.data) {
        data.insert(key.to_string(), value.into());
    }
}

/// Grant `g` has settled (active, revoked or failed): the grants of the
/// same access that wait on it look again now rather than at their next
/// poll.
pub fn wake_waiting(
    conn: &mut Conn<'_>,
    g: &GrantRow,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    access::lock(conn, &g.resource, &g.account)?;
    let others = access::others(conn, g)?;
    let waiting: Vec<String> = access::granting(&others)
        .iter()
        .map(|o| GrantJob::new(&o.id).dedupe_key())
        .collect();
    crate::db::jobs::wake(conn, &waiting, now)
}

/// Records that the provider already held the access when grant `g`, the
/// only grant holding it, was about to apply it: standing access that
/// warrant now governs (and removes at the grant's end).
pub fn preexisting(
    conn: &mut Conn<'_>,
    g: &GrantRow,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<(), StoreError> {
    access::set_role(conn, &g.id, Role::Held, true, to_micros(now))?;
    events.push(
        NewEvent::new(
            "grant.preexisting",
            "warrant",
            json!({ "resource": g.resource, "account": g.account }),
        )
        .ticket(&g.ticket)
        .grant(&g.id),
    );
    Ok(())
}
