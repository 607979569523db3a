//! Grants through their whole life, from real webhooks to real providers:
//! the loopback receiver for `http`, a real PostgreSQL role for `postgres`.

use chrono::Duration;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{
    pg_admin_url, pg_available, t0, Backend, TestApp, ADMIN_TOKEN, AUDITOR_TOKEN, HOOKS_SECRET,
};
use crate::payloads::{self, Issue, JiraIssue};
use crate::{app, backend_tests};

const KEY: &str = "github:acme/access-requests#42";

/// Opens issue 42 and has alice approve it; returns the issue for more events.
async fn open_and_approve(app: &TestApp, body: String) -> Issue<'static> {
    let mut issue = Issue::new(42, t0());
    issue.body = body;
    assert_eq!(
        app.post_github(
            "issues",
            "open-42",
            &payloads::github("opened", &issue, "dave-gh", None)
        )
        .await
        .status(),
        200
    );
    issue.labels = vec!["access-approved"];
    issue.updated_at = t0() + Duration::seconds(1);
    let r = app
        .post_github(
            "issues",
            "label-42",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    issue
}

async fn only_grant(app: &TestApp, key: &str) -> Value {
    let grants = app.grants_of(key).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    grants[0].clone()
}

async fn decision(app: &TestApp, key: &str) -> Value {
    let q = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
    let (status, body) = app
        .get_json(&format!("/v1/tickets/{q}"), AUDITOR_TOKEN)
        .await;
    assert_eq!(status, 200, "{body}");
    body["decision"].clone()
}

async fn github_grant_then_close(backend: Backend) {
    let app = app!(backend);
    let mut issue = open_and_approve(&app, payloads::form("hooks/orders-db", "2h", None)).await;
    let g = only_grant(&app, KEY).await;
    assert_eq!(g["state"], "granting");
    assert_eq!(g["subject"], "dave");
    assert_eq!(g["resource"], "hooks/orders-db");
    assert_eq!(g["expires_at"], "2026-11-25T12:00:00Z");
    assert!(
        app.receiver.calls().is_empty(),
        "no provider call inside the request"
    );

    app.run_jobs().await;
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.action(), "grant");
    let id = g["id"].as_str().unwrap();
    assert_eq!(call.body["grant_id"], id);
    assert_eq!(call.body["account"], "dave");
    assert_eq!(call.body["target"], "orders-db");
    assert_eq!(call.body["ticket"], KEY);
    assert_eq!(
        call.header("webhook-id"),
        Some(format!("{id}-grant").as_str())
    );
    // The receiver can check the signature with the shared secret.
    let key = warrant::crypto::signature::whsec_key(HOOKS_SECRET).unwrap();
    let ts: i64 = call.header("webhook-timestamp").unwrap().parse().unwrap();
    let raw = &call.raw;
    warrant::crypto::signature::verify_standard(
        &key,
        call.header("webhook-id"),
        Some(&ts.to_string()),
        call.header("webhook-signature"),
        raw,
        app.clock_now(),
        Duration::seconds(300),
    )
    .expect("signed per Standard Webhooks");
    let g = only_grant(&app, KEY).await;
    assert_eq!(g["state"], "active");
    assert_eq!(g["activated_at"], "2026-11-25T10:00:00Z");

    // Running again does nothing more.
    app.run_jobs().await;
    assert_eq!(app.receiver.calls().len(), 1);

    app.advance(Duration::minutes(10));
    issue.state = "closed";
    issue.updated_at = t0() + Duration::minutes(10);
    app.post_github(
        "issues",
        "close-42",
        &payloads::github("closed", &issue, "dave-gh", None),
    )
    .await;
    assert_eq!(only_grant(&app, KEY).await["state"], "revoking");
    app.run_jobs().await;
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].action(), "revoke");
    assert_eq!(
        calls[1].header("webhook-id"),
        Some(format!("{id}-revoke").as_str())
    );
    let g = only_grant(&app, KEY).await;
    assert_eq!(g["state"], "revoked");
    assert_eq!(g["revoke_reason"], "ticket_closed");
    assert_eq!(decision(&app, KEY).await["reason"], "ticket_closed");
}

