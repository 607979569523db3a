//! The `postgres` provider: `GRANT role TO account` and `REVOKE role FROM
//! account` on a real server. Identifiers are quoted, so a hostile role or
//! account name is only ever a name. Membership already held, or already
//! gone, counts as success.
//!
//! Its target is one role name (`domain::check_pg_role`). Before a grant it refuses a
//! role that is, or belongs (directly or through other roles) to, a role
//! with SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS, unless
//! `allow_privileged` lists it: membership lets the account `SET ROLE` to
//! it, so such a grant is far more than its name says. Every connection
//! runs with `statement_timeout` set to the provider's `timeout` and
//! `lock_timeout` to half of it, so a call cannot outlast a job's lease,
//! and one stuck behind another session's lock says so.
//!
//! A role already taken with `SET ROLE` stays in force in that session
//! after `REVOKE`, so with `terminate_sessions` (the default) a removal
//! also ends the account's open sessions; until that succeeds the removal
//! counts as failed and is retried.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool as R2Pool};

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};

use super::{Action, Call, Deps, Provider, ProviderError};
use crate::config::secrets::load_secret;
use crate::config::{
    check_names, timeout_at_most_10m, ConfigDuration, ConfigError, DriftMode, PostgresProvider,
    ProviderSection,
};
use crate::domain::{check_pg_role, TargetRule};

/// The `postgres` provider's target rule: one role name, and one of
/// `roles` when the provider lists any.
pub fn check_target(cfg: &PostgresProvider, target: &str) -> Result<(), String> {
    check_pg_role(target)?;
    if !cfg.roles.is_empty() && !cfg.roles.iter().any(|r| r == target) {
        return Err("the provider's `roles` does not list it".into());
    }
    Ok(())
}

impl TargetRule for PostgresProvider {
    fn check_target(&self, target: &str) -> Result<(), String> {
        check_target(self, target)
    }
}

impl ProviderSection for PostgresProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        Some(self.timeout)
    }

    fn load_secrets(
        &mut self,
        at: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.url = Some(load_secret(at, "url", &self.url_env, &self.url_file, env)?);
        Ok(())
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_names(
            at,
            &[
                ("roles", &self.roles),
                ("allow_privileged", &self.allow_privileged),
            ],
            check_pg_role,
        )?;
        timeout_at_most_10m(at, self.timeout)
    }

    fn build(&self, name: &str, _deps: &Deps) -> Box<dyn Provider> {
        Box::new(Postgres::new(name, self))
    }

    fn drift(&self) -> Option<DriftMode> {
        self.drift
    }
}

/// The `postgres` provider: a pool to its server, when its URL is set.
pub struct Postgres {
    name: String,
    pool: Option<Pool>,
}

impl Postgres {
    pub fn new(name: &str, cfg: &PostgresProvider) -> Postgres {
        Postgres {
            name: name.to_string(),
            pool: cfg.url.as_ref().map(|url| Pool::new(name, cfg, url)),
        }
    }

    fn pool(&self) -> Result<&Pool, ProviderError> {
        self.pool
            .as_ref()
            .ok_or_else(|| ProviderError::Unknown(self.name.clone()))
    }
}

impl Provider for Postgres {
    fn apply<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { self.pool()?.call(c).await })
    }

    fn remove<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { self.pool()?.call(c).await })
    }

    /// The role's members, read from `pg_auth_members`.
    fn holders<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ProviderError>> {
        Box::pin(async move { self.pool()?.members(target).await.map(Some) })
    }

    /// One membership, read directly rather than through the role's list.
    fn holds<'a>(
        &'a self,
        target: &'a str,
        account: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>, ProviderError>> {
        Box::pin(async move { self.pool()?.is_member(target, account).await.map(Some) })
    }
}

