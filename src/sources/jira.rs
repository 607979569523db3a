//! Jira Cloud issue webhooks (`jira:issue_created|updated|deleted`): which
//! deliveries count, the ticket key `jira:KEY-N`, status and approval from the
//! workflow status and the event's changelog, and the request read from the
//! fields named in `[sources.jira.fields]` (no other field). A move or a
//! re-key closes the issue under its old key. Identities are always
//! `accountId`s, never display names or e-mail addresses, which people can
//! change or share.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::source::{key_rest, note_answer, note_auth};
use super::{delivery_id, Inbound, IntakeError, TicketSource};
use crate::crypto::signature;
use crate::domain::TicketKey;

use super::{
    at, epoch_millis, ignored, need_str, parse_jira_datetime, parse_object, quote, same_name,
    scalar_text, str_at, ticket_key, Draft, Parsed, SourceError, YEARS,
};
use crate::config::JiraSource;
use crate::domain::Source;
use crate::ticket::{ApprovalSignal, TicketEvent, TicketStatus};

const WHAT: &str = "Jira webhook payload";

const TICKET_EVENTS: [&str; 3] = [
    "jira:issue_created",
    "jira:issue_updated",
    "jira:issue_deleted",
];

pub fn parse(cfg: &JiraSource, body: &[u8]) -> Result<Parsed, SourceError> {
    let root = parse_object(body, WHAT)?;
    let event = need_str(&root, &["webhookEvent"], WHAT)?;
    let project = str_at(&root, &["issue", "fields", "project", "key"]);
    let listed = |p: &str| cfg.projects.iter().any(|c| same_name(c, p));

    if !TICKET_EVENTS.contains(&event) {
        // Comments and the like change nothing, but name the ticket when it
        // is one warrant follows.
        let ticket = match (project, str_at(&root, &["issue", "key"])) {
            (Some(p), Some(k)) if listed(p) => ticket_key(format!("jira:{k}"), WHAT).ok(),
            _ => None,
        };
        return Ok(ignored(
            format!("Jira `{}` events carry no ticket change", quote(event)),
            ticket,
        ));
    }

    let project = project
        .ok_or_else(|| super::missing(&["issue", "fields", "project", "key"], "a string", WHAT))?;
    if let Some(moved) = moved_away(&root, cfg)? {
        return Ok(Parsed::Ticket(moved));
    }
    if !listed(project) {
        return Ok(ignored(
            format!(
                "project `{}` is not in sources.jira.projects",
                quote(project)
            ),
            None,
        ));
    }
    let key = ticket_key(
        format!("jira:{}", need_str(&root, &["issue", "key"], WHAT)?),
        WHAT,
    )?;
    let fields = at(&root, &["issue", "fields"])
        .and_then(Value::as_object)
        .ok_or_else(|| super::missing(&["issue", "fields"], "an object", WHAT))?;
    let updated_at = updated_at(&root, fields)?;
    let deleted = event == "jira:issue_deleted";

    let status_name = str_at(fields, &["status", "name"]);
    let status_name = match (status_name, deleted) {
        (Some(s), _) => s,
        // A deleted issue is gone whatever its status was.
        (None, true) => "deleted",
        (None, false) => {
            return Err(super::missing(
                &["issue", "fields", "status", "name"],
                "a string",
                WHAT,
            ))
        }
    };
    let category = str_at(fields, &["status", "statusCategory", "key"]);
    let in_list = |list: &[String], name: &str| list.iter().any(|s| same_name(s, name));
    let status = if deleted {
        TicketStatus::Deleted
    } else if category.is_some_and(|c| c.eq_ignore_ascii_case("done"))
        || in_list(&cfg.closed_statuses, status_name)
    {
        TicketStatus::Closed
    } else {
        TicketStatus::Open
    };

    let transitions = status_changes(&root);
    let approved = |name: &str| in_list(&cfg.approved_statuses, name);
    let approval = if transitions.iter().any(|(_, to)| to.is_some_and(approved)) {
        // The transition into an approved status is the approval, made by
        // whoever the event says acted. No accountId leaves the approver
        // unknown, which the decision refuses.
        let by = str_at(&root, &["user", "accountId"])
            .map(|a| vec![a.to_string()])
            .unwrap_or_default();
        ApprovalSignal::Given { by, at: updated_at }
    } else if approved(status_name) {
        ApprovalSignal::Carried { still: true }
    } else if status == TicketStatus::Open {
        // Out of an approved status into one still open (back to waiting)
        // is approval pending again: `ticket::merge` keeps the approval only
        // for an edit that extends the end, so anything else still revokes.
        ApprovalSignal::Carried { still: false }
    } else if transitions
        .iter()
        .any(|(from, _)| from.is_some_and(approved))
    {
        ApprovalSignal::Withdrawn
    } else {
        ApprovalSignal::Carried { still: false }
    };

    let title = str_at(fields, &["summary"]).unwrap_or_default().to_string();
    let request = read_request(cfg, fields, &title);

    Ok(Parsed::Ticket(TicketEvent {
        key,
        source: Source::Jira,
        project: project.to_string(),
        status,
        source_status: status_name.to_string(),
        title,
        updated_at,
        request,
        approval,
    }))
}