async fn timer_expiry_revokes(backend: Backend) {
    let app = app!(backend);
    open_and_approve(&app, payloads::form("hooks/orders-db", "30m", None)).await;
    app.run_jobs().await;
    assert_eq!(only_grant(&app, KEY).await["state"], "active");
    app.advance(Duration::minutes(29));
    app.run_jobs().await;
    assert_eq!(app.receiver.calls().len(), 1, "not yet");
    app.advance(Duration::seconds(61));
    app.run_jobs().await;
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].action(), "revoke");
    let g = only_grant(&app, KEY).await;
    assert_eq!(g["state"], "revoked");
    assert_eq!(g["revoke_reason"], "expired");
    // The approval does not grant again after its window.
    app.run_jobs().await;
    assert_eq!(app.grants_of(KEY).await.len(), 1);
}

async fn approval_withdrawn_and_request_changed(backend: Backend) {
    let app = app!(backend);
    let mut issue = open_and_approve(&app, payloads::form("hooks/orders-db", "2h", None)).await;
    app.run_jobs().await;
    issue.labels = vec![];
    issue.updated_at = t0() + Duration::seconds(5);
    app.post_github(
        "issues",
        "unlabel",
        &payloads::github("unlabeled", &issue, "bob-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let g = only_grant(&app, KEY).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("approval_withdrawn"))
    );

    // Approved again: a new grant; then an edit of the request revokes it.
    issue.labels = vec!["access-approved"];
    issue.updated_at = t0() + Duration::seconds(6);
    app.post_github(
        "issues",
        "relabel",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let grants = app.grants_of(KEY).await;
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[1]["state"], "active");
    issue.body = payloads::form("hooks/payments-db", "2h", None);
    issue.updated_at = t0() + Duration::seconds(7);
    app.post_github(
        "issues",
        "edit",
        &payloads::github("edited", &issue, "dave-gh", None),
    )
    .await;
    app.run_jobs().await;
    let grants = app.grants_of(KEY).await;
    assert_eq!(grants.len(), 2, "an edit is not approved");
    assert_eq!(grants[1]["revoke_reason"], "request_changed");
    assert_eq!(decision(&app, KEY).await["reason"], "request_changed");
}

async fn provider_outage_is_retried(backend: Backend) {
    let app = app!(backend);
    app.receiver.answer(503);
    let mut issue = open_and_approve(&app, payloads::form("hooks/orders-db", "2h", None)).await;
    app.run_jobs().await;
    assert_eq!(only_grant(&app, KEY).await["state"], "granting");
    app.advance(Duration::seconds(2));
    app.run_jobs().await;
    assert_eq!(only_grant(&app, KEY).await["state"], "granting");
    app.receiver.answer(204);
    app.advance(Duration::seconds(5));
    app.run_jobs().await;
    assert_eq!(only_grant(&app, KEY).await["state"], "active");
    assert_eq!(app.receiver.calls().len(), 1);

    // Revocation never gives up, and shows while it fails.
    app.receiver.answer(500);
    issue.state = "closed";
    issue.updated_at = t0() + Duration::minutes(1);
    app.post_github(
        "issues",
        "close",
        &payloads::github("closed", &issue, "dave-gh", None),
    )
    .await;
    for _ in 0..8 {
        app.run_jobs().await;
        app.advance(Duration::seconds(11));
    }
    assert_eq!(only_grant(&app, KEY).await["state"], "revoking");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"warrant_grants{state="revoking"} 1"#),
        "{metrics}"
    );
    let (_, audit) = app.get_json("/v1/audit?limit=1000", ADMIN_TOKEN).await;
    let failures = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "revoke.failed")
        .count();
    assert!(failures >= 8, "each failed attempt is audited ({failures})");
    // Each call is counted by provider kind and outcome.
    for (action, outcome, at_least) in [
        ("grant", "failed", 2),
        ("grant", "ok", 1),
        ("revoke", "failed", 8),
    ] {
        let line = format!(
            r#"warrant_provider_calls_total{{provider="hooks",kind="http",action="{action}",outcome="{outcome}"}} "#
        );
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"));
        assert!(n >= at_least, "{line}{n}");
    }
    app.receiver.answer(204);
    app.advance(Duration::seconds(11));
    app.run_jobs().await;
    assert_eq!(only_grant(&app, KEY).await["state"], "revoked");
}

