//! Shared access: two tickets warranting the same access (a Jira issue and
//! a ServiceNow change for the same role and person) hold it together. The
//! provider applies it once and removes it only when the last grant ends,
//! on a real PostgreSQL role, through the `http` provider (which also hears
//! a later end), and with the two tickets handled by two replicas.

use chrono::{DateTime, Duration, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{pg_admin_url, pg_available, t0, Backend, TestApp, AUDITOR_TOKEN};
use crate::payloads::{self, JiraIssue};
use crate::{app, backend_tests};

const ALICE_JIRA: &str = "5b10a2844c20165700ede21g";
const DAVE_JIRA: &str = "5b10ac8d82e05b22cc7d4ef5";

/// Creates Jira issue `key` asking for `resource` and approves it.
async fn jira_approved(app: &TestApp, key: &'static str, resource: &'static str) -> String {
    let mut issue = JiraIssue::new(key);
    issue.resource = resource;
    let created = payloads::jira("jira:issue_created", &issue, DAVE_JIRA, t0(), None);
    assert_eq!(
        app.post_jira(&format!("{key}-1"), &created).await.status(),
        200
    );
    issue.status = "Approved";
    issue.category = "indeterminate";
    let approved = payloads::jira(
        "jira:issue_updated",
        &issue,
        ALICE_JIRA,
        t0() + Duration::seconds(1),
        Some(("Open", "Approved")),
    );
    assert_eq!(
        app.post_jira(&format!("{key}-2"), &approved).await.status(),
        200
    );
    format!("jira:{key}")
}

/// Moves Jira issue `key` to Cancelled (a closed status).
async fn jira_closed(app: &TestApp, key: &'static str, resource: &'static str) {
    let mut issue = JiraIssue::new(key);
    issue.resource = resource;
    issue.status = "Cancelled";
    issue.category = "done";
    let closed = payloads::jira(
        "jira:issue_updated",
        &issue,
        ALICE_JIRA,
        t0() + Duration::seconds(2),
        Some(("Approved", "Cancelled")),
    );
    assert_eq!(
        app.post_jira(&format!("{key}-3"), &closed).await.status(),
        200
    );
}

/// A ServiceNow change for dave and `resource`, approved by alice, ending
/// at `end`; `state` -2 is Scheduled, 3 Closed.
async fn change(
    app: &TestApp,
    number: &'static str,
    resource: &'static str,
    state: i64,
    end: DateTime<Utc>,
    updated: DateTime<Utc>,
) -> String {
    let c = payloads::Change {
        number,
        state: json!(state),
        approval: "approved",
        approved_by: json!("alice.smith"),
        assigned_to: "dave.jones",
        resource,
        start: t0() - Duration::minutes(5),
        end,
        updated,
    };
    let delivery = format!("{number}-{state}");
    assert_eq!(
        app.post_servicenow(&delivery, &payloads::servicenow(&c))
            .await
            .status(),
        200
    );
    format!("servicenow:{number}")
}

async fn access(app: &TestApp, provider: &str, account: &str, target: &str) -> Vec<Value> {
    let (status, body) = app
        .get_json(
            &format!("/v1/access?provider={provider}&account={account}&target={target}"),
            AUDITOR_TOKEN,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["grants"].as_array().cloned().unwrap_or_default()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .collect()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn members(admin: &mut PgConnection, role: &str, account: &str) -> i64 {
    diesel::sql_query(format!(
        "SELECT count(*)::bigint AS n FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid \
         JOIN pg_roles m ON m.oid = am.member WHERE r.rolname = '{role}' AND m.rolname = '{account}'"
    ))
    .get_result::<Count>(admin)
    .map(|c| c.n)
    .unwrap_or(-1)
}

/// Drops the test's roles when it ends, passed or failed.
struct Roles(Vec<String>);

impl Drop for Roles {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&pg_admin_url()) {
            for role in &self.0 {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
            }
        }
    }
}

/// The role's name is leaked into a `'static` so the payload helpers,
/// which borrow their strings, can hold it.
fn test_role(prefix: &str) -> &'static str {
    let s = uuid::Uuid::new_v4().simple().to_string();
    Box::leak(format!("{prefix}_{}", &s[..8]).into_boxed_str())
}

