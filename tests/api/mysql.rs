//! The `mysql` provider against a real MariaDB (or MySQL 8) server at
//! `WARRANT_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`): a
//! ticket's role is usable by the account, logged in with its own password,
//! while the ticket warrants it and not after it closes (its open session
//! ended too); `default_role` puts the role in force at login; drift finds
//! a role granted by hand (and not the role's administrators), and in
//! `revoke` mode removes it even from an account with a hostile name; a
//! privileged role, directly or through another role, is refused; hostile
//! targets and accounts stay names. Each test makes its own roles, users
//! and scratch database, and drops them when it ends, passed or failed.

use chrono::Duration;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use serde_json::Value;

use crate::helpers::{erin_closes, erin_requests, issue_key, Backend, TestApp, ADMIN_TOKEN};
use crate::{app, backend_tests};
use warrant::drift::{self, Outcome};

fn mysql_url() -> String {
    std::env::var("WARRANT_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

async fn admin() -> Conn {
    Conn::from_url(mysql_url()).await.unwrap()
}

/// Whether the MySQL tests can run. With `WARRANT_TEST_PG` set (CI), an
/// unreachable server fails the test instead of skipping it.
async fn mysql_available() -> bool {
    match Conn::from_url(mysql_url()).await {
        Ok(conn) => {
            let _ = conn.disconnect().await;
            true
        }
        Err(e) => {
            if std::env::var_os("WARRANT_TEST_PG").is_some() {
                panic!(
                    "MySQL/MariaDB is unreachable at {} but WARRANT_TEST_PG is set: {e}",
                    mysql_url()
                );
            }
            eprintln!("skipping: MySQL/MariaDB unreachable ({e})");
            false
        }
    }
}

/// The test's server objects: a scratch database with one table, a role
/// that may read it, and a login user with a password; dropped at the end.
struct Scratch {
    s: String,
    db: String,
    role: String,
    user: String,
    password: String,
    /// More roles and users the test made, dropped with the rest.
    roles: Vec<String>,
    users: Vec<(String, String)>,
}

impl Scratch {
    async fn new() -> Scratch {
        let s = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let scratch = Scratch {
            db: format!("wtm_db_{s}"),
            role: format!("wtm_r_{s}"),
            user: format!("wtm_u_{s}"),
            password: format!("pw-{s}"),
            roles: Vec::new(),
            users: Vec::new(),
            s,
        };
        let mut c = admin().await;
        for sql in [
            format!("CREATE DATABASE `{}`", scratch.db),
            format!("CREATE TABLE `{}`.t (x INT)", scratch.db),
            format!("INSERT INTO `{}`.t VALUES (42)", scratch.db),
            format!("CREATE ROLE `{}`", scratch.role),
            format!("GRANT SELECT ON `{}`.* TO `{}`", scratch.db, scratch.role),
            format!(
                "CREATE USER '{}'@'%' IDENTIFIED BY '{}'",
                scratch.user, scratch.password
            ),
        ] {
            c.query_drop(sql).await.unwrap();
        }
        scratch
    }

    async fn sql(&self, sql: &str) {
        admin().await.query_drop(sql).await.unwrap();
    }

    /// Logs in as the test's user with its password.
    async fn login(&self) -> Conn {
        let opts = OptsBuilder::from_opts(Opts::from_url(&mysql_url()).unwrap())
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()));
        Conn::new(opts).await.unwrap()
    }

    /// Whether a fresh login can read the table, after `SET ROLE` when
    /// `set_role`.
    async fn can_read(&self, set_role: bool) -> bool {
        let mut c = self.login().await;
        if set_role
            && c.query_drop(format!("SET ROLE `{}`", self.role))
                .await
                .is_err()
        {
            return false;
        }
        let read: Result<Option<i32>, _> = c
            .query_first(format!("SELECT x FROM `{}`.t", self.db))
            .await;
        matches!(read, Ok(Some(42)))
    }

    /// How `user@host` holds `role`, as the server's own tables say.
    async fn held(&self, role: &str, user: &str, host: &str) -> bool {
        let mut c = admin().await;
        let version: String = c.query_first("SELECT VERSION()").await.unwrap().unwrap();
        let sql = if version.to_lowercase().contains("mariadb") {
            "SELECT COUNT(*) FROM mysql.roles_mapping WHERE Role = ? AND User = ? AND Host = ?"
        } else {
            "SELECT COUNT(*) FROM mysql.role_edges WHERE FROM_USER = ? AND FROM_HOST = '%' \
             AND TO_USER = ? AND TO_HOST = ?"
        };
        let n: Option<i64> = c.exec_first(sql, (role, user, host)).await.unwrap();
        n.unwrap_or(0) > 0
    }

    async fn db_exists(&self) -> bool {
        let n: Option<i64> = admin()
            .await
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (&self.db,),
            )
            .await
            .unwrap();
        n == Some(1)
    }

    /// A file holding the provider's URL (`url_file`), beside nothing else.
    fn url_file(&self) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), mysql_url()).unwrap();
        f
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut sql = vec![
            format!("DROP USER IF EXISTS '{}'@'%'", self.user),
            format!("DROP ROLE IF EXISTS `{}`", self.role),
            format!("DROP DATABASE IF EXISTS `{}`", self.db),
        ];
        for (user, host) in &self.users {
            sql.push(format!(
                "DROP USER IF EXISTS '{}'@'{}'",
                user.replace('\\', "\\\\").replace('\'', "''"),
                host
            ));
        }
        for role in &self.roles {
            sql.push(format!("DROP ROLE IF EXISTS `{role}`"));
        }
        // Drop runs inside the test's runtime: the cleanup gets its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = Conn::from_url(mysql_url()).await {
                    for s in sql {
                        let _ = c.query_drop(s).await;
                    }
                    let _ = c.disconnect().await;
                }
            });
        })
        .join();
    }
}

