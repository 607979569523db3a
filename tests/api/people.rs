//! The people's API: tokens and roles, grant queries, revocation by hand.

use chrono::Duration;
use serde_json::{json, Value};

use crate::helpers::{t0, Backend, ADMIN_TOKEN, AUDITOR_TOKEN};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};

async fn tokens_and_roles(backend: Backend) {
    let app = app!(backend);
    let r = app
        .client
        .get(format!("{}/v1/grants", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.get_json("/v1/grants", "wrong").await.0, 401);
    assert_eq!(app.get_json("/v1/grants", AUDITOR_TOKEN).await.0, 200);
    let (status, body) = app
        .post_json("/v1/grants/nope/revoke", AUDITOR_TOKEN, &json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = app
        .post_json("/v1/grants/nope/revoke", ADMIN_TOKEN, &json!({}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        app.get_json("/v1/grants?state=bogus", ADMIN_TOKEN).await.0,
        400
    );
    assert_eq!(
        app.get_json("/v1/grants?active_at=yesterday", ADMIN_TOKEN)
            .await
            .0,
        400
    );
    // Webhooks, health and readiness stay open.
    assert_eq!(
        app.client
            .get(format!("{}/readyz", app.addr))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn who_had_access_at_a_time(backend: Backend) {
    let app = app!(backend);
    let mut issue = Issue::new(5, t0());
    issue.labels = vec!["access-approved"];
    issue.body = payloads::form("hooks/orders-db", "1h", None);
    app.post_github(
        "issues",
        "a",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await; // active at 10:00:00
    app.advance(Duration::hours(1));
    app.run_jobs().await; // revoked at 11:00:00
    let at = |t: &str| {
        format!(
            "/v1/grants?resource=hooks%2Forders-db&active_at={}",
            t.replace(':', "%3A")
        )
    };
    for (t, n) in [
        ("2026-11-25T09:59:59Z", 0),
        ("2026-11-25T10:00:00Z", 1),
        ("2026-11-25T10:59:59.999Z", 1),
        ("2026-11-25T11:00:00Z", 0),
    ] {
        let (status, body) = app.get_json(&at(t), AUDITOR_TOKEN).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["grants"].as_array().unwrap().len(),
            n,
            "at {t}: {body}"
        );
    }
    let (_, body) = app
        .get_json("/v1/grants?subject=dave&state=revoked", AUDITOR_TOKEN)
        .await;
    assert_eq!(body["grants"].as_array().unwrap().len(), 1);
    let id = body["grants"][0]["id"].as_str().unwrap().to_string();
    let (status, g) = app
        .get_json(&format!("/v1/grants/{id}"), AUDITOR_TOKEN)
        .await;
    assert_eq!(status, 200);
    for field in [
        "id",
        "ticket",
        "subject",
        "resource",
        "state",
        "starts_at",
        "expires_at",
        "activated_at",
        "revoked_at",
        "revoke_reason",
        "created_at",
    ] {
        assert!(g.get(field).is_some(), "{field} in {g}");
    }
}

async fn manual_revoke_is_audited_and_sticks(backend: Backend) {
    let app = app!(backend);
    let mut issue = Issue::new(6, t0());
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "a",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let key = "github:acme/access-requests#6";
    let id = app.grants_of(key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, g) = app
        .post_json(
            &format!("/v1/grants/{id}/revoke"),
            ADMIN_TOKEN,
            &json!({"reason": "manual"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(g["state"], "revoking");
    app.run_jobs().await;
    // A later event on the same approval does not grant again.
    issue.updated_at = t0() + Duration::seconds(3);
    app.post_github(
        "issues",
        "b",
        &payloads::github("edited", &issue, "dave-gh", None),
    )
    .await;
    app.run_jobs().await;
    let grants = app.grants_of(key).await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["revoke_reason"], "manual");
    let (_, audit) = app
        .get_json(&format!("/v1/audit?grant={id}"), AUDITOR_TOKEN)
        .await;
    let asked: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "revoke.requested")
        .collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["actor"], "token:security-admins");
}

backend_tests!(
    tokens_and_roles,
    who_had_access_at_a_time,
    manual_revoke_is_audited_and_sticks
);