fn pg_config() -> String {
    "[providers.prod-db]\nkind = \"postgres\"\nurl_env = \"PROD_DB_URL\"\ntimeout = \"5s\"\n\
     [[policies]]\nname = \"db\"\nresources = [\"prod-db/*\"]\nsources = [\"jira:OPS\", \"servicenow\"]\n\
     approvers = [\"alice\"]\nmax_duration = \"4h\"\ndefault_duration = \"1h\"\n"
        .to_string()
}

/// Sets up a role and dave's account as LOGIN-less roles on the server.
fn roles_for(role: &str, account: &str) -> (PgConnection, Roles) {
    let mut admin = PgConnection::establish(&pg_admin_url()).expect("admin connection");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; \
             DO $$ BEGIN CREATE ROLE {account} NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
        ))
        .expect("roles");
    (admin, Roles(vec![role.to_string()]))
}

async fn a_shared_role_stays_until_the_last_grant_ends(backend: Backend) {
    if !pg_available() {
        return;
    }
    let role = test_role("wt_shared");
    let resource: &'static str = Box::leak(format!("prod-db/{role}").into_boxed_str());
    let (mut admin, _roles) = roles_for(role, "dave");
    let app = app!(backend, &pg_config());

    let jira = jira_approved(&app, "OPS-1", resource).await;
    let sn = change(
        &app,
        "CHG0000001",
        resource,
        -2,
        t0() + Duration::hours(1),
        t0(),
    )
    .await;
    app.run_jobs().await;
    let (j, s) = (&app.grants_of(&jira).await[0], &app.grants_of(&sn).await[0]);
    assert_eq!(
        (j["state"].as_str(), s["state"].as_str()),
        (Some("active"), Some("active"))
    );
    // One holds the access at the provider, the other shares it.
    let mut parts = vec![j["access"].as_str(), s["access"].as_str()];
    parts.sort();
    assert_eq!(parts, vec![Some("held"), Some("shared")], "{j} {s}");
    assert_eq!(members(&mut admin, role, "dave"), 1);
    let holding = access(&app, "prod-db", "dave", role).await;
    assert_eq!(holding.len(), 2, "{holding:?}");

    // Closing the Jira issue ends its grant, on its own, but the role stays.
    jira_closed(&app, "OPS-1", resource).await;
    app.run_jobs().await;
    let j = &app.grants_of(&jira).await[0];
    assert_eq!(
        (j["state"].as_str(), j["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed"))
    );
    let events = app.events_of(&jira).await;
    let revoked = events
        .iter()
        .find(|e| e["type"] == "grant.revoked")
        .unwrap();
    assert_eq!(revoked["data"]["reason"], "ticket_closed", "{revoked}");
    assert!(revoked["data"]["kept_by"].is_string(), "{revoked}");
    assert_eq!(
        members(&mut admin, role, "dave"),
        1,
        "the change still warrants it"
    );
    let holding = access(&app, "prod-db", "dave", role).await;
    assert_eq!(holding.len(), 1, "{holding:?}");
    assert_eq!(holding[0]["access"], "held", "the change now holds it");

    // Closing the change ends the last grant: the role is removed.
    change(
        &app,
        "CHG0000001",
        resource,
        3,
        t0() + Duration::hours(1),
        t0() + Duration::minutes(11),
    )
    .await;
    app.run_jobs().await;
    let s = &app.grants_of(&sn).await[0];
    assert_eq!(
        (s["state"].as_str(), s["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed"))
    );
    assert_eq!(members(&mut admin, role, "dave"), 0);
    assert!(access(&app, "prod-db", "dave", role).await.is_empty());
}