/// A `mysql` provider `appdb` (with `provider_more`), a policy naming each
/// of `roles` exactly, and erin, whose account on `appdb` is `account`.
fn mysql_config(
    url_file: &std::path::Path,
    roles: &[&str],
    account: &str,
    provider_more: &str,
) -> String {
    let resources: Vec<String> = roles.iter().map(|r| format!("\"appdb/{r}\"")).collect();
    format!(
        "[providers.appdb]\nkind = \"mysql\"\nurl_file = \"{}\"\ntimeout = \"5s\"\n{provider_more}\n\
         [[policies]]\nname = \"appdb\"\nresources = [{}]\nsources = [\"github\"]\n\
         approvers = [\"alice\"]\nmax_duration = \"4h\"\n\
         [[identities]]\nprincipal = \"erin\"\ngithub = \"erin-gh\"\naccounts = {{ appdb = {} }}\n",
        url_file.display(),
        resources.join(", "),
        toml::Value::String(account.to_string()),
    )
}

async fn events(app: &TestApp, kind: &str) -> Vec<Value> {
    let (status, body) = app.get_json("/v1/audit?limit=1000", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

async fn a_ticket_grants_the_role_until_it_closes(backend: Backend) {
    if !mysql_available().await {
        return;
    }
    let sc = Scratch::new().await;
    let url = sc.url_file();
    // Written without a host: the account is `user@%`.
    let app = app!(
        backend,
        &mysql_config(url.path(), &[&sc.role], &sc.user, "")
    );
    assert!(!sc.can_read(true).await, "no access before the ticket");

    let issue = erin_requests(&app, 1, &format!("appdb/{}", sc.role)).await;
    app.run_jobs().await;
    let g = app.grants_of(&issue_key(1)).await[0].clone();
    assert_eq!(g["state"], "active", "{g}");
    assert!(sc.held(&sc.role, &sc.user, "%").await);
    let applied = events(&app, "grant.applied").await;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(
        !format!("{applied:?}").contains("mysql://"),
        "no URL in the trail"
    );
    // The account itself, logged in with its password, uses the role.
    assert!(sc.can_read(true).await, "the role reads the table");
    assert!(
        !sc.can_read(false).await,
        "not the default role: only after SET ROLE"
    );
    let mut session = sc.login().await;
    session
        .query_drop(format!("SET ROLE `{}`", sc.role))
        .await
        .unwrap();
    let x: Option<i32> = session
        .query_first(format!("SELECT x FROM `{}`.t", sc.db))
        .await
        .unwrap();
    assert_eq!(x, Some(42));

    erin_closes(&app, issue).await;
    let g = app.grants_of(&issue_key(1)).await[0].clone();
    assert_eq!(
        (g["state"].as_str(), g["revoke_reason"].as_str()),
        (Some("revoked"), Some("ticket_closed")),
        "{g}"
    );
    assert!(!sc.held(&sc.role, &sc.user, "%").await);
    assert!(!sc.can_read(true).await, "the role is gone");
    let after: Result<Option<i32>, _> = session
        .query_first(format!("SELECT x FROM `{}`.t", sc.db))
        .await;
    assert!(
        after.is_err(),
        "the session that took the role was ended: {after:?}"
    );
    drop(app);
}

async fn default_role_is_in_force_at_login_while_granted(backend: Backend) {
    if !mysql_available().await {
        return;
    }
    let sc = Scratch::new().await;
    let url = sc.url_file();
    let account = format!("{}@%", sc.user);
    let app = app!(
        backend,
        &mysql_config(url.path(), &[&sc.role], &account, "default_role = true\n")
    );
    let issue = erin_requests(&app, 1, &format!("appdb/{}", sc.role)).await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&issue_key(1)).await[0]["state"], "active");
    assert!(
        sc.can_read(false).await,
        "the default role reads without SET ROLE"
    );

    erin_closes(&app, issue).await;
    assert_eq!(app.grants_of(&issue_key(1)).await[0]["state"], "revoked");
    assert!(!sc.can_read(false).await);
    assert!(!sc.can_read(true).await);
    let default: Option<String> = admin()
        .await
        .exec_first(
            "SELECT default_role FROM mysql.user WHERE User = ? AND Host = '%'",
            (&sc.user,),
        )
        .await
        .unwrap_or(None);
    assert!(
        matches!(default.as_deref(), None | Some("")),
        "no default role is left: {default:?}"
    );
    drop(app);
}

