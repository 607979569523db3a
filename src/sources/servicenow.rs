//! ServiceNow `change_request` records, as warrant's business rule sends them
//! (or wrapped as the Table API answers, `{"result": {...}}`): the ticket key
//! `servicenow:NUMBER`, status and approval from `state` and `approval`, the
//! approvers from `approved_by`, and the request from the configured fields
//! and the planned window.
//!
//! The body the shipped business rule sends is one flat JSON object of the
//! record's values, every field a string except `approved_by`:
//!
//! ```json
//! {
//!   "table": "change_request",
//!   "sys_id": "c286d61347c12200e0ef563dbb9a71df",
//!   "number": "CHG0030001",
//!   "state": "-2",
//!   "approval": "approved",
//!   "approved_by": ["alice.smith", "bob.jones"],
//!   "short_description": "Read-only prod-db access for INC0010023",
//!   "assigned_to": "dave.jones",
//!   "u_access_resource": "prod-db/readonly",
//!   "start_date": "2026-11-25 10:00:00",
//!   "end_date": "2026-11-25 12:00:00",
//!   "sys_updated_on": "2026-11-25 09:58:12",
//!   "sys_updated_by": "alice.smith"
//! }
//! ```
//!
//! Users are `user_name`s. Any field may also be a number or a
//! `{"value": .., "display_value": ..}` object (the Table API with
//! `sysparm_display_value=all`); `value` is used, and for `state` a label
//! (`Scheduled`) is understood too. Times are UTC, `YYYY-MM-DD HH:MM:SS`;
//! an empty string is an absent value.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::source::{key_rest, note_answer, note_auth};
use super::{delivery_id, Inbound, IntakeError, TicketSource};
use crate::crypto::signature::{self, whsec_key};
use crate::domain::TicketKey;

use super::{
    ignored, parse_object, parse_servicenow_datetime, quote, scalar_text, ticket_key, Draft,
    Parsed, SourceError, YEARS,
};
use crate::config::ServicenowSource;
use crate::domain::Source;
use crate::ticket::{ApprovalSignal, TicketEvent, TicketStatus};

const WHAT: &str = "ServiceNow change_request record";

const TABLE: &str = "change_request";

/// The change_request states of the default change model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Known(i64, &'static str),
    /// A state this instance added; neither approved nor closed.
    Other(String),
}

const STATES: [(i64, &str); 8] = [
    (-5, "New"),
    (-4, "Assess"),
    (-3, "Authorize"),
    (-2, "Scheduled"),
    (-1, "Implement"),
    (0, "Review"),
    (3, "Closed"),
    (4, "Canceled"),
];

impl State {
    fn read(v: &Value) -> Option<State> {
        let (value, display) = match v {
            Value::Object(o) => (o.get("value"), o.get("display_value")),
            other => (Some(other), None),
        };
        let texts: Vec<String> = [value, display]
            .into_iter()
            .flatten()
            .filter_map(scalar_text)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let known = texts.iter().find_map(|t| {
            let by_number = t
                .parse::<i64>()
                .ok()
                .and_then(|n| STATES.iter().find(|(k, _)| *k == n));
            let by_label = STATES.iter().find(|(_, label)| {
                label.eq_ignore_ascii_case(t)
                    || (*label == "Canceled" && t.eq_ignore_ascii_case("Cancelled"))
            });
            by_number
                .or(by_label)
                .map(|(n, label)| State::Known(*n, label))
        });
        known.or_else(|| texts.into_iter().next().map(State::Other))
    }

    fn label(&self) -> &str {
        match self {
            State::Known(_, label) => label,
            State::Other(text) => text,
        }
    }
}