/// The same through the `http` provider, closing in the other order: one
/// grant call, then a second only because the later grant ends later, and
/// one revoke call when the last grant ends.
async fn the_http_provider_hears_first_apply_later_end_and_last_remove(backend: Backend) {
    let app = app!(backend);
    let sn = change(
        &app,
        "CHG0000002",
        "hooks/billing",
        -2,
        t0() + Duration::minutes(30),
        t0(),
    )
    .await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&sn).await[0]["state"], "active");
    // The Jira grant ends an hour after its approval: later than the change.
    let jira = jira_approved(&app, "OPS-2", "hooks/billing").await;
    app.run_jobs().await;
    let j = &app.grants_of(&jira).await[0];
    assert_eq!(j["state"], "active");
    let calls = app.receiver.calls();
    let seen: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c.action().to_string(),
                c.body["grant_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let s_id = app.grants_of(&sn).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let j_id = j["id"].as_str().unwrap().to_string();
    assert_eq!(
        seen,
        vec![
            ("grant".to_string(), s_id.clone()),
            ("grant".to_string(), j_id.clone())
        ],
        "the provider hears the later end"
    );
    assert_eq!(calls[1].body["expires_at"], j["expires_at"]);

    // A third grant of the same access that ends earlier rides on it: no call.
    let early = change(
        &app,
        "CHG0000003",
        "hooks/billing",
        -2,
        t0() + Duration::minutes(20),
        t0(),
    )
    .await;
    app.run_jobs().await;
    let e = &app.grants_of(&early).await[0];
    assert_eq!(
        (e["state"].as_str(), e["access"].as_str()),
        (Some("active"), Some("shared"))
    );
    assert_eq!(app.receiver.calls().len(), 2);

    // The change closes first, then the early one expires: no call.
    change(
        &app,
        "CHG0000002",
        "hooks/billing",
        3,
        t0() + Duration::minutes(30),
        t0() + Duration::minutes(1),
    )
    .await;
    app.advance(Duration::minutes(21));
    app.run_jobs().await;
    assert_eq!(app.grants_of(&sn).await[0]["state"], "revoked");
    let e = &app.grants_of(&early).await[0];
    assert_eq!(
        (e["state"].as_str(), e["revoke_reason"].as_str()),
        (Some("revoked"), Some("expired"))
    );
    assert_eq!(app.receiver.calls().len(), 2, "{:?}", app.receiver.calls());

    // The last one ends: one revoke.
    jira_closed(&app, "OPS-2", "hooks/billing").await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&jira).await[0]["state"], "revoked");
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(
        (calls[2].action(), calls[2].body["grant_id"].as_str()),
        ("revoke", Some(j_id.as_str()))
    );
}

/// Two replicas on one database, each handling one of the tickets and
/// running its own jobs: the role stays while either grant lives.
async fn two_replicas_share_one_access(backend: Backend) {
    if !pg_available() {
        return;
    }
    let role = test_role("wt_repl");
    let resource: &'static str = Box::leak(format!("prod-db/{role}").into_boxed_str());
    let (mut admin, _roles) = roles_for(role, "dave");
    let a = app!(backend, &pg_config());
    let b = a
        .restart_with(|base| format!("{base}\n{}", pg_config()))
        .await;

    let jira = jira_approved(&a, "OPS-3", resource).await;
    let sn = change(
        &b,
        "CHG0000004",
        resource,
        -2,
        t0() + Duration::hours(1),
        t0(),
    )
    .await;
    let (ra, rb) = tokio::join!(a.run_jobs(), b.run_jobs());
    assert!(ra + rb >= 2);
    // A grant that waited for the other to settle runs on the next pass.
    a.run_jobs().await;
    b.run_jobs().await;
    a.advance(Duration::seconds(1));
    b.advance(Duration::seconds(1));
    a.run_jobs().await;
    b.run_jobs().await;
    assert_eq!(
        a.grants_of(&jira).await[0]["state"],
        "active",
        "{:#?}",
        a.events_of(&jira).await
    );
    assert_eq!(a.grants_of(&sn).await[0]["state"], "active");
    assert_eq!(members(&mut admin, role, "dave"), 1);

    change(
        &b,
        "CHG0000004",
        resource,
        3,
        t0() + Duration::hours(1),
        t0() + Duration::minutes(1),
    )
    .await;
    b.run_jobs().await;
    a.run_jobs().await;
    assert_eq!(a.grants_of(&sn).await[0]["state"], "revoked");
    assert_eq!(
        members(&mut admin, role, "dave"),
        1,
        "the Jira grant still holds it"
    );

    jira_closed(&a, "OPS-3", resource).await;
    a.run_jobs().await;
    b.run_jobs().await;
    assert_eq!(a.grants_of(&jira).await[0]["state"], "revoked");
    assert_eq!(members(&mut admin, role, "dave"), 0);
}

