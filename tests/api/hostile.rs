//! Hostile tickets through the real intake, on both backends: arbitrary
//! dates, durations and numbers in every time and window field of the three
//! sources; issue forms that hide text from the approver; a sender's clock
//! years ahead; tickets that leave what warrant watches. Each ends in a
//! clean answer or a recorded denial, and warrant keeps committing and
//! revoking afterwards.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::helpers::{t0, Backend, Receiver, TestApp, AUDITOR_TOKEN};
use crate::payloads::{self, Change, Issue, JiraIssue};
use crate::{app, backend_tests};

const ALICE_JIRA: &str = "5b10a2844c20165700ede21g";

/// Cases per source and backend: enough to reach every field with odd
/// values, few enough that the suite stays quick.
const CASES: u32 = 64;

/// A request that must answer, and not hang.
async fn within<F: std::future::Future<Output = reqwest::Response>>(f: F) -> reqwest::Response {
    tokio::time::timeout(std::time::Duration::from_secs(20), f)
        .await
        .expect("the intake answers within 20 s")
}

async fn decision(app: &TestApp, key: &str) -> Value {
    let q = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
    let (status, body) = app
        .get_json(&format!("/v1/tickets/{q}"), AUDITOR_TOKEN)
        .await;
    assert_eq!(status, 200, "{body}");
    body["decision"].clone()
}

async fn only_grant(app: &TestApp, key: &str) -> Value {
    let grants = app.grants_of(key).await;
    assert_eq!(grants.len(), 1, "{key}: {grants:?}");
    grants[0].clone()
}

// ---------------------------------------------------------------------
// Arbitrary values in every date, duration and window field.

