//! Targets are checked before any provider sees them: hostile targets from
//! all three sources are denied `invalid_request` (recorded in the trail)
//! and reach no receiver; each provider's narrower rule holds; a stored
//! grant with a bad target fails without a call; the postgres provider
//! refuses privileged roles unless `allow_privileged` lists them; the
//! `github_team` provider puts only encoded single segments in its URLs.

use chrono::Duration;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{
    pg_admin_url, pg_available, t0, Backend, TestApp, ADMIN_TOKEN, AUDITOR_TOKEN,
};
use crate::payloads::{self, Issue, JiraIssue};
use crate::{app, backend_tests};

const ALICE_JIRA: &str = "5b10a2844c20165700ede21g";
const DAVE_JIRA: &str = "5b10ac8d82e05b22cc7d4ef5";

async fn decision(app: &TestApp, key: &str) -> Value {
    let q = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
    let (status, body) = app
        .get_json(&format!("/v1/tickets/{q}"), AUDITOR_TOKEN)
        .await;
    assert_eq!(status, 200, "{body}");
    body["decision"].clone()
}

/// The `decision` events the trail holds for a ticket.
async fn recorded_decisions(app: &TestApp, key: &str) -> Vec<Value> {
    let q = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
    let (status, body) = app
        .get_json(&format!("/v1/audit?ticket={q}&limit=1000"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["type"] == "decision")
        .map(|e| e["data"].clone())
        .collect()
}

/// Opens and approves GitHub issue `n` by `author` asking for `resource`.
async fn github_request(app: &TestApp, n: u64, author: &'static str, resource: &str) -> String {
    let mut issue = Issue::new(n, t0());
    issue.author = author;
    issue.body = payloads::form(resource, "1h", None);
    issue.labels = vec!["access-approved"];
    let r = app
        .post_github(
            "issues",
            &format!("gh-{n}"),
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
    format!("github:acme/access-requests#{n}")
}

/// Creates Jira issue OPS-`n` asking for `resource` (the field's raw text)
/// and moves it to Approved as alice.
async fn jira_request(app: &TestApp, n: u64, resource: &str) -> String {
    let key = format!("OPS-{n}");
    let mut issue = JiraIssue::new(&key);
    issue.resource = resource;
    let r = app
        .post_jira(
            &format!("j-{n}-1"),
            &payloads::jira("jira:issue_created", &issue, DAVE_JIRA, t0(), None),
        )
        .await;
    assert_eq!(r.status(), 200);
    issue.status = "Approved";
    issue.category = "indeterminate";
    let r = app
        .post_jira(
            &format!("j-{n}-2"),
            &payloads::jira(
                "jira:issue_updated",
                &issue,
                ALICE_JIRA,
                t0() + Duration::seconds(1),
                Some(("Open", "Approved")),
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    format!("jira:{key}")
}

async fn servicenow_request(app: &TestApp, number: &'static str, resource: &str) -> String {
    let change = payloads::Change {
        number,
        state: json!(-2),
        approval: "approved",
        approved_by: json!("alice.smith"),
        assigned_to: "dave.jones",
        resource,
        start: t0() - Duration::minutes(5),
        end: t0() + Duration::hours(1),
        updated: t0(),
    };
    let r = app
        .post_servicenow(&format!("sn-{number}"), &payloads::servicenow(&change))
        .await;
    assert_eq!(r.status(), 200);
    format!("servicenow:{number}")
}

/// Asserts the ticket is denied `invalid_request`, that the trail says so,
/// and that it holds no grant.
async fn assert_invalid(app: &TestApp, key: &str, what: &str) -> String {
    let d = decision(app, key).await;
    assert_eq!(
        (d["outcome"].as_str(), d["reason"].as_str()),
        (Some("deny"), Some("invalid_request")),
        "{what}: {d}"
    );
    let recorded = recorded_decisions(app, key).await;
    assert!(
        recorded.iter().any(|e| e["reason"] == "invalid_request"),
        "{what}: the denial is in the trail: {recorded:?}"
    );
    assert!(app.grants_of(key).await.is_empty(), "{what}");
    d["detail"].as_str().unwrap_or_default().to_string()
}

const HOSTILE: &[&str] = &[
    "hooks/../admin",
    "hooks/a/../../x",
    "hooks/..",
    "hooks/./orders-db",
    "hooks//a",
    "hooks/a/",
    "hooks/a%2Fb",
    "hooks/a%2e%2e",
    "hooks/a\u{1}b",
    "hooks/a\u{7f}",
    "hooks/a\u{200b}b",       // zero-width space
    "hooks/\u{430}dmin",      // Cyrillic a
    "hooks/orders\u{2010}db", // Unicode hyphen
    "hooks/a\\b",
    "hooks/a?b=1",
    "hooks/a#b",
    "hooks/*",
];

async fn hostile_targets_are_denied_before_any_provider(backend: Backend) {
    let app = app!(backend);
    for (i, target) in HOSTILE.iter().enumerate() {
        let key = jira_request(&app, 100 + i as u64, target).await;
        assert_invalid(&app, &key, &format!("jira {target:?}")).await;
    }
    // The same through the other two sources, as their readers deliver them.
    for (i, target) in [
        "hooks/../admin",
        "hooks/a/../../x",
        "hooks//a",
        "hooks/a%2Fb",
    ]
    .iter()
    .enumerate()
    {
        let key = github_request(&app, 200 + i as u64, "dave-gh", target).await;
        assert_invalid(&app, &key, &format!("github {target:?}")).await;
    }
    let key = servicenow_request(&app, "CHG0040001", "hooks/a/../../x").await;
    assert_invalid(&app, &key, "servicenow traversal").await;
    let key = servicenow_request(&app, "CHG0040002", "hooks/a\u{0}b").await;
    assert_invalid(&app, &key, "servicenow NUL").await;

    app.run_jobs().await;
    app.advance(Duration::minutes(5));
    app.run_jobs().await;
    assert!(
        app.receiver.calls().is_empty(),
        "no provider call: {:?}",
        app.receiver.calls()
    );
    // A sound request still goes through afterwards.
    let key = jira_request(&app, 300, "hooks/orders-db").await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&key).await[0]["state"], "active");
    assert_eq!(app.receiver.calls().len(), 1);
    assert_eq!(app.receiver.calls()[0].body["target"], "orders-db");
}

async fn globs_match_within_a_segment_and_double_star_across(backend: Backend) {
    let extra = "[[policies]]\nname = \"deep\"\nresources = [\"hooks/team/**\"]\nsources = [\"jira:OPS\"]\napprovers = [\"alice\"]\nmax_duration = \"4h\"\n";
    let app = app!(backend, extra);
    // `hooks/*` (the base policy) stops at one segment.
    let key = jira_request(&app, 1, "hooks/other/a").await;
    assert_eq!(decision(&app, &key).await["reason"], "no_policy");
    // `hooks/team/**` reaches any depth below it.
    let key = jira_request(&app, 2, "hooks/team/a/b").await;
    assert_eq!(decision(&app, &key).await["outcome"], "warrant");
    app.run_jobs().await;
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["target"], "team/a/b");
}

/// Runs `sql` on the app's own database.
fn on_db(app: &TestApp, sql: &str) {
    match app.backend {
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
}

async fn a_stored_grant_with_a_bad_target_fails_without_a_call(backend: Backend) {
    let app = app!(backend);
    let mut issue = Issue::new(7, t0());
    issue.body = payloads::form("hooks/orders-db", "1h", Some("2026-11-25T11:00:00Z"));
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "stored-1",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    let key = "github:acme/access-requests#7";
    assert_eq!(app.grants_of(key).await[0]["state"], "pending");
    // Behind warrant's back, the stored grant now names a traversal.
    on_db(&app, "UPDATE grants SET resource = 'hooks/../admin'");
    app.advance(Duration::hours(1));
    app.run_jobs().await;
    let g = &app.grants_of(key).await[0];
    assert_eq!(g["state"], "failed", "{g}");
    let failure = g["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("refused"), "{failure}");
    // Permanent: not retried, and no clean-up call either.
    app.advance(Duration::minutes(10));
    assert_eq!(app.run_jobs().await, 0);
    assert!(
        app.receiver.calls().is_empty(),
        "{:?}",
        app.receiver.calls()
    );

    // A live grant whose stored target an older version accepted is still
    // revoked: removal is never refused for its target.
    let mut issue = Issue::new(8, app.clock_now());
    issue.body = payloads::form("hooks/orders-db", "1h", None);
    issue.labels = vec!["access-approved"];
    app.post_github(
        "issues",
        "stored-2",
        &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
    )
    .await;
    app.run_jobs().await;
    let key = "github:acme/access-requests#8";
    let g = app.grants_of(key).await[0].clone();
    assert_eq!(g["state"], "active");
    let id = g["id"].as_str().unwrap();
    on_db(
        &app,
        &format!("UPDATE grants SET resource = 'hooks/legacy/../x' WHERE id = '{id}'"),
    );
    let (status, _) = app
        .post_json(
            &format!("/v1/grants/{id}/revoke"),
            ADMIN_TOKEN,
            &json!({"reason": "legacy"}),
        )
        .await;
    assert_eq!(status, 200);
    app.run_jobs().await;
    assert_eq!(app.grants_of(key).await[0]["state"], "revoked");
    let calls = app.receiver.calls();
    let last = calls.last().unwrap();
    assert_eq!(
        (last.action(), last.body["target"].as_str()),
        ("revoke", Some("legacy/../x"))
    );
}

fn admin_pg() -> PgConnection {
    PgConnection::establish(&pg_admin_url()).unwrap()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// How many of `dave`'s memberships are in `role`.
fn dave_in(admin: &mut PgConnection, role: &str) -> i64 {
    diesel::sql_query(format!(
        "SELECT count(*)::bigint AS n FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid \
         JOIN pg_roles m ON m.oid = am.member WHERE r.rolname = '{role}' AND m.rolname = 'dave'"
    ))
    .get_result::<Count>(admin)
    .unwrap()
    .n
}

/// Drops the test's roles when the test ends, passed or failed.
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

const PG_PROVIDER: &str =
    "[providers.prod-db]\nkind = \"postgres\"\nurl_env = \"PROD_DB_URL\"\ntimeout = \"5s\"\n";
const PG_POLICY: &str = "\n[[policies]]\nname = \"db\"\nresources = [\"prod-db/*\"]\nsources = [\"github\"]\napprovers = [\"alice\"]\nmax_duration = \"4h\"\n";

async fn postgres_refuses_privileged_roles(backend: Backend) {
    if !pg_available() {
        return;
    }
    let s = uuid::Uuid::new_v4().simple().to_string();
    let (creator, middle, member, plain) = (
        format!("wt_cr_{}", &s[..8]),
        format!("wt_mid_{}", &s[..8]),
        format!("wt_req_{}", &s[..8]),
        format!("wt_ok_{}", &s[..8]),
    );
    // Members first, so each drop leaves no dangling grant behind.
    let _roles = Roles(vec![
        member.clone(),
        middle.clone(),
        creator.clone(),
        plain.clone(),
    ]);
    let mut admin = admin_pg();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {creator} NOLOGIN CREATEROLE; CREATE ROLE {middle} NOLOGIN; \
             CREATE ROLE {member} NOLOGIN; CREATE ROLE {plain} NOLOGIN; \
             GRANT {creator} TO {middle}; GRANT {middle} TO {member}; \
             DO $$ BEGIN CREATE ROLE dave NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
        ))
        .unwrap();
    let app = app!(backend, &format!("{PG_PROVIDER}{PG_POLICY}"));

    // The role itself, and a role two memberships away from it, are refused
    // at grant time: a failed grant, at once, and no membership.
    let direct = github_request(&app, 1, "dave-gh", &format!("prod-db/{creator}")).await;
    let nested = github_request(&app, 2, "dave-gh", &format!("prod-db/{member}")).await;
    let fine = github_request(&app, 3, "dave-gh", &format!("prod-db/{plain}")).await;
    app.run_jobs().await;
    let g = &app.grants_of(&direct).await[0];
    assert_eq!(g["state"], "failed", "{g}");
    let why = g["failure"].as_str().unwrap_or_default();
    assert!(
        why.contains("CREATEROLE") && why.contains("allow_privileged"),
        "{why}"
    );
    let g = &app.grants_of(&nested).await[0];
    assert_eq!(g["state"], "failed", "{g}");
    let why = g["failure"].as_str().unwrap_or_default();
    assert!(why.contains(&creator) && why.contains("member"), "{why}");
    assert_eq!(dave_in(&mut admin, &creator), 0);
    assert_eq!(dave_in(&mut admin, &member), 0);
    assert_eq!(app.grants_of(&fine).await[0]["state"], "active");
    assert_eq!(dave_in(&mut admin, &plain), 1);
    // Not retried: nothing more happens later.
    app.advance(Duration::minutes(5));
    app.run_jobs().await;
    assert_eq!(app.grants_of(&nested).await[0]["state"], "failed");
    assert_eq!(dave_in(&mut admin, &member), 0);

    // The provider's own target rule: one PostgreSQL role name.
    for (n, target) in [
        (4, "prod-db/a:b"),
        (5, "prod-db/schema/role"),
        (6, "prod-db/1role"),
    ] {
        let key = github_request(&app, n, "dave-gh", target).await;
        let detail = assert_invalid(&app, &key, target).await;
        assert!(detail.contains("PostgreSQL role name"), "{detail}");
    }
    drop(app);

    // Listed in allow_privileged, the same role is granted.
    let allowed = format!("{PG_PROVIDER}allow_privileged = [\"{member}\"]\n{PG_POLICY}");
    let app = app!(backend, &allowed);
    let key = github_request(&app, 1, "dave-gh", &format!("prod-db/{member}")).await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&key).await[0]["state"], "active");
    assert_eq!(dave_in(&mut admin, &member), 1);
    let id = app.grants_of(&key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = app
        .post_json(
            &format!("/v1/grants/{id}/revoke"),
            ADMIN_TOKEN,
            &json!({"reason": "test over"}),
        )
        .await;
    assert_eq!(status, 200);
    app.run_jobs().await;
    assert_eq!(dave_in(&mut admin, &member), 0);
}

async fn postgres_calls_give_up_on_a_held_lock(backend: Backend) {
    if !pg_available() {
        return;
    }
    let s = uuid::Uuid::new_v4().simple().to_string();
    let role = format!("wt_lk_{}", &s[..8]);
    let _roles = Roles(vec![role.clone()]);
    let mut admin = admin_pg();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; \
             DO $$ BEGIN CREATE ROLE dave NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
        ))
        .unwrap();
    let provider = PG_PROVIDER.replace("timeout = \"5s\"", "timeout = \"1s\"");
    let app = app!(backend, &format!("{provider}{PG_POLICY}"));
    // Another session is granting the same membership and has not
    // committed: our GRANT waits on its index entry, at most `timeout`.
    let mut holder = admin_pg();
    holder
        .batch_execute(&format!("BEGIN; GRANT {role} TO dave;"))
        .unwrap();
    let key = github_request(&app, 1, "dave-gh", &format!("prod-db/{role}")).await;
    let started = std::time::Instant::now();
    app.run_jobs().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the call waited {:?}",
        started.elapsed()
    );
    let (_, audit) = app.get_json("/v1/audit?limit=1000", ADMIN_TOKEN).await;
    let errors: Vec<String> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "grant.apply_failed")
        .map(|e| e["data"]["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("lock timeout")),
        "{errors:?}"
    );
    assert_eq!(app.grants_of(&key).await[0]["state"], "granting");
    // Once the other session is gone, the retry lands.
    holder.batch_execute("ROLLBACK").unwrap();
    app.advance(Duration::seconds(30));
    app.run_jobs().await;
    assert_eq!(app.grants_of(&key).await[0]["state"], "active");
    assert_eq!(dave_in(&mut admin, &role), 1);
}