/// A role the account held by hand before its first grant: the grant
/// records it (`grant.preexisting`, `preexisting` in its JSON), and the
/// role is removed at the grant's end like any other.
async fn standing_access_is_recorded_then_removed(backend: Backend) {
    if !pg_available() {
        return;
    }
    let role = test_role("wt_stand");
    let resource: &'static str = Box::leak(format!("prod-db/{role}").into_boxed_str());
    let (mut admin, _roles) = roles_for(role, "dave");
    admin
        .batch_execute(&format!("GRANT {role} TO dave"))
        .expect("grant by hand");
    let app = app!(backend, &pg_config());
    let jira = jira_approved(&app, "OPS-4", resource).await;
    app.run_jobs().await;
    let g = &app.grants_of(&jira).await[0];
    assert_eq!(g["state"], "active");
    let id = g["id"].as_str().unwrap();
    let (_, full) = app
        .get_json(&format!("/v1/grants/{id}"), AUDITOR_TOKEN)
        .await;
    assert_eq!(
        (full["access"].as_str(), full["preexisting"].as_bool()),
        (Some("held"), Some(true)),
        "{full}"
    );
    assert!(kinds(&app.events_of(&jira).await).contains(&"grant.preexisting".to_string()));
    jira_closed(&app, "OPS-4", resource).await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&jira).await[0]["state"], "revoked");
    assert_eq!(members(&mut admin, role, "dave"), 0);
}

/// A ServiceNow change with explicit fields, for the edits below.
#[allow(clippy::too_many_arguments)]
async fn change_as(
    app: &TestApp,
    delivery: &str,
    number: &'static str,
    approval: &'static str,
    approved_by: Value,
    end: DateTime<Utc>,
    updated: DateTime<Utc>,
) {
    let c = payloads::Change {
        number,
        state: json!(-2),
        approval,
        approved_by,
        assigned_to: "dave.jones",
        resource: "hooks/billing",
        start: t0() - Duration::minutes(5),
        end,
        updated,
    };
    let r = app
        .post_servicenow(delivery, &payloads::servicenow(&c))
        .await;
    assert_eq!(r.status(), 200);
}

/// A grant riding on another's access, extended past that one's end, is
/// told to the receiver and then holds the access: the other's end sends
/// nothing, its own end the one revoke. An extension that another grant's
/// end still covers sends nothing.
async fn an_extended_rider_tells_its_end_and_holds_the_access(backend: Backend) {
    let app = app!(backend);
    let holder = change(
        &app,
        "CHG0000021",
        "hooks/billing",
        -2,
        t0() + Duration::hours(1),
        t0(),
    )
    .await;
    change_as(
        &app,
        "r1",
        "CHG0000022",
        "approved",
        json!("alice.smith"),
        t0() + Duration::minutes(20),
        t0(),
    )
    .await;
    app.run_jobs().await;
    let rider = "servicenow:CHG0000022";
    let r = &app.grants_of(rider).await[0];
    assert_eq!(r["access"], "shared");
    let r_id = r["id"].as_str().unwrap().to_string();
    assert_eq!(app.receiver.calls().len(), 1);

    // Extended to 40m, still inside the holder's hour: nothing to tell.
    for (d, approval, at) in [("r2", "requested", 1), ("r3", "approved", 2)] {
        change_as(
            &app,
            d,
            "CHG0000022",
            approval,
            json!("alice.smith"),
            t0() + Duration::minutes(40),
            t0() + Duration::seconds(at),
        )
        .await;
    }
    app.run_jobs().await;
    assert_eq!(
        app.grants_of(rider).await[0]["expires_at"],
        "2026-11-25T10:40:00Z"
    );
    assert_eq!(app.receiver.calls().len(), 1);

    // Extended to 2h, past the holder: the receiver hears it.
    for (d, approval, at) in [("r4", "requested", 3), ("r5", "approved", 4)] {
        change_as(
            &app,
            d,
            "CHG0000022",
            approval,
            json!("alice.smith"),
            t0() + Duration::hours(2),
            t0() + Duration::seconds(at),
        )
        .await;
    }
    app.run_jobs().await;
    let calls = app.receiver.calls();
    assert_eq!(
        calls.len(),
        2,
        "{:?}",
        calls.iter().map(|c| &c.body).collect::<Vec<_>>()
    );
    assert_eq!(
        (calls[1].action(), calls[1].body["grant_id"].as_str()),
        ("grant", Some(r_id.as_str()))
    );
    assert_eq!(calls[1].body["expires_at"], "2026-11-25T12:00:00Z");
    assert_eq!(app.grants_of(rider).await[0]["access"], "held");

    // The holder's hour ends: kept by the rider, no call; then the rider's.
    app.advance(Duration::hours(1));
    app.run_jobs().await;
    assert_eq!(app.grants_of(&holder).await[0]["state"], "revoked");
    assert_eq!(app.receiver.calls().len(), 2);
    app.advance(Duration::hours(1));
    app.run_jobs().await;
    assert_eq!(app.grants_of(rider).await[0]["state"], "revoked");
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[2].action(), calls[2].body["grant_id"].as_str()),
        ("revoke", Some(r_id.as_str()))
    );
}