/// Date-ish text: anything, dates with any year and out-of-range parts in
/// each source's format, and the edges of the range and of chrono's.
fn date_text() -> impl Strategy<Value = String> {
    let formatted = (
        prop_oneof![
            -300_000i64..300_000,
            1960i64..10_010,
            prop::sample::select(vec![
                0i64, 1969, 1970, 9999, 10_000, 262_143, 262_144, -262_144
            ]),
        ],
        0u32..14,
        0u32..33,
        0u32..26,
        0u32..62,
        0u32..4,
    )
        .prop_map(|(y, mo, d, h, mi, style)| {
            let year = if !(0..=9999).contains(&y) {
                format!("{y:+05}")
            } else {
                format!("{y:04}")
            };
            match style {
                0 => format!("{year}-{mo:02}-{d:02}T{h:02}:{mi:02}:00Z"),
                1 => format!("{year}-{mo:02}-{d:02} {h:02}:{mi:02}:00"),
                2 => format!("{year}-{mo:02}-{d:02}T{h:02}:{mi:02}:00.000+0000"),
                _ => format!("{year}-{mo:02}-{d:02}"),
            }
        });
    prop_oneof![
        2 => ".{0,32}",
        3 => formatted,
        3 => prop::sample::select(vec![
            "+262143-12-31T23:00:00.000+0000",
            "+262143-12-31 23:59:59",
            "+262143-12-31",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:60Z",
            "9999-12-31T23:59:59-23:59",
            "0000-01-01T00:00:00+23:59",
            "+262143-12-31T23:59:59.999+0000",
            "-262144-01-01T00:00:00.000+0000",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31 23:59:59",
            "10000-01-01 00:00:00",
            "2026-11-25T10:00:00Z",
            "2026-11-25 10:00:00",
            "2026-11-25T10:00:00.000+0000",
        ])
        .prop_map(String::from),
    ]
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,16}",
        (
            any::<u64>(),
            prop::sample::select(vec!["s", "m", "h", "d", "", "w", "ms"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        (
            0u64..40_000_000,
            prop::sample::select(vec!["s", "m", "h", "d"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        prop::sample::select(vec![
            "366d",
            "367d",
            "8784h",
            "8785h",
            "31622400s",
            "31622401s",
            "0s",
            "-1h",
            "9223372036854775807s",
            "9223372036854775807d",
            "366d1s",
            "1h30m",
            "2h",
        ])
        .prop_map(String::from),
    ]
}

/// Any JSON a field may hold: text as above, numbers of every size
/// (epoch millis around and beyond the range), null, odd shapes.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => date_text().prop_map(Value::from),
        2 => duration_text().prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        2 => (-62_135_596_800_000i64..=253_402_300_800_000).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => date_text().prop_map(|s| json!({ "value": s })),
        1 => date_text().prop_map(|s| json!([s])),
    ]
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Clone, Copy)]
enum Src {
    Github,
    Jira,
    Servicenow,
}

/// Fields of one source that hold a time, a duration or a window bound.
fn fields(src: Src) -> usize {
    match src {
        Src::Github => 4,
        Src::Jira => 5,
        Src::Servicenow => 3,
    }
}

static SEQ: AtomicU64 = AtomicU64::new(1);

/// One hostile approval (an approved ticket, so the decision runs on what
/// was read), then one ordinary delivery that must still be accepted.
async fn hostile_then_good(
    app: &TestApp,
    src: Src,
    field: usize,
    v: &Value,
) -> Result<(), TestCaseError> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let resp = match src {
        Src::Github => {
            let mut issue = Issue::new(10_000 + n, t0());
            issue.labels = vec!["access-approved"];
            let (start, duration) = match field {
                1 => (Some(text_of(v)), "2h".to_string()),
                2 => (None, text_of(v)),
                3 => (Some(text_of(v)), text_of(v)),
                _ => (None, "2h".to_string()),
            };
            issue.body = payloads::form("hooks/fuzz", &duration, start.as_deref());
            let mut body = payloads::github("labeled", &issue, "alice-gh", Some("access-approved"));
            if field == 0 {
                body["issue"]["updated_at"] = v.clone();
            }
            within(app.post_github("issues", &format!("h-{n}"), &body)).await
        }
        Src::Jira => {
            let key = format!("OPS-{}", 10_000 + n);
            let mut issue = JiraIssue::new(&key);
            issue.status = "Approved";
            issue.category = "indeterminate";
            let mut body = payloads::jira(
                "jira:issue_updated",
                &issue,
                ALICE_JIRA,
                t0(),
                Some(("Open", "Approved")),
            );
            match field {
                0 => body["timestamp"] = v.clone(),
                1 => {
                    body.as_object_mut().unwrap().remove("timestamp");
                    body["issue"]["fields"]["updated"] = v.clone();
                }
                2 => body["issue"]["fields"]["customfield_10101"] = v.clone(),
                3 => body["issue"]["fields"]["customfield_10102"] = v.clone(),
                _ => body["issue"]["fields"]["customfield_10103"] = v.clone(),
            }
            within(app.post_jira(&format!("h-{n}"), &body)).await
        }
        Src::Servicenow => {
            let number = format!("CHG{}", 10_000 + n);
            let mut body = payloads::servicenow(&Change {
                number: &number,
                state: json!("-2"),
                approval: "approved",
                approved_by: json!(["alice.smith"]),
                assigned_to: "dave.jones",
                resource: "hooks/fuzz",
                start: t0(),
                end: t0() + Duration::hours(1),
                updated: t0(),
            });
            let name = ["sys_updated_on", "start_date", "end_date"][field.min(2)];
            body[name] = v.clone();
            within(app.post_servicenow(&format!("h-{n}"), &body)).await
        }
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    prop_assert!(
        status == 200 || status == 400,
        "field {field} = {v}: {status} {text}"
    );
    let key = match src {
        Src::Github => format!("github:acme/access-requests#{}", 10_000 + n),
        Src::Jira => format!("jira:OPS-{}", 10_000 + n),
        Src::Servicenow => format!("servicenow:CHG{}", 10_000 + n),
    };
    let q = percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC);
    let (found, _) = app
        .get_json(&format!("/v1/tickets/{q}"), AUDITOR_TOKEN)
        .await;
    // A refused delivery changes nothing; an accepted one is recorded.
    prop_assert_eq!(
        found,
        if status == 400 { 404 } else { 200 },
        "{}: {}",
        key,
        text
    );

    // The next good delivery is accepted.
    let m = SEQ.fetch_add(1, Ordering::Relaxed);
    let good = match src {
        Src::Github => {
            let issue = Issue::new(10_000 + m, t0());
            within(app.post_github(
                "issues",
                &format!("g-{m}"),
                &payloads::github("opened", &issue, "dave-gh", None),
            ))
            .await
        }
        Src::Jira => {
            let key = format!("OPS-{}", 10_000 + m);
            let issue = JiraIssue::new(&key);
            within(app.post_jira(
                &format!("g-{m}"),
                &payloads::jira("jira:issue_created", &issue, ALICE_JIRA, t0(), None),
            ))
            .await
        }
        Src::Servicenow => {
            let number = format!("CHG{}", 10_000 + m);
            within(app.post_servicenow(
                &format!("g-{m}"),
                &payloads::servicenow(&Change {
                    number: &number,
                    state: json!("-5"),
                    approval: "not requested",
                    approved_by: json!([]),
                    assigned_to: "dave.jones",
                    resource: "hooks/fuzz",
                    start: t0(),
                    end: t0() + Duration::hours(1),
                    updated: t0(),
                }),
            ))
            .await
        }
    };
    let status = good.status().as_u16();
    let body: Value = good.json().await.unwrap_or_default();
    prop_assert_eq!(status, 200, "after field {} = {}: {}", field, v, body);
    prop_assert_eq!(&body["status"], "accepted", "{}", body);
    Ok(())
}

