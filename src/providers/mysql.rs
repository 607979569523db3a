//! The `mysql` provider (MySQL 8, MariaDB 10.5+): `GRANT role TO account`
//! and `REVOKE role FROM account` on a real server, and the role's members
//! for drift checks. The server's flavour is read once (`SELECT VERSION()`)
//! because the two keep roles apart: MariaDB in `mysql.roles_mapping`
//! (a role has no host), MySQL 8 in `mysql.role_edges` (a role is the
//! account `role@%`), and they spell `SET DEFAULT ROLE` differently.
//!
//! The target is one role name (`check_role`); the account is `user@host`,
//! and an account written without `@` is `user@%` (`canonical_account`
//! writes it so before a grant exists, so the ledger and drift checks see
//! one spelling). Names are quoted (backticks for roles, `'user'@'host'`
//! with quotes and backslashes escaped, on sessions without
//! `NO_BACKSLASH_ESCAPES`), so a hostile name is only ever a name; a grant
//! is refused outright for an account outside `check_account`.
//!
//! Before a grant it refuses a role that holds, or is granted (through any
//! chain of roles) a role that holds, SUPER, GRANT OPTION, CREATE USER or
//! ALL PRIVILEGES on `*.*`, unless `allow_privileged` lists it: those let
//! the account take over the server, far more than the role's name says.
//! That is `Refused`, since no retry can change it. A role or an account
//! that does not exist is a failed attempt naming it (`Call`): it is
//! retried, because an administrator may well be about to create it.
//!
//! Idempotent: the membership is read before a removal (absent: done) and
//! the server's "not granted" and "no such role/user" answers to `REVOKE`
//! count as done; `GRANT` of a held role succeeds on both flavours.
//! Memberships held `WITH ADMIN OPTION` are the role's administrators
//! (MariaDB gives one to whoever created the role, warrant's own login
//! included): warrant never grants one, leaves them in place on removal,
//! and drift checks do not count them. Roles granted to roles (MariaDB),
//! and locked accounts (MySQL 8, where roles are locked accounts), are not
//! holders either.
//!
//! `default_role = true` makes the role the account's default at grant
//! (`SET DEFAULT ROLE`); a removal resets the default to none when it is
//! that role (MySQL 8 keeps a set of defaults: the role is added to and
//! taken from it). A session that already took the role keeps it after
//! `REVOKE`, so with `terminate_sessions` (the default) a removal ends
//! every open session of the account's user name, and counts as failed
//! until that worked.

use std::collections::HashSet;
use std::sync::OnceLock;

use futures_util::future::BoxFuture;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, PoolConstraints, PoolOpts};
use secrecy::{ExposeSecret, SecretString};

use super::{Call, Deps, Provider, ProviderError};
use crate::config::secrets::load_secret;
use crate::config::{
    check_names, invalid, timeout_at_most_10m, ConfigDuration, ConfigError, DriftMode,
    MysqlProvider, ProviderSection,
};
use crate::domain::TargetRule;

/// The longest role name both flavours take (MySQL 8's user name limit).
const MAX_ROLE: usize = 32;
/// MariaDB's user name limit; MySQL 8 refuses names over 32 itself.
const MAX_USER: usize = 80;
const MAX_HOST: usize = 255;
/// Roles read while following a role's grants: a cycle or a huge graph
/// ends the walk instead of the job's lease.
const MAX_ROLES_WALKED: usize = 256;

// Server error codes the provider reads.
/// MariaDB `ER_INVALID_ROLE`: no such role (or not granted, for defaults).
const ER_INVALID_ROLE: u16 = 1959;
/// MariaDB `ER_CANNOT_REVOKE_ROLE`: the account does not hold the role.
const ER_CANNOT_REVOKE_ROLE: u16 = 1962;
/// Both: "Can't find any matching row in the user table".
const ER_PASSWORD_NO_MATCH: u16 = 1133;
/// MySQL 8 `ER_UNKNOWN_AUTHID`: no such role or account.
const ER_UNKNOWN_AUTHID: u16 = 3523;
/// Both: `KILL` of a thread that has ended meanwhile.
const ER_NO_SUCH_THREAD: u16 = 1094;