/// Sets the session's timeouts on every new connection.
#[derive(Debug)]
struct Timeouts {
    millis: i64,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for Timeouts {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET statement_timeout = {}; SET lock_timeout = {};",
            self.millis,
            (self.millis / 2).max(1)
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[derive(Clone)]
pub struct Pool {
    pool: R2Pool<ConnectionManager<PgConnection>>,
    /// The provider's name, for messages that point at its configuration.
    name: String,
    allow_privileged: Vec<String>,
    terminate_sessions: bool,
}

impl Pool {
    pub fn new(name: &str, cfg: &PostgresProvider, url: &SecretString) -> Pool {
        let manager = ConnectionManager::<PgConnection>::new(url.expose_secret());
        let timeout = cfg.timeout.std().max(std::time::Duration::from_millis(1));
        Pool {
            pool: R2Pool::builder()
                .max_size(4)
                .min_idle(Some(0))
                .connection_timeout(timeout)
                .connection_customizer(Box::new(Timeouts {
                    millis: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
                }))
                .build_unchecked(manager),
            name: name.to_string(),
            allow_privileged: cfg.allow_privileged.clone(),
            terminate_sessions: cfg.terminate_sessions,
        }
    }

    pub async fn call(&self, call: &Call<'_>) -> Result<(), ProviderError> {
        let pool = self.pool.clone();
        let sql = statement(call.action, call.target, call.account);
        let action = call.action;
        let role = call.target.to_string();
        let check = action == Action::Grant && !self.allow_privileged.contains(&role);
        let terminate = action == Action::Revoke && self.terminate_sessions;
        let account = call.account.to_string();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|_| {
                ProviderError::Call("cannot connect to the PostgreSQL server".into())
            })?;
            if check {
                if let Some(why) = privileged(&mut conn, &role)? {
                    return Err(ProviderError::Refused(format!(
                        "PostgreSQL role `{role}` {why}; warrant grants it only if \
                         providers.{name}.allow_privileged lists it"
                    )));
                }
            }
            match conn.batch_execute(&sql) {
                Ok(()) => {}
                Err(e) => {
                    let msg = e.to_string();
                    // Revoking from a role or account that no longer exists
                    // leaves nothing to take away.
                    if action == Action::Revoke && msg.contains("does not exist") {
                        return Ok(());
                    }
                    return Err(ProviderError::Call(crate::redact::redact(
                        &format!("PostgreSQL: {msg}"),
                        &[],
                    )));
                }
            }
            if terminate {
                terminate_sessions(&mut conn, &account)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ProviderError::Call(e.to_string()))?
    }

    /// Members of `role` (for drift checks), in no order: sorting a large
    /// role's members costs the server more than the rest of the query.
    pub async fn members(&self, role: &str) -> Result<Vec<String>, ProviderError> {
        #[derive(QueryableByName)]
        struct Member {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        let pool = self.pool.clone();
        let role = role.to_string();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .map_err(|_| ProviderError::Call("cannot connect".into()))?;
            let rows: Vec<Member> = diesel::sql_query(
                "SELECT m.rolname::text AS name FROM pg_auth_members am \
                 JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member \
                 WHERE r.rolname = $1",
            )
            .bind::<diesel::sql_types::Text, _>(&role)
            .load(&mut conn)
            .map_err(|e| ProviderError::Call(e.to_string()))?;
            Ok(rows.into_iter().map(|m| m.name).collect())
        })
        .await
        .map_err(|e| ProviderError::Call(e.to_string()))?
    }
}

impl Pool {
    /// Whether `account` is a direct member of `role`.
    pub async fn is_member(&self, role: &str, account: &str) -> Result<bool, ProviderError> {
        #[derive(QueryableByName)]
        struct Held {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            held: bool,
        }
        let pool = self.pool.clone();
        let (role, account) = (role.to_string(), account.to_string());
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .map_err(|_| ProviderError::Call("cannot connect".into()))?;
            let row: Held = diesel::sql_query(
                "SELECT EXISTS (SELECT 1 FROM pg_auth_members am                  JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member                  WHERE r.rolname = $1 AND m.rolname = $2) AS held",
            )
            .bind::<diesel::sql_types::Text, _>(&role)
            .bind::<diesel::sql_types::Text, _>(&account)
            .get_result(&mut conn)
            .map_err(|e| ProviderError::Call(e.to_string()))?;
            Ok(row.held)
        })
        .await
        .map_err(|e| ProviderError::Call(e.to_string()))?
    }
}