async fn apply_gives_up_and_cleans_up(backend: Backend) {
    let app = app!(backend);
    app.receiver.answer(500);
    open_and_approve(&app, payloads::form("hooks/orders-db", "2h", None)).await;
    for _ in 0..4 {
        app.run_jobs().await;
        app.advance(Duration::seconds(11));
    }
    let g = only_grant(&app, KEY).await;
    assert_eq!(g["state"], "failed");
    assert!(g["failure"].as_str().unwrap().contains("500"));
    // A call that may have landed is taken back once the receiver answers.
    app.receiver.answer(204);
    app.advance(Duration::seconds(11));
    app.run_jobs().await;
    let calls = app.receiver.calls();
    assert_eq!(
        calls.last().map(|c| c.action().to_string()),
        Some("revoke".into())
    );
}

async fn future_window_waits_and_closing_first_never_applies(backend: Backend) {
    let app = app!(backend);
    let mut issue = open_and_approve(
        &app,
        payloads::form("hooks/orders-db", "1h", Some("2026-11-25T11:00:00Z")),
    )
    .await;
    app.run_jobs().await;
    assert_eq!(only_grant(&app, KEY).await["state"], "pending");
    assert!(app.receiver.calls().is_empty());
    app.advance(Duration::minutes(30));
    issue.state = "closed";
    issue.updated_at = t0() + Duration::minutes(30);
    app.post_github(
        "issues",
        "close",
        &payloads::github("closed", &issue, "dave-gh", None),
    )
    .await;
    app.advance(Duration::hours(1));
    app.run_jobs().await;
    let g = only_grant(&app, KEY).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed"))
    );
    assert!(
        app.receiver.calls().is_empty(),
        "never applied, nothing to take back"
    );
}

async fn pending_grant_starts_on_time(backend: Backend) {
    let app = app!(backend);
    open_and_approve(
        &app,
        payloads::form("hooks/orders-db", "1h", Some("2026-11-25T11:00:00Z")),
    )
    .await;
    app.advance(Duration::minutes(59));
    app.run_jobs().await;
    assert!(app.receiver.calls().is_empty());
    app.advance(Duration::minutes(1));
    app.run_jobs().await;
    assert_eq!(app.receiver.calls().len(), 1);
    assert_eq!(only_grant(&app, KEY).await["state"], "active");
}

async fn every_denial_reason_from_a_webhook(backend: Backend) {
    let extra = "[providers.other]\nkind = \"token\"\n";
    let app = app!(backend, extra);
    let cases: Vec<(u64, &str, String, &str, &str)> = vec![
        (
            1,
            "stranger-gh",
            payloads::form("hooks/x", "1h", None),
            "alice-gh",
            "unknown_subject",
        ),
        (
            2,
            "dave-gh",
            payloads::form("nowhere/x", "1h", None),
            "alice-gh",
            "unknown_resource",
        ),
        (
            3,
            "dave-gh",
            payloads::form("other/x", "1h", None),
            "alice-gh",
            "no_policy",
        ),
        (
            4,
            "alice-gh",
            payloads::form("hooks/x", "1h", None),
            "alice-gh",
            "self_approval",
        ),
        (
            5,
            "dave-gh",
            payloads::form("hooks/x", "1h", None),
            "mallory-gh",
            "approver_not_allowed",
        ),
        (
            6,
            "dave-gh",
            payloads::form("hooks/x", "1h", None),
            "zed-gh",
            "approver_unknown",
        ),
        (
            7,
            "dave-gh",
            payloads::form("hooks/x", "1h", Some("2026-11-25T07:00:00Z")),
            "alice-gh",
            "window_over",
        ),
        (
            8,
            "dave-gh",
            payloads::form("hooks/x", "forever", None),
            "alice-gh",
            "invalid_request",
        ),
        (
            9,
            "dave-gh",
            payloads::form("hooks/x", "5h", None),
            "alice-gh",
            "duration_exceeds_policy",
        ),
    ];
    for (n, author, body, approver, reason) in &cases {
        let mut issue = Issue::new(*n, t0());
        issue.author = author;
        issue.body = body.clone();
        issue.labels = vec!["access-approved"];
        let r = app
            .post_github(
                "issues",
                &format!("d{n}"),
                &payloads::github("labeled", &issue, approver, Some("access-approved")),
            )
            .await;
        assert_eq!(r.status(), 200);
        let key = format!("github:acme/access-requests#{n}");
        let d = decision(&app, &key).await;
        assert_eq!(d["outcome"], "deny", "{reason}: {d}");
        assert_eq!(d["reason"], *reason, "{d}");
        assert!(app.grants_of(&key).await.is_empty());
    }
    let issue = Issue::new(10, t0());
    app.post_github(
        "issues",
        "d10",
        &payloads::github("opened", &issue, "dave-gh", None),
    )
    .await;
    assert_eq!(
        decision(&app, "github:acme/access-requests#10").await["reason"],
        "not_approved"
    );
    let mut issue = Issue::new(11, t0());
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "d11",
        &payloads::github("reopened", &issue, "dave-gh", None),
    )
    .await;
    assert_eq!(
        decision(&app, "github:acme/access-requests#11").await["reason"],
        "approver_unknown"
    );
}