/// A role name: an ASCII letter or `_`, then letters, digits, `_`, `$` or
/// `-`, at most 32 bytes.
pub fn check_role(role: &str) -> Result<(), String> {
    let mut chars = role.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || role.len() > MAX_ROLE
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-'))
    {
        return Err(format!(
            "a MySQL role name is an ASCII letter or `_`, then up to {} letters, digits, `_`, `$` or `-`",
            MAX_ROLE - 1
        ));
    }
    Ok(())
}

/// The `mysql` provider's target rule: one role name, and one of `roles`
/// when the provider lists any.
pub fn check_target(cfg: &MysqlProvider, target: &str) -> Result<(), String> {
    check_role(target)?;
    if !cfg.roles.is_empty() && !cfg.roles.iter().any(|r| r == target) {
        return Err("the provider's `roles` does not list it".into());
    }
    Ok(())
}

/// `user@host` split at the last `@` (a user name may hold `@`, a host
/// never does); no `@` is host `%`.
pub fn split_account(account: &str) -> (&str, &str) {
    account.rsplit_once('@').unwrap_or((account, "%"))
}

/// The account as grants store it: always `user@host`.
pub fn canonical_account(account: &str) -> String {
    let (user, host) = split_account(account);
    format!("{user}@{host}")
}

/// What warrant grants to: a user name of letters, digits and `_.$@+-`,
/// and a host (or pattern) of letters, digits and `._%:/-`. Removal takes
/// any name (drift may find one made by hand), quoted.
pub fn check_account(account: &str) -> Result<(), String> {
    let (user, host) = split_account(account);
    let user_ok = !user.is_empty()
        && user.len() <= MAX_USER
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.$@+-".contains(c));
    let host_ok = !host.is_empty()
        && host.len() <= MAX_HOST
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._%:/-".contains(c));
    if user_ok && host_ok {
        Ok(())
    } else {
        Err(format!(
            "MySQL account `{}` is not USER@HOST with a user of up to {MAX_USER} letters, digits \
             and `_.$@+-` and a host of letters, digits and `._%:/-`",
            crate::domain::shown(account, 80)
        ))
    }
}

impl TargetRule for MysqlProvider {
    fn check_target(&self, target: &str) -> Result<(), String> {
        check_target(self, target)
    }
}

impl ProviderSection for MysqlProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        Some(self.timeout)
    }

    fn load_secrets(
        &mut self,
        at: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let url = load_secret(at, "url", &self.url_env, &self.url_file, env)?;
        if let Err(e) = Opts::from_url(url.expose_secret()) {
            let key = if self.url_env.is_some() {
                "url_env"
            } else {
                "url_file"
            };
            return Err(invalid(
                format!("{at}.{key}"),
                format!(
                    "is not a mysql://USER:PASSWORD@HOST:PORT URL: {}",
                    crate::redact::redact(&e.to_string(), &[url.expose_secret()])
                ),
            ));
        }
        self.url = Some(url);
        Ok(())
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_names(
            at,
            &[
                ("roles", &self.roles),
                ("allow_privileged", &self.allow_privileged),
            ],
            check_role,
        )?;
        timeout_at_most_10m(at, self.timeout)
    }

    fn build(&self, name: &str, _deps: &Deps) -> Box<dyn Provider> {
        Box::new(Mysql::new(name, self))
    }

    fn drift(&self) -> Option<DriftMode> {
        self.drift
    }

    fn canonical_account(&self, account: &str) -> String {
        canonical_account(account)
    }
}

/// Which server the provider talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    MariaDb,
    MySql,
}

impl Flavour {
    /// MariaDB says so in its version string; anything else is MySQL.
    pub fn from_version(version: &str) -> Flavour {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavour::MariaDb
        } else {
            Flavour::MySql
        }
    }

    /// The host part of a role's own row in `mysql.user`.
    fn role_host(self) -> &'static str {
        match self {
            Flavour::MariaDb => "",
            Flavour::MySql => "%",
        }
    }
}