/// A move to another project or a new key, seen from the old key: the
/// changelog's `Key` item names the old key (`fromString`) and the new one.
/// When the old key's project is one warrant watches, the old ticket is
/// closed (Deleted, so its grants are revoked `ticket_closed`); the new key
/// starts with no approval memory when its own events arrive, and the
/// decision denies an approval it never saw.
fn moved_away(
    root: &Map<String, Value>,
    cfg: &JiraSource,
) -> Result<Option<TicketEvent>, SourceError> {
    let Some(items) = at(root, &["changelog", "items"]).and_then(Value::as_array) else {
        return Ok(None);
    };
    let new_key = need_str(root, &["issue", "key"], WHAT)?;
    let old_key = items.iter().filter_map(Value::as_object).find_map(|item| {
        let field = item
            .get("field")
            .and_then(Value::as_str)
            .or_else(|| item.get("fieldId").and_then(Value::as_str))?;
        if !(field.eq_ignore_ascii_case("key") || field.eq_ignore_ascii_case("issuekey")) {
            return None;
        }
        item.get("fromString")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|old| !old.is_empty() && !old.eq_ignore_ascii_case(new_key.trim()))
    });
    let Some(old_key) = old_key else {
        return Ok(None);
    };
    let Some((old_project, _)) = old_key.rsplit_once('-') else {
        return Err(SourceError::Malformed(format!(
            "{WHAT}: the changelog's old key `{}` is not a Jira issue key",
            quote(old_key)
        )));
    };
    if !cfg.projects.iter().any(|c| same_name(c, old_project)) {
        return Ok(None);
    }
    let fields = at(root, &["issue", "fields"])
        .and_then(Value::as_object)
        .ok_or_else(|| super::missing(&["issue", "fields"], "an object", WHAT))?;
    let updated_at = updated_at(root, fields)?;
    let new_key = quote(new_key.trim());
    Ok(Some(TicketEvent {
        key: ticket_key(format!("jira:{old_key}"), WHAT)?,
        source: Source::Jira,
        project: old_project.to_string(),
        status: TicketStatus::Deleted,
        source_status: format!("moved to {new_key}"),
        title: str_at(fields, &["summary"]).unwrap_or_default().to_string(),
        updated_at,
        request: Err(format!("the issue was moved to {new_key}")),
        approval: ApprovalSignal::Withdrawn,
    }))
}

/// The event's own time (epoch millis), else the issue's `updated`.
fn updated_at(
    root: &Map<String, Value>,
    fields: &Map<String, Value>,
) -> Result<DateTime<Utc>, SourceError> {
    match root.get("timestamp").and_then(epoch_millis) {
        Some(Some(t)) => return Ok(t),
        // A number warrant would have to order by, but outside the years it
        // reads: no fallback, so the sender learns of it.
        Some(None) => {
            return Err(SourceError::Malformed(format!(
                "{WHAT}: `timestamp` is outside the {YEARS}"
            )))
        }
        None => {}
    }
    str_at(fields, &["updated"])
        .and_then(parse_jira_datetime)
        .ok_or_else(|| {
            SourceError::Malformed(format!(
                "{WHAT}: neither `timestamp` nor `issue.fields.updated` is a time in the {YEARS}"
            ))
        })
}

