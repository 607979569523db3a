//! Drift checks against a real PostgreSQL server with real roles: access
//! granted by hand is found once, listed, counted and (in `revoke` mode)
//! removed; exempt accounts are skipped; a warranted membership removed
//! by hand is applied again; checks run on the clock, one at a time; and
//! closing a ticket ends the account's open sessions.

use chrono::Duration;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::Value;

use crate::helpers::{
    erin_requests, pg_admin_url, pg_available, t0, Backend, TestApp, ADMIN_TOKEN, AUDITOR_TOKEN,
};
use crate::payloads;
use crate::{app, backend_tests};
use warrant::drift::{self, Due, Outcome, Report};

fn admin_pg() -> PgConnection {
    PgConnection::establish(&pg_admin_url()).unwrap()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Whether `account` is a member of `role` on the server.
fn member(role: &str, account: &str) -> bool {
    diesel::sql_query(
        "SELECT count(*)::bigint AS n FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid \
         JOIN pg_roles m ON m.oid = am.member WHERE r.rolname = $1 AND m.rolname = $2",
    )
    .bind::<diesel::sql_types::Text, _>(role)
    .bind::<diesel::sql_types::Text, _>(account)
    .get_result::<Count>(&mut admin_pg())
    .unwrap()
    .n
        > 0
}

/// The test's roles: unique names, created now, dropped when the test
/// ends, passed or failed.
struct Roles {
    role: String,
    accounts: Vec<String>,
}

impl Roles {
    /// A NOLOGIN role and `n` NOLOGIN accounts.
    fn new(n: usize) -> Roles {
        let s = uuid::Uuid::new_v4().simple().to_string();
        let roles = Roles {
            role: format!("wt_dr_{}", &s[..10]),
            accounts: (0..n).map(|i| format!("wt_da{i}_{}", &s[..10])).collect(),
        };
        let mut sql = format!("CREATE ROLE {} NOLOGIN;", roles.role);
        for a in &roles.accounts {
            sql.push_str(&format!("CREATE ROLE {a} NOLOGIN;"));
        }
        admin_pg().batch_execute(&sql).unwrap();
        roles
    }

    fn sql(&self, sql: &str) {
        admin_pg().batch_execute(sql).unwrap();
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&pg_admin_url()) {
            for a in &self.accounts {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {a}"));
            }
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.role));
        }
    }
}

/// A postgres provider `prod-db` and a policy naming `prod-db/ROLE` exactly
/// (a glob names no target to check), plus `more`.
fn pg_config(role: &str, provider_more: &str, more: &str) -> String {
    format!(
        "[providers.prod-db]\nkind = \"postgres\"\nurl_env = \"PROD_DB_URL\"\ntimeout = \"5s\"\n{provider_more}\n\
         [[policies]]\nname = \"db\"\nresources = [\"prod-db/{role}\"]\nsources = [\"github\"]\n\
         approvers = [\"alice\"]\nmax_duration = \"4h\"\n{more}\n"
    )
}

async fn check(app: &TestApp) -> Report {
    drift::check_now(&app.ctx, None).await.unwrap()
}

fn outcomes(report: &Report, account: &str) -> Vec<Outcome> {
    report
        .items
        .iter()
        .filter(|i| i.account == account)
        .map(|i| i.outcome)
        .collect()
}

/// The audit events of `kind` about `account`.
async fn events(app: &TestApp, kind: &str, account: &str) -> Vec<Value> {
    let (status, body) = app.get_json("/v1/audit?limit=1000", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["account"] == account)
        .cloned()
        .collect()
}

