//! Webhook bodies shaped like the real senders' (GitHub `issues` events,
//! Jira Cloud issue events, our ServiceNow business rule).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub fn form(resource: &str, duration: &str, start: Option<&str>) -> String {
    format!(
        "### Resource\n\n{resource}\n\n### Duration\n\n{duration}\n\n### Start\n\n{}\n\n### Justification\n\nIncident INC-7: read the orders table",
        start.unwrap_or("_No response_")
    )
}

pub struct Issue<'a> {
    pub number: u64,
    pub author: &'a str,
    pub body: String,
    pub labels: Vec<&'a str>,
    pub state: &'a str,
    pub updated_at: DateTime<Utc>,
    pub repo: &'a str,
}

impl<'a> Issue<'a> {
    pub fn new(number: u64, updated_at: DateTime<Utc>) -> Self {
        Issue {
            number,
            author: "dave-gh",
            body: form("hooks/orders-db", "2h", None),
            labels: vec![],
            state: "open",
            updated_at,
            repo: "acme/access-requests",
        }
    }
}

fn user(login: &str, id: u64) -> Value {
    json!({
        "login": login, "id": id, "node_id": "MDQ6VXNlcjE=", "avatar_url": "https://github.com/images/error/octocat_happy.gif",
        "gravatar_id": "", "url": format!("https://api.github.com/users/{login}"), "html_url": format!("https://github.com/{login}"),
        "type": "User", "site_admin": false
    })
}

fn label(name: &str) -> Value {
    json!({ "id": 208045946, "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=", "url": "https://api.github.com/repos/acme/access-requests/labels/x", "name": name, "description": "", "color": "f29513", "default": false })
}

/// A GitHub `issues` event body.
pub fn github(action: &str, issue: &Issue, sender: &str, changed_label: Option<&str>) -> Value {
    let (owner, name) = issue.repo.split_once('/').unwrap();
    let mut v = json!({
        "action": action,
        "issue": {
            "url": format!("https://api.github.com/repos/{}/issues/{}", issue.repo, issue.number),
            "html_url": format!("https://github.com/{}/issues/{}", issue.repo, issue.number),
            "id": 1_000_000 + issue.number, "node_id": "MDU6SXNzdWUx", "number": issue.number,
            "title": "Read access to orders-db for INC-7",
            "user": user(issue.author, 21031067),
            "labels": issue.labels.iter().map(|l| label(l)).collect::<Vec<_>>(),
            "state": issue.state, "locked": false, "assignee": null, "assignees": [], "milestone": null,
            "comments": 0, "created_at": "2026-11-25T09:00:00Z", "updated_at": issue.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "closed_at": null, "author_association": "MEMBER", "active_lock_reason": null,
            "body": issue.body,
            "reactions": { "url": "x", "total_count": 0 }, "state_reason": null
        },
        "repository": {
            "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": name, "full_name": issue.repo,
            "private": true, "owner": user(owner, 6811672), "html_url": format!("https://github.com/{}", issue.repo),
            "default_branch": "main"
        },
        "organization": { "login": owner, "id": 6811672 },
        "sender": user(sender, 21031068)
    });
    if let Some(l) = changed_label {
        v["label"] = label(l);
    }
    v
}

pub struct JiraIssue<'a> {
    pub key: &'a str,
    pub status: &'a str,
    pub category: &'a str,
    pub resource: &'a str,
    pub duration: Option<&'a str>,
    pub reporter: &'a str,
}

impl<'a> JiraIssue<'a> {
    pub fn new(key: &'a str) -> Self {
        JiraIssue {
            key,
            status: "Open",
            category: "new",
            resource: "hooks/billing",
            duration: Some("1h"),
            reporter: "5b10ac8d82e05b22cc7d4ef5",
        }
    }
}