/// `(fromString, toString)` of each status change in the changelog.
fn status_changes(root: &Map<String, Value>) -> Vec<(Option<&str>, Option<&str>)> {
    let Some(items) = at(root, &["changelog", "items"]).and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(Value::as_object)
        .filter(|item| {
            let field = item
                .get("fieldId")
                .and_then(Value::as_str)
                .or_else(|| item.get("field").and_then(Value::as_str));
            field.is_some_and(|f| f.eq_ignore_ascii_case("status"))
        })
        .map(|item| {
            (
                item.get("fromString").and_then(Value::as_str),
                item.get("toString").and_then(Value::as_str),
            )
        })
        .collect()
}

fn read_request(
    cfg: &JiraSource,
    fields: &Map<String, Value>,
    title: &str,
) -> Result<crate::ticket::Request, String> {
    let f = &cfg.fields;
    let resource = text_field(fields, &f.resource, "resource").and_then(|v| {
        v.ok_or_else(|| format!("field `{}` (resource) is empty", quote(&f.resource)))
    });
    let subject = subject(fields, &f.subject);
    let start = optional_time(fields, f.start.as_deref(), "start");
    let end = optional_time(fields, f.end.as_deref(), "end");
    let duration = match f.duration.as_deref() {
        Some(name) => text_field(fields, name, "duration"),
        None => Ok(None),
    };
    Draft {
        subject,
        resource,
        start,
        end,
        duration,
        justification: title.to_string(),
    }
    .into_request()
}

/// A field's non-null value; a list of exactly one item (a multi-select or
/// multi-user picker with one pick) stands for that item.
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    match fields.get(name)? {
        Value::Null => None,
        Value::Array(items) if items.len() == 1 => items.first().filter(|v| !v.is_null()),
        v => Some(v),
    }
}

/// Text of a text field, a number, or a select list's option (`value`).
fn text_field(
    fields: &Map<String, Value>,
    name: &str,
    role: &str,
) -> Result<Option<String>, String> {
    let Some(v) = field(fields, name) else {
        return Ok(None);
    };
    let text = match v {
        Value::Object(o) => o.get("value").and_then(scalar_text),
        other => scalar_text(other),
    };
    match text {
        Some(t) if t.trim().is_empty() => Ok(None),
        Some(t) => Ok(Some(t)),
        None => Err(format!(
            "field `{}` ({role}) holds {}, not text",
            quote(name),
            super::kind(v)
        )),
    }
}

fn optional_time(
    fields: &Map<String, Value>,
    name: Option<&str>,
    role: &str,
) -> Result<Option<DateTime<Utc>>, String> {
    let Some(name) = name else { return Ok(None) };
    match text_field(fields, name, role)? {
        None => Ok(None),
        Some(t) => parse_jira_datetime(&t).map(Some).ok_or_else(|| {
            format!(
                "field `{}` ({role}) `{}` is not a date-time in the {YEARS} (write 2026-11-25T10:00:00.000+0000)",
                quote(name),
                quote(&t)
            )
        }),
    }
}

/// The subject's accountId from a user field (`reporter`, `assignee`,
/// `creator` or a user-picker custom field), or a text field holding one.
fn subject(fields: &Map<String, Value>, name: &str) -> Result<String, String> {
    let empty = || format!("field `{}` (subject) is empty", quote(name));
    match field(fields, name) {
        None => Err(empty()),
        Some(Value::Object(user)) => user
            .get("accountId")
            .and_then(Value::as_str)
            .filter(|a| !a.trim().is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "field `{}` (subject) holds a user without an accountId",
                    quote(name)
                )
            }),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(empty()),
        Some(other) => Err(format!(
            "field `{}` (subject) holds {}, not a user",
            quote(name),
            super::kind(other)
        )),
    }
}

/// Jira: `X-Hub-Signature`, `X-Atlassian-Webhook-Identifier` (or the
/// body's hash), and comments through the REST API at `api_url`.
impl TicketSource for JiraSource {
    fn verify(&self, d: &Inbound<'_>) -> Result<(), IntakeError> {
        let secret = self.secret.as_ref().ok_or(IntakeError::Misconfigured)?;
        signature::verify_hub(
            secret.expose_secret().as_bytes(),
            "X-Hub-Signature",
            d.header("x-hub-signature"),
            d.body,
        )?;
        Ok(())
    }