/// The `mysql` provider: a pool to its server, made at the first call (the
/// pool's housekeeping runs on the runtime that makes it).
pub struct Mysql {
    name: String,
    opts: Option<Opts>,
    /// The URL's password, scrubbed from every error text.
    password: Option<SecretString>,
    pool: OnceLock<mysql_async::Pool>,
    flavour: OnceLock<Flavour>,
    allow_privileged: Vec<String>,
    default_role: bool,
    terminate_sessions: bool,
}

impl Mysql {
    pub fn new(name: &str, cfg: &MysqlProvider) -> Mysql {
        let parsed = cfg
            .url
            .as_ref()
            .and_then(|url| Opts::from_url(url.expose_secret()).ok());
        let password = parsed
            .as_ref()
            .and_then(|o| o.pass())
            .map(|p| SecretString::from(p.to_string()));
        let opts = parsed.map(|o| {
            let secs = cfg.timeout.std().as_secs().max(1);
            OptsBuilder::from_opts(o)
                .pool_opts(
                    PoolOpts::default()
                        .with_constraints(PoolConstraints::new(0, 4).unwrap_or_default())
                        // Idle connections close long before the server's
                        // `wait_timeout` could, so a grant after a quiet
                        // night does not fail on a connection the server
                        // dropped.
                        .with_inactive_connection_ttl(std::time::Duration::from_secs(60)),
                )
                .setup(vec![
                    // A statement stuck behind another session's metadata
                    // lock gives up within the call's deadline.
                    format!("SET SESSION lock_wait_timeout = {secs}"),
                    // `quote_string` escapes backslashes, which only holds
                    // while backslash is the escape character.
                    "SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')"
                        .to_string(),
                ])
                .into()
        });
        Mysql {
            name: name.to_string(),
            opts,
            password,
            pool: OnceLock::new(),
            flavour: OnceLock::new(),
            allow_privileged: cfg.allow_privileged.clone(),
            default_role: cfg.default_role,
            terminate_sessions: cfg.terminate_sessions,
        }
    }

    /// A connection from the pool, and the server's flavour.
    async fn conn(&self) -> Result<(Conn, Flavour), ProviderError> {
        let Some(opts) = &self.opts else {
            return Err(ProviderError::Unknown(self.name.clone()));
        };
        let pool = self
            .pool
            .get_or_init(|| mysql_async::Pool::new(opts.clone()));
        let mut conn = pool
            .get_conn()
            .await
            .map_err(|e| self.error("cannot connect to the MySQL server", e))?;
        let flavour = match self.flavour.get() {
            Some(f) => *f,
            None => {
                let version: Option<String> = conn
                    .query_first("SELECT VERSION()")
                    .await
                    .map_err(|e| self.error("cannot read the server's version", e))?;
                let f = Flavour::from_version(version.as_deref().unwrap_or_default());
                *self.flavour.get_or_init(|| f)
            }
        };
        Ok((conn, flavour))
    }

    /// A failed call's message, with no secret in it.
    fn error(&self, what: &str, e: mysql_async::Error) -> ProviderError {
        let secrets: Vec<&str> = self.password.iter().map(|p| p.expose_secret()).collect();
        ProviderError::Call(crate::redact::redact(
            &format!("MySQL: {what}: {e}"),
            &secrets,
        ))
    }

    async fn grant(&self, c: &Call<'_>) -> Result<(), ProviderError> {
        let role = c.target;
        check_role(role).map_err(ProviderError::Refused)?;
        check_account(c.account).map_err(ProviderError::Refused)?;
        let (user, host) = split_account(c.account);
        let (mut conn, flavour) = self.conn().await?;
        let why = privileged(&mut conn, flavour, role)
            .await
            .map_err(|e| self.error("cannot read the role's privileges", e))?;
        match why {
            Privilege::Missing => {
                return Err(ProviderError::Call(format!(
                    "MySQL role `{role}` does not exist at the server"
                )))
            }
            Privilege::Held(why) if !self.allow_privileged.iter().any(|r| r == role) => {
                return Err(ProviderError::Refused(format!(
                    "MySQL role `{role}` {why}; warrant grants it only if \
                     providers.{}.allow_privileged lists it",
                    self.name
                )));
            }
            _ => {}
        }
        if let Err(e) = conn.query_drop(grant_sql(role, user, host)).await {
            return Err(match server_code(&e) {
                Some(ER_PASSWORD_NO_MATCH | ER_UNKNOWN_AUTHID) => ProviderError::Call(format!(
                    "MySQL account {} does not exist at the server",
                    quote_account(user, host)
                )),
                _ => self.error("GRANT failed", e),
            });
        }
        if self.default_role {
            self.make_default(&mut conn, flavour, role, user, host)
                .await?;
        }
        Ok(())
    }