async fn drift_finds_a_role_granted_by_hand(backend: Backend) {
    if !mysql_available().await {
        return;
    }
    let sc = Scratch::new().await;
    let url = sc.url_file();
    let app = app!(
        backend,
        &mysql_config(url.path(), &[&sc.role], &sc.user, "drift = \"report\"\n")
    );
    // The role's creator administers it (MariaDB): no finding.
    let report = drift::check_now(&app.ctx, None).await.unwrap();
    assert!(
        report.providers.contains(&"appdb".to_string()),
        "{report:?}"
    );
    assert!(!report.found_drift(), "{report:?}");

    sc.sql(&format!("GRANT `{}` TO '{}'@'%'", sc.role, sc.user))
        .await;
    let report = drift::check_now(&app.ctx, None).await.unwrap();
    let account = format!("{}@%", sc.user);
    let mine: Vec<Outcome> = report
        .items
        .iter()
        .filter(|i| i.account == account)
        .map(|i| i.outcome)
        .collect();
    assert_eq!(mine, [Outcome::Found], "{report:?}");
    assert_eq!(report.items.len(), 1, "{report:?}");
    let found = events(&app, "drift.found").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["data"]["account"], account.as_str());
    assert_eq!(found[0]["data"]["target"], sc.role.as_str());
    assert!(
        sc.held(&sc.role, &sc.user, "%").await,
        "report mode leaves it"
    );

    // Once a ticket warrants it, the same membership is no drift, and its
    // end takes it away.
    let issue = erin_requests(&app, 1, &format!("appdb/{}", sc.role)).await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&issue_key(1)).await[0]["state"], "active");
    let report = drift::check_now(&app.ctx, None).await.unwrap();
    assert!(!report.found_drift(), "{report:?}");
    erin_closes(&app, issue).await;
    assert!(!sc.held(&sc.role, &sc.user, "%").await);
    drop(app);
}

async fn revoke_mode_removes_drift_from_a_hostile_account(backend: Backend) {
    if !mysql_available().await {
        return;
    }
    let mut sc = Scratch::new().await;
    // A user made by hand whose name would end a quoted string and drop
    // the scratch database if it were pasted into SQL.
    let hostile = format!("h'; DROP DATABASE {}; -- \\{}", sc.db, &sc.s[..4]);
    let hostile_sql = hostile.replace('\\', "\\\\").replace('\'', "''");
    sc.users.push((hostile.clone(), "%".into()));
    sc.sql(&format!(
        "CREATE USER '{hostile_sql}'@'%' IDENTIFIED BY 'pw'"
    ))
    .await;
    sc.sql(&format!("GRANT `{}` TO '{hostile_sql}'@'%'", sc.role))
        .await;
    let url = sc.url_file();
    let app = app!(
        backend,
        &mysql_config(url.path(), &[&sc.role], &sc.user, "drift = \"revoke\"\n")
    );
    let report = drift::check_now(&app.ctx, None).await.unwrap();
    let account = format!("{hostile}@%");
    let mine: Vec<Outcome> = report
        .items
        .iter()
        .filter(|i| i.account == account)
        .map(|i| i.outcome)
        .collect();
    assert_eq!(mine, [Outcome::Removed], "{report:?}");
    assert!(!sc.held(&sc.role, &hostile, "%").await, "removed");
    assert!(sc.db_exists().await, "the name stayed a name");
    assert_eq!(events(&app, "drift.removed").await.len(), 1);
    drop(app);
}