/// After the fuzzing: a good approval is granted and, when its window
/// ends, revoked on time.
async fn still_grants_and_revokes(app: &TestApp) {
    let mut issue = Issue::new(42, t0());
    issue.body = payloads::form("hooks/after", "30m", None);
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            "after-42",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let key = "github:acme/access-requests#42";
    let g = only_grant(app, key).await;
    assert_eq!(g["state"], "active", "{g}");
    app.advance(Duration::minutes(31));
    app.run_jobs().await;
    let g = only_grant(app, key).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("expired")),
        "{g}"
    );
    let id = g["id"].as_str().unwrap();
    assert!(app
        .receiver
        .calls()
        .iter()
        .any(|c| c.action() == "revoke" && c.body["grant_id"] == id));
    let ready = app
        .client
        .get(format!("{}/readyz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

fn fuzz(backend: Backend, src: Src) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(app) = rt.block_on(TestApp::spawn(backend, "")) else {
        return;
    };
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(CASES)
    });
    let result = runner.run(&(0..fields(src), value()), |(field, v)| {
        rt.block_on(hostile_then_good(&app, src, field, &v))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        still_grants_and_revokes(&app).await;
        drop(app);
    });
}

mod fuzz_sqlite {
    use super::*;
    #[test]
    fn github_times_and_windows() {
        fuzz(Backend::Sqlite, Src::Github)
    }
    #[test]
    fn jira_times_and_windows() {
        fuzz(Backend::Sqlite, Src::Jira)
    }
    #[test]
    fn servicenow_times_and_windows() {
        fuzz(Backend::Sqlite, Src::Servicenow)
    }
}

mod fuzz_postgres {
    use super::*;
    #[test]
    fn github_times_and_windows() {
        fuzz(Backend::Postgres, Src::Github)
    }
    #[test]
    fn jira_times_and_windows() {
        fuzz(Backend::Postgres, Src::Jira)
    }
    #[test]
    fn servicenow_times_and_windows() {
        fuzz(Backend::Postgres, Src::Servicenow)
    }
}