pub fn parse(cfg: &ServicenowSource, body: &[u8]) -> Result<Parsed, SourceError> {
    let root = parse_object(body, WHAT)?;
    // A Table API answer wraps the record; our own rule sends it bare.
    let record = match root.get("result") {
        Some(Value::Object(r)) if !root.contains_key("number") => r,
        Some(Value::Array(_)) if !root.contains_key("number") => {
            return Err(SourceError::Malformed(format!(
                "{WHAT}: `result` is a list; send one record"
            )))
        }
        _ => &root,
    };

    let table = text(root.get("table"))
        .or_else(|| text(record.get("table")))
        .or_else(|| text(record.get("sys_class_name")));
    if let Some(table) = table.filter(|t| !t.trim().eq_ignore_ascii_case(TABLE)) {
        return Ok(ignored(
            format!("`{}` records are not change requests", quote(&table)),
            None,
        ));
    }

    let number = text(record.get("number"))
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| super::missing(&["number"], "text", WHAT))?;
    let key = ticket_key(format!("servicenow:{}", number.trim()), WHAT)?;

    let state = record
        .get("state")
        .and_then(State::read)
        .ok_or_else(|| super::missing(&["state"], "a state", WHAT))?;
    let updated_text = text(record.get("sys_updated_on")).unwrap_or_default();
    let updated_at = parse_servicenow_datetime(&updated_text).ok_or_else(|| {
        SourceError::Malformed(format!(
            "{WHAT}: `sys_updated_on` `{}` is not a time (YYYY-MM-DD HH:MM:SS) in the {YEARS}",
            quote(&updated_text)
        ))
    })?;

    let status = match state {
        State::Known(3 | 4, _) => TicketStatus::Closed,
        _ => TicketStatus::Open,
    };
    let approved = text(record.get("approval"))
        .is_some_and(|a| a.trim().eq_ignore_ascii_case("approved"))
        && matches!(state, State::Known(-2 | -1, _));
    let requested =
        text(record.get("approval")).is_some_and(|a| a.trim().eq_ignore_ascii_case("requested"));
    let approval = if approved {
        ApprovalSignal::Stated {
            by: approvers(record.get("approved_by")),
            at: updated_at,
        }
    } else if requested && status == TicketStatus::Open {
        // Waiting for approval (again), not rejected.
        ApprovalSignal::Carried { still: false }
    } else {
        ApprovalSignal::Withdrawn
    };

    let title = text(record.get("short_description")).unwrap_or_default();
    let request = read_request(cfg, record, &title);

    Ok(Parsed::Ticket(TicketEvent {
        key,
        source: Source::Servicenow,
        project: TABLE.to_string(),
        status,
        source_status: state.label().to_string(),
        title,
        updated_at,
        request,
        approval,
    }))
}

/// A field's text: a string, a number, or the `value` of a
/// `{"value", "display_value"}` pair (else its display value).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Object(o) => o
            .get("value")
            .and_then(scalar_text)
            .or_else(|| o.get("display_value").and_then(scalar_text)),
        other => scalar_text(other),
    }
}

/// `approved_by` as one user name, a comma-separated list, a JSON list of
/// names, or a list of reference objects; blanks and repeats dropped.
fn approvers(v: Option<&Value>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    };
    match v {
        Some(Value::Array(items)) => {
            for item in items {
                let name = match item {
                    Value::Object(o) => o
                        .get("user_name")
                        .and_then(scalar_text)
                        .or_else(|| text(Some(item))),
                    other => scalar_text(other),
                };
                if let Some(name) = name {
                    add(&name);
                }
            }
        }
        other => {
            if let Some(s) = text(other) {
                add(&s);
            }
        }
    }
    names
}

fn read_request(
    cfg: &ServicenowSource,
    record: &Map<String, Value>,
    title: &str,
) -> Result<crate::ticket::Request, String> {
    let field = |name: &str, role: &str| -> Result<String, String> {
        text(record.get(name))
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| format!("field `{}` ({role}) is empty", quote(name)))
    };
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, String> {
        match text(record.get(name)).filter(|t| !t.trim().is_empty()) {
            None => Ok(None),
            Some(t) => parse_servicenow_datetime(&t).map(Some).ok_or_else(|| {
                format!(
                    "field `{name}` `{}` is not a time (YYYY-MM-DD HH:MM:SS, UTC) in the {YEARS}",
                    quote(&t)
                )
            }),
        }
    };
    Draft {
        subject: field(&cfg.fields.subject, "subject"),
        resource: field(&cfg.fields.resource, "resource"),
        start: time("start_date"),
        end: time("end_date"),
        duration: Ok(None),
        justification: title.to_string(),
    }
    .into_request()
}