/// Ends every session logged in as `account` (but this one): a session
/// that did `SET ROLE` before the `REVOKE` would keep the role until it
/// ends. Needs superuser or `pg_signal_backend` on the provider's login; a
/// session that cannot be ended fails the removal, which is retried.
fn terminate_sessions(conn: &mut PgConnection, account: &str) -> Result<(), ProviderError> {
    #[derive(QueryableByName)]
    struct Ended {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ended: bool,
    }
    let rows: Vec<Ended> = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity \
         WHERE usename = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<diesel::sql_types::Text, _>(account)
    .load(conn)
    .map_err(|e| {
        ProviderError::Call(crate::redact::redact(
            &format!("PostgreSQL: cannot end the account's sessions: {e}"),
            &[],
        ))
    })?;
    // `false` is a session that ended by itself between the read and the
    // signal: gone either way.
    let ended = rows.iter().filter(|r| r.ended).count();
    if ended > 0 {
        tracing::info!(sessions = ended, "ended the sessions of a revoked account");
    }
    Ok(())
}

/// Why granting `role` would hand out a privileged role, if it would: the
/// role and every role it belongs to, through any chain of memberships,
/// read in one recursive query.
fn privileged(conn: &mut PgConnection, role: &str) -> Result<Option<String>, ProviderError> {
    #[derive(QueryableByName)]
    struct Holder {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        what: String,
    }
    let rows: Vec<Holder> = diesel::sql_query(
        "WITH RECURSIVE up(oid) AS ( \
             SELECT oid FROM pg_roles WHERE rolname = $1 \
             UNION \
             SELECT am.roleid FROM pg_auth_members am JOIN up ON am.member = up.oid \
         ) \
         SELECT r.rolname::text AS name, concat_ws(', ', \
             CASE WHEN r.rolsuper THEN 'SUPERUSER' END, \
             CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, \
             CASE WHEN r.rolreplication THEN 'REPLICATION' END, \
             CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END) AS what \
         FROM up JOIN pg_roles r ON r.oid = up.oid \
         WHERE r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls \
         ORDER BY r.rolname = $1 DESC, 1 LIMIT 3",
    )
    .bind::<diesel::sql_types::Text, _>(role)
    .load(conn)
    .map_err(|e| ProviderError::Call(crate::redact::redact(&format!("PostgreSQL: {e}"), &[])))?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(if first.name == role {
        format!("has {}", first.what)
    } else {
        let via: Vec<String> = rows
            .iter()
            .map(|h| format!("`{}` ({})", h.name, h.what))
            .collect();
        format!("is a member of {}", via.join(", "))
    }))
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\0', "").replace('"', "\"\""))
}

pub fn statement(action: Action, role: &str, account: &str) -> String {
    match action {
        Action::Grant => format!("GRANT {} TO {}", quote_ident(role), quote_ident(account)),
        Action::Revoke => format!("REVOKE {} FROM {}", quote_ident(role), quote_ident(account)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_role_names() {
        let cfg: PostgresProvider = toml::from_str("url_env = \"X\"").unwrap();
        for ok in ["readonly", "_x", "Ro$1-a", &"r".repeat(63)] {
            assert!(check_target(&cfg, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1ro",
            "$ro",
            "-ro",
            "a/b",
            "a.b",
            "a:b",
            "a b",
            "a\"b",
            "r\u{f4}le",
            &"r".repeat(64),
        ] {
            assert!(check_target(&cfg, bad).is_err(), "{bad}");
        }
        let cfg: PostgresProvider =
            toml::from_str("url_env = \"X\"\nroles = [\"readonly\"]").unwrap();
        assert!(check_target(&cfg, "readonly").is_ok());
        assert!(check_target(&cfg, "admin").unwrap_err().contains("roles"));
    }

    #[test]
    fn hostile_names_stay_names() {
        assert_eq!(
            statement(Action::Grant, "ro\"; DROP TABLE x; --", "a\"b"),
            "GRANT \"ro\"\"; DROP TABLE x; --\" TO \"a\"\"b\""
        );
    }
}