/// The values that used to reach unchecked arithmetic: each is a recorded
/// `invalid_request` (or a 400 for an envelope time), and the next delivery
/// is accepted.
async fn edge_values_are_denials(backend: Backend) {
    let app = app!(backend);
    // A start at the end of year 9999 plus two hours leaves the range only
    // in the decision's arithmetic, which is checked.
    let mut issue = Issue::new(7, t0());
    issue.labels = vec!["access-approved"];
    issue.body = payloads::form("hooks/edge", "2h", Some("9999-12-31T23:00:00Z"));
    let r = app
        .post_github(
            "issues",
            "edge-1",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    let d = decision(&app, "github:acme/access-requests#7").await;
    assert_eq!(d["outcome"], "deny", "{d}");

    issue.number = 8;
    issue.body = payloads::form("hooks/edge", "2h", Some("1969-12-31T23:00:00Z"));
    app.post_github(
        "issues",
        "edge-2",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    let d = decision(&app, "github:acme/access-requests#8").await;
    assert_eq!(d["reason"], "invalid_request", "{d}");
    assert!(
        d["detail"].as_str().unwrap().contains("1970 through 9999"),
        "{d}"
    );

    let mut jira = JiraIssue::new("OPS-8");
    jira.status = "Approved";
    jira.category = "indeterminate";
    let mut body = payloads::jira(
        "jira:issue_updated",
        &jira,
        ALICE_JIRA,
        t0(),
        Some(("Open", "Approved")),
    );
    body["issue"]["fields"]["customfield_10101"] = json!("+262143-12-31T23:59:59.999+0000");
    assert_eq!(app.post_jira("edge-3", &body).await.status(), 200);
    let d = decision(&app, "jira:OPS-8").await;
    assert_eq!(d["reason"], "invalid_request", "{d}");
    let mut body = payloads::jira("jira:issue_updated", &jira, ALICE_JIRA, t0(), None);
    body["timestamp"] = json!(i64::MAX);
    let r = app.post_jira("edge-4", &body).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("1970 through 9999"));

    let mut change = payloads::servicenow(&Change {
        number: "CHG0000001",
        state: json!("-2"),
        approval: "approved",
        approved_by: json!(["alice.smith"]),
        assigned_to: "dave.jones",
        resource: "hooks/edge",
        start: t0(),
        end: t0() + Duration::hours(1),
        updated: t0(),
    });
    change["end_date"] = json!("10000-01-01 00:00:00");
    assert_eq!(app.post_servicenow("edge-5", &change).await.status(), 200);
    let d = decision(&app, "servicenow:CHG0000001").await;
    assert_eq!(d["reason"], "invalid_request", "{d}");
    change["sys_updated_on"] = json!("1969-12-31 23:59:59");
    assert_eq!(app.post_servicenow("edge-6", &change).await.status(), 400);

    still_grants_and_revokes(&app).await;
}

// ---------------------------------------------------------------------
// What the approver saw is what is granted.

async fn with_backlinks(backend: Backend, api: &Receiver) -> Option<TestApp> {
    let base = api.base();
    TestApp::spawn_edit(backend, "", |text| {
        text.replace(
            "approval_label = \"access-approved\"",
            &format!("approval_label = \"access-approved\"\napi_url = \"{base}\"\ntoken_env = \"GH_TOKEN\""),
        )
        .replace(
            "closed_statuses = [\"Rejected\", \"Cancelled\"]",
            &format!("closed_statuses = [\"Rejected\", \"Cancelled\"]\napi_url = \"{base}\"\ntoken_env = \"JIRA_TOKEN\""),
        )
        .replace("secret_env = \"SN\"", &format!("secret_env = \"SN\"\napi_url = \"{base}\"\ntoken_env = \"SN_TOKEN\""))
    })
    .await
}

const SHOWN_A_HIDDEN_B: &str = "### Resource\n\nhooks/a\n\n<!--\n### Resource\n\nhooks/b\n-->\n\n```\n### Resource\n\nhooks/b\n```\n\n    ### Resource\n\n### Duration\n\n2h<!-- 4h -->\n\n### Start\n\n_No response_\n\n### Justification\n\nfix the hook <!-- ### Resource hooks/b -->";

async fn the_form_grants_what_github_shows(backend: Backend) {
    let api = Receiver::start().await;
    let Some(app) = with_backlinks(backend, &api).await else {
        return;
    };
    let key = "github:acme/access-requests#42";
    let mut issue = Issue::new(42, t0());
    issue.body = SHOWN_A_HIDDEN_B.to_string();
    let r = app
        .post_github(
            "issues",
            "open",
            &payloads::github("opened", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    // The request is read back on the issue before anyone approves it.
    let notes = api.calls();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        notes[0].path,
        "/repos/acme/access-requests/issues/42/comments"
    );
    let text = notes[0].body["body"].as_str().unwrap();
    for part in [
        "warrant reads this request",
        "`dave-gh`",
        "`hooks/a`",
        "for 2h",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(!text.contains("hooks/b"), "{text}");

    // Approved as shown: hooks/a for two hours reaches the provider.
    issue.labels = vec!["access-approved"];
    issue.updated_at = t0() + Duration::seconds(1);
    app.post_github(
        "issues",
        "label",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let g = only_grant(&app, key).await;
    assert_eq!(
        (g["resource"].as_str(), g["state"].as_str()),
        (Some("hooks/a"), Some("active"))
    );
    assert_eq!(g["expires_at"], "2026-11-25T12:00:00Z");
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].action(), calls[0].body["target"].as_str()),
        ("grant", Some("a"))
    );
    // The approval is not read back again; the grant is noted.
    let notes = api.calls();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[1].body["body"]
        .as_str()
        .unwrap()
        .contains("access granted"));

    // An edit that hides a second, look-alike Resource heading is refused
    // and read back as unreadable; the grant ends.
    issue.body = format!(
        "{}\n\n### Reso\u{200b}urce\n\nhooks/b",
        payloads::form("hooks/a", "2h", None)
    );
    issue.updated_at = t0() + Duration::seconds(2);
    app.post_github(
        "issues",
        "edit",
        &payloads::github("edited", &issue, "dave-gh", None),
    )
    .await;
    let d = decision(&app, key).await;
    assert_eq!(d["reason"], "invalid_request", "{d}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("more than one `### Resource`"),
        "{d}"
    );
    app.run_jobs().await;
    let g = only_grant(&app, key).await;
    assert_eq!(g["state"], "revoked", "{g}");
    let notes = api.calls();
    assert!(
        notes.iter().any(|n| n.body["body"]
            .as_str()
            .unwrap()
            .contains("this request cannot be read")),
        "{notes:?}"
    );
}