async fn github_team_puts_only_encoded_segments_in_its_urls(backend: Backend) {
    let extra = |api: &str| {
        format!(
            "[providers.team]\nkind = \"github_team\"\napi_url = \"{api}\"\norg = \"acme\"\ntoken_env = \"GH_TOKEN\"\n\
             [[policies]]\nname = \"teams\"\nresources = [\"team/*\"]\nsources = [\"github\"]\napprovers = [\"alice\"]\nmax_duration = \"4h\"\n\
             [[identities]]\nprincipal = \"erin\"\ngithub = \"erin-gh\"\naccounts = {{ team = \"../../admin\" }}\n"
        )
    };
    // The app's loopback receiver stands in for the GitHub API: the
    // provider points at the address the base configuration gives it.
    let app = match TestApp::spawn_edit(backend, "", |base| {
        let hooks = base
            .lines()
            .find_map(|l| l.strip_prefix("url = \"http://"))
            .map(|u| format!("http://{u}"))
            .as_deref()
            .and_then(|u| u.strip_suffix('"'))
            .unwrap_or_default()
            .trim_end_matches("/access")
            .to_string();
        format!("{base}\n{}", extra(&hooks))
    })
    .await
    {
        Some(app) => app,
        None => return,
    };
    let ok = github_request(&app, 1, "dave-gh", "team/on-call.v2").await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&ok).await[0]["state"], "active");
    let calls = app.receiver.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("PUT", "/orgs/acme/teams/on-call.v2/memberships/dave")
    );
    // Contract syntax first, then the slug rule: neither reaches the API.
    for (n, target) in [
        (2, "team/.."),
        (3, "team/a/b"),
        (4, "team/a:b"),
        (5, "team/a%2Fb"),
    ] {
        let key = github_request(&app, n, "dave-gh", target).await;
        assert_invalid(&app, &key, target).await;
    }
    // An account that would climb the path fails the grant without a call.
    let erin = github_request(&app, 6, "erin-gh", "team/on-call.v2").await;
    app.run_jobs().await;
    let g = &app.grants_of(&erin).await[0];
    assert_eq!(g["state"], "failed", "{g}");
    assert!(
        g["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("account"),
        "{g}"
    );
    app.advance(Duration::minutes(5));
    app.run_jobs().await;
    assert_eq!(app.receiver.calls().len(), 1, "{:?}", app.receiver.calls());
}