async fn jira_ticket_lifecycle(backend: Backend) {
    let app = app!(backend);
    let alice = "5b10a2844c20165700ede21g";
    let mut issue = JiraIssue::new("OPS-7");
    app.post_jira(
        "j1",
        &payloads::jira(
            "jira:issue_created",
            &issue,
            "5b10ac8d82e05b22cc7d4ef5",
            t0(),
            None,
        ),
    )
    .await;
    issue.status = "Approved";
    issue.category = "indeterminate";
    let r = app
        .post_jira(
            "j2",
            &payloads::jira(
                "jira:issue_updated",
                &issue,
                alice,
                t0() + Duration::seconds(1),
                Some(("Open", "Approved")),
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let g = only_grant(&app, "jira:OPS-7").await;
    assert_eq!(
        (
            g["state"].as_str(),
            g["subject"].as_str(),
            g["resource"].as_str()
        ),
        (Some("active"), Some("dave"), Some("hooks/billing"))
    );
    issue.status = "Rejected";
    app.post_jira(
        "j3",
        &payloads::jira(
            "jira:issue_updated",
            &issue,
            alice,
            t0() + Duration::seconds(2),
            Some(("Approved", "Rejected")),
        ),
    )
    .await;
    app.run_jobs().await;
    let g = only_grant(&app, "jira:OPS-7").await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed"))
    );
}

async fn servicenow_change_lifecycle(backend: Backend) {
    let app = app!(backend);
    let mut change = payloads::Change {
        number: "CHG0030002",
        state: json!(-2),
        approval: "approved",
        approved_by: json!("alice.smith"),
        assigned_to: "dave.jones",
        resource: "hooks/billing",
        start: t0() - Duration::minutes(5),
        end: t0() + Duration::hours(1),
        updated: t0(),
    };
    app.post_servicenow("msg_a", &payloads::servicenow(&change))
        .await;
    app.run_jobs().await;
    let g = only_grant(&app, "servicenow:CHG0030002").await;
    assert_eq!(g["state"], "active");
    assert_eq!(g["expires_at"], "2026-11-25T11:00:00Z");
    change.state = json!("Review");
    change.updated = t0() + Duration::minutes(1);
    app.post_servicenow("msg_b", &payloads::servicenow(&change))
        .await;
    app.run_jobs().await;
    let g = only_grant(&app, "servicenow:CHG0030002").await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("approval_withdrawn"))
    );
}

