//! GitHub `issues` webhooks: which deliveries count, the ticket key
//! `github:OWNER/REPO#N`, the request written in the issue form's sections
//! (`### Resource`, `### Duration`, `### Start`), and approval by label.

use serde_json::{Map, Value};

use super::{
    ignored, need_object, need_str, parse_object, parse_rfc3339, quote, same_name, ticket_key,
    Draft, Parsed, SourceError,
};
use crate::config::GithubSource;
use crate::domain::Source;
use crate::ticket::{ApprovalSignal, TicketEvent, TicketStatus};

const WHAT: &str = "GitHub webhook payload";

/// What GitHub issue forms write for an optional field left empty.
const NO_RESPONSE: &str = "_No response_";

/// Parses one delivery; `event` is the `X-GitHub-Event` header.
pub fn parse(cfg: &GithubSource, event: &str, body: &[u8]) -> Result<Parsed, SourceError> {
    let root = parse_object(body, WHAT)?;
    let event = event.trim();
    if event.eq_ignore_ascii_case("ping") {
        return Ok(ignored("ping: GitHub is checking the webhook", None));
    }
    if !event.eq_ignore_ascii_case("issues") {
        return Ok(ignored(
            format!("GitHub `{}` events carry no ticket change", quote(event)),
            None,
        ));
    }

    let repo = need_str(&root, &["repository", "full_name"], WHAT)?;
    if !cfg
        .repositories
        .iter()
        .any(|r| r.trim().eq_ignore_ascii_case(repo))
    {
        return Ok(ignored(
            format!(
                "repository `{}` is not in sources.github.repositories",
                quote(repo)
            ),
            None,
        ));
    }
    let action = need_str(&root, &["action"], WHAT)?;
    let issue = need_object(&root, &["issue"], WHAT)?;
    let number = issue
        .get("number")
        .and_then(Value::as_u64)
        .ok_or_else(|| super::missing(&["issue", "number"], "a number", WHAT))?;
    let key = ticket_key(format!("github:{repo}#{number}"), WHAT)?;
    let title = need_str(issue, &["title"], WHAT)?.to_string();
    let updated_text = need_str(issue, &["updated_at"], WHAT)?;
    let updated_at = parse_rfc3339(updated_text).ok_or_else(|| {
        SourceError::Malformed(format!(
            "{WHAT}: `issue.updated_at` `{}` is not an RFC 3339 time",
            quote(updated_text)
        ))
    })?;
    let state = need_str(issue, &["state"], WHAT)?;
    let author = need_str(issue, &["user", "login"], WHAT)?;

    let gone = matches!(action, "deleted" | "transferred");
    let status = if gone {
        TicketStatus::Deleted
    } else if state.eq_ignore_ascii_case("closed") {
        TicketStatus::Closed
    } else {
        TicketStatus::Open
    };
    let source_status = if gone { action } else { state }.to_string();

    let label = &cfg.approval_label;
    let event_label = need_label_name(&root, action)?;
    let approval = match (action, event_label) {
        ("labeled", Some(name)) if same_name(name, label) => {
            // The sender is whoever added the label: the approver.
            let by = need_str(&root, &["sender", "login"], WHAT)?;
            ApprovalSignal::Given {
                by: vec![by.to_string()],
                at: updated_at,
            }
        }
        ("unlabeled", Some(name)) if same_name(name, label) => ApprovalSignal::Withdrawn,
        _ => ApprovalSignal::Carried {
            still: has_label(issue, label),
        },
    };

    let request = read_request(issue.get("body").and_then(Value::as_str), author, &title);

    Ok(Parsed::Ticket(TicketEvent {
        key,
        source: Source::Github,
        project: repo.to_string(),
        status,
        source_status,
        title,
        updated_at,
        request,
        approval,
    }))
}

/// The `label` of a `labeled`/`unlabeled` event; those events always carry
/// one, so its absence there means the payload is not GitHub's.
fn need_label_name<'a>(
    root: &'a Map<String, Value>,
    action: &str,
) -> Result<Option<&'a str>, SourceError> {
    if matches!(action, "labeled" | "unlabeled") {
        need_str(root, &["label", "name"], WHAT).map(Some)
    } else {
        Ok(None)
    }
}