    fn delivery_id(&self, d: &Inbound<'_>) -> Result<String, IntakeError> {
        // Jira Server/Data Center may not send an identifier; the body's
        // hash then dedupes exact redeliveries.
        match d.header("x-atlassian-webhook-identifier") {
            Some(raw) => delivery_id(Some(raw), "X-Atlassian-Webhook-Identifier"),
            None => Ok(format!("sha256:{}", hex::encode(Sha256::digest(d.body)))),
        }
    }

    fn parse(&self, d: &Inbound<'_>) -> Result<Parsed, IntakeError> {
        Ok(parse(self, d.body)?)
    }

    fn posts_notes(&self) -> bool {
        self.token.is_some()
    }

    fn post_note<'a>(
        &'a self,
        client: &'a reqwest::Client,
        key: &'a TicketKey,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let token = self.token.as_ref().ok_or("no token")?;
            let base = self
                .api_url
                .as_deref()
                .ok_or("no api_url")?
                .trim_end_matches('/');
            let url = format!(
                "{base}/rest/api/2/issue/{}/comment",
                crate::domain::path_segment(key_rest(key))
            );
            let req = client.post(url).json(&serde_json::json!({ "body": text }));
            note_answer(note_auth(req, token).send().await, "Jira API")
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JiraFields;
    use serde_json::json;

    fn cfg() -> JiraSource {
        JiraSource {
            secret_env: None,
            secret_file: None,
            secret: None,
            projects: vec!["OPS".into()],
            approved_statuses: vec!["Approved".into()],
            closed_statuses: vec!["Rejected".into(), "Cancelled".into()],
            fields: JiraFields {
                resource: "customfield_10100".into(),
                start: Some("customfield_10101".into()),
                end: Some("customfield_10102".into()),
                duration: Some("customfield_10103".into()),
                subject: "reporter".into(),
            },
            api_url: None,
            token_env: None,
            token: None,
        }
    }

    fn payload(event: &str, status: &str, category: &str, changelog: Value) -> Value {
        json!({
            "timestamp": 1_795_600_800_123_i64,
            "webhookEvent": event,
            "user": {"accountId": "acct-alice", "displayName": "Alice", "emailAddress": "alice@example.com"},
            "issue": {
                "key": "OPS-7",
                "fields": {
                    "project": {"key": "OPS"},
                    "summary": "db access",
                    "status": {"name": status, "statusCategory": {"key": category}},
                    "reporter": {"accountId": "acct-dave", "displayName": "Dave", "emailAddress": "dave@example.com"},
                    "customfield_10100": "prod-db/readonly",
                    "customfield_10101": "2026-11-25T10:00:00.000+0000",
                    "customfield_10102": null,
                    "customfield_10103": "2h",
                    "updated": "2026-11-25T10:00:00.081+0000",
                }
            },
            "changelog": changelog,
        })
    }

    fn status_change(from: &str, to: &str) -> Value {
        json!({"id": "1", "items": [
            {"field": "assignee", "fromString": null, "toString": "Bob"},
            {"field": "status", "fieldtype": "jira", "fieldId": "status", "fromString": from, "toString": to},
        ]})
    }