/// Changes after approval: a grown approver list leaves the grant alone
/// (no call, no new grant); an earlier end applies at once, in place; a
/// later end keeps the approved end until the change is approved again,
/// then extends the same grant in place, with no revoke in between, and
/// the receiver (whose access carries an end) hears the new end.
async fn edits_after_approval_change_the_grant_in_place(backend: Backend) {
    let app = app!(backend);
    let key = "servicenow:CHG0000010";
    let one = || json!("alice.smith");
    change_as(
        &app,
        "e1",
        "CHG0000010",
        "approved",
        one(),
        t0() + Duration::hours(2),
        t0(),
    )
    .await;
    app.run_jobs().await;
    let g = app.grants_of(key).await[0].clone();
    assert_eq!(g["state"], "active");
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(app.receiver.calls().len(), 1);

    // Another approver: nothing moves.
    let two = json!(["alice.smith", "bob.jones"]);
    change_as(
        &app,
        "e2",
        "CHG0000010",
        "approved",
        two.clone(),
        t0() + Duration::hours(2),
        t0() + Duration::seconds(1),
    )
    .await;
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0]["id"].as_str(), all[0]["state"].as_str()),
        (Some(id.as_str()), Some("active"))
    );
    assert_eq!(all[0]["expires_at"], g["expires_at"]);
    assert_eq!(app.receiver.calls().len(), 1);

    // An earlier end: the same grant, its end moved, no call.
    change_as(
        &app,
        "e3",
        "CHG0000010",
        "approved",
        two.clone(),
        t0() + Duration::hours(1),
        t0() + Duration::seconds(2),
    )
    .await;
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["expires_at"], "2026-11-25T11:00:00Z");
    assert_eq!(all[0]["state"], "active");
    assert!(kinds(&app.events_of(key).await).contains(&"grant.narrowed".to_string()));

    // A later end while the change waits for approval again: the approved
    // end stays.
    change_as(
        &app,
        "e4",
        "CHG0000010",
        "approved",
        two.clone(),
        t0() + Duration::hours(3),
        t0() + Duration::seconds(3),
    )
    .await;
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(
        (all.len(), all[0]["state"].as_str()),
        (1, Some("active")),
        "{all:?}"
    );
    assert_eq!(all[0]["expires_at"], "2026-11-25T11:00:00Z");

    // Approved again (approval back to requested, then approved): the same
    // grant is extended, never revoked, and the timer follows.
    change_as(
        &app,
        "e5",
        "CHG0000010",
        "requested",
        json!(""),
        t0() + Duration::hours(3),
        t0() + Duration::seconds(4),
    )
    .await;
    change_as(
        &app,
        "e6",
        "CHG0000010",
        "approved",
        two,
        t0() + Duration::hours(3),
        t0() + Duration::seconds(5),
    )
    .await;
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let _ = all;
    let events = kinds(&app.events_of(key).await);
    let (_, full) = app
        .get_json(&format!("/v1/grants/{id}"), AUDITOR_TOKEN)
        .await;
    assert!(
        events.contains(&"grant.extended".to_string()),
        "{events:?} {full}"
    );
    assert_eq!(full["expires_at"], "2026-11-25T13:00:00Z");
    assert_eq!(full["state"], "active");
    assert!(
        !events.contains(&"revoke.requested".to_string()),
        "{events:?}"
    );
    // The receiver, told the approved end at first, hears the new end as a
    // call of its own identity, so no gap opens at the provider.
    let calls = app.receiver.calls();
    assert_eq!(
        calls.len(),
        2,
        "{:?}",
        calls.iter().map(|c| &c.body).collect::<Vec<_>>()
    );
    assert_eq!(
        calls[0].header("webhook-id"),
        Some(format!("{id}-grant").as_str())
    );
    assert_eq!(calls[1].action(), "grant");
    assert_eq!(calls[1].body["expires_at"], "2026-11-25T13:00:00Z");
    assert_eq!(calls[1].body["grant_id"], id.as_str());
    let until = (t0() + Duration::hours(3)).timestamp();
    assert_eq!(
        calls[1].header("webhook-id"),
        Some(format!("{id}-grant-until-{until}").as_str())
    );
    assert!(
        events.contains(&"grant.extension_applied".to_string()),
        "{events:?}"
    );
    // Told once: the job's next runs do not call again.
    app.run_jobs().await;
    assert_eq!(app.receiver.calls().len(), 2);
    app.advance(Duration::hours(2));
    app.run_jobs().await;
    assert_eq!(app.grants_of(key).await[0]["state"], "active");
    app.advance(Duration::hours(1));
    app.run_jobs().await;
    let g = &app.grants_of(key).await[0];
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("expired"))
    );
}