fn has_label(issue: &Map<String, Value>, label: &str) -> bool {
    issue
        .get("labels")
        .and_then(Value::as_array)
        .is_some_and(|labels| {
            labels.iter().any(|l| {
                let name = l.get("name").and_then(Value::as_str).or_else(|| l.as_str());
                name.is_some_and(|n| same_name(n, label))
            })
        })
}

fn read_request(
    body: Option<&str>,
    author: &str,
    title: &str,
) -> Result<crate::ticket::Request, String> {
    let Some(body) = body.filter(|b| !b.trim().is_empty()) else {
        return Err("the issue body is empty: open the issue from the access request form".into());
    };
    let sections = sections(body);
    let resource = match section(&sections, "Resource")? {
        Some(r) => Ok(r.to_string()),
        None => Err("the issue form has no `### Resource` answer".to_string()),
    };
    let duration = section(&sections, "Duration").map(|d| d.map(str::to_string));
    let start = section(&sections, "Start").and_then(|s| match s {
        Some(s) => parse_rfc3339(s).map(Some).ok_or_else(|| {
            format!(
                "`### Start` `{}` is not an RFC 3339 time (write 2026-11-25T10:00:00Z)",
                quote(s)
            )
        }),
        None => Ok(None),
    });
    Draft {
        subject: Ok(author.to_string()),
        resource,
        start,
        end: Ok(None),
        duration,
        justification: title.to_string(),
    }
    .into_request()
}

/// The issue form's `### Heading` sections, in order, with their trimmed text.
fn sections(body: &str) -> Vec<(&str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    let mut current: Option<(&str, Vec<&str>)> = None;
    // `lines` also strips the `\r` of `\r\n`, which edits made in the browser leave.
    for line in body.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            if let Some((name, text)) = current.take() {
                out.push((name, text.join("\n").trim().to_string()));
            }
            current = Some((heading.trim(), Vec::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push(line);
        }
    }
    if let Some((name, text)) = current {
        out.push((name, text.join("\n").trim().to_string()));
    }
    out
}

