//! Grants: what was granted to whom, under which ticket, and where each
//! grant is in its life. The life itself (create, step, revoke) is
//! `lifecycle`, used by the engine, CI grants and the grant job (`job`, the
//! job kind that drives one grant through it) alike; the
//! rows and their queries are `db::grants` (re-exported here); the API's
//! view of a grant is `Grant`.

pub mod job;
pub mod ledger;
mod lifecycle;

pub use lifecycle::{
    create, created, expire, first_run, follow_window, insert, revoke, step, Revocation, Step,
};

use serde::Serialize;

pub use crate::db::access::AccessRow;
pub use crate::db::grants::{get, list, of_ticket, Filter, GrantRow, LIVE};
use crate::domain::{from_micros, rfc3339};

/// A grant as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Grant {
    pub id: String,
    pub ticket: String,
    pub subject: String,
    pub account: String,
    pub resource: String,
    #[schema(value_type = crate::domain::GrantState)]
    pub state: String,
    pub starts_at: String,
    pub expires_at: String,
    pub activated_at: Option<String>,
    pub revoked_at: Option<String>,
    pub revoke_reason: Option<String>,
    pub failure: Option<String>,
    pub created_at: String,
    /// The grant's part in its access (see `ledger`): `held` when its own
    /// call applied it at the provider, `shared` when it rides on another
    /// live grant's; absent before it reached the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub access: Option<String>,
    /// The provider held the access before warrant applied it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    pub preexisting: bool,
}

impl Grant {
    /// The grant with what the ledger records of it.
    pub fn with_access(mut self, row: Option<&AccessRow>) -> Grant {
        if let Some(a) = row {
            self.access = Some(a.role.clone());
            self.preexisting = a.preexisting;
        }
        self
    }

    /// `rows` as the API shows them, each with its ledger row.
    pub fn all_with_access(rows: Vec<GrantRow>, access: &[AccessRow]) -> Vec<Grant> {
        rows.into_iter()
            .map(|g| {
                let a = access.iter().find(|a| a.grant_id == g.id);
                Grant::from(g).with_access(a)
            })
            .collect()
    }
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
            access: None,
            preexisting: false,
        }
    }
}
