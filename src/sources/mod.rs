//! The ticket sources. Each is one type behind `TicketSource` (in
//! `source`), in its own file, found by `configured`; it verifies, names,
//! parses a delivery into `TicketEvent`s and posts notes on its tickets.
//! Each parser owns its source's payload shape; this module owns what they
//! share: the outcome type, the error type, JSON access that never panics,
//! date parsing (only years 1970 through 9999 are read, so nothing later can
//! overflow on a date from outside), and the checks that turn written request
//! fields into a `Request` or a short explanation of what is wrong with them.
//!
//! Signatures are checked before any of this runs (see `crypto::signature`): the
//! parsers trust that the body is authentic, not that it is well formed.

pub mod github;
pub mod jira;
pub mod servicenow;
mod source;

#[cfg(test)]
mod tests;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use crate::config::SourcesConfig;
use crate::domain::{parse_duration, truncate, Source, TicketKey};
use crate::ticket::{Request, TicketEvent};

pub use source::{delivery_id, Headers, Inbound, IntakeError, TicketSource};

/// The one place that maps a source to its implementation: its
/// configuration section, if it is configured.
pub fn configured(config: &SourcesConfig, source: Source) -> Option<&dyn TicketSource> {
    match source {
        Source::Github => config.github.as_ref().map(|c| c as &dyn TicketSource),
        Source::Jira => config.jira.as_ref().map(|c| c as &dyn TicketSource),
        Source::Servicenow => config.servicenow.as_ref().map(|c| c as &dyn TicketSource),
    }
}

/// What a webhook body amounts to.
// One value per delivery, moved straight into `merge`: boxing the event
// would save nothing worth the indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Authentic, but no ticket change for warrant (a ping, a comment, a
    /// repository or project that is not configured). `ticket` names the
    /// ticket when the event was about a configured one.
    Ignored {
        why: String,
        ticket: Option<TicketKey>,
    },
    Ticket(TicketEvent),
}

impl Parsed {
    /// The ticket the delivery was about, for the webhook's answer.
    pub fn ticket(&self) -> Option<&TicketKey> {
        match self {
            Parsed::Ignored { ticket, .. } => ticket.as_ref(),
            Parsed::Ticket(ev) => Some(&ev.key),
        }
    }
}

/// A body that is not JSON, or not the source's shape at all (HTTP 400).
/// A ticket whose request fields are wrong is not one of these: it parses
/// into a `TicketEvent` whose `request` says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// serde_json's own description of where the JSON breaks.
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    /// What the body should have been, then what is wrong with it:
    /// "GitHub webhook payload: `issue.number` is missing or not a number".
    #[error("the body is not a {0}")]
    Malformed(String),
}

/// Longest piece of a payload quoted in a message.
const QUOTE: usize = 80;

/// Longest subject account warrant keeps; real logins, accountIds and
/// user_names are far shorter.
const MAX_SUBJECT: usize = 256;

pub(crate) fn ignored(why: impl Into<String>, ticket: Option<TicketKey>) -> Parsed {
    Parsed::Ignored {
        why: why.into(),
        ticket,
    }
}

/// Parses the body as a JSON object. `what` names the expected payload in
/// messages, e.g. "GitHub webhook payload".
pub(crate) fn parse_object(body: &[u8], what: &str) -> Result<Map<String, Value>, SourceError> {
    // serde_json bounds nesting depth itself, so hostile input cannot
    // exhaust the stack here.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(SourceError::Malformed(format!(
            "{what}: it holds {}, not an object",
            kind(&other)
        ))),
        Err(e) => {
            // GitHub can be set to send form-encoded payloads; say so.
            let hint = if body.starts_with(b"payload=") {
                " (set the webhook's content type to application/json)"
            } else {
                ""
            };
            Err(SourceError::NotJson(format!("{e}{hint}")))
        }
    }
}

/// What a JSON value is, with its article, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value at `path` in nested objects; JSON `null` counts as absent.
pub(crate) fn at<'a>(map: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = map.get(*first)?;
    for key in rest {
        v = v.as_object()?.get(*key)?;
    }
    (!v.is_null()).then_some(v)
}

pub(crate) fn str_at<'a>(map: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    at(map, path).and_then(Value::as_str)
}

/// A string at `path`, or a `Malformed` error naming the path.
pub(crate) fn need_str<'a>(
    map: &'a Map<String, Value>,
    path: &[&str],
    what: &str,
) -> Result<&'a str, SourceError> {
    str_at(map, path).ok_or_else(|| missing(path, "a string", what))
}

