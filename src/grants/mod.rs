//! Grants: what was granted to whom, under which ticket, and where each
//! grant is in its life. The rows and their queries are here; the life
//! itself (create, step, revoke) is `lifecycle`, used by the engine, CI
//! grants and the grant job alike.

mod lifecycle;

pub use lifecycle::{create, created, expire, first_run, insert, revoke, step, Revocation, Step};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::schema::grants;
use crate::db::{Conn, StoreError};
use crate::dispatch;
use crate::domain::{from_micros, rfc3339, to_micros, GrantState};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq, Eq)]
#[diesel(table_name = grants)]
pub struct GrantRow {
    pub id: String,
    pub ticket: String,
    pub subject: String,
    pub account: String,
    pub resource: String,
    pub state: String,
    pub origin: String,
    pub starts_at: i64,
    pub expires_at: i64,
    pub activated_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
    pub failure: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl GrantRow {
    pub fn state(&self) -> GrantState {
        self.state.parse().unwrap_or(GrantState::Failed)
    }
}

/// A grant as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub id: String,
    pub ticket: String,
    pub subject: String,
    pub account: String,
    pub resource: String,
    pub state: String,
    pub starts_at: String,
    pub expires_at: String,
    pub activated_at: Option<String>,
    pub revoked_at: Option<String>,
    pub revoke_reason: Option<String>,
    pub failure: Option<String>,
    pub created_at: String,
}

impl From<GrantRow> for Grant {
    fn from(r: GrantRow) -> Self {
        let t = |us: i64| rfc3339(from_micros(us));
        Grant {
            id: r.id,
            ticket: r.ticket,
            subject: r.subject,
            account: r.account,
            resource: r.resource,
            state: r.state,
            starts_at: t(r.starts_at),
            expires_at: t(r.expires_at),
            activated_at: r.activated_at.map(t),
            revoked_at: r.revoked_at.map(t),
            revoke_reason: r.revoke_reason,
            failure: r.failure,
            created_at: t(r.created_at),
        }
    }
}

pub const LIVE: [&str; 3] = ["pending", "granting", "active"];

pub fn get(conn: &mut Conn<'_>, id: &str) -> Result<Option<GrantRow>, StoreError> {
    Ok(dispatch!(conn, c => grants::table
        .find(id)
        .select(GrantRow::as_select())
        .first(c)
        .optional())?)
}

pub fn of_ticket(conn: &mut Conn<'_>, ticket: &str) -> Result<Vec<GrantRow>, StoreError> {
    Ok(dispatch!(conn, c => grants::table
        .filter(grants::ticket.eq(ticket))
        .order(grants::created_at.asc())
        .select(GrantRow::as_select())
        .load(c))?)
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub ticket: Option<String>,
    pub subject: Option<String>,
    pub resource: Option<String>,
    pub state: Option<GrantState>,
    /// Active at this instant: activated at or before it, not yet revoked.
    pub active_at: Option<DateTime<Utc>>,
    pub after: Option<String>,
    pub limit: i64,
}

pub fn list(conn: &mut Conn<'_>, f: &Filter) -> Result<Vec<GrantRow>, StoreError> {
    macro_rules! query {
        ($c:expr) => {{
            let mut q = grants::table.select(GrantRow::as_select()).into_boxed();
            if let Some(t) = &f.ticket {
                q = q.filter(grants::ticket.eq(t));
            }
            if let Some(s) = &f.subject {
                q = q.filter(grants::subject.eq(s));
            }
            if let Some(r) = &f.resource {
                q = q.filter(grants::resource.eq(r));
            }
            if let Some(s) = f.state {
                q = q.filter(grants::state.eq(s.as_str()));
            }
            if let Some(at) = f.active_at {
                let at = to_micros(at);
                q = q
                    .filter(grants::activated_at.le(at))
                    .filter(grants::revoked_at.is_null().or(grants::revoked_at.gt(at)));
            }
            if let Some(after) = &f.after {
                q = q.filter(grants::id.gt(after));
            }
            q.order(grants::id.asc()).limit(f.limit).load($c)
        }};
    }
    Ok(dispatch!(conn, c => query!(c))?)
}