/// ServiceNow: Standard Webhooks signatures (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature`), and work notes through the
/// Table API at `api_url`.
impl TicketSource for ServicenowSource {
    fn verify(&self, d: &Inbound<'_>) -> Result<(), IntakeError> {
        let secret = self.secret.as_ref().ok_or(IntakeError::Misconfigured)?;
        let key = whsec_key(secret.expose_secret()).map_err(|_| IntakeError::Misconfigured)?;
        signature::verify_standard(
            &key,
            d.header("webhook-id"),
            d.header("webhook-timestamp"),
            d.header("webhook-signature"),
            d.body,
            d.now,
            d.tolerance,
        )?;
        Ok(())
    }

    fn delivery_id(&self, d: &Inbound<'_>) -> Result<String, IntakeError> {
        delivery_id(d.header("webhook-id"), "webhook-id")
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
            let enc = crate::domain::path_segment;
            let token = self.token.as_ref().ok_or("no token")?;
            let base = self
                .api_url
                .as_deref()
                .ok_or("no api_url")?
                .trim_end_matches('/');
            // The Table API addresses records by sys_id; look it up by number.
            let url = format!(
                "{base}/api/now/table/change_request?sysparm_query=number%3D{}&sysparm_fields=sys_id&sysparm_limit=1",
                enc(key_rest(key))
            );
            let resp = note_answer(
                note_auth(client.get(url).header("accept", "application/json"), token)
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
                .json(&serde_json::json!({ "work_notes": text }));
            note_answer(note_auth(req, token).send().await, "ServiceNow API")
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServicenowFields;
    use serde_json::json;

    fn cfg() -> ServicenowSource {
        ServicenowSource {
            secret_env: None,
            secret_file: None,
            secret: None,
            fields: ServicenowFields::default(),
            api_url: None,
            token_env: None,
            token: None,
        }
    }

    fn record() -> Value {
        json!({
            "table": "change_request",
            "number": "CHG0030001",
            "state": "-2",
            "approval": "approved",
            "approved_by": "alice.smith",
            "short_description": "db access",
            "assigned_to": "dave.jones",
            "u_access_resource": "prod-db/readonly",
            "start_date": "2026-11-25 10:00:00",
            "end_date": "2026-11-25 12:00:00",
            "sys_updated_on": "2026-11-25 09:58:12",
        })
    }

    fn event(v: &Value) -> TicketEvent {
        match parse(&cfg(), v.to_string().as_bytes()).unwrap() {
            Parsed::Ticket(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    fn by(v: &Value) -> Vec<String> {
        match event(v).approval {
            ApprovalSignal::Stated { by, .. } => by,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_approved_scheduled_change() {
        let ev = event(&record());
        assert_eq!(ev.key.as_str(), "servicenow:CHG0030001");
        assert_eq!(
            (ev.status, ev.source_status.as_str()),
            (TicketStatus::Open, "Scheduled")
        );
        assert_eq!(ev.project, "change_request");
        let r = ev.request.unwrap();
        assert_eq!(
            (r.subject.as_str(), r.resource.as_str()),
            ("dave.jones", "prod-db/readonly")
        );
        assert_eq!(
            r.end.map(|t| t.to_rfc3339()),
            Some("2026-11-25T12:00:00+00:00".into())
        );
        assert_eq!(by(&record()), vec!["alice.smith".to_string()]);
    }

    #[test]
    fn states_in_every_spelling() {
        for (state, label, status, approved) in [
            (json!("-2"), "Scheduled", TicketStatus::Open, true),
            (json!(-1), "Implement", TicketStatus::Open, true),
            (json!("implement"), "Implement", TicketStatus::Open, true),
            (
                json!({"value": "-1", "display_value": "Implement"}),
                "Implement",
                TicketStatus::Open,
                true,
            ),
            (
                json!({"value": "", "display_value": "Scheduled"}),
                "Scheduled",
                TicketStatus::Open,
                true,
            ),
            (json!("-3"), "Authorize", TicketStatus::Open, false),
            (json!(0), "Review", TicketStatus::Open, false),
            (json!("3"), "Closed", TicketStatus::Closed, false),
            (json!("Cancelled"), "Canceled", TicketStatus::Closed, false),
            (json!(4), "Canceled", TicketStatus::Closed, false),
            (json!("17"), "17", TicketStatus::Open, false),
        ] {
            let mut v = record();
            v["state"] = state.clone();
            let ev = event(&v);
            assert_eq!(
                (ev.source_status.as_str(), ev.status),
                (label, status),
                "{state}"
            );
            assert_eq!(
                matches!(ev.approval, ApprovalSignal::Stated { .. }),
                approved,
                "{state}"
            );
            if !approved {
                assert_eq!(ev.approval, ApprovalSignal::Withdrawn);
            }
        }
        for approval in ["rejected", "not requested", ""] {
            let mut v = record();
            v["approval"] = json!(approval);
            assert_eq!(event(&v).approval, ApprovalSignal::Withdrawn, "{approval}");
        }
        // Waiting for approval is not a rejection: an extension's approval
        // memory survives it (`ticket::merge`).
        let mut v = record();
        v["approval"] = json!("requested");
        assert_eq!(event(&v).approval, ApprovalSignal::Carried { still: false });
    }

    #[test]
    fn approvers_in_every_shape() {
        let mut v = record();
        for (value, want) in [
            (
                json!("alice.smith, bob.jones ,"),
                vec!["alice.smith", "bob.jones"],
            ),
            (
                json!(["alice.smith", "bob.jones", "alice.smith"]),
                vec!["alice.smith", "bob.jones"],
            ),
            (
                json!([{"value": "alice.smith", "display_value": "Alice Smith"}, {"user_name": "bob.jones"}]),
                vec!["alice.smith", "bob.jones"],
            ),
            (
                json!({"value": "alice.smith", "display_value": "Alice Smith"}),
                vec!["alice.smith"],
            ),
            (Value::Null, vec![]),
            (json!(""), vec![]),
        ] {
            v["approved_by"] = value;
            assert_eq!(by(&v), want);
        }
    }

    #[test]
    fn table_api_wrapper_and_other_tables() {
        let wrapped = json!({"result": {
            "sys_class_name": {"value": "change_request", "display_value": "Change Request"},
            "number": {"value": "CHG0030002", "display_value": "CHG0030002"},
            "state": {"value": "-1", "display_value": "Implement"},
            "approval": {"value": "approved", "display_value": "Approved"},
            "assigned_to": {"value": "dave.jones", "display_value": "Dave Jones"},
            "u_access_resource": {"value": "prod-db/readonly", "display_value": "prod-db/readonly"},
            "sys_updated_on": {"value": "2026-11-25 09:58:12", "display_value": "25.11.2026 10:58:12"},
            "start_date": "", "end_date": "",
        }});
        let ev = event(&wrapped);
        assert_eq!(ev.key.as_str(), "servicenow:CHG0030002");
        assert!(ev.request.is_ok());
        let mut other = record();
        other["table"] = json!("incident");
        let p = parse(&cfg(), other.to_string().as_bytes()).unwrap();
        assert!(matches!(p, Parsed::Ignored { ticket: None, .. }));
        assert!(parse(&cfg(), br#"{"result": []}"#).is_err());
    }

    #[test]
    fn bad_requests_and_bad_records() {
        for (field, value, needle) in [
            ("assigned_to", json!(""), "assigned_to` (subject) is empty"),
            (
                "u_access_resource",
                Value::Null,
                "u_access_resource` (resource) is empty",
            ),
            ("start_date", json!("25.11.2026"), "start_date"),
            (
                "end_date",
                json!("2026-11-25 09:00:00"),
                "not after the start",
            ),
        ] {
            let mut v = record();
            v[field] = value;
            let e = event(&v).request.unwrap_err();
            assert!(e.contains(needle), "{field}: {e}");
        }
        for field in ["number", "state", "sys_updated_on"] {
            let mut v = record();
            v[field] = Value::Null;
            let e = parse(&cfg(), v.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut v = record();
        v["number"] = json!("CHG 1");
        assert!(parse(&cfg(), v.to_string().as_bytes()).is_err());
    }
}