/// The answer under one heading: `None` when absent or left empty. Two
/// sections of one name are refused, because the approver may have read the
/// other one.
fn section<'a>(sections: &'a [(&str, String)], name: &str) -> Result<Option<&'a str>, String> {
    let mut found = sections.iter().filter(|(h, _)| same_name(h, name));
    let first = found.next();
    if found.next().is_some() {
        return Err(format!(
            "the issue body has more than one `### {name}` section"
        ));
    }
    Ok(first
        .map(|(_, text)| text.as_str())
        .filter(|t| !t.is_empty() && *t != NO_RESPONSE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> GithubSource {
        GithubSource {
            secret_env: None,
            secret_file: None,
            secret: None,
            repositories: vec!["acme/access-requests".into()],
            approval_label: "access-approved".into(),
            api_url: "https://api.github.com".into(),
            token_env: None,
            token: None,
        }
    }

    fn payload(action: &str, body: &str, labels: &[&str]) -> Value {
        json!({
            "action": action,
            "issue": {
                "number": 42,
                "title": "db access",
                "user": {"login": "dave-gh"},
                "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
                "state": "open",
                "updated_at": "2026-11-25T09:41:07Z",
                "body": body,
            },
            "repository": {"full_name": "Acme/Access-Requests"},
            "sender": {"login": "alice-gh"},
        })
    }

    fn event(v: &Value) -> TicketEvent {
        match parse(&cfg(), "issues", v.to_string().as_bytes()).unwrap() {
            Parsed::Ticket(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    const FORM: &str =
        "### Resource\n\nprod-db/readonly\n\n### Duration\n\n2h\n\n### Start\n\n_No response_";

    #[test]
    fn reads_the_form_in_any_order_and_line_ending() {
        let ev = event(&payload("opened", FORM, &[]));
        assert_eq!(ev.key.as_str(), "github:Acme/Access-Requests#42");
        let r = ev.request.unwrap();
        assert_eq!(
            (r.resource.as_str(), r.duration.as_deref(), r.start),
            ("prod-db/readonly", Some("2h"), None)
        );
        assert_eq!(r.subject, "dave-gh");

        let crlf = "### Start\r\n\r\n2026-11-25T10:00:00Z\r\n\r\n### Duration\r\n\r\n30m\r\n\r\n### Resource\r\n\r\nhooks/deploy\r\n";
        let r = event(&payload("edited", crlf, &[])).request.unwrap();
        assert_eq!(
            (r.resource.as_str(), r.duration.as_deref()),
            ("hooks/deploy", Some("30m"))
        );
        assert_eq!(
            r.start.map(|t| t.to_rfc3339()),
            Some("2026-11-25T10:00:00+00:00".into())
        );
    }

    #[test]
    fn bad_requests_are_events_not_errors() {
        for (body, needle) in [
            ("", "body is empty"),
            ("### Duration\n\n2h", "Resource"),
            ("### Resource\n\n_No response_", "Resource"),
            (
                "### Resource\n\nprod db\n\n### Duration\n\n2 hours",
                "not a duration",
            ),
            (
                "### Resource\n\nprod-db/ro\n\n### Start\n\nnext tuesday",
                "RFC 3339",
            ),
            (
                "### Resource\n\nprod-db/ro\n\n### Resource\n\nprod-db/admin",
                "more than one",
            ),
        ] {
            let err = event(&payload("opened", body, &[])).request.unwrap_err();
            assert!(err.contains(needle), "{body:?} gave {err}");
        }
        let mut v = payload("opened", FORM, &[]);
        v["issue"]["body"] = Value::Null;
        assert!(event(&v).request.is_err());
    }

    #[test]
    fn approval_follows_the_label() {
        let mut v = payload("labeled", FORM, &["access-approved"]);
        v["label"] = json!({"name": "Access-Approved"});
        let ev = event(&v);
        assert!(
            matches!(&ev.approval, ApprovalSignal::Given { by, .. } if by == &["alice-gh".to_string()])
        );

        v["action"] = json!("unlabeled");
        v["issue"]["labels"] = json!([]);
        assert_eq!(event(&v).approval, ApprovalSignal::Withdrawn);

        v["label"] = json!({"name": "bug"});
        v["action"] = json!("labeled");
        v["issue"]["labels"] = json!([{"name": "bug"}, {"name": "access-approved"}]);
        assert_eq!(event(&v).approval, ApprovalSignal::Carried { still: true });

        let ev = event(&payload("edited", FORM, &["bug"]));
        assert_eq!(ev.approval, ApprovalSignal::Carried { still: false });
    }

    #[test]
    fn status() {
        let mut v = payload("closed", FORM, &[]);
        v["issue"]["state"] = json!("closed");
        let ev = event(&v);
        assert_eq!(
            (ev.status, ev.source_status.as_str()),
            (TicketStatus::Closed, "closed")
        );
        for action in ["deleted", "transferred"] {
            let ev = event(&payload(action, FORM, &[]));
            assert_eq!(
                (ev.status, ev.source_status.as_str()),
                (TicketStatus::Deleted, action)
            );
        }
        assert_eq!(
            event(&payload("reopened", FORM, &[])).status,
            TicketStatus::Open
        );
    }

    #[test]
    fn what_is_ignored() {
        let body = payload("opened", FORM, &[]).to_string();
        let p = parse(&cfg(), "push", body.as_bytes()).unwrap();
        assert!(matches!(p, Parsed::Ignored { ticket: None, .. }));
        let mut other = payload("opened", FORM, &[]);
        other["repository"]["full_name"] = json!("evil/repo");
        let p = parse(&cfg(), "issues", other.to_string().as_bytes()).unwrap();
        assert!(
            matches!(p, Parsed::Ignored { ticket: None, ref why } if why.contains("evil/repo"))
        );
    }

    #[test]
    fn what_is_malformed() {
        assert!(matches!(
            parse(&cfg(), "issues", b"nope"),
            Err(SourceError::NotJson(_))
        ));
        for path in [
            &["issue", "number"][..],
            &["issue", "updated_at"],
            &["issue", "user"],
            &["action"],
        ] {
            let mut v = payload("opened", FORM, &[]);
            match path {
                [a] => v[*a] = Value::Null,
                [a, b] => v[*a][*b] = Value::Null,
                _ => unreachable!(),
            }
            let e = parse(&cfg(), "issues", v.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(path[path.len() - 1]), "{e}");
        }
        let mut v = payload("labeled", FORM, &[]);
        v["label"] = Value::Null;
        assert!(parse(&cfg(), "issues", v.to_string().as_bytes()).is_err());
        let mut v = payload("opened", FORM, &[]);
        v["repository"]["full_name"] = json!("acme/access-requests");
        v["issue"]["number"] = json!(-1);
        assert!(parse(&cfg(), "issues", v.to_string().as_bytes()).is_err());
    }
}