async fn jira_and_servicenow_requests_are_read_back(backend: Backend) {
    let api = Receiver::start().await;
    api.reply_json(r#"{"result": [{"sys_id": "c286d61347c12200e0ef563dbb9a7109"}]}"#);
    let Some(app) = with_backlinks(backend, &api).await else {
        return;
    };
    let issue = JiraIssue::new("OPS-7");
    app.post_jira(
        "created",
        &payloads::jira(
            "jira:issue_created",
            &issue,
            "5b10ac8d82e05b22cc7d4ef5",
            t0(),
            None,
        ),
    )
    .await;
    app.run_jobs().await;
    let calls = api.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/rest/api/2/issue/OPS-7/comment");
    let text = calls[0].body["body"].as_str().unwrap();
    for part in [
        "warrant reads this request",
        "`5b10ac8d82e05b22cc7d4ef5`",
        "`hooks/billing`",
        "for 1h",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    // The same request again (a comment, a title edit) is not read back twice.
    let mut body = payloads::jira(
        "jira:issue_updated",
        &issue,
        "5b10ac8d82e05b22cc7d4ef5",
        t0() + Duration::seconds(1),
        None,
    );
    body["issue"]["fields"]["summary"] = json!("a new title");
    app.post_jira("retitled", &body).await;
    app.run_jobs().await;
    assert_eq!(api.calls().len(), 1);

    let change = Change {
        number: "CHG0030002",
        state: json!("-4"),
        approval: "requested",
        approved_by: json!([]),
        assigned_to: "dave.jones",
        resource: "hooks/billing",
        start: t0(),
        end: t0() + Duration::hours(1),
        updated: t0(),
    };
    app.post_servicenow("sn", &payloads::servicenow(&change))
        .await;
    app.run_jobs().await;
    let calls = api.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[2].method, "PATCH");
    let note = calls[2].body["work_notes"].as_str().unwrap();
    for part in [
        "`dave.jones`",
        "`hooks/billing`",
        "from 2026-11-25T10:00:00Z until 2026-11-25T11:00:00Z",
    ] {
        assert!(note.contains(part), "{part} in {note}");
    }
}

async fn look_alike_headings_are_invalid(backend: Backend) {
    let app = app!(backend);
    for (n, extra) in [
        (50u64, "＃＃＃ Resource\n\nhooks/b"),
        (51, "## Resource\n\nhooks/b"),
        (52, "### **Resource**\n\nhooks/b"),
        (53, "### Reso&#117;rce\n\nhooks/b"),
        (54, "> ### Resource\n> hooks/b"),
    ] {
        let mut issue = Issue::new(n, t0());
        issue.body = format!("{}\n\n{extra}", payloads::form("hooks/a", "2h", None));
        issue.labels = vec!["access-approved"];
        let r = app
            .post_github(
                "issues",
                &format!("la-{n}"),
                &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
            )
            .await;
        assert_eq!(r.status(), 200);
        let key = format!("github:acme/access-requests#{n}");
        let d = decision(&app, &key).await;
        assert_eq!(d["reason"], "invalid_request", "{extra:?}: {d}");
        assert!(app.grants_of(&key).await.is_empty());
    }
    app.run_jobs().await;
    assert!(app.receiver.calls().is_empty());
}

/// Jira and ServiceNow read the request only from their configured fields:
/// fields of the same role under other names change nothing.
async fn only_configured_fields_are_read(backend: Backend) {
    let app = app!(backend);
    let mut jira = JiraIssue::new("OPS-9");
    jira.status = "Approved";
    jira.category = "indeterminate";
    jira.resource = "hooks/a";
    let mut body = payloads::jira(
        "jira:issue_updated",
        &jira,
        ALICE_JIRA,
        t0(),
        Some(("Open", "Approved")),
    );
    for (name, value) in [
        ("resource", json!("hooks/b")),
        ("customfield_10200", json!("hooks/b")),
        ("duration", json!("4h")),
        ("start", json!("2026-11-25T09:00:00.000+0000")),
        ("description", json!("### Resource\n\nhooks/b")),
    ] {
        body["issue"]["fields"][name] = value;
    }
    body["issue"]["resource"] = json!("hooks/b");
    assert_eq!(app.post_jira("j", &body).await.status(), 200);

    let mut change = payloads::servicenow(&Change {
        number: "CHG0000009",
        state: json!("-2"),
        approval: "approved",
        approved_by: json!(["alice.smith"]),
        assigned_to: "dave.jones",
        resource: "hooks/a",
        start: t0(),
        end: t0() + Duration::hours(1),
        updated: t0(),
    });
    for (name, value) in [
        ("resource", json!("hooks/b")),
        ("u_resource", json!("hooks/b")),
        ("description", json!("### Resource\n\nhooks/b")),
        ("work_start", json!("2026-11-25 09:00:00")),
        ("work_end", json!("2026-11-25 14:00:00")),
        ("opened_by", json!("mallory")),
    ] {
        change[name] = value;
    }
    assert_eq!(app.post_servicenow("s", &change).await.status(), 200);
    app.run_jobs().await;
    for key in ["jira:OPS-9", "servicenow:CHG0000009"] {
        let g = only_grant(&app, key).await;
        assert_eq!(g["resource"], "hooks/a", "{key}: {g}");
        assert_eq!(g["subject"], "dave", "{key}: {g}");
    }
    let g = only_grant(&app, "jira:OPS-9").await;
    assert_eq!(g["expires_at"], "2026-11-25T11:00:00Z");
    let g = only_grant(&app, "servicenow:CHG0000009").await;
    assert_eq!(g["expires_at"], "2026-11-25T11:00:00Z");
}

// ---------------------------------------------------------------------
// A sender's clock years ahead cannot pin the ticket.

fn ahead() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap()
}