    async fn revoke(&self, c: &Call<'_>) -> Result<(), ProviderError> {
        let role = c.target;
        let (user, host) = split_account(c.account);
        let (mut conn, flavour) = self.conn().await?;
        let held = membership(&mut conn, flavour, role, user, host)
            .await
            .map_err(|e| self.error("cannot read the role's members", e))?;
        match held {
            Some(Membership::Admin) => {
                tracing::info!(
                    provider = %self.name,
                    "the account administers the role (WITH ADMIN OPTION): left in place"
                );
                return Ok(());
            }
            Some(Membership::Member) => {
                self.drop_default(&mut conn, flavour, role, user, host)
                    .await?;
                if let Err(e) = conn.query_drop(revoke_sql(role, user, host)).await {
                    // Gone meanwhile (or never there): nothing to take away.
                    if !matches!(
                        server_code(&e),
                        Some(
                            ER_CANNOT_REVOKE_ROLE
                                | ER_INVALID_ROLE
                                | ER_PASSWORD_NO_MATCH
                                | ER_UNKNOWN_AUTHID
                        )
                    ) {
                        return Err(self.error("REVOKE failed", e));
                    }
                }
            }
            None => {
                // The role may still be the default of an account that
                // lost it some other way.
                self.drop_default(&mut conn, flavour, role, user, host)
                    .await?;
            }
        }
        if self.terminate_sessions {
            self.end_sessions(&mut conn, user).await?;
        }
        Ok(())
    }

    /// Makes `role` the account's default (MariaDB: the one default; MySQL
    /// 8: added to the account's defaults).
    async fn make_default(
        &self,
        conn: &mut Conn,
        flavour: Flavour,
        role: &str,
        user: &str,
        host: &str,
    ) -> Result<(), ProviderError> {
        let sql = match flavour {
            Flavour::MariaDb => format!(
                "SET DEFAULT ROLE {} FOR {}",
                quote_ident(role),
                quote_account(user, host)
            ),
            Flavour::MySql => {
                let mut roles = self.defaults(conn, flavour, user, host).await?;
                if roles.iter().any(|r| r == role) {
                    return Ok(());
                }
                roles.push(role.to_string());
                mysql8_default_sql(&roles, user, host)
            }
        };
        conn.query_drop(sql)
            .await
            .map_err(|e| self.error("SET DEFAULT ROLE failed", e))
    }

    /// Takes `role` out of the account's defaults, if it is there.
    async fn drop_default(
        &self,
        conn: &mut Conn,
        flavour: Flavour,
        role: &str,
        user: &str,
        host: &str,
    ) -> Result<(), ProviderError> {
        let mut roles = self.defaults(conn, flavour, user, host).await?;
        if !roles.iter().any(|r| r == role) {
            return Ok(());
        }
        roles.retain(|r| r != role);
        let sql = match flavour {
            Flavour::MariaDb => format!("SET DEFAULT ROLE NONE FOR {}", quote_account(user, host)),
            Flavour::MySql => mysql8_default_sql(&roles, user, host),
        };
        conn.query_drop(sql)
            .await
            .map_err(|e| self.error("SET DEFAULT ROLE failed", e))
    }