async fn a_privileged_role_is_refused(backend: Backend) {
    if !mysql_available().await {
        return;
    }
    let mut sc = Scratch::new().await;
    let (boss, middle) = (format!("wtm_p_{}", sc.s), format!("wtm_m_{}", sc.s));
    sc.roles.push(middle.clone());
    sc.roles.push(boss.clone());
    for sql in [
        format!("CREATE ROLE `{boss}`"),
        format!("GRANT ALL PRIVILEGES ON *.* TO `{boss}`"),
        format!("CREATE ROLE `{middle}`"),
        format!("GRANT `{boss}` TO `{middle}`"),
    ] {
        sc.sql(&sql).await;
    }
    let url = sc.url_file();
    let missing = format!("wtm_x_{}", sc.s);
    let app = app!(
        backend,
        &mysql_config(
            url.path(),
            &[&boss, &middle, &sc.role, &missing],
            &sc.user,
            ""
        )
    );
    erin_requests(&app, 1, &format!("appdb/{boss}")).await;
    erin_requests(&app, 2, &format!("appdb/{middle}")).await;
    erin_requests(&app, 3, &format!("appdb/{}", sc.role)).await;
    erin_requests(&app, 5, &format!("appdb/{missing}")).await;
    app.run_jobs().await;

    let g = app.grants_of(&issue_key(1)).await[0].clone();
    assert_eq!(g["state"], "failed", "{g}");
    let why = g["failure"].as_str().unwrap_or_default();
    assert!(
        why.contains("ALL PRIVILEGES") && why.contains("allow_privileged"),
        "{why}"
    );
    let g = app.grants_of(&issue_key(2)).await[0].clone();
    assert_eq!(g["state"], "failed", "{g}");
    let why = g["failure"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("granted role `{boss}`")), "{why}");
    assert!(!sc.held(&boss, &sc.user, "%").await);
    assert!(!sc.held(&middle, &sc.user, "%").await);
    // Refused, not retried: still nothing later.
    app.advance(Duration::minutes(5));
    app.run_jobs().await;
    assert_eq!(app.grants_of(&issue_key(2)).await[0]["state"], "failed");
    assert!(!sc.held(&middle, &sc.user, "%").await);
    // A plain role next to them is granted.
    assert_eq!(app.grants_of(&issue_key(3)).await[0]["state"], "active");
    assert!(sc.held(&sc.role, &sc.user, "%").await);
    // A role that does not exist is a failed attempt naming it, retried
    // (the administrator may be creating it) until the attempts run out.
    for _ in 0..3 {
        app.advance(Duration::minutes(1));
        app.run_jobs().await;
    }
    let g = app.grants_of(&issue_key(5)).await[0].clone();
    assert_eq!(g["state"], "failed", "{g}");
    let why = g["failure"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("`{missing}` does not exist")),
        "{why}"
    );
    let retried = events(&app, "grant.apply_failed")
        .await
        .iter()
        .filter(|e| e["ticket"] == issue_key(5).as_str())
        .count();
    assert!(retried >= 2, "retried before failing: {retried}");
    drop(app);

    // Listed in allow_privileged, the role is granted.
    let app = app!(
        backend,
        &mysql_config(
            url.path(),
            &[&middle],
            &sc.user,
            &format!("allow_privileged = [\"{middle}\"]\n")
        )
    );
    erin_requests(&app, 4, &format!("appdb/{middle}")).await;
    app.run_jobs().await;
    assert_eq!(app.grants_of(&issue_key(4)).await[0]["state"], "active");
    assert!(sc.held(&middle, &sc.user, "%").await);
    sc.sql(&format!("REVOKE `{middle}` FROM '{}'@'%'", sc.user))
        .await;
    drop(app);
}

async fn hostile_targets_and_accounts_stay_names(backend: Backend) {
    if !mysql_available().await {
        return;
    }
    let sc = Scratch::new().await;
    let url = sc.url_file();
    let hostile = format!("x'@'%'; DROP DATABASE {}; --", sc.db);
    let app = app!(
        backend,
        &format!(
            "{}[[policies]]\nname = \"any\"\nresources = [\"appdb/*\"]\nsources = [\"github\"]\n\
             approvers = [\"alice\"]\nmax_duration = \"4h\"\n",
            mysql_config(url.path(), &[&sc.role], &hostile, "")
        )
    );
    // A target outside the role rule never reaches a grant.
    for (n, target) in [(1, "appdb/a.b"), (2, "appdb/x@y"), (3, "appdb/1role")] {
        erin_requests(&app, n, target).await;
        assert!(app.grants_of(&issue_key(n)).await.is_empty(), "{target}");
    }
    // An account outside the account rule is refused before any SQL.
    erin_requests(&app, 4, &format!("appdb/{}", sc.role)).await;
    app.run_jobs().await;
    let g = app.grants_of(&issue_key(4)).await[0].clone();
    assert_eq!(g["state"], "failed", "{g}");
    let why = g["failure"].as_str().unwrap_or_default();
    assert!(why.contains("is not USER@HOST"), "{why}");
    assert!(sc.db_exists().await);
    drop(app);
}

backend_tests!(
    a_ticket_grants_the_role_until_it_closes,
    default_role_is_in_force_at_login_while_granted,
    drift_finds_a_role_granted_by_hand,
    revoke_mode_removes_drift_from_a_hostile_account,
    a_privileged_role_is_refused,
    hostile_targets_and_accounts_stay_names,
);