async fn postgres_provider_grants_a_real_role(backend: Backend) {
    if !pg_available() {
        return;
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let role = format!("wt_ro_{}", &suffix[..10]);
    let mut admin = PgConnection::establish(&pg_admin_url()).unwrap();
    admin
        .batch_execute(&format!("CREATE ROLE {role} NOLOGIN;"))
        .unwrap();
    let extra = "[providers.prod-db]\nkind = \"postgres\"\nurl_env = \"PROD_DB_URL\"\n\n[[policies]]\nname = \"db\"\nresources = [\"prod-db/*\"]\nsources = [\"github\"]\napprovers = [\"alice\"]\nmax_duration = \"4h\"\n";
    let app = app!(backend, extra);
    // With no `accounts` entry, the grant goes to the principal's name.
    let mut issue = Issue::new(42, t0());
    issue.body = payloads::form(&format!("prod-db/{role}"), "1h", None);
    issue.labels = vec!["access-approved"];
    admin
        .batch_execute("DO $$ BEGIN CREATE ROLE dave NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;")
        .unwrap();
    app.post_github(
        "issues",
        "pg1",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let member = |admin: &mut PgConnection| -> i64 {
        diesel::sql_query(format!(
            "SELECT count(*)::bigint AS n FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member WHERE r.rolname = '{role}' AND m.rolname = 'dave'"
        ))
        .get_result::<Count>(admin)
        .unwrap()
        .n
    };
    assert_eq!(only_grant(&app, KEY).await["state"], "active");
    assert_eq!(member(&mut admin), 1);
    let (status, _) = app
        .post_json(
            &format!(
                "/v1/grants/{}/revoke",
                only_grant(&app, KEY).await["id"].as_str().unwrap()
            ),
            ADMIN_TOKEN,
            &json!({"reason": "incident over"}),
        )
        .await;
    assert_eq!(status, 200);
    app.run_jobs().await;
    assert_eq!(member(&mut admin), 0);
    let g = only_grant(&app, KEY).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("manual"))
    );
    drop(app);
    let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role};"));
}

async fn sweeper_revokes_a_grant_that_lost_its_job(backend: Backend) {
    let app = app!(backend);
    open_and_approve(&app, payloads::form("hooks/orders-db", "30m", None)).await;
    app.run_jobs().await;
    assert_eq!(only_grant(&app, KEY).await["state"], "active");
    // Lose the expiry job behind warrant's back.
    let sql = "DELETE FROM jobs";
    match backend {
        Backend::Sqlite => {
            let mut c = diesel::sqlite::SqliteConnection::establish(
                app.db.url.trim_start_matches("sqlite://"),
            )
            .unwrap();
            c.batch_execute(sql).unwrap();
        }
        Backend::Postgres => {
            let mut c = PgConnection::establish(&app.db.url).unwrap();
            c.batch_execute(sql).unwrap();
        }
    }
    app.advance(Duration::hours(1));
    app.run_jobs().await;
    assert_eq!(
        only_grant(&app, KEY).await["state"],
        "active",
        "no job, nothing happens"
    );
    let swept = warrant::jobs::sweep(&app.ctx.db, app.clock_now()).unwrap();
    assert_eq!(swept, 1);
    app.run_jobs().await;
    let g = only_grant(&app, KEY).await;
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("expired"))
    );
    assert_eq!(app.receiver.calls().last().unwrap().action(), "revoke");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// A claimed job stays with its claimant for the lease, and no one else
/// (nor the claimant) takes it again until the lease runs out.
async fn a_claim_holds_its_lease(backend: Backend) {
    let app = app!(backend);
    open_and_approve(&app, payloads::form("hooks/orders-db", "2h", None)).await;
    let now = warrant::clock::Clock::now(&app.clock);
    let lease = Duration::seconds(60);
    let db = app.ctx.db.clone();
    let first = tokio::task::spawn_blocking(move || {
        let first = warrant::jobs::claim(&db, "one", now, lease, 10).unwrap();
        let again =
            warrant::jobs::claim(&db, "two", now + Duration::seconds(59), lease, 10).unwrap();
        assert!(
            again.is_empty(),
            "claimed twice within the lease: {again:?}"
        );
        let after =
            warrant::jobs::claim(&db, "two", now + Duration::seconds(61), lease, 10).unwrap();
        assert_eq!(
            after.len(),
            first.len(),
            "taken up again once the lease ran out"
        );
        first
    })
    .await
    .unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].locked_by.as_deref(), Some("one"));
    assert_eq!(
        first[0].locked_until,
        Some(warrant::domain::to_micros(now + lease))
    );
}

backend_tests!(
    a_claim_holds_its_lease,
    github_grant_then_close,
    timer_expiry_revokes,
    approval_withdrawn_and_request_changed,
    provider_outage_is_retried,
    apply_gives_up_and_cleans_up,
    future_window_waits_and_closing_first_never_applies,
    pending_grant_starts_on_time,
    every_denial_reason_from_a_webhook,
    jira_ticket_lifecycle,
    servicenow_change_lifecycle,
    postgres_provider_grants_a_real_role,
    sweeper_revokes_a_grant_that_lost_its_job,
);