/// GitHub: a later duration edited into the form keeps the approved end
/// while the label stays; `/approve` from an allowed approver who belongs
/// to the repository extends the grant in place; `/approve` from outside
/// the repository, or another comment, changes nothing; removing the label
/// revokes.
async fn github_extensions_are_approved_by_comment(backend: Backend) {
    let app = app!(backend);
    let key = "github:acme/access-requests#20";
    let mut issue = crate::payloads::Issue::new(20, t0());
    issue.body = payloads::form("hooks/billing", "1h", None);
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            "x1",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let g = app.grants_of(key).await[0].clone();
    assert_eq!(
        (g["state"].as_str(), g["expires_at"].as_str()),
        (Some("active"), Some("2026-11-25T11:00:00Z"))
    );

    // Another label, added by anyone: nothing moves.
    issue.labels = vec!["access-approved", "urgent"];
    issue.updated_at = t0() + Duration::milliseconds(500);
    let r = app
        .post_github(
            "issues",
            "x1b",
            &payloads::github("labeled", &issue, "mallory-gh", Some("urgent")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(
        (all.len(), all[0]["id"].as_str()),
        (1, g["id"].as_str()),
        "{all:?}"
    );
    assert_eq!(app.receiver.calls().len(), 1);

    issue.body = payloads::form("hooks/billing", "3h", None);
    issue.updated_at = t0() + Duration::seconds(1);
    let r = app
        .post_github(
            "issues",
            "x2",
            &payloads::github("edited", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    issue.updated_at = t0() + Duration::seconds(2);
    for (n, (who, association, text)) in [
        ("mallory-gh", "NONE", "/approve"),
        ("alice-gh", "MEMBER", "looks fine to me"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = payloads::github_comment(&issue, who, association, text);
        assert_eq!(
            app.post_github("issue_comment", &format!("c{n}"), &body)
                .await
                .status(),
            200
        );
    }
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0]["state"].as_str(), all[0]["expires_at"].as_str()),
        (Some("active"), Some("2026-11-25T11:00:00Z"))
    );

    issue.updated_at = t0() + Duration::seconds(3);
    let body = payloads::github_comment(
        &issue,
        "alice-gh",
        "MEMBER",
        "/approve\n\nfor the migration",
    );
    assert_eq!(
        app.post_github("issue_comment", "c9", &body).await.status(),
        200
    );
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0]["id"].as_str(), all[0]["state"].as_str()),
        (g["id"].as_str(), Some("active"))
    );
    assert_eq!(all[0]["expires_at"], "2026-11-25T13:00:00Z");
    let events = kinds(&app.events_of(key).await);
    assert!(events.contains(&"grant.extended".to_string()), "{events:?}");
    assert!(
        !events.contains(&"revoke.requested".to_string()),
        "{events:?}"
    );
    // The receiver hears the new end; nothing is revoked in between.
    let calls = app.receiver.calls();
    let told: Vec<(&str, &Value)> = calls
        .iter()
        .map(|c| (c.action(), &c.body["expires_at"]))
        .collect();
    assert_eq!(
        told,
        [
            ("grant", &json!("2026-11-25T11:00:00Z")),
            ("grant", &json!("2026-11-25T13:00:00Z"))
        ]
    );

    // Taking the label away is a rejection: the grant is revoked.
    issue.labels = vec![];
    issue.updated_at = t0() + Duration::seconds(4);
    let r = app
        .post_github(
            "issues",
            "x3",
            &payloads::github("unlabeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let g = &app.grants_of(key).await[0];
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("approval_withdrawn"))
    );
}