/// A provider lists who holds a target where it can (the drift checks need
/// this): postgres reads the role's members from the server; `http` cannot
/// say; an unconfigured provider is an error.
async fn providers_list_holders_where_they_can(backend: Backend) {
    if !pg_available() {
        return;
    }
    let s = uuid::Uuid::new_v4().simple().to_string();
    let (role, holder) = (
        format!("wt_hold_{}", &s[..8]),
        format!("wt_acct_{}", &s[..8]),
    );
    let _roles = Roles(vec![holder.clone(), role.clone()]);
    let mut admin = admin_pg();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; CREATE ROLE {holder} NOLOGIN;"
        ))
        .unwrap();
    let app = app!(backend, &format!("{PG_PROVIDER}{PG_POLICY}"));
    let providers = &app.ctx.providers;
    assert_eq!(
        providers.holders("prod-db", &role).await.unwrap(),
        Some(vec![])
    );
    admin
        .batch_execute(&format!("GRANT {role} TO {holder};"))
        .unwrap();
    assert_eq!(
        providers.holders("prod-db", &role).await.unwrap(),
        Some(vec![holder.clone()])
    );
    assert_eq!(providers.holders("hooks", "orders-db").await.unwrap(), None);
    assert!(matches!(
        providers.holders("nope", "x").await,
        Err(warrant::providers::ProviderError::Unknown(_))
    ));
    drop(app);
}

backend_tests!(
    hostile_targets_are_denied_before_any_provider,
    globs_match_within_a_segment_and_double_star_across,
    a_stored_grant_with_a_bad_target_fails_without_a_call,
    postgres_refuses_privileged_roles,
    postgres_calls_give_up_on_a_held_lock,
    github_team_puts_only_encoded_segments_in_its_urls,
    providers_list_holders_where_they_can,
);
