//! Back-links: what warrant did is written on the ticket through each
//! source's REST API (here loopback servers that record the calls).

use chrono::Duration;
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{t0, Backend, Receiver, TestApp};
use crate::payloads::{self, Issue, JiraIssue};

async fn spawn(backend: Backend, api: &Receiver) -> Option<TestApp> {
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

async fn github_comments_name_grant_window_and_reason(backend: Backend) {
    let api = Receiver::start().await;
    let Some(app) = spawn(backend, &api).await else {
        return;
    };
    let mut issue = Issue::new(42, t0());
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "a",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let grant = app.grants_of("github:acme/access-requests#42").await[0].clone();
    let id = grant["id"].as_str().unwrap();
    let calls = api.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(
        calls[0].path,
        "/repos/acme/access-requests/issues/42/comments"
    );
    assert_eq!(
        calls[0].header("authorization"),
        Some("Bearer ghp_test_token")
    );
    let text = calls[0].body["body"].as_str().unwrap();
    for part in [
        id,
        "hooks/orders-db",
        "2026-11-25T10:00:00Z",
        "2026-11-25T12:00:00Z",
        "granted",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }

    issue.state = "closed";
    issue.updated_at = t0() + Duration::minutes(1);
    app.post_github(
        "issues",
        "b",
        &payloads::github("closed", &issue, "dave-gh", None),
    )
    .await;
    app.run_jobs().await;
    let calls = api.calls();
    assert_eq!(calls.len(), 2);
    let text = calls[1].body["body"].as_str().unwrap();
    assert!(
        text.contains(id) && text.contains("ticket_closed") && text.contains("revoked"),
        "{text}"
    );

    // A denial is written too; the API being down only delays it.
    api.answer(503);
    let mut other = Issue::new(43, t0());
    other.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "c",
        &payloads::github("labeled", &other, "mallory-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    assert_eq!(api.calls().len(), 2);
    api.answer(201);
    app.advance(Duration::seconds(5));
    app.run_jobs().await;
    let calls = api.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        calls[2].path,
        "/repos/acme/access-requests/issues/43/comments"
    );
    assert!(calls[2].body["body"]
        .as_str()
        .unwrap()
        .contains("approver_not_allowed"));
}

async fn jira_comment_and_servicenow_work_note(backend: Backend) {
    let api = Receiver::start().await;
    api.reply_json(r#"{"result": [{"sys_id": "c286d61347c12200e0ef563dbb9a7109"}]}"#);
    let Some(app) = spawn(backend, &api).await else {
        return;
    };
    let mut issue = JiraIssue::new("OPS-7");
    issue.status = "Approved";
    issue.category = "indeterminate";
    app.post_jira(
        "j",
        &payloads::jira(
            "jira:issue_updated",
            &issue,
            "5b10a2844c20165700ede21g",
            t0(),
            Some(("Open", "Approved")),
        ),
    )
    .await;
    app.run_jobs().await;
    let calls = api.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/rest/api/2/issue/OPS-7/comment");
    assert!(calls[0]
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    assert!(calls[0].body["body"]
        .as_str()
        .unwrap()
        .contains("hooks/billing"));

    let change = payloads::Change {
        number: "CHG0030009",
        state: json!("-1"),
        approval: "approved",
        approved_by: json!(["alice.smith"]),
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
    assert_eq!(calls[1].method, "GET");
    assert!(
        calls[1]
            .path
            .starts_with("/api/now/table/change_request?sysparm_query=number%3DCHG0030009"),
        "{}",
        calls[1].path
    );
    assert_eq!(calls[2].method, "PATCH");
    assert_eq!(
        calls[2].path,
        "/api/now/table/change_request/c286d61347c12200e0ef563dbb9a7109"
    );
    let note = calls[2].body["work_notes"].as_str().unwrap();
    assert!(
        note.contains("hooks/billing") && note.contains("2026-11-25T11:00:00Z"),
        "{note}"
    );
}

backend_tests!(
    github_comments_name_grant_window_and_reason,
    jira_comment_and_servicenow_work_note
);