    /// The account's default roles (MySQL 8: those of host `%`, the only
    /// roles warrant grants).
    async fn defaults(
        &self,
        conn: &mut Conn,
        flavour: Flavour,
        user: &str,
        host: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let read = match flavour {
            Flavour::MariaDb => {
                conn.exec::<String, _, _>(
                    "SELECT default_role FROM mysql.user WHERE User = ? AND Host = ? \
                     AND default_role <> ''",
                    (user, host),
                )
                .await
            }
            Flavour::MySql => {
                conn.exec::<String, _, _>(
                    "SELECT DEFAULT_ROLE_USER FROM mysql.default_roles \
                     WHERE USER = ? AND HOST = ? AND DEFAULT_ROLE_HOST = '%'",
                    (user, host),
                )
                .await
            }
        };
        read.map_err(|e| self.error("cannot read the account's default role", e))
    }

    /// Ends every session of `user` but this one. Needs PROCESS (to see
    /// them) and CONNECTION ADMIN (to end them).
    async fn end_sessions(&self, conn: &mut Conn, user: &str) -> Result<(), ProviderError> {
        let ids: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE USER = ? AND ID <> CONNECTION_ID()",
                (user,),
            )
            .await
            .map_err(|e| self.error("cannot list the account's sessions", e))?;
        let mut ended = 0usize;
        for id in ids {
            match conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => ended = ended.saturating_add(1),
                Err(e) if server_code(&e) == Some(ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(self.error("cannot end the account's sessions", e)),
            }
        }
        if ended > 0 {
            tracing::info!(
                provider = %self.name,
                sessions = ended,
                "ended the sessions of a revoked account"
            );
        }
        Ok(())
    }

    async fn members(&self, role: &str) -> Result<Vec<String>, ProviderError> {
        let (mut conn, flavour) = self.conn().await?;
        let rows: Vec<(String, String)> = match flavour {
            Flavour::MariaDb => {
                conn.exec(
                    "SELECT User, Host FROM mysql.roles_mapping \
                     WHERE Role = ? AND Host <> '' AND Admin_option <> 'Y'",
                    (role,),
                )
                .await
            }
            Flavour::MySql => {
                conn.exec(
                    "SELECT e.TO_USER, e.TO_HOST FROM mysql.role_edges e \
                     JOIN mysql.user u ON u.User = e.TO_USER AND u.Host = e.TO_HOST \
                     WHERE e.FROM_USER = ? AND e.FROM_HOST = '%' \
                     AND e.WITH_ADMIN_OPTION <> 'Y' AND u.account_locked <> 'Y'",
                    (role,),
                )
                .await
            }
        }
        .map_err(|e| self.error("cannot read the role's members", e))?;
        Ok(rows
            .into_iter()
            .map(|(user, host)| format!("{user}@{host}"))
            .collect())
    }
}

impl Provider for Mysql {
    fn apply<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.grant(c))
    }

    fn remove<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.revoke(c))
    }

    /// The role's members, as `user@host`.
    fn holders<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ProviderError>> {
        Box::pin(async move { self.members(target).await.map(Some) })
    }

    /// One membership, read directly; an administrator's is not counted.
    fn holds<'a>(
        &'a self,
        target: &'a str,
        account: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>, ProviderError>> {
        Box::pin(async move {
            let (user, host) = split_account(account);
            let (mut conn, flavour) = self.conn().await?;
            let held = membership(&mut conn, flavour, target, user, host)
                .await
                .map_err(|e| self.error("cannot read the role's members", e))?;
            Ok(Some(held == Some(Membership::Member)))
        })
    }
}

/// How an account holds a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Member,
    /// `WITH ADMIN OPTION`: the role's administrator.
    Admin,
}

async fn membership(
    conn: &mut Conn,
    flavour: Flavour,
    role: &str,
    user: &str,
    host: &str,
) -> Result<Option<Membership>, mysql_async::Error> {
    let admin: Option<String> = match flavour {
        Flavour::MariaDb => {
            conn.exec_first(
                "SELECT Admin_option FROM mysql.roles_mapping \
                 WHERE Role = ? AND User = ? AND Host = ?",
                (role, user, host),
            )
            .await?
        }
        Flavour::MySql => {
            conn.exec_first(
                "SELECT WITH_ADMIN_OPTION FROM mysql.role_edges \
                 WHERE FROM_USER = ? AND FROM_HOST = '%' AND TO_USER = ? AND TO_HOST = ?",
                (role, user, host),
            )
            .await?
        }
    };
    Ok(admin.map(|a| {
        if a.eq_ignore_ascii_case("Y") {
            Membership::Admin
        } else {
            Membership::Member
        }
    }))
}