/// Jira: a later duration that sends the issue back to a waiting status
/// keeps the approved end; moving it to Approved again extends the grant
/// in place; a rejection (a closed status) revokes.
async fn jira_extensions_are_approved_by_transition(backend: Backend) {
    let app = app!(backend);
    let key = "jira:OPS-30";
    let mut issue = JiraIssue::new("OPS-30");
    issue.resource = "hooks/billing";
    let created = payloads::jira("jira:issue_created", &issue, DAVE_JIRA, t0(), None);
    assert_eq!(app.post_jira("y1", &created).await.status(), 200);
    issue.status = "Approved";
    issue.category = "indeterminate";
    let approved = payloads::jira(
        "jira:issue_updated",
        &issue,
        ALICE_JIRA,
        t0(),
        Some(("Open", "Approved")),
    );
    assert_eq!(app.post_jira("y2", &approved).await.status(), 200);
    app.run_jobs().await;
    let g = app.grants_of(key).await[0].clone();
    assert_eq!(
        (g["state"].as_str(), g["expires_at"].as_str()),
        (Some("active"), Some("2026-11-25T11:00:00Z"))
    );

    issue.duration = Some("3h");
    issue.status = "Waiting for approval";
    issue.category = "new";
    let waiting = payloads::jira(
        "jira:issue_updated",
        &issue,
        DAVE_JIRA,
        t0() + Duration::seconds(1),
        Some(("Approved", "Waiting for approval")),
    );
    assert_eq!(app.post_jira("y3", &waiting).await.status(), 200);
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0]["state"].as_str(), all[0]["expires_at"].as_str()),
        (Some("active"), Some("2026-11-25T11:00:00Z"))
    );

    issue.status = "Approved";
    issue.category = "indeterminate";
    let again = payloads::jira(
        "jira:issue_updated",
        &issue,
        ALICE_JIRA,
        t0() + Duration::seconds(2),
        Some(("Waiting for approval", "Approved")),
    );
    assert_eq!(app.post_jira("y4", &again).await.status(), 200);
    app.run_jobs().await;
    let all = app.grants_of(key).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0]["id"].as_str(), all[0]["state"].as_str()),
        (g["id"].as_str(), Some("active"))
    );
    assert_eq!(all[0]["expires_at"], "2026-11-25T13:00:00Z");
    let events = kinds(&app.events_of(key).await);
    assert!(events.contains(&"grant.extended".to_string()), "{events:?}");
    assert!(
        !events.contains(&"revoke.requested".to_string()),
        "{events:?}"
    );

    // Another later end, then a rejection: revoked.
    issue.duration = Some("4h");
    issue.status = "Rejected";
    issue.category = "done";
    let rejected = payloads::jira(
        "jira:issue_updated",
        &issue,
        ALICE_JIRA,
        t0() + Duration::seconds(3),
        Some(("Approved", "Rejected")),
    );
    assert_eq!(app.post_jira("y5", &rejected).await.status(), 200);
    app.run_jobs().await;
    let g = &app.grants_of(key).await[0];
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed"))
    );
}

/// The same for an account in `[drift] exempt_accounts`: its standing
/// access stays when the grant ends.
async fn an_exempt_accounts_standing_access_stays(backend: Backend) {
    if !pg_available() {
        return;
    }
    let role = test_role("wt_exempt");
    let resource: &'static str = Box::leak(format!("prod-db/{role}").into_boxed_str());
    let (mut admin, _roles) = roles_for(role, "dave");
    admin
        .batch_execute(&format!("GRANT {role} TO dave"))
        .expect("grant by hand");
    let app = app!(
        backend,
        &format!("{}\n[drift]\nexempt_accounts = [\"dave\"]\n", pg_config())
    );
    let jira = jira_approved(&app, "OPS-5", resource).await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&jira).await[0]["preexisting"], true);
    jira_closed(&app, "OPS-5", resource).await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&jira).await[0]["state"], "revoked");
    assert_eq!(
        members(&mut admin, role, "dave"),
        1,
        "standing access stays"
    );
}