/// The grant of `key` is active, and the audit says the time was clamped.
async fn granted_despite_clock(app: &TestApp, key: &str) -> String {
    app.run_jobs().await;
    let g = only_grant(app, key).await;
    assert_eq!(g["state"], "active", "{g}");
    let events = app.events_of(key).await;
    let ahead = events
        .iter()
        .find(|e| e["type"] == "ticket.clock_ahead")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(
        ahead["data"]["sent_updated_at"], "2031-01-01T00:00:00Z",
        "{ahead}"
    );
    assert_eq!(
        ahead["data"]["counted_as"], "2026-11-25T10:00:00Z",
        "{ahead}"
    );
    g["id"].as_str().unwrap().to_string()
}

async fn revoked_closed(app: &TestApp, key: &str, id: &str) {
    app.run_jobs().await;
    let g = only_grant(app, key).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed")),
        "{key}: {g}"
    );
    assert!(
        app.receiver
            .calls()
            .iter()
            .any(|c| c.action() == "revoke" && c.body["grant_id"] == id),
        "{:?}",
        app.receiver.calls()
    );
}

async fn a_clock_ahead_cannot_pin_a_ticket(backend: Backend) {
    let app = app!(backend);

    // GitHub: labeled "in 2031", closed a second after warrant's now.
    let key = "github:acme/access-requests#42";
    let mut issue = Issue::new(42, ahead());
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            "gh-ahead",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    let id = granted_despite_clock(&app, key).await;
    issue.state = "closed";
    issue.updated_at = app.clock_now() + Duration::seconds(1);
    app.post_github(
        "issues",
        "gh-close",
        &payloads::github("closed", &issue, "dave-gh", None),
    )
    .await;
    revoked_closed(&app, key, &id).await;

    // Jira: approved "in 2031", cancelled a second after now.
    let mut jira = JiraIssue::new("OPS-7");
    jira.status = "Approved";
    jira.category = "indeterminate";
    app.post_jira(
        "j-ahead",
        &payloads::jira(
            "jira:issue_updated",
            &jira,
            ALICE_JIRA,
            ahead(),
            Some(("Open", "Approved")),
        ),
    )
    .await;
    let id = granted_despite_clock(&app, "jira:OPS-7").await;
    jira.status = "Cancelled";
    app.post_jira(
        "j-cancel",
        &payloads::jira(
            "jira:issue_updated",
            &jira,
            ALICE_JIRA,
            app.clock_now() + Duration::seconds(1),
            Some(("Approved", "Cancelled")),
        ),
    )
    .await;
    revoked_closed(&app, "jira:OPS-7", &id).await;

    // ServiceNow: approved "in 2031", approval withdrawn a second after now.
    let mut change = Change {
        number: "CHG0030001",
        state: json!("-2"),
        approval: "approved",
        approved_by: json!(["alice.smith"]),
        assigned_to: "dave.jones",
        resource: "hooks/billing",
        start: t0(),
        end: t0() + Duration::hours(1),
        updated: ahead(),
    };
    app.post_servicenow("s-ahead", &payloads::servicenow(&change))
        .await;
    let id = granted_despite_clock(&app, "servicenow:CHG0030001").await;
    change.state = json!("4");
    change.updated = app.clock_now() + Duration::seconds(1);
    app.post_servicenow("s-cancel", &payloads::servicenow(&change))
        .await;
    revoked_closed(&app, "servicenow:CHG0030001", &id).await;

    // A ticket pinned before this rule (stored "in 2031") is not stuck.
    let (mut issue, id) = grant_github(&app, 44).await;
    let key = "github:acme/access-requests#44";
    exec(
        &app,
        &format!(
            "UPDATE tickets SET source_updated_at = {} WHERE key = '{key}'",
            ahead().timestamp_micros()
        ),
    );
    issue.state = "closed";
    issue.updated_at = app.clock_now() + Duration::seconds(1);
    app.post_github(
        "issues",
        "gh-close-44",
        &payloads::github("closed", &issue, "dave-gh", None),
    )
    .await;
    revoked_closed(&app, key, &id).await;

    // A time within the tolerance is kept as sent.
    let mut issue = Issue::new(43, t0() + Duration::seconds(200));
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "gh-near",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    let events = app.events_of("github:acme/access-requests#43").await;
    assert!(
        !events.iter().any(|e| e["type"] == "ticket.clock_ahead"),
        "{events:?}"
    );
}