/// A Jira Cloud `jira:issue_*` event body; `transition` is (from, to) status names.
pub fn jira(
    event: &str,
    issue: &JiraIssue,
    user_id: &str,
    at: DateTime<Utc>,
    transition: Option<(&str, &str)>,
) -> Value {
    let mut v = json!({
        "timestamp": at.timestamp_millis(),
        "webhookEvent": event,
        "issue_event_type_name": if transition.is_some() { "issue_generic" } else { "issue_updated" },
        "user": { "self": "https://acme.atlassian.net/rest/api/2/user?accountId=x", "accountId": user_id, "displayName": "Someone", "active": true, "timeZone": "Europe/Berlin", "accountType": "atlassian" },
        "issue": {
            "id": "10012", "self": "https://acme.atlassian.net/rest/api/2/10012", "key": issue.key,
            "fields": {
                "summary": "Billing hook access for the migration",
                "project": { "id": "10000", "key": issue.key.split('-').next().unwrap(), "name": "Operations" },
                "status": { "name": issue.status, "id": "10001", "statusCategory": { "id": 2, "key": issue.category, "name": "To Do" } },
                "reporter": { "accountId": issue.reporter, "displayName": "Dave Jones", "emailAddress": "dave@example.com" },
                "assignee": null,
                "created": "2026-11-25T09:00:00.000+0000",
                "updated": at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string(),
                "customfield_10100": issue.resource,
                "customfield_10101": null,
                "customfield_10102": null,
                "customfield_10103": issue.duration,
            }
        }
    });
    if let Some((from, to)) = transition {
        v["changelog"] = json!({ "id": "10101", "items": [ { "field": "status", "fieldtype": "jira", "fieldId": "status", "from": "1", "fromString": from, "to": "2", "toString": to } ] });
    }
    v
}

pub struct Change<'a> {
    pub number: &'a str,
    pub state: Value,
    pub approval: &'a str,
    pub approved_by: Value,
    pub assigned_to: &'a str,
    pub resource: &'a str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A `change_request` as the shipped ServiceNow business rule sends it.
pub fn servicenow(c: &Change) -> Value {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    json!({
        "table": "change_request",
        "sys_id": "c286d61347c12200e0ef563dbb9a7109",
        "number": c.number,
        "state": c.state,
        "approval": c.approval,
        "approved_by": c.approved_by,
        "assigned_to": c.assigned_to,
        "start_date": fmt(c.start),
        "end_date": fmt(c.end),
        "short_description": "Rotate billing hook credentials",
        "sys_updated_on": fmt(c.updated),
        "u_access_resource": c.resource,
    })
}

/// A GitHub `issues` `transferred` event: the issue as it was in its old
/// repository, and where it went under `changes`.
pub fn github_transferred(issue: &Issue, sender: &str, new_repo: &str, new_number: u64) -> Value {
    let mut v = github("transferred", issue, sender, None);
    let mut moved = Issue::new(new_number, issue.updated_at);
    moved.repo = new_repo;
    moved.body = issue.body.clone();
    moved.labels = issue.labels.clone();
    let new = github("opened", &moved, sender, None);
    v["changes"] = json!({
        "new_issue": new["issue"].clone(),
        "new_repository": new["repository"].clone(),
    });
    v
}

/// A Jira `jira:issue_updated` event for an issue moved (or re-keyed) from
/// `old_key` to `issue.key`, with the changelog Jira Cloud sends for a move.
pub fn jira_moved(issue: &JiraIssue, old_key: &str, user_id: &str, at: DateTime<Utc>) -> Value {
    let mut v = jira("jira:issue_updated", issue, user_id, at, None);
    v["changelog"] = json!({ "id": "10102", "items": [
        { "field": "project", "fieldtype": "jira", "fieldId": "project", "from": "10000", "fromString": "Operations", "to": "10001", "toString": "Security" },
        { "field": "Key", "fieldtype": "jira", "from": null, "fromString": old_key, "to": null, "toString": issue.key },
    ] });
    v
}

/// A GitHub `issue_comment` `created` event: `sender` comments `body` on
/// the issue as it is, with `association` (`MEMBER`, `NONE`, …).
pub fn github_comment(issue: &Issue, sender: &str, association: &str, body: &str) -> Value {
    let mut v = github("created", issue, sender, None);
    v["comment"] = json!({
        "id": 1_500_000 + issue.number, "body": body, "user": user(sender, 33),
        "author_association": association,
        "created_at": issue.updated_at.to_rfc3339(), "updated_at": issue.updated_at.to_rfc3339(),
    });
    v
}
