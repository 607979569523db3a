//! Whole-delivery tests: realistic payloads from `fixtures/` run through the
//! signature checks, the parsers and `ticket::merge`, hostile sizes and
//! scripts, and property tests that no input, however broken, panics.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::{github, jira, servicenow, Parsed, SourceError};
use crate::config::Config;
use crate::crypto::signature::{self, whsec_key, SignatureError};
use crate::domain::TicketKey;
use crate::ticket::{merge, ApprovalSignal, Snapshot, TicketEvent, TicketStatus};

/// Payload fixtures live at the crate root, beside Cargo.toml.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

const CONFIG: &str = r#"
[sources.github]
secret_env = "GH"
repositories = ["acme/access-requests"]
approval_label = "access-approved"

[sources.jira]
secret_env = "JIRA"
projects = ["OPS"]
approved_statuses = ["Approved"]
closed_statuses = ["Rejected", "Cancelled"]
[sources.jira.fields]
resource = "customfield_10100"
start = "customfield_10101"
end = "customfield_10102"
duration = "customfield_10103"
subject = "reporter"

[sources.servicenow]
secret_env = "SN"
[sources.servicenow.fields]
resource = "u_access_resource"
subject = "assigned_to"
"#;

fn config() -> Config {
    Config::from_toml(CONFIG, &|name| match name {
        "GH" => Some("gh-webhook-secret".into()),
        "JIRA" => Some("jira-webhook-secret".into()),
        "SN" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        _ => None,
    })
    .unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn gh(event: &str, body: &[u8]) -> Result<Parsed, SourceError> {
    github::parse(config().sources.github.as_ref().unwrap(), event, body)
}

fn jr(body: &[u8]) -> Result<Parsed, SourceError> {
    jira::parse(config().sources.jira.as_ref().unwrap(), body)
}

fn sn(body: &[u8]) -> Result<Parsed, SourceError> {
    servicenow::parse(config().sources.servicenow.as_ref().unwrap(), body)
}

fn ticket(p: Result<Parsed, SourceError>) -> TicketEvent {
    match p {
        Ok(Parsed::Ticket(ev)) => ev,
        other => panic!("expected a ticket event, got {other:?}"),
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Folds events in order, as warrant does with snapshots.
fn fold(events: impl IntoIterator<Item = TicketEvent>) -> Vec<Snapshot> {
    let mut out: Vec<Snapshot> = Vec::new();
    for ev in events {
        let next = merge(out.last(), ev);
        out.push(next);
    }
    out
}

fn pinned(s: &Snapshot) -> bool {
    s.approval
        .as_ref()
        .is_some_and(|a| a.fingerprint == s.request_fingerprint())
}

// ------------------------------------------------------------------ GitHub

#[test]
fn github_issue_lifecycle() {
    let opened = ticket(gh("issues", &fixture("github-issues-opened.json")));
    assert_eq!(opened.key.as_str(), "github:acme/access-requests#42");
    assert_eq!(opened.project, "acme/access-requests");
    assert_eq!(
        (opened.status, opened.source_status.as_str()),
        (TicketStatus::Open, "open")
    );
    assert_eq!(opened.title, "Read-only access to prod-db for INC-311");
    assert_eq!(opened.updated_at, utc("2026-11-25T09:41:07Z"));
    assert_eq!(opened.approval, ApprovalSignal::Carried { still: false });
    let r = opened.request.clone().unwrap();
    assert_eq!(r.subject, "dave-gh");
    assert_eq!(r.resource, "prod-db/readonly");
    assert_eq!(r.duration.as_deref(), Some("2h"));
    assert_eq!((r.start, r.end), (None, None));
    assert_eq!(r.justification, opened.title);

    let labeled = ticket(gh("issues", &fixture("github-issues-labeled.json")));
    assert_eq!(
        labeled.approval,
        ApprovalSignal::Given {
            by: vec!["alice-gh".into()],
            at: utc("2026-11-25T09:52:30Z")
        }
    );

    // Edited in the browser: `\r\n` line ends, and a different request.
    let edited = ticket(gh("issues", &fixture("github-issues-edited.json")));
    assert_eq!(edited.approval, ApprovalSignal::Carried { still: true });
    let r = edited.request.clone().unwrap();
    assert_eq!(r.resource, "prod-db/admin");
    assert_eq!(r.duration.as_deref(), Some("4h"));
    assert_eq!(r.start, Some(utc("2026-11-25T13:00:00Z")));

    let unlabeled = ticket(gh("issues", &fixture("github-issues-unlabeled.json")));
    assert_eq!(unlabeled.approval, ApprovalSignal::Withdrawn);

    let closed = ticket(gh("issues", &fixture("github-issues-closed.json")));
    assert_eq!(
        (closed.status, closed.source_status.as_str()),
        (TicketStatus::Closed, "closed")
    );
    assert_eq!(closed.approval, ApprovalSignal::Carried { still: true });

    let snaps = fold([opened, labeled, edited, unlabeled]);
    assert!(!snaps[0].approved);
    assert!(snaps[1].approved && pinned(&snaps[1]));
    assert_eq!(snaps[1].approval.as_ref().unwrap().approvers, ["alice-gh"]);
    assert!(
        snaps[2].approved && !pinned(&snaps[2]),
        "an edit after approval unpins it"
    );
    assert!(!snaps[3].approved && snaps[3].approval.is_none());
}

#[test]
fn github_events_without_ticket_changes_are_ignored() {
    let p = gh("ping", &fixture("github-ping.json")).unwrap();
    assert!(matches!(p, Parsed::Ignored { ticket: None, ref why } if why.contains("ping")));
    let p = gh(
        "issue_comment",
        &fixture("github-issue-comment-created.json"),
    )
    .unwrap();
    assert!(matches!(p, Parsed::Ignored { ticket: None, .. }));
    // An issues event from a repository nobody configured.
    let mut v = fixture_json("github-issues-labeled.json");
    v["repository"]["full_name"] = json!("mallory/access-requests");
    let p = gh("issues", v.to_string().as_bytes()).unwrap();
    assert!(matches!(p, Parsed::Ignored { ticket: None, .. }));
}

#[test]
fn github_deliveries_are_signed_over_the_raw_body() {
    let cfg = config();
    let secret = cfg
        .sources
        .github
        .as_ref()
        .unwrap()
        .secret
        .as_ref()
        .unwrap()
        .expose_secret()
        .as_bytes()
        .to_vec();
    let body = fixture("github-issues-labeled.json");
    let header = signature::sign_hub(&secret, &body);
    assert_eq!(
        signature::verify_hub(&secret, signature::GITHUB_SIGNATURE, Some(&header), &body),
        Ok(())
    );
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'4').unwrap();
    tampered[at] = b'5';
    assert_eq!(
        signature::verify_hub(
            &secret,
            signature::GITHUB_SIGNATURE,
            Some(&header),
            &tampered
        ),
        Err(SignatureError::Mismatch)
    );
}

// ------------------------------------------------------------------ Jira

#[test]
fn jira_issue_lifecycle() {
    let created = ticket(jr(&fixture("jira-issue-created.json")));
    assert_eq!(created.key.as_str(), "jira:OPS-7");
    assert_eq!(created.project, "OPS");
    assert_eq!(
        (created.status, created.source_status.as_str()),
        (TicketStatus::Open, "Waiting for approval")
    );
    assert_eq!(created.approval, ApprovalSignal::Carried { still: false });
    assert_eq!(created.updated_at, utc("2026-11-25T09:30:12.345Z"));
    let r = created.request.clone().unwrap();
    assert_eq!(
        r.subject, "5b10ac8d82e05b22cc7d4ef5",
        "the reporter's accountId"
    );
    assert_eq!(r.resource, "prod-db/readonly", "from a select list");
    assert_eq!(
        r.start,
        Some(utc("2026-11-25T10:00:00Z")),
        "+0100 offsets are honoured"
    );
    assert_eq!(r.end, Some(utc("2026-11-25T12:00:00Z")));
    assert_eq!(r.duration, None);
    assert_eq!(r.justification, "Read-only prod-db access for INC-311");

    let approved = ticket(jr(&fixture("jira-issue-updated-approved.json")));
    assert_eq!(
        approved.approval,
        ApprovalSignal::Given {
            by: vec!["712020:4b1c2f5a-8d3e-4f6a-9b7c-1d2e3f4a5b6c".into()],
            at: utc("2026-11-25T09:58:03.117Z"),
        }
    );
    let edited = ticket(jr(&fixture("jira-issue-updated-edited.json")));
    assert_eq!(edited.approval, ApprovalSignal::Carried { still: true });
    assert_eq!(edited.request.as_ref().unwrap().resource, "prod-db/admin");
    let withdrawn = ticket(jr(&fixture("jira-issue-updated-withdrawn.json")));
    // Back to waiting: approval pending again. The merge keeps the old
    // approval only for an extension, so this still revokes otherwise.
    assert_eq!(withdrawn.approval, ApprovalSignal::Carried { still: false });
    let done = ticket(jr(&fixture("jira-issue-updated-done.json")));
    assert_eq!(
        (done.status, done.source_status.as_str()),
        (TicketStatus::Closed, "Done")
    );
    let deleted = ticket(jr(&fixture("jira-issue-deleted.json")));
    assert_eq!(deleted.status, TicketStatus::Deleted);

    let snaps = fold([created, approved, edited, withdrawn]);
    assert!(!snaps[0].approved);
    assert!(snaps[1].approved && pinned(&snaps[1]));
    assert!(
        snaps[2].approved && !pinned(&snaps[2]),
        "an edit after approval unpins it"
    );
    assert!(!snaps[3].approved);
}

#[test]
fn jira_comments_are_ignored_but_name_their_ticket() {
    let p = jr(&fixture("jira-comment-created.json")).unwrap();
    match p {
        Parsed::Ignored { why, ticket } => {
            assert!(why.contains("comment_created"), "{why}");
            assert_eq!(ticket, Some("jira:OPS-7".parse::<TicketKey>().unwrap()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn jira_deliveries_are_signed_over_the_raw_body() {
    let cfg = config();
    let secret = cfg
        .sources
        .jira
        .as_ref()
        .unwrap()
        .secret
        .as_ref()
        .unwrap()
        .expose_secret()
        .as_bytes()
        .to_vec();
    let body = fixture("jira-issue-updated-approved.json");
    let header = signature::sign_hub(&secret, &body);
    assert_eq!(
        signature::verify_hub(&secret, signature::JIRA_SIGNATURE, Some(&header), &body),
        Ok(())
    );
    assert_eq!(
        signature::verify_hub(
            b"another secret",
            signature::JIRA_SIGNATURE,
            Some(&header),
            &body
        ),
        Err(SignatureError::Mismatch)
    );
}

// ------------------------------------------------------------------ ServiceNow

#[test]
fn servicenow_change_lifecycle() {
    let requested = ticket(sn(&fixture("servicenow-change-requested.json")));
    assert_eq!(requested.key.as_str(), "servicenow:CHG0030001");
    assert_eq!(requested.source_status, "Authorize");
    assert_eq!(requested.approval, ApprovalSignal::Carried { still: false });

    let approved = ticket(sn(&fixture("servicenow-change-approved.json")));
    assert_eq!(approved.project, "change_request");
    assert_eq!(
        (approved.status, approved.source_status.as_str()),
        (TicketStatus::Open, "Scheduled")
    );
    assert_eq!(approved.updated_at, utc("2026-11-25T09:58:12Z"));
    assert_eq!(
        approved.approval,
        ApprovalSignal::Stated {
            by: vec!["alice.smith".into()],
            at: utc("2026-11-25T09:58:12Z")
        }
    );
    let r = approved.request.clone().unwrap();
    assert_eq!(
        (r.subject.as_str(), r.resource.as_str()),
        ("dave.jones", "prod-db/readonly")
    );
    assert_eq!(
        (r.start, r.end),
        (
            Some(utc("2026-11-25T10:00:00Z")),
            Some(utc("2026-11-25T12:00:00Z"))
        )
    );
    assert_eq!(r.justification, "Read-only prod-db access for INC0010023");

    let table_api = ticket(sn(&fixture("servicenow-change-table-api.json")));
    assert_eq!(table_api.source_status, "Implement");
    assert!(
        matches!(&table_api.approval, ApprovalSignal::Stated { by, .. } if by == &["alice.smith".to_string()])
    );
    assert_eq!(
        table_api.request.as_ref().unwrap().subject,
        "dave.jones",
        "value, not display_value"
    );
    assert_eq!(
        table_api.updated_at,
        utc("2026-11-25T10:00:05Z"),
        "value is UTC; display_value is local"
    );

    let review = ticket(sn(&fixture("servicenow-change-review.json")));
    assert_eq!(
        (review.status, review.approval.clone()),
        (TicketStatus::Open, ApprovalSignal::Withdrawn)
    );
    let closed = ticket(sn(&fixture("servicenow-change-closed.json")));
    assert_eq!(
        (closed.status, closed.source_status.as_str()),
        (TicketStatus::Closed, "Closed")
    );
    assert_eq!(closed.approval, ApprovalSignal::Withdrawn);

    // The implement step restates the same approvers: the approval keeps
    // its first time rather than looking new.
    let snaps = fold([requested, approved, table_api, review]);
    assert!(!snaps[0].approved);
    assert!(snaps[1].approved && pinned(&snaps[1]));
    assert_eq!(
        snaps[2].approval.as_ref().unwrap().at,
        utc("2026-11-25T09:58:12Z")
    );
    assert!(!snaps[3].approved);

    let p = sn(&fixture("servicenow-incident.json")).unwrap();
    assert!(matches!(p, Parsed::Ignored { ticket: None, .. }));
}

#[test]
fn servicenow_deliveries_are_signed_per_standard_webhooks() {
    let cfg = config();
    let secret = cfg
        .sources
        .servicenow
        .as_ref()
        .unwrap()
        .secret
        .as_ref()
        .unwrap();
    let key = whsec_key(secret.expose_secret()).unwrap();
    let body = fixture("servicenow-change-approved.json");
    let now = Utc.with_ymd_and_hms(2026, 11, 25, 9, 58, 13).unwrap();
    let id = "1f0e2c7b47c1a250e0ef563dbb9a7101";
    let sig = signature::sign_standard(&key, id, now.timestamp() - 1, &body);
    let ts = (now.timestamp() - 1).to_string();
    let tol = Duration::seconds(300);
    assert_eq!(
        signature::verify_standard(&key, Some(id), Some(&ts), Some(&sig), &body, now, tol),
        Ok(())
    );
    let replay = now + Duration::minutes(6);
    assert_eq!(
        signature::verify_standard(&key, Some(id), Some(&ts), Some(&sig), &body, replay, tol),
        Err(SignatureError::TimestampOutOfTolerance)
    );
}

// ------------------------------------------------------------------ hostile values

const SCRIPTS: [&str; 6] = [
    "Zugriff auf die Datenbank für Störung 311 — bitte prüfen",
    "ログ調査のための読み取り専用アクセス",
    "طلب وصول مؤقت \u{200f}لقاعدة البيانات",
    "🔥 prod is on fire 🚒 need access 🙏",
    "e\u{301}\u{302}\u{303} zalgo t\u{336}e\u{336}x\u{336}t",
    "tab\tand\u{0}nul",
];

#[test]
fn unicode_titles_and_accounts_pass_through() {
    for text in SCRIPTS {
        let mut v = fixture_json("github-issues-opened.json");
        v["issue"]["title"] = json!(text);
        v["issue"]["user"]["login"] = json!("dävé");
        let ev = ticket(gh("issues", v.to_string().as_bytes()));
        assert_eq!(ev.title, text);
        assert_eq!(ev.request.unwrap().subject, "dävé");

        let mut v = fixture_json("jira-issue-created.json");
        v["issue"]["fields"]["summary"] = json!(text);
        v["issue"]["fields"]["customfield_10100"] = json!("prod-db/schéma_日本");
        let ev = ticket(jr(v.to_string().as_bytes()));
        assert_eq!(ev.title, text);
        assert_eq!(ev.request.unwrap().resource, "prod-db/schéma_日本");

        let mut v = fixture_json("servicenow-change-approved.json");
        v["short_description"] = json!(text);
        v["approved_by"] = json!(["ålice", "بوب"]);
        let ev = ticket(sn(v.to_string().as_bytes()));
        assert_eq!(ev.title, text);
        assert!(matches!(ev.approval, ApprovalSignal::Stated { by, .. } if by == ["ålice", "بوب"]));
    }
    // Whitespace or control characters inside a resource make it invalid, not a crash.
    let mut v = fixture_json("servicenow-change-approved.json");
    v["u_access_resource"] = json!("prod-db/read\u{0}only");
    assert!(ticket(sn(v.to_string().as_bytes())).request.is_err());
}

#[test]
fn huge_values_give_short_answers() {
    let huge = "ü".repeat(50_000); // 100 KB of UTF-8
    let short = |s: &str| {
        assert!(
            s.len() < 1_000,
            "{} bytes: {}…",
            s.len(),
            &s[..s.len().min(120)]
        )
    };

    // Request fields: the ticket still parses; the error names the problem briefly.
    let mut v = fixture_json("github-issues-opened.json");
    v["issue"]["body"] = json!(format!("### Resource\n\n{huge}\n\n### Duration\n\n{huge}"));
    v["issue"]["title"] = json!(huge);
    let ev = ticket(gh("issues", v.to_string().as_bytes()));
    assert_eq!(ev.title.len(), 100_000, "the title is kept whole");
    short(&ev.request.unwrap_err());

    let mut v = fixture_json("jira-issue-created.json");
    for f in [
        "customfield_10100",
        "customfield_10101",
        "customfield_10103",
    ] {
        v["issue"]["fields"][f] = json!(huge);
    }
    v["issue"]["fields"]["reporter"]["accountId"] = json!(huge);
    short(&ticket(jr(v.to_string().as_bytes())).request.unwrap_err());

    let mut v = fixture_json("servicenow-change-approved.json");
    for f in ["u_access_resource", "assigned_to", "start_date", "end_date"] {
        v[f] = json!(huge);
    }
    short(&ticket(sn(v.to_string().as_bytes())).request.unwrap_err());

    // Keys and structural values: refused or ignored, with a short message.
    let mut v = fixture_json("github-issues-opened.json");
    v["repository"]["full_name"] = json!(huge);
    match gh("issues", v.to_string().as_bytes()).unwrap() {
        Parsed::Ignored { why, .. } => short(&why),
        other => panic!("{other:?}"),
    }
    short(
        &gh(&huge, v.to_string().as_bytes())
            .map(|p| format!("{p:?}"))
            .unwrap(),
    );
    let mut v = fixture_json("jira-issue-created.json");
    v["issue"]["key"] = json!(huge);
    short(&jr(v.to_string().as_bytes()).unwrap_err().to_string());
    let mut v = fixture_json("servicenow-change-approved.json");
    v["number"] = json!(huge);
    short(&sn(v.to_string().as_bytes()).unwrap_err().to_string());
    v["number"] = json!("CHG0030001");
    v["sys_updated_on"] = json!(huge);
    short(&sn(v.to_string().as_bytes()).unwrap_err().to_string());
    v["sys_updated_on"] = json!("2026-11-25 09:58:12");
    v["state"] = json!(huge);
    let ev = ticket(sn(v.to_string().as_bytes()));
    assert_eq!(
        ev.approval,
        ApprovalSignal::Withdrawn,
        "an unknown state approves nothing"
    );
}

#[test]
fn bodies_that_are_not_the_sources_json() {
    for body in [
        &b""[..],
        b"not json",
        b"\xff\xfe{}",
        b"{\"a\":",
        b"payload=%7B%22action%22%7D",
    ] {
        assert!(
            matches!(gh("issues", body), Err(SourceError::NotJson(_))),
            "{body:?}"
        );
        assert!(matches!(jr(body), Err(SourceError::NotJson(_))));
        assert!(matches!(sn(body), Err(SourceError::NotJson(_))));
    }
    for body in [&b"[]"[..], b"null", b"42", b"\"issues\""] {
        assert!(matches!(gh("issues", body), Err(SourceError::Malformed(_))));
        assert!(matches!(jr(body), Err(SourceError::Malformed(_))));
        assert!(matches!(sn(body), Err(SourceError::Malformed(_))));
    }
    // Deep nesting is refused by serde_json's depth limit, not by the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(gh("issues", deep.as_bytes()).is_err());
    let e =
        jr(br#"{"webhookEvent": "jira:issue_updated", "issue": {"key": "OPS-1"}}"#).unwrap_err();
    assert!(e.to_string().contains("issue.fields.project.key"), "{e}");
}

// ------------------------------------------------------------------ properties

fn json_value() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "issues",
        "labeled",
        "unlabeled",
        "opened",
        "deleted",
        "access-approved",
        "acme/access-requests",
        "jira:issue_updated",
        "jira:issue_deleted",
        "OPS",
        "OPS-7",
        "Approved",
        "done",
        "status",
        "change_request",
        "approved",
        "-2",
        "-1",
        "2026-11-25T10:00:00Z",
        "2026-11-25 10:00:00",
        "2026-11-25T10:00:00.000+0000",
        "prod-db/readonly",
        "### Resource\n\nprod-db/readonly\n\n### Duration\n\n2h",
        "_No response_",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,40}".prop_map(Value::String),
        words.prop_map(|w| Value::String(w.to_string())),
    ];
    let keys = prop_oneof![
        ".{0,12}",
        prop::sample::select(vec![
            "action",
            "issue",
            "repository",
            "full_name",
            "number",
            "title",
            "state",
            "updated_at",
            "user",
            "login",
            "labels",
            "label",
            "name",
            "sender",
            "body",
            "webhookEvent",
            "timestamp",
            "fields",
            "project",
            "key",
            "status",
            "statusCategory",
            "changelog",
            "items",
            "field",
            "toString",
            "fromString",
            "accountId",
            "reporter",
            "customfield_10100",
            "table",
            "result",
            "value",
            "display_value",
            "approval",
            "approved_by",
            "sys_updated_on",
            "assigned_to",
            "u_access_resource",
            "start_date",
        ])
        .prop_map(str::to_string),
    ];
    leaf.prop_recursive(5, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON pointers to every value inside `v`.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"));
                pointers(child, p.clone(), out);
                out.push(p);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{here}/{i}");
                pointers(child, p.clone(), out);
                out.push(p);
            }
        }
        _ => {}
    }
}

const ALL_FIXTURES: [(&str, &str); 20] = [
    ("issues", "github-issues-opened.json"),
    ("issues", "github-issues-labeled.json"),
    ("issues", "github-issues-edited.json"),
    ("issues", "github-issues-unlabeled.json"),
    ("issues", "github-issues-closed.json"),
    ("ping", "github-ping.json"),
    ("issue_comment", "github-issue-comment-created.json"),
    ("", "jira-issue-created.json"),
    ("", "jira-issue-updated-approved.json"),
    ("", "jira-issue-updated-edited.json"),
    ("", "jira-issue-updated-withdrawn.json"),
    ("", "jira-issue-updated-done.json"),
    ("", "jira-issue-deleted.json"),
    ("", "jira-comment-created.json"),
    ("", "servicenow-change-approved.json"),
    ("", "servicenow-change-requested.json"),
    ("", "servicenow-change-review.json"),
    ("", "servicenow-change-closed.json"),
    ("", "servicenow-change-table-api.json"),
    ("", "servicenow-incident.json"),
];

/// Runs a body through every parser and checks what holds for any input:
/// no panic, keys that read back, and messages of a readable size.
fn parse_everywhere(event: &str, body: &[u8]) {
    let results = [gh(event, body), gh("issues", body), jr(body), sn(body)];
    for r in results {
        match r {
            Ok(Parsed::Ticket(ev)) => {
                assert_eq!(ev.key.as_str().parse::<TicketKey>().as_ref(), Ok(&ev.key));
                if let Err(e) = &ev.request {
                    assert!(!e.is_empty() && e.len() < 2_000, "{}", e.len());
                }
            }
            Ok(Parsed::Ignored { why, ticket }) => {
                assert!(why.len() < 1_000);
                if let Some(k) = ticket {
                    assert_eq!(k.as_str().parse::<TicketKey>().as_ref(), Ok(&k));
                }
            }
            Err(e) => assert!(e.to_string().len() < 1_000, "{e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), event in ".{0,12}") {
        parse_everywhere(&event, &body);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        parse_everywhere("issues", v.to_string().as_bytes());
        // The same value as a Table API answer, and as a field of a real record.
        parse_everywhere("issues", json!({"result": v}).to_string().as_bytes());
    }

    #[test]
    fn mutated_fixtures_never_panic(which in 0..ALL_FIXTURES.len(), pick in any::<prop::sample::Index>(), v in json_value()) {
        let (event, name) = ALL_FIXTURES[which];
        let mut doc = fixture_json(name);
        let mut ptrs = Vec::new();
        pointers(&doc, String::new(), &mut ptrs);
        let ptr = pick.get(&ptrs).clone();
        if let Some(slot) = doc.pointer_mut(&ptr) {
            *slot = v;
        }
        parse_everywhere(event, doc.to_string().as_bytes());
    }

    #[test]
    fn signature_checks_never_panic(
        secret in prop::collection::vec(any::<u8>(), 0..80),
        header in prop::option::of(".{0,120}"),
        id in prop::option::of(".{0,40}"),
        ts in prop::option::of(prop_oneof![".{0,24}", any::<i64>().prop_map(|n| n.to_string())]),
        body in prop::collection::vec(any::<u8>(), 0..256),
        now in 0i64..4_000_000_000,
        tolerance in 0i64..1_000_000,
    ) {
        let now = Utc.timestamp_opt(now, 0).unwrap();
        let tol = Duration::seconds(tolerance);
        let _ = signature::verify_hub(&secret, signature::GITHUB_SIGNATURE, header.as_deref(), &body);
        let _ = signature::verify_standard(&secret, id.as_deref(), ts.as_deref(), header.as_deref(), &body, now, tol);
        // What we sign, we accept.
        let signed = signature::sign_hub(&secret, &body);
        prop_assert_eq!(signature::verify_hub(&secret, signature::JIRA_SIGNATURE, Some(&signed), &body), Ok(()));
        let sig = signature::sign_standard(&secret, "msg_1", now.timestamp(), &body);
        let ts = now.timestamp().to_string();
        prop_assert_eq!(signature::verify_standard(&secret, Some("msg_1"), Some(&ts), Some(&sig), &body, now, tol), Ok(()));
    }
}