pub(crate) fn need_object<'a>(
    map: &'a Map<String, Value>,
    path: &[&str],
    what: &str,
) -> Result<&'a Map<String, Value>, SourceError> {
    at(map, path)
        .and_then(Value::as_object)
        .ok_or_else(|| missing(path, "an object", what))
}

pub(crate) fn missing(path: &[&str], expected: &str, what: &str) -> SourceError {
    SourceError::Malformed(format!(
        "{what}: `{}` is missing or not {expected}",
        path.join(".")
    ))
}

/// Strings as they are, numbers written out; anything else is not text.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Builds a ticket key through its own parser, so a key warrant stores can
/// always be read back (serde goes through the same parser).
pub(crate) fn ticket_key(text: String, what: &str) -> Result<TicketKey, SourceError> {
    text.parse::<TicketKey>().map_err(|_| {
        SourceError::Malformed(format!(
            "{what}: `{}` does not make a ticket key",
            truncate(&text, QUOTE)
        ))
    })
}

/// Names compare the way people read them: case and surrounding blanks aside.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// A piece of a payload for a message: short, and with control characters
/// written out, so that a message never carries a raw NUL or line break.
pub(crate) fn quote(s: &str) -> String {
    crate::domain::printable(&truncate(s, QUOTE))
}

/// The first and last years a source may name. Outside them a date is not
/// read at all, so no later arithmetic on it (a start plus a duration, a
/// window's span) can leave chrono's range and panic.
pub const FIRST_YEAR: i32 = 1970;
pub const LAST_YEAR: i32 = 9999;

/// What messages say about the range.
pub(crate) const YEARS: &str = "years 1970 through 9999";

/// The time, if its year lies in `FIRST_YEAR..=LAST_YEAR`.
pub fn in_range(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    (FIRST_YEAR..=LAST_YEAR).contains(&t.year()).then_some(t)
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .and_then(in_range)
}

/// RFC 3339, Jira's `2026-11-25T10:00:00.000+0000`, or a plain date
/// (`2026-11-25`, taken as midnight UTC, which is what a Jira date picker holds).
pub(crate) fn parse_jira_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    // `%Y` also reads signed years of more than four digits; `in_range`
    // turns those away.
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return in_range(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .and_then(in_range)
}

/// ServiceNow's `2026-11-25 10:00:00` (UTC, as GlideDateTime values are), or RFC 3339.
pub(crate) fn parse_servicenow_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
        .and_then(in_range)
        .or_else(|| parse_rfc3339(s))
}

/// Epoch milliseconds as a number or a string of digits: `None` when it is
/// not one, `Some(None)` when it is one outside the allowed years (any JSON
/// number that is not a whole i64, too).
pub(crate) fn epoch_millis(v: &Value) -> Option<Option<DateTime<Utc>>> {
    let ms: i64 = match v {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => ms,
            None => return Some(None),
        },
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some(DateTime::from_timestamp_millis(ms).and_then(in_range))
}

#[cfg(test)]
pub(crate) fn from_epoch_millis(v: &Value) -> Option<DateTime<Utc>> {
    epoch_millis(v).flatten()
}

/// The request fields as a source found them, each already read or already
/// explained. `into_request` validates what the decision would otherwise
/// trip over and gathers every problem into one message.
pub(crate) struct Draft {
    pub subject: Result<String, String>,
    pub resource: Result<String, String>,
    pub start: Result<Option<DateTime<Utc>>, String>,
    pub end: Result<Option<DateTime<Utc>>, String>,
    pub duration: Result<Option<String>, String>,
    pub justification: String,
}

