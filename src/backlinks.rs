//! Back-links: warrant writes what it did on the ticket itself — a GitHub
//! issue comment, a Jira comment, a ServiceNow work note — so the people
//! watching the ticket see the grant, its window and why it ended. Sent
//! from durable jobs with retries (`jobs::kinds::backlink`); off unless
//! the source has `token_env`. This file writes the notes and posts them.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::config::Config;
use crate::db::grants::GrantRow;
use crate::domain::{from_micros, rfc3339, Source, TicketKey};
use crate::ticket::Snapshot;

/// Attempts before a back-link is dropped (it is a courtesy, not access).
pub const ATTEMPTS: i32 = 12;

/// Whether notes go to tickets of this source.
pub fn enabled(config: &Config, source: Source) -> bool {
    match source {
        Source::Github => config
            .sources
            .github
            .as_ref()
            .is_some_and(|g| g.token.is_some()),
        Source::Jira => config
            .sources
            .jira
            .as_ref()
            .is_some_and(|j| j.token.is_some()),
        Source::Servicenow => config
            .sources
            .servicenow
            .as_ref()
            .is_some_and(|s| s.token.is_some()),
    }
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

fn auth(req: reqwest::RequestBuilder, token: &SecretString) -> reqwest::RequestBuilder {
    // `user:secret` is basic auth (Jira Cloud, ServiceNow); anything else a bearer token.
    match token.expose_secret().split_once(':') {
        Some(_) => req.header(
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(token.expose_secret())
            ),
        ),
        None => req.bearer_auth(token.expose_secret()),
    }
}

async fn check(
    resp: Result<reqwest::Response, reqwest::Error>,
    what: &str,
) -> Result<reqwest::Response, String> {
    let resp = resp.map_err(|e| {
        crate::redact::redact(
            &format!(
                "{what}: {}",
                if e.is_timeout() {
                    "timed out"
                } else {
                    "request failed"
                }
            ),
            &[],
        )
    })?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(crate::redact::redact(
            &format!("{what} answered {}", resp.status().as_u16()),
            &[],
        ))
    }
}

/// Posts one note. Errors are short and hold no token.
pub async fn deliver(
    client: &reqwest::Client,
    config: &Config,
    ticket: &str,
    text: &str,
) -> Result<(), String> {
    let key: TicketKey = ticket.parse().map_err(|_| "bad ticket key".to_string())?;
    let enc = crate::domain::path_segment;
    let rest = key
        .as_str()
        .split_once(':')
        .map(|(_, r)| r)
        .unwrap_or_default();
    match key.source() {
        Source::Github => {
            let g = config
                .sources
                .github
                .as_ref()
                .ok_or("github not configured")?;
            let token = g.token.as_ref().ok_or("no token")?;
            let (repo, number) = rest.rsplit_once('#').ok_or("bad key")?;
            let (owner, name) = repo.split_once('/').ok_or("bad key")?;
            let url = format!(
                "{}/repos/{}/{}/issues/{}/comments",
                g.api_url.trim_end_matches('/'),
                enc(owner),
                enc(name),
                enc(number)
            );
            let req = client
                .post(url)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .json(&json!({ "body": text }));
            check(auth(req, token).send().await, "GitHub API")
                .await
                .map(|_| ())
        }
        Source::Jira => {
            let j = config.sources.jira.as_ref().ok_or("jira not configured")?;
            let token = j.token.as_ref().ok_or("no token")?;
            let base = j
                .api_url
                .as_deref()
                .ok_or("no api_url")?
                .trim_end_matches('/');
            let url = format!("{base}/rest/api/2/issue/{}/comment", enc(rest));
            let req = client.post(url).json(&json!({ "body": text }));
            check(auth(req, token).send().await, "Jira API")
                .await
                .map(|_| ())
        }
        Source::Servicenow => {
            let s = config
                .sources
                .servicenow
                .as_ref()
                .ok_or("servicenow not configured")?;
            let token = s.token.as_ref().ok_or("no token")?;
            let base = s
                .api_url
                .as_deref()
                .ok_or("no api_url")?
                .trim_end_matches('/');
            // The Table API addresses records by sys_id; look it up by number.
            let url = format!(
                "{base}/api/now/table/change_request?sysparm_query=number%3D{}&sysparm_fields=sys_id&sysparm_limit=1",
                enc(rest)
            );
            let resp = check(
                auth(client.get(url).header("accept", "application/json"), token)
                    .send()
                    .await,
                "ServiceNow API",
            )
            .await?;
            let body: serde_json::Value = resp
                .json()
                .await
                .map_err(|_| "ServiceNow API answered no JSON".to_string())?;
            let sys_id = body["result"][0]["sys_id"]
                .as_str()
                .ok_or("ServiceNow has no such change request")?;
            let url = format!("{base}/api/now/table/change_request/{}", enc(sys_id));
            let req = client
                .patch(url)
                .header("accept", "application/json")
                .json(&json!({ "work_notes": text }));
            check(auth(req, token).send().await, "ServiceNow API")
                .await
                .map(|_| ())
        }
    }
}
