//! Back-links: warrant writes what it did on the ticket itself — a GitHub
//! issue comment, a Jira comment, a ServiceNow work note — so the people
//! watching the ticket see the grant, its window and why it ended. Sent
//! from durable jobs with retries (`job`); off unless
//! the source has `token_env`. This module owns the notes' text and when
//! they are sent; each source posts them its own way
//! (`sources::TicketSource::post_note`).

pub mod job;

use crate::config::Config;
use crate::db::grants::GrantRow;
use crate::domain::{from_micros, rfc3339, Source, TicketKey};
use crate::ticket::Snapshot;

/// Attempts before a back-link is dropped (it is a courtesy, not access).
pub const ATTEMPTS: i32 = 12;

/// Whether notes go to tickets of this source.
pub fn enabled(config: &Config, source: Source) -> bool {
    crate::sources::configured(&config.sources, source).is_some_and(|s| s.posts_notes())
}

pub fn granted(g: &GrantRow) -> String {
    format!(
        "warrant: access granted. Grant {} gives {} `{}` (account `{}`) from {} until {}.",
        g.id,
        g.subject,
        g.resource,
        g.account,
        rfc3339(from_micros(g.activated_at.unwrap_or(g.starts_at))),
        rfc3339(from_micros(g.expires_at))
    )
}

pub fn revoked(g: &GrantRow, reason: &str) -> String {
    format!(
        "warrant: access revoked. Grant {} of `{}` for {} (window {} to {}) was revoked: {}.",
        g.id,
        g.resource,
        g.subject,
        rfc3339(from_micros(g.starts_at)),
        rfc3339(from_micros(g.expires_at)),
        reason
    )
}

/// What warrant read from a new or edited request, so that whoever
/// approves it approves exactly that.
pub fn read_back(snap: &Snapshot) -> String {
    let Some(r) = &snap.request else {
        return format!(
            "warrant: this request cannot be read, so it will not be granted as it stands: {}.",
            snap.request_error
                .as_deref()
                .unwrap_or("it asks for nothing")
        );
    };
    let window = match (r.start, r.end, r.duration.as_deref()) {
        (Some(s), Some(e), _) => format!("from {} until {}", rfc3339(s), rfc3339(e)),
        (Some(s), None, Some(d)) => format!("from {} for {d}", rfc3339(s)),
        (Some(s), None, None) => format!("from {} for the policy's default duration", rfc3339(s)),
        (None, Some(e), _) => format!("from approval until {}", rfc3339(e)),
        (None, None, Some(d)) => format!("for {d} from approval"),
        (None, None, None) => "for the policy's default duration from approval".to_string(),
    };
    format!(
        "warrant reads this request as: subject `{}`, resource `{}`, window {window}. \
         Approve it only if that is what you mean; any later change of these needs a new approval.",
        r.subject, r.resource
    )
}

pub fn denied(reason: &str, detail: &str) -> String {
    format!("warrant: access denied ({reason}): {detail}.")
}

/// Posts one note, through the ticket's source. Errors are short and hold
/// no token.
pub async fn deliver(
    client: &reqwest::Client,
    config: &Config,
    ticket: &str,
    text: &str,
) -> Result<(), String> {
    let key: TicketKey = ticket.parse().map_err(|_| "bad ticket key".to_string())?;
    let source = crate::sources::configured(&config.sources, key.source())
        .ok_or_else(|| format!("{} not configured", key.source()))?;
    source.post_note(client, &key, text).await
}