/// GitHub and Jira: a change that touches no access (GitHub: another
/// title; Jira: the approved issue edited with nothing in the request
/// changed) leaves the grant alone; a shorter duration narrows the same
/// grant at once, without a new approval.
async fn github_and_jira_narrowings_apply_in_place(backend: Backend) {
    let app = app!(backend);
    let gh = "github:acme/access-requests#40";
    let mut issue = crate::payloads::Issue::new(40, t0());
    issue.body = payloads::form("hooks/billing", "2h", None);
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            "n1",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut jira = JiraIssue::new("OPS-40");
    jira.duration = Some("2h");
    let created = payloads::jira("jira:issue_created", &jira, DAVE_JIRA, t0(), None);
    assert_eq!(app.post_jira("n2", &created).await.status(), 200);
    jira.status = "Approved";
    jira.category = "indeterminate";
    let approved = payloads::jira(
        "jira:issue_updated",
        &jira,
        ALICE_JIRA,
        t0(),
        Some(("Open", "Approved")),
    );
    assert_eq!(app.post_jira("n3", &approved).await.status(), 200);
    app.run_jobs().await;
    let (g0, j0) = (
        app.grants_of(gh).await[0].clone(),
        app.grants_of("jira:OPS-40").await[0].clone(),
    );
    assert_eq!(
        (g0["state"].as_str(), j0["state"].as_str()),
        (Some("active"), Some("active"))
    );
    let calls = app.receiver.calls().len();

    // Nothing in the request changes.
    let mut retitled = payloads::github("edited", &issue, "dave-gh", None);
    retitled["issue"]["title"] = json!("Billing hook access, reworded");
    retitled["issue"]["updated_at"] = json!("2026-11-25T10:00:01Z");
    assert_eq!(
        app.post_github("issues", "n4", &retitled).await.status(),
        200
    );
    let edited = payloads::jira(
        "jira:issue_updated",
        &jira,
        DAVE_JIRA,
        t0() + Duration::seconds(1),
        None,
    );
    assert_eq!(app.post_jira("n5", &edited).await.status(), 200);
    app.run_jobs().await;
    for (key, before) in [(gh, &g0), ("jira:OPS-40", &j0)] {
        let all = app.grants_of(key).await;
        assert_eq!(all.len(), 1, "{key}: {all:?}");
        assert_eq!(&all[0], before, "{key}");
    }
    assert_eq!(app.receiver.calls().len(), calls);

    // A shorter duration: narrowed in place, then it ends on the new time.
    issue.body = payloads::form("hooks/billing", "30m", None);
    issue.updated_at = t0() + Duration::seconds(2);
    assert_eq!(
        app.post_github(
            "issues",
            "n6",
            &payloads::github("edited", &issue, "dave-gh", None)
        )
        .await
        .status(),
        200
    );
    jira.duration = Some("30m");
    let shorter = payloads::jira(
        "jira:issue_updated",
        &jira,
        DAVE_JIRA,
        t0() + Duration::seconds(2),
        None,
    );
    assert_eq!(app.post_jira("n7", &shorter).await.status(), 200);
    app.run_jobs().await;
    for (key, before) in [(gh, &g0), ("jira:OPS-40", &j0)] {
        let all = app.grants_of(key).await;
        assert_eq!(all.len(), 1, "{key}: {all:?}");
        assert_eq!(
            (all[0]["id"].as_str(), all[0]["state"].as_str()),
            (before["id"].as_str(), Some("active")),
            "{key}"
        );
        assert_eq!(all[0]["expires_at"], "2026-11-25T10:30:00Z", "{key}");
        assert!(
            kinds(&app.events_of(key).await).contains(&"grant.narrowed".to_string()),
            "{key}"
        );
    }
    app.advance(Duration::minutes(31));
    app.run_jobs().await;
    for key in [gh, "jira:OPS-40"] {
        let g = &app.grants_of(key).await[0];
        assert_eq!(
            (g["state"].as_str(), g["revoke_reason"].as_str()),
            (Some("revoked"), Some("expired")),
            "{key}"
        );
    }
}

backend_tests!(
    github_and_jira_narrowings_apply_in_place,
    an_exempt_accounts_standing_access_stays,
    github_extensions_are_approved_by_comment,
    jira_extensions_are_approved_by_transition,
    edits_after_approval_change_the_grant_in_place,
    an_extended_rider_tells_its_end_and_holds_the_access,
    standing_access_is_recorded_then_removed,
    a_shared_role_stays_until_the_last_grant_ends,
    the_http_provider_hears_first_apply_later_end_and_last_remove,
    two_replicas_share_one_access,
);