impl Draft {
    pub fn into_request(self) -> Result<Request, String> {
        fn keep<T>(problems: &mut Vec<String>, r: Result<T, String>) -> Option<T> {
            r.map_err(|e| problems.push(e)).ok()
        }
        let mut problems = Vec::new();
        let subject = self.subject.and_then(|s| {
            let s = s.trim().to_string();
            if s.is_empty() {
                Err("the subject is empty".to_string())
            } else if s.chars().count() > MAX_SUBJECT || s.chars().any(char::is_control) {
                Err(format!(
                    "the subject `{}` is not an account name",
                    quote(&s)
                ))
            } else {
                Ok(s)
            }
        });
        let subject = keep(&mut problems, subject);
        let resource = self.resource.and_then(|r| {
            let r = r.trim().to_string();
            crate::domain::check_resource_text(&r).map(|_| r)
        });
        let resource = keep(&mut problems, resource);
        let start = keep(&mut problems, self.start);
        let end = keep(&mut problems, self.end);
        let duration = self.duration.and_then(|d| match d {
            Some(d) => {
                let d = d.trim().to_string();
                parse_duration(&d).map(|_| Some(d))
            }
            None => Ok(None),
        });
        let duration = keep(&mut problems, duration);
        if let (Some(Some(s)), Some(Some(e))) = (start, end) {
            if e <= s {
                problems.push("the end is not after the start".to_string());
            }
        }
        match (subject, resource, start, end, duration) {
            (Some(subject), Some(resource), Some(start), Some(end), Some(duration))
                if problems.is_empty() =>
            {
                Ok(Request {
                    subject,
                    resource,
                    start,
                    end,
                    duration,
                    justification: self.justification,
                })
            }
            _ => Err(problems.join("; ")),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use chrono::TimeZone;

    fn draft() -> Draft {
        Draft {
            subject: Ok("dave".into()),
            resource: Ok(" prod-db/readonly ".into()),
            start: Ok(None),
            end: Ok(None),
            duration: Ok(Some("2h".into())),
            justification: "why".into(),
        }
    }

    #[test]
    fn a_good_draft_is_a_request() {
        let r = draft().into_request().unwrap();
        assert_eq!(r.resource, "prod-db/readonly");
        assert_eq!(r.duration.as_deref(), Some("2h"));
    }

    #[test]
    fn every_problem_is_named_once() {
        let mut d = draft();
        d.resource = Ok("nope".into());
        d.duration = Ok(Some("forever".into()));
        d.subject = Err("field `x` (subject) is empty".into());
        let e = d.into_request().unwrap_err();
        assert!(
            e.contains("not a resource") && e.contains("not a duration") && e.contains("subject"),
            "{e}"
        );
        assert_eq!(e.matches("; ").count(), 2, "{e}");
    }

    #[test]
    fn windows_must_run_forward() {
        let mut d = draft();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
        d.start = Ok(Some(t));
        d.end = Ok(Some(t));
        assert_eq!(
            d.into_request().unwrap_err(),
            "the end is not after the start"
        );
    }

    #[test]
    fn huge_values_are_quoted_short() {
        let mut d = draft();
        let huge = "x".repeat(100_000);
        d.resource = Ok(huge.clone());
        d.subject = Ok(huge);
        let e = d.into_request().unwrap_err();
        assert!(e.len() < 400, "{}", e.len());
    }

    #[test]
    fn dates() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        assert_eq!(parse_jira_datetime("2026-11-25T10:00:00.000+0000"), Some(t));
        assert_eq!(parse_jira_datetime("2026-11-25T11:00:00.000+0100"), Some(t));
        assert_eq!(parse_jira_datetime("2026-11-25T10:00:00Z"), Some(t));
        assert_eq!(
            parse_jira_datetime("2026-11-25"),
            Some(Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap())
        );
        assert_eq!(parse_servicenow_datetime("2026-11-25 10:00:00"), Some(t));
        assert_eq!(parse_servicenow_datetime("2026-11-25T10:00:00Z"), Some(t));
        for bad in [
            "",
            "tomorrow",
            "2026-13-01",
            "2026-11-25 25:00:00",
            "2026-11-25T10:00:00",
        ] {
            assert_eq!(parse_jira_datetime(bad), None, "{bad}");
            assert_eq!(parse_servicenow_datetime(bad), None, "{bad}");
        }
        assert_eq!(
            from_epoch_millis(&Value::from(1_795_600_800_123_i64)).map(|t| t.timestamp()),
            Some(1_795_600_800)
        );
        assert_eq!(from_epoch_millis(&Value::from(i64::MAX)), None);
        assert_eq!(from_epoch_millis(&Value::from(1.5)), None);
    }

    #[test]
    fn json_access() {
        let m = parse_object(br#"{"a": {"b": null, "c": "x"}}"#, "test").unwrap();
        assert_eq!(at(&m, &["a", "b"]), None);
        assert_eq!(str_at(&m, &["a", "c"]), Some("x"));
        assert_eq!(str_at(&m, &["a", "c", "d"]), None);
        assert_eq!(at(&m, &[]), None);
        assert!(matches!(
            parse_object(b"[1]", "test"),
            Err(SourceError::Malformed(_))
        ));
        let e = parse_object(b"payload=%7B%7D", "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("application/json"), "{e}");
        assert!(same_name("Approved", " approved "));
        assert!(same_name("ÄNDERUNG", "änderung"));
    }
}