/// What granting a role would hand out.
#[derive(Debug)]
enum Privilege {
    /// No such role at the server.
    Missing,
    Plain,
    /// Why it is privileged, for the refusal.
    Held(String),
}

/// Whether `role`, or any role granted to it through any chain of roles,
/// holds SUPER, GRANT OPTION, CREATE USER or ALL PRIVILEGES on `*.*`,
/// walked one role at a time: each step is a plain parameterised read
/// that both flavours answer alike.
async fn privileged(
    conn: &mut Conn,
    flavour: Flavour,
    role: &str,
) -> Result<Privilege, mysql_async::Error> {
    let start = (role.to_string(), flavour.role_host().to_string());
    let mut seen: HashSet<(String, String)> = HashSet::from([start.clone()]);
    let mut queue = vec![start];
    let mut found: Vec<String> = Vec::new();
    let mut first = true;
    while let Some((user, host)) = queue.pop() {
        let row: Option<(String, String, String, String, String)> = conn
            .exec_first(
                "SELECT Super_priv, Grant_priv, Create_user_priv, Shutdown_priv, File_priv \
                 FROM mysql.user WHERE User = ? AND Host = ?",
                (&user, &host),
            )
            .await?;
        let Some((sup, grant, create_user, shutdown, file)) = row else {
            if first {
                return Ok(Privilege::Missing);
            }
            continue;
        };
        first = false;
        let y = |v: &str| v.eq_ignore_ascii_case("Y");
        let mut what = Vec::new();
        if y(&sup) && y(&create_user) && y(&shutdown) && y(&file) {
            what.push("ALL PRIVILEGES");
        } else {
            if y(&sup) {
                what.push("SUPER");
            }
            if y(&create_user) {
                what.push("CREATE USER");
            }
        }
        if y(&grant) {
            what.push("GRANT OPTION");
        }
        if !what.is_empty() {
            let on = format!("{} on *.*", what.join(", "));
            found.push(if user == role {
                format!("holds {on}")
            } else {
                format!("is granted role `{user}`, which holds {on}")
            });
        }
        let granted: Vec<(String, String)> = match flavour {
            Flavour::MariaDb => {
                conn.exec(
                    "SELECT Role, '' FROM mysql.roles_mapping WHERE User = ? AND Host = ?",
                    (&user, &host),
                )
                .await?
            }
            Flavour::MySql => {
                conn.exec(
                    "SELECT FROM_USER, FROM_HOST FROM mysql.role_edges \
                     WHERE TO_USER = ? AND TO_HOST = ?",
                    (&user, &host),
                )
                .await?
            }
        };
        for next in granted {
            if seen.len() >= MAX_ROLES_WALKED {
                found.push(format!(
                    "is granted more than {MAX_ROLES_WALKED} roles, too many to check"
                ));
                queue.clear();
                break;
            }
            if seen.insert(next.clone()) {
                queue.push(next);
            }
        }
    }
    Ok(if found.is_empty() {
        Privilege::Plain
    } else {
        found.sort();
        Privilege::Held(found.join("; "))
    })
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// A role (or user) name in backticks, backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\0', "").replace('`', "``"))
}

/// A string literal in single quotes: backslashes and quotes escaped, so
/// it ends where it should whatever it holds.
pub fn quote_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `'user'@'host'`.
pub fn quote_account(user: &str, host: &str) -> String {
    format!("{}@{}", quote_string(user), quote_string(host))
}

pub fn grant_sql(role: &str, user: &str, host: &str) -> String {
    format!(
        "GRANT {} TO {}",
        quote_ident(role),
        quote_account(user, host)
    )
}

pub fn revoke_sql(role: &str, user: &str, host: &str) -> String {
    format!(
        "REVOKE {} FROM {}",
        quote_ident(role),
        quote_account(user, host)
    )
}