fn exec(app: &TestApp, sql: &str) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    match app.backend {
        Backend::Sqlite => {
            let path = app.db.url.trim_start_matches("sqlite://");
            let mut c = diesel::sqlite::SqliteConnection::establish(path).unwrap();
            c.batch_execute(sql).unwrap();
        }
        Backend::Postgres => {
            let mut c = diesel::pg::PgConnection::establish(&app.db.url).unwrap();
            c.batch_execute(sql).unwrap();
        }
    }
}

// ---------------------------------------------------------------------
// A ticket that leaves what warrant watches is closed under its old key.

async fn grant_jira(app: &TestApp, key: &str) -> String {
    let mut jira = JiraIssue::new(key);
    jira.status = "Approved";
    jira.category = "indeterminate";
    let r = app
        .post_jira(
            &format!("approve-{key}"),
            &payloads::jira(
                "jira:issue_updated",
                &jira,
                ALICE_JIRA,
                t0(),
                Some(("Open", "Approved")),
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let g = only_grant(app, &format!("jira:{key}")).await;
    assert_eq!(g["state"], "active", "{g}");
    g["id"].as_str().unwrap().to_string()
}

async fn grant_github(app: &TestApp, n: u64) -> (Issue<'static>, String) {
    let mut issue = Issue::new(n, t0());
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            &format!("approve-{n}"),
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let g = only_grant(app, &format!("github:acme/access-requests#{n}")).await;
    assert_eq!(g["state"], "active", "{g}");
    (issue, g["id"].as_str().unwrap().to_string())
}

async fn a_jira_issue_moved_away_is_closed(backend: Backend) {
    let app = match TestApp::spawn_edit(backend, "", |t| {
        t.replace("projects = [\"OPS\"]", "projects = [\"OPS\", \"SEC\"]")
            .replace("\"jira:OPS\"", "\"jira:OPS\", \"jira:SEC\"")
    })
    .await
    {
        Some(app) => app,
        None => return,
    };
    // Moved to another (watched) project: OPS-7 becomes SEC-3.
    let id = grant_jira(&app, "OPS-7").await;
    let mut moved = JiraIssue::new("SEC-3");
    moved.status = "Approved";
    moved.category = "indeterminate";
    let r = app
        .post_jira(
            "move",
            &payloads::jira_moved(
                &moved,
                "OPS-7",
                "5b10ac8d82e05b22cc7d4ef5",
                t0() + Duration::minutes(1),
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["ticket"], "jira:OPS-7", "{b}");
    revoked_closed(&app, "jira:OPS-7", &id).await;
    let d = decision(&app, "jira:OPS-7").await;
    assert_eq!(d["reason"], "ticket_closed", "{d}");
    let (_, t) = app
        .get_json("/v1/tickets/jira%3AOPS-7", AUDITOR_TOKEN)
        .await;
    assert!(t.to_string().contains("moved to SEC-3"), "{t}");

    // The new key shows as approved but warrant saw no approval of it.
    app.post_jira(
        "sec-3",
        &payloads::jira(
            "jira:issue_updated",
            &moved,
            "5b10ac8d82e05b22cc7d4ef5",
            t0() + Duration::minutes(2),
            None,
        ),
    )
    .await;
    let d = decision(&app, "jira:SEC-3").await;
    assert_eq!(d["reason"], "approver_unknown", "{d}");
    assert!(app.grants_of("jira:SEC-3").await.is_empty());

    // Re-keyed to a project warrant does not watch.
    let id = grant_jira(&app, "OPS-8").await;
    let mut away = JiraIssue::new("HR-1");
    away.status = "Approved";
    let r = app
        .post_jira(
            "move-hr",
            &payloads::jira_moved(&away, "OPS-8", ALICE_JIRA, t0() + Duration::minutes(3)),
        )
        .await;
    assert_eq!(r.status(), 200);
    revoked_closed(&app, "jira:OPS-8", &id).await;
}

async fn a_github_issue_transferred_or_deleted_is_closed(backend: Backend) {
    let app = app!(backend);
    let (mut issue, id) = grant_github(&app, 42).await;
    issue.updated_at = t0() + Duration::minutes(1);
    let r = app
        .post_github(
            "issues",
            "transfer",
            &payloads::github_transferred(&issue, "dave-gh", "acme/elsewhere", 7),
        )
        .await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["ticket"], "github:acme/access-requests#42", "{b}");
    revoked_closed(&app, "github:acme/access-requests#42", &id).await;

    let (mut issue, id) = grant_github(&app, 43).await;
    issue.updated_at = t0() + Duration::minutes(1);
    app.post_github(
        "issues",
        "delete",
        &payloads::github("deleted", &issue, "dave-gh", None),
    )
    .await;
    revoked_closed(&app, "github:acme/access-requests#43", &id).await;
}

async fn a_dropped_repository_or_project_is_closed_at_reconcile(backend: Backend) {
    let app = app!(backend);
    let (_, gh) = grant_github(&app, 42).await;
    let jira = grant_jira(&app, "OPS-7").await;
    let calls = app.receiver.calls().len();

    // Restarted with the repository and the project gone from the configuration.
    let again = app
        .restart_with(|t| {
            t.replace(
                "repositories = [\"acme/access-requests\"]",
                "repositories = [\"acme/other\"]",
            )
            .replace("projects = [\"OPS\"]", "projects = [\"SEC\"]")
        })
        .await;
    again.reconcile_all();
    again.run_jobs().await;
    assert_eq!(
        app.receiver.calls().len(),
        calls + 2,
        "{:?}",
        app.receiver.calls()
    );
    revoked_closed(&again, "github:acme/access-requests#42", &gh).await;
    revoked_closed(&again, "jira:OPS-7", &jira).await;
    let d = decision(&again, "jira:OPS-7").await;
    assert!(
        d["detail"].as_str().unwrap().contains("no longer watched"),
        "{d}"
    );
}

backend_tests!(
    edge_values_are_denials,
    the_form_grants_what_github_shows,
    jira_and_servicenow_requests_are_read_back,
    look_alike_headings_are_invalid,
    only_configured_fields_are_read,
    a_clock_ahead_cannot_pin_a_ticket,
    a_jira_issue_moved_away_is_closed,
    a_github_issue_transferred_or_deleted_is_closed,
    a_dropped_repository_or_project_is_closed_at_reconcile,
);