async fn a_membership_granted_by_hand_is_found_once(backend: Backend) {
    if !pg_available() {
        return;
    }
    let roles = Roles::new(1);
    let (role, acct) = (roles.role.clone(), roles.accounts[0].clone());
    let app = app!(backend, &pg_config(&role, "", ""));
    let report = check(&app).await;
    assert_eq!(report.providers, ["prod-db"]);
    assert!(!report.found_drift(), "{report:?}");

    roles.sql(&format!("GRANT {role} TO {acct}"));
    let report = check(&app).await;
    assert_eq!(outcomes(&report, &acct), [Outcome::Found], "{report:?}");
    assert!(report.found_drift());
    app.advance(Duration::minutes(5));
    let report = check(&app).await;
    assert_eq!(outcomes(&report, &acct), [Outcome::Open], "{report:?}");
    let found = events(&app, "drift.found", &acct).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (
            found[0]["data"]["provider"].as_str(),
            found[0]["data"]["target"].as_str()
        ),
        (Some("prod-db"), Some(role.as_str()))
    );
    assert_eq!(found[0]["data"]["mode"], "report");
    assert!(member(&role, &acct), "report mode leaves the access alone");

    for token in [AUDITOR_TOKEN, ADMIN_TOKEN] {
        let (status, body) = app.get_json("/v1/drift", token).await;
        assert_eq!(status, 200, "{body}");
        let listed = body["findings"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{body}");
        let f = &listed[0];
        assert_eq!(
            (
                f["provider"].as_str(),
                f["account"].as_str(),
                f["target"].as_str(),
                f["mode"].as_str(),
                f["found_at"].as_str()
            ),
            (
                Some("prod-db"),
                Some(acct.as_str()),
                Some(role.as_str()),
                Some("report"),
                Some("2026-11-25T10:00:00Z")
            ),
            "{f}"
        );
    }
    let unauthenticated = app
        .client
        .get(format!("{}/v1/drift", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let text = app.metrics_text().await;
    assert!(
        text.contains("warrant_drift_findings{provider=\"prod-db\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("warrant_drift_findings{provider=\"hooks\"} 0"),
        "{text}"
    );

    // Taken away by hand: the finding is resolved, once.
    roles.sql(&format!("REVOKE {role} FROM {acct}"));
    let report = check(&app).await;
    assert_eq!(outcomes(&report, &acct), [Outcome::Resolved], "{report:?}");
    assert!(!report.found_drift());
    check(&app).await;
    assert_eq!(events(&app, "drift.resolved", &acct).await.len(), 1);
    let (_, body) = app.get_json("/v1/drift", AUDITOR_TOKEN).await;
    assert_eq!(body["findings"], serde_json::json!([]), "{body}");
    let text = app.metrics_text().await;
    assert!(
        text.contains("warrant_drift_findings{provider=\"prod-db\"} 0"),
        "{text}"
    );
    drop(app);
}

async fn revoke_mode_removes_drift_and_skips_exempt_accounts(backend: Backend) {
    if !pg_available() {
        return;
    }
    let roles = Roles::new(2);
    let (role, acct, exempt) = (
        roles.role.clone(),
        roles.accounts[0].clone(),
        roles.accounts[1].clone(),
    );
    // The provider's own `drift` overrides `[drift] drift`.
    let extra = pg_config(
        &role,
        "drift = \"revoke\"",
        &format!("[drift]\ndrift = \"report\"\nexempt_accounts = [\"{exempt}\"]\n"),
    );
    let app = app!(backend, &extra);
    roles.sql(&format!(
        "GRANT {role} TO {acct}; GRANT {role} TO {exempt};"
    ));
    let report = check(&app).await;
    assert_eq!(outcomes(&report, &acct), [Outcome::Removed], "{report:?}");
    assert!(outcomes(&report, &exempt).is_empty(), "{report:?}");
    assert!(!member(&role, &acct), "the drifted membership is gone");
    assert!(member(&role, &exempt), "the exempt account keeps its role");
    let found = events(&app, "drift.found", &acct).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["data"]["mode"], "revoke");
    let removed = events(&app, "drift.removed", &acct).await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["data"]["finding"], found[0]["data"]["finding"]);
    assert!(events(&app, "drift.found", &exempt).await.is_empty());

    // Nothing is left open; the next check has nothing to do.
    let (_, body) = app.get_json("/v1/drift", AUDITOR_TOKEN).await;
    assert_eq!(body["findings"], serde_json::json!([]), "{body}");
    let report = check(&app).await;
    assert!(!report.found_drift(), "{report:?}");
    assert!(events(&app, "drift.resolved", &acct).await.is_empty());
    drop(app);
}

fn erin(account: &str) -> String {
    format!(
        "[[identities]]\nprincipal = \"erin\"\ngithub = \"erin-gh\"\naccounts = {{ prod-db = \"{account}\" }}\n"
    )
}

async fn a_warranted_membership_removed_by_hand_is_repaired(backend: Backend) {
    if !pg_available() {
        return;
    }
    let roles = Roles::new(1);
    let (role, acct) = (roles.role.clone(), roles.accounts[0].clone());
    let app = app!(backend, &pg_config(&role, "", &erin(&acct)));
    erin_requests(&app, 1, &format!("prod-db/{role}")).await;
    app.run_jobs().await;
    let key = "github:acme/access-requests#1";
    let g = app.grants_of(key).await[0].clone();
    assert_eq!(g["state"], "active", "{g}");
    assert!(member(&role, &acct));
    // Warranted access is no drift.
    let report = check(&app).await;
    assert!(report.items.is_empty(), "{report:?}");

    roles.sql(&format!("REVOKE {role} FROM {acct}"));
    app.advance(Duration::minutes(5));
    let report = check(&app).await;
    assert_eq!(outcomes(&report, &acct), [Outcome::Repaired], "{report:?}");
    assert_eq!(report.items[0].grant.as_deref(), g["id"].as_str());
    assert!(member(&role, &acct), "the membership is back");
    let repaired = events(&app, "drift.repaired", &acct).await;
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert_eq!(repaired[0]["grant_id"], g["id"]);
    assert_eq!(repaired[0]["ticket"], key);
    assert!(events(&app, "drift.found", &acct).await.is_empty());
    // Held again, nothing more to do.
    let report = check(&app).await;
    assert!(report.items.is_empty(), "{report:?}");
    drop(app);
}

async fn checks_run_on_the_clock_one_at_a_time(backend: Backend) {
    let app = app!(backend, "[drift]\ninterval = \"10m\"\n");
    let ran = |d: &Due| matches!(d, Due::Ran(_));
    let (due, next) = drift::run_if_due(&app.ctx).await.unwrap();
    assert!(ran(&due), "the first check runs at once");
    assert_eq!(next, t0() + Duration::minutes(10));
    let (due, next) = drift::run_if_due(&app.ctx).await.unwrap();
    assert!(!ran(&due));
    assert_eq!(next, t0() + Duration::minutes(10));
    app.advance(Duration::minutes(9));
    assert!(!ran(&drift::run_if_due(&app.ctx).await.unwrap().0));
    app.advance(Duration::minutes(1));
    if backend == Backend::Postgres {
        // Another replica holds the lock: this one waits its turn.
        let db = app.ctx.db.clone();
        let lock = tokio::task::spawn_blocking(move || db.try_drift_lock())
            .await
            .unwrap()
            .unwrap()
            .expect("the lock is free");
        assert!(!ran(&drift::run_if_due(&app.ctx).await.unwrap().0));
        assert!(matches!(
            drift::check_now(&app.ctx, None).await,
            Err(drift::DriftError::Busy)
        ));
        tokio::task::spawn_blocking(move || drop(lock))
            .await
            .unwrap();
    }
    let (due, next) = drift::run_if_due(&app.ctx).await.unwrap();
    assert!(ran(&due));
    assert_eq!(next, t0() + Duration::minutes(20));
    assert!(matches!(
        drift::check_now(&app.ctx, Some("nope")).await,
        Err(drift::DriftError::Unknown(_))
    ));
}

async fn closing_the_ticket_ends_the_accounts_sessions(backend: Backend) {
    if !pg_available() {
        return;
    }
    let roles = Roles::new(0);
    let role = roles.role.clone();
    let s = uuid::Uuid::new_v4().simple().to_string();
    let login = format!("wt_dl_{}", &s[..10]);
    // Dropped before the role it was granted (`Roles` drops last).
    struct Login(String);
    impl Drop for Login {
        fn drop(&mut self) {
            if let Ok(mut admin) = PgConnection::establish(&pg_admin_url()) {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.0));
            }
        }
    }
    roles.sql(&format!("CREATE ROLE {login} LOGIN PASSWORD 'pw-{s}'"));
    let _login = Login(login.clone());
    let app = app!(backend, &pg_config(&role, "", &erin(&login)));
    let mut issue = erin_requests(&app, 2, &format!("prod-db/{role}")).await;
    app.run_jobs().await;
    let key = "github:acme/access-requests#2";
    assert_eq!(app.grants_of(key).await[0]["state"], "active");

    // The account logs in and takes the role for its session.
    let url = pg_admin_url().replacen(
        "postgres://postgres@",
        &format!("postgres://{login}:pw-{s}@"),
        1,
    );
    let mut session = PgConnection::establish(&url).unwrap();
    session.batch_execute(&format!("SET ROLE {role}")).unwrap();
    session.batch_execute("SELECT 1").unwrap();

    issue.state = "closed";
    issue.updated_at = t0() + Duration::minutes(1);
    app.advance(Duration::minutes(1));
    let r = app
        .post_github(
            "issues",
            "erin-2-closed",
            &payloads::github("closed", &issue, "erin-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.run_jobs().await;
    let g = app.grants_of(key).await[0].clone();
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed")),
        "{g}"
    );
    assert!(!member(&role, &login));
    assert!(
        session.batch_execute("SELECT 1").is_err(),
        "the session that held the role was ended"
    );
    drop(app);
}

backend_tests!(
    a_membership_granted_by_hand_is_found_once,
    revoke_mode_removes_drift_and_skips_exempt_accounts,
    a_warranted_membership_removed_by_hand_is_repaired,
    checks_run_on_the_clock_one_at_a_time,
    closing_the_ticket_ends_the_accounts_sessions,
);