/// MySQL 8's `SET DEFAULT ROLE` for a whole set (`NONE` when empty).
fn mysql8_default_sql(roles: &[String], user: &str, host: &str) -> String {
    let list = if roles.is_empty() {
        "NONE".to_string()
    } else {
        roles
            .iter()
            .map(|r| format!("{}@'%'", quote_ident(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("SET DEFAULT ROLE {list} TO {}", quote_account(user, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_role_names() {
        let cfg: MysqlProvider = toml::from_str("url_env = \"X\"").unwrap();
        for ok in ["readonly", "_x", "Ro$1-a", &"r".repeat(32)] {
            assert!(check_target(&cfg, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1ro",
            "-ro",
            "a/b",
            "a.b",
            "a@b",
            "a b",
            "a`b",
            "a'b",
            "r\u{f4}le",
            &"r".repeat(33),
        ] {
            assert!(check_target(&cfg, bad).is_err(), "{bad}");
        }
        let cfg: MysqlProvider = toml::from_str("url_env = \"X\"\nroles = [\"readonly\"]").unwrap();
        assert!(check_target(&cfg, "readonly").is_ok());
        assert!(check_target(&cfg, "admin").unwrap_err().contains("roles"));
    }

    #[test]
    fn accounts_are_user_at_host() {
        assert_eq!(split_account("dave"), ("dave", "%"));
        assert_eq!(split_account("dave@10.0.%"), ("dave", "10.0.%"));
        assert_eq!(
            split_account("dave@example.com@localhost"),
            ("dave@example.com", "localhost")
        );
        assert_eq!(canonical_account("dave"), "dave@%");
        assert_eq!(canonical_account("dave@%"), "dave@%");
        for ok in ["dave", "dave@%", "d.o-e_1@10.0.0.0/255.0.0.0", "a@b@::1"] {
            assert!(check_account(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "@%", "dave@", "da've@%", "dave@h'", "da ve", "d\\@%", "d`@%",
        ] {
            assert!(check_account(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_names_stay_names() {
        assert_eq!(
            grant_sql("r`; DROP DATABASE x; --", "a'b\\", "%' OR '1"),
            "GRANT `r``; DROP DATABASE x; --` TO 'a''b\\\\'@'%'' OR ''1'"
        );
        assert_eq!(
            revoke_sql("ro", "x\0y", "h"),
            "REVOKE `ro` FROM 'x\\0y'@'h'"
        );
        assert_eq!(
            mysql8_default_sql(&["a".into(), "b`".into()], "u", "%"),
            "SET DEFAULT ROLE `a`@'%', `b```@'%' TO 'u'@'%'"
        );
        assert_eq!(
            mysql8_default_sql(&[], "u", "h"),
            "SET DEFAULT ROLE NONE TO 'u'@'h'"
        );
    }

    #[test]
    fn the_example_fragment_reads() {
        let text = include_str!("../../deploy/mysql.example.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        let cfg: crate::config::ProviderConfig =
            table["providers"]["app-db"].clone().try_into().unwrap();
        assert_eq!(cfg.kind(), "mysql");
        cfg.section().validate("providers.app-db").unwrap();
        assert!(cfg.check_target("app-db", "reporting").is_ok());
        assert!(cfg.check_target("app-db", "admin").is_err());
    }

    #[test]
    fn a_bad_url_names_its_key_and_not_its_password() {
        let mut cfg: MysqlProvider = toml::from_str("url_env = \"DB\"").unwrap();
        let env = |_: &str| Some("mysql://warrant:s3cret-pw@db:3306/?nonsense=1".to_string());
        let err = cfg.load_secrets("providers.app-db", &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("providers.app-db.url_env"), "{text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
        let env = |_: &str| Some("mysql://warrant:s3cret-pw@db:3306".to_string());
        cfg.load_secrets("providers.app-db", &env).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret-pw"));
    }

    #[test]
    fn flavours() {
        assert_eq!(
            Flavour::from_version("10.11.19-MariaDB-0+deb12u1"),
            Flavour::MariaDb
        );
        assert_eq!(Flavour::from_version("8.0.36"), Flavour::MySql);
    }
}