    fn event(v: &Value) -> TicketEvent {
        match parse(&cfg(), v.to_string().as_bytes()).unwrap() {
            Parsed::Ticket(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn approval_from_the_transition() {
        let ev = event(&payload(
            "jira:issue_updated",
            "Approved",
            "indeterminate",
            status_change("In Review", "Approved"),
        ));
        let at = DateTime::from_timestamp_millis(1_795_600_800_123).unwrap();
        assert_eq!(
            ev.approval,
            ApprovalSignal::Given {
                by: vec!["acct-alice".into()],
                at
            }
        );
        assert_eq!(ev.key.as_str(), "jira:OPS-7");
        assert_eq!(ev.updated_at, at);

        let ev = event(&payload(
            "jira:issue_updated",
            "Approved",
            "indeterminate",
            json!({"items": []}),
        ));
        assert_eq!(ev.approval, ApprovalSignal::Carried { still: true });
        let ev = event(&payload(
            "jira:issue_updated",
            "In Review",
            "indeterminate",
            status_change("Approved", "In Review"),
        ));
        assert_eq!(ev.approval, ApprovalSignal::Carried { still: false });
        let ev = event(&payload("jira:issue_created", "Open", "new", Value::Null));
        assert_eq!(ev.approval, ApprovalSignal::Carried { still: false });

        let mut v = payload(
            "jira:issue_updated",
            "approved",
            "indeterminate",
            status_change("Open", "APPROVED"),
        );
        v["user"] = json!({"displayName": "Automation"});
        assert!(matches!(event(&v).approval, ApprovalSignal::Given { by, .. } if by.is_empty()));
    }

    #[test]
    fn status() {
        let ev = event(&payload("jira:issue_updated", "Done", "done", Value::Null));
        assert_eq!(
            (ev.status, ev.source_status.as_str()),
            (TicketStatus::Closed, "Done")
        );
        assert_eq!(
            event(&payload(
                "jira:issue_updated",
                "rejected",
                "indeterminate",
                Value::Null
            ))
            .status,
            TicketStatus::Closed
        );
        assert_eq!(
            event(&payload(
                "jira:issue_deleted",
                "Approved",
                "indeterminate",
                Value::Null
            ))
            .status,
            TicketStatus::Deleted
        );
        let mut v = payload(
            "jira:issue_deleted",
            "Approved",
            "indeterminate",
            Value::Null,
        );
        v["issue"]["fields"]["status"] = Value::Null;
        assert_eq!(event(&v).status, TicketStatus::Deleted);
    }

    #[test]
    fn request_fields() {
        let r = event(&payload("jira:issue_created", "Open", "new", Value::Null))
            .request
            .unwrap();
        assert_eq!(
            r.subject, "acct-dave",
            "the accountId, never name or e-mail"
        );
        assert_eq!(r.resource, "prod-db/readonly");
        assert_eq!(r.start.map(|t| t.timestamp()), Some(1_795_600_800));
        assert_eq!((r.end, r.duration.as_deref()), (None, Some("2h")));

        let mut v = payload("jira:issue_created", "Open", "new", Value::Null);
        v["issue"]["fields"]["customfield_10100"] =
            json!({"self": "x", "value": "hooks/deploy", "id": "10021"});
        v["issue"]["fields"]["customfield_10102"] = json!("2026-11-26");
        v["issue"]["fields"]["customfield_10103"] = Value::Null;
        let r = event(&v).request.unwrap();
        assert_eq!(r.resource, "hooks/deploy");
        assert_eq!(
            r.end.map(|t| t.to_rfc3339()),
            Some("2026-11-26T00:00:00+00:00".into())
        );
    }

    #[test]
    fn custom_subject_fields() {
        let mut c = cfg();
        c.fields.subject = "customfield_10200".into();
        let mut v = payload("jira:issue_created", "Open", "new", Value::Null);
        for (value, want) in [
            (json!({"accountId": "acct-erin"}), Ok("acct-erin")),
            (json!([{"accountId": "acct-erin"}]), Ok("acct-erin")),
            (json!("acct-frank"), Ok("acct-frank")),
            (
                json!({"displayName": "Erin", "emailAddress": "erin@example.com"}),
                Err("without an accountId"),
            ),
            (Value::Null, Err("customfield_10200")),
            (json!(7), Err("not a user")),
        ] {
            v["issue"]["fields"]["customfield_10200"] = value;
            let ev = match parse(&c, v.to_string().as_bytes()).unwrap() {
                Parsed::Ticket(ev) => ev,
                other => panic!("{other:?}"),
            };
            match want {
                Ok(s) => assert_eq!(ev.request.unwrap().subject, s),
                Err(needle) => {
                    let e = ev.request.unwrap_err();
                    assert!(e.contains(needle), "{e}");
                }
            }
        }
    }

    #[test]
    fn bad_fields_name_the_field() {
        for (field, value, needle) in [
            (
                "customfield_10100",
                Value::Null,
                "customfield_10100` (resource) is empty",
            ),
            ("customfield_10100", json!("no slash"), "not a resource"),
            (
                "customfield_10101",
                json!("soon"),
                "customfield_10101` (start)",
            ),
            ("customfield_10103", json!("2 hours"), "not a duration"),
            (
                "customfield_10103",
                json!([1, 2]),
                "customfield_10103` (duration) holds an array",
            ),
            ("reporter", Value::Null, "reporter` (subject) is empty"),
        ] {
            let mut v = payload("jira:issue_created", "Open", "new", Value::Null);
            v["issue"]["fields"][field] = value;
            let e = event(&v).request.unwrap_err();
            assert!(e.contains(needle), "{field}: {e}");
        }
    }

    #[test]
    fn what_is_ignored_or_malformed() {
        let mut v = payload("comment_created", "Open", "new", Value::Null);
        let p = parse(&cfg(), v.to_string().as_bytes()).unwrap();
        assert_eq!(p.ticket().map(|k| k.as_str()), Some("jira:OPS-7"));
        v["webhookEvent"] = json!("jira:issue_updated");
        v["issue"]["fields"]["project"]["key"] = json!("HR");
        assert!(matches!(
            parse(&cfg(), v.to_string().as_bytes()).unwrap(),
            Parsed::Ignored { ticket: None, .. }
        ));

        let mut v = payload("jira:issue_updated", "Open", "new", Value::Null);
        v["issue"]["key"] = json!("OPS 7");
        assert!(parse(&cfg(), v.to_string().as_bytes()).is_err());
        let mut v = payload("jira:issue_updated", "Open", "new", Value::Null);
        v["timestamp"] = Value::Null;
        v["issue"]["fields"]["updated"] = Value::Null;
        assert!(parse(&cfg(), v.to_string().as_bytes()).is_err());
        let mut v = payload("jira:issue_updated", "Open", "new", Value::Null);
        v["timestamp"] = json!("not a time");
        assert_eq!(
            event(&v).updated_at.timestamp(),
            1_795_600_800,
            "falls back to fields.updated"
        );
        let mut v = payload("jira:issue_updated", "Open", "new", Value::Null);
        v["issue"]["fields"]["status"] = Value::Null;
        assert!(parse(&cfg(), v.to_string().as_bytes()).is_err());
        assert!(parse(&cfg(), br#"{"issue": {}}"#)
            .unwrap_err()
            .to_string()
            .contains("webhookEvent"));
    }

    #[test]
    fn a_move_closes_the_old_key() {
        let mut v = payload(
            "jira:issue_updated",
            "Approved",
            "indeterminate",
            json!({"items": [
                {"field": "project", "fieldtype": "jira", "fieldId": "project", "from": "10000", "fromString": "Operations", "to": "10001", "toString": "Security"},
                {"field": "Key", "fieldtype": "jira", "from": null, "fromString": "OPS-7", "to": null, "toString": "SEC-3"},
            ]}),
        );
        v["issue"]["key"] = json!("SEC-3");
        v["issue"]["fields"]["project"]["key"] = json!("SEC");
        let ev = event(&v);
        assert_eq!(ev.key.as_str(), "jira:OPS-7");
        assert_eq!(ev.status, TicketStatus::Deleted);
        assert_eq!(ev.source_status, "moved to SEC-3");
        assert_eq!(ev.approval, ApprovalSignal::Withdrawn);
        assert_eq!(ev.project, "OPS");

        // Re-keyed inside the project: the same.
        v["issue"]["key"] = json!("OPS-9");
        v["issue"]["fields"]["project"]["key"] = json!("OPS");
        v["changelog"]["items"][1]["toString"] = json!("OPS-9");
        assert_eq!(event(&v).key.as_str(), "jira:OPS-7");

        // Moved in from a project warrant does not watch: a new ticket.
        v["changelog"]["items"][1]["fromString"] = json!("HR-2");
        let ev = event(&v);
        assert_eq!(
            (ev.key.as_str(), ev.status),
            ("jira:OPS-9", TicketStatus::Open)
        );
    }

    #[test]
    fn times_out_of_range() {
        let mut v = payload("jira:issue_updated", "Open", "new", Value::Null);
        v["timestamp"] = json!(-1);
        let e = parse(&cfg(), v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("1970 through 9999"), "{e}");
        v["timestamp"] = json!(253_402_300_800_000_i64);
        assert!(parse(&cfg(), v.to_string().as_bytes()).is_err());
        for n in [json!(1.5e12), json!(u64::MAX)] {
            v["timestamp"] = n;
            assert!(parse(&cfg(), v.to_string().as_bytes()).is_err());
        }
        let mut v = payload("jira:issue_created", "Open", "new", Value::Null);
        for bad in [
            "+10000-01-01T00:00:00.000+0000",
            "1969-12-31",
            "-0001-01-01T00:00:00.000+0000",
        ] {
            v["issue"]["fields"]["customfield_10101"] = json!(bad);
            let e = event(&v).request.unwrap_err();
            assert!(e.contains("1970 through 9999"), "{bad}: {e}");
        }
    }
}
