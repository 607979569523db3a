//! The configuration file: its shape, defaults, environment overrides, secret
//! loading and validation. Every error names the key it is about, so
//! `warrant check-config` can say exactly what to fix.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Duration;
use serde::{Deserialize, Deserializer};

use crate::crypto::signature::whsec_key;
use crate::domain::{parse_duration, Resource, Source};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret value read from the environment or a file. It never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A duration written `90s`, `30m`, `4h`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl ConfigDuration {
    pub fn std(self) -> std::time::Duration {
        self.0.to_std().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub sources: SourcesConfig,
    #[serde(default)]
    pub identities: Vec<Identity>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub ci: CiConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    /// How far a signed timestamp may be from now, either way.
    pub timestamp_tolerance: ConfigDuration,
    /// Log format: `text` for people, `json` for collectors.
    pub log_format: LogFormat,
    /// How long a SIGTERM waits for in-flight requests.
    pub shutdown_timeout: ConfigDuration,
    /// How long a webhook body may take to arrive once its headers have;
    /// a slower one is answered 408.
    pub read_timeout: ConfigDuration,
    /// Webhook bodies read at once; one more is answered 503 at once.
    pub max_inflight_bodies: usize,
    /// How often the database-wide gauges of `/metrics` are recomputed.
    pub metrics_refresh: ConfigDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            timestamp_tolerance: ConfigDuration(Duration::seconds(300)),
            log_format: LogFormat::Text,
            shutdown_timeout: ConfigDuration(Duration::seconds(30)),
            read_timeout: ConfigDuration(Duration::seconds(10)),
            // Above the number of slow senders one replica is expected to
            // outlast (the load bench holds 2,000 trickling sockets while
            // signed webhooks must still get in); each costs a task and the
            // bytes it has sent, never a buffer of its declared length.
            max_inflight_bodies: 4096,
            metrics_refresh: ConfigDuration(Duration::seconds(15)),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    /// Connections in the pool; SQLite uses one writer whatever this says.
    pub pool_size: u32,
    /// How long a request waits for a connection before answering 503.
    pub connect_timeout: ConfigDuration,
    /// Group-commit writers on PostgreSQL, each holding one connection
    /// while it commits (SQLite has one).
    pub writers: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://warrant.db".into(),
            pool_size: 8,
            connect_timeout: ConfigDuration(Duration::seconds(5)),
            writers: 2,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the bearer token; the token itself is never stored.
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    pub github: Option<GithubSource>,
    pub jira: Option<JiraSource>,
    pub servicenow: Option<ServicenowSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSource {
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<Secret>,
    pub repositories: Vec<String>,
    #[serde(default = "default_approval_label")]
    pub approval_label: String,
    /// Back-links: GitHub REST API base (GitHub Enterprise too).
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// Back-links: the API token; unset means no comments on issues.
    pub token_env: Option<String>,
    #[serde(skip)]
    pub token: Option<Secret>,
}

fn default_approval_label() -> String {
    "access-approved".into()
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraSource {
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<Secret>,
    pub projects: Vec<String>,
    #[serde(default = "default_approved_statuses")]
    pub approved_statuses: Vec<String>,
    #[serde(default)]
    pub closed_statuses: Vec<String>,
    #[serde(default)]
    pub fields: JiraFields,
    /// Back-links: the site's REST base, e.g. https://acme.atlassian.net.
    pub api_url: Option<String>,
    /// `email:api-token` (Jira Cloud, basic auth) or a personal access token.
    pub token_env: Option<String>,
    #[serde(skip)]
    pub token: Option<Secret>,
}

fn default_approved_statuses() -> Vec<String> {
    vec!["Approved".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JiraFields {
    pub resource: String,
    pub start: Option<String>,
    pub end: Option<String>,
    pub duration: Option<String>,
    pub subject: String,
}

impl Default for JiraFields {
    fn default() -> Self {
        JiraFields {
            resource: "customfield_10100".into(),
            start: None,
            end: None,
            duration: None,
            subject: "reporter".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicenowSource {
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub fields: ServicenowFields,
    /// Back-links: the instance's base URL, e.g. https://acme.service-now.com.
    pub api_url: Option<String>,
    /// `user:password` (basic auth) or an OAuth bearer token.
    pub token_env: Option<String>,
    #[serde(skip)]
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicenowFields {
    pub resource: String,
    pub subject: String,
}

impl Default for ServicenowFields {
    fn default() -> Self {
        ServicenowFields {
            resource: "u_access_resource".into(),
            subject: "assigned_to".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub principal: String,
    pub github: Option<String>,
    pub jira: Option<String>,
    pub servicenow: Option<String>,
    /// Account per provider; a provider not named here uses the principal.
    #[serde(default)]
    pub accounts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    /// Resource patterns; `*` matches any run of characters.
    pub resources: Vec<String>,
    /// `github`, `jira`, `jira:PROJECT`, `servicenow`, `ci`.
    pub sources: Vec<String>,
    #[serde(default = "star")]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub max_duration: ConfigDuration,
    pub default_duration: Option<ConfigDuration>,
}

fn star() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone)]
pub enum ProviderConfig {
    Postgres(PostgresProvider),
    Http(HttpProvider),
    GithubTeam(GithubTeamProvider),
    Token(TokenProvider),
}

/// Marks an error inside a provider table with the key it is about; serde's
/// tagged enums would otherwise only name the table.
const FIELD_MARK: &str = "\u{1}field ";

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => {
                return Err(D::Error::custom(format!(
                    "{FIELD_MARK}kind: must be a string"
                )))
            }
            None => {
                return Err(D::Error::custom(
                    "missing field `kind` (postgres, http, github_team or token)",
                ))
            }
        };
        fn inner<'a, T: Deserialize<'a>, E: Error>(table: toml::Table) -> Result<T, E> {
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let message = e.inner().message();
                if path == "." {
                    E::custom(message)
                } else {
                    E::custom(format!("{FIELD_MARK}{path}: {message}"))
                }
            })
        }
        match kind.as_str() {
            "postgres" => inner(table).map(ProviderConfig::Postgres),
            "http" => inner(table).map(ProviderConfig::Http),
            "github_team" => inner(table).map(ProviderConfig::GithubTeam),
            "token" => inner(table).map(ProviderConfig::Token),
            other => Err(D::Error::custom(format!(
                "{FIELD_MARK}kind: unknown provider kind `{}` (postgres, http, github_team or token)",
                crate::domain::truncate(other, 40)
            ))),
        }
    }
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Postgres(_) => "postgres",
            ProviderConfig::Http(_) => "http",
            ProviderConfig::GithubTeam(_) => "github_team",
            ProviderConfig::Token(_) => "token",
        }
    }

    /// The deadline of one call to the provider; `None` for a provider
    /// that calls nothing outside warrant.
    pub fn timeout(&self) -> Option<ConfigDuration> {
        match self {
            ProviderConfig::Postgres(p) => Some(p.timeout),
            ProviderConfig::Http(h) => Some(h.timeout),
            ProviderConfig::GithubTeam(g) => Some(g.timeout),
            ProviderConfig::Token(_) => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresProvider {
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    #[serde(skip)]
    pub url: Option<Secret>,
    /// Roles this provider may grant; empty means any role a policy allows.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Roles it may grant although they are, or belong to, a role with
    /// SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS; any other such role
    /// is refused at grant time.
    #[serde(default)]
    pub allow_privileged: Vec<String>,
    /// The deadline of one grant or revoke (shorter than `jobs.lease`); on
    /// the provider's server also the longest a statement, a wait for a
    /// lock or a wait for a connection may take.
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProvider {
    pub url: String,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<Secret>,
    #[serde(default = "default_http_timeout")]
    pub timeout: ConfigDuration,
}

fn default_http_timeout() -> ConfigDuration {
    ConfigDuration(Duration::seconds(5))
}

fn default_provider_timeout() -> ConfigDuration {
    ConfigDuration(Duration::seconds(10))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubTeamProvider {
    #[serde(default = "default_github_api")]
    pub api_url: String,
    pub org: String,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(skip)]
    pub token: Option<Secret>,
    /// The deadline of one grant or revoke; shorter than `jobs.lease`.
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenProvider {
    /// PKCS#8 PEM signing key (P-256 for ES256, or Ed25519 for EdDSA);
    /// without it a P-256 key is generated and kept in the database.
    pub key_file: Option<PathBuf>,
    /// Earlier `key_file`s, still published and accepted after a rotation
    /// until the credentials they signed have expired.
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
    /// For the generated key: make a new one when it is this old. The old
    /// one stays published until every credential it signed has expired.
    /// (One generated key serves every token provider without `key_file`;
    /// the shortest `rotate_after` among them applies.)
    pub rotate_after: Option<ConfigDuration>,
    /// The credentials' `iss`.
    #[serde(default = "default_token_issuer")]
    pub issuer: String,
    /// The contents of `key_file`, read and checked at load.
    #[serde(skip)]
    pub key: Option<Secret>,
    /// The contents of `previous_key_files`.
    #[serde(skip)]
    pub previous_keys: Vec<Secret>,
}

fn default_token_issuer() -> String {
    "warrant".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiConfig {
    #[serde(default)]
    pub issuers: Vec<CiIssuer>,
    #[serde(default)]
    pub trust: Vec<CiTrust>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiIssuer {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// The claims that name one pipeline run (its grants are idempotent
    /// per run). Default: `run_id` and `run_attempt` when the token has
    /// `run_id` (GitHub Actions), else `pipeline_id` and `job_id` (GitLab).
    #[serde(default)]
    pub run_claims: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiTrust {
    pub issuer: String,
    pub principal: String,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    pub resources: Vec<String>,
    pub max_duration: ConfigDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Attempts to apply a grant before it is `failed`. Revocation never gives up.
    pub apply_attempts: u32,
    /// The first retry waits this long; each further one twice as long.
    pub initial_backoff: ConfigDuration,
    /// Cap on the wait between retries.
    pub max_backoff: ConfigDuration,
    /// A claimed job whose runner died is taken over after this long. A
    /// running job renews it every third of its length; every provider's
    /// `timeout` is shorter, so a call ends before its lease could pass on.
    pub lease: ConfigDuration,
    /// How often the safety-net sweep looks for overdue grants.
    pub sweep_interval: ConfigDuration,
    /// Jobs run at once by one process. Each mostly waits (on its provider
    /// and on its step's commit batch), so under a flood of webhooks the
    /// slots, not the CPU, bound how fast grants are applied: at 64 the
    /// benchmark's approvals fell seconds behind; at 256 they kept up.
    pub concurrency: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            apply_attempts: 8,
            initial_backoff: ConfigDuration(Duration::seconds(1)),
            max_backoff: ConfigDuration(Duration::minutes(5)),
            // The contract takes a dead runner's job over within 15s: the
            // lease, then at most a second until a runner claims it. Above
            // the providers' default timeouts (5s, 10s).
            lease: ConfigDuration(Duration::seconds(12)),
            sweep_interval: ConfigDuration(Duration::seconds(30)),
            concurrency: 256,
        }
    }
}

/// Where the configuration file is: `--config`, else `WARRANT_CONFIG`, else `./warrant.toml`.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("WARRANT_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("warrant.toml"),
    }
}

impl Config {
    /// Reads, overrides from the environment, loads secrets and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses a configuration; `env` looks up environment variables.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            let mut message = e.inner().message().to_string();
            if let Some((field, rest)) = message
                .strip_prefix(FIELD_MARK)
                .and_then(|m| m.split_once(": "))
                .map(|(f, r)| (f.to_string(), r.to_string()))
            {
                key = format!("{key}.{field}");
                message = rest;
            }
            invalid(
                if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message,
            )
        })?;
        if let Some(url) = env("WARRANT_DATABASE_URL").filter(|u| !u.is_empty()) {
            config.database.url = url;
        }
        if let Some(listen) = env("WARRANT_SERVER_LISTEN").filter(|u| !u.is_empty()) {
            config.server.listen = listen;
        }
        config.load_secrets(env)?;
        config.validate()?;
        Ok(config)
    }

    fn load_secrets(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(g) = &mut self.sources.github {
            g.secret = Some(load_secret(
                "sources.github",
                "secret",
                &g.secret_env,
                &g.secret_file,
                env,
            )?);
            g.token = load_optional("sources.github", &g.token_env, env)?;
        }
        if let Some(j) = &mut self.sources.jira {
            j.secret = Some(load_secret(
                "sources.jira",
                "secret",
                &j.secret_env,
                &j.secret_file,
                env,
            )?);
            j.token = load_optional("sources.jira", &j.token_env, env)?;
            if j.token.is_some() && j.api_url.is_none() {
                return Err(invalid(
                    "sources.jira.api_url",
                    "is needed with token_env (the site's REST base URL)",
                ));
            }
        }
        if let Some(s) = &mut self.sources.servicenow {
            let secret = load_secret(
                "sources.servicenow",
                "secret",
                &s.secret_env,
                &s.secret_file,
                env,
            )?;
            whsec_key(secret.expose()).map_err(|m| invalid("sources.servicenow.secret_env", m))?;
            s.secret = Some(secret);
            s.token = load_optional("sources.servicenow", &s.token_env, env)?;
            if s.token.is_some() && s.api_url.is_none() {
                return Err(invalid(
                    "sources.servicenow.api_url",
                    "is needed with token_env (the instance's base URL)",
                ));
            }
        }
        for (name, p) in self.providers.iter_mut() {
            let at = format!("providers.{name}");
            match p {
                ProviderConfig::Postgres(pg) => {
                    pg.url = Some(load_secret(&at, "url", &pg.url_env, &pg.url_file, env)?);
                }
                ProviderConfig::Http(h) => {
                    let secret = load_secret(&at, "secret", &h.secret_env, &h.secret_file, env)?;
                    whsec_key(secret.expose())
                        .map_err(|m| invalid(format!("{at}.secret_env"), m))?;
                    h.secret = Some(secret);
                }
                ProviderConfig::GithubTeam(g) => {
                    g.token = Some(load_secret(&at, "token", &g.token_env, &g.token_file, env)?);
                }
                ProviderConfig::Token(t) => {
                    let read = |key: String, path: &Path| -> Result<Secret, ConfigError> {
                        let pem = std::fs::read_to_string(path).map_err(|e| {
                            invalid(&key, format!("cannot read {}: {e}", path.display()))
                        })?;
                        crate::crypto::keys::SigningKey::from_pem(&pem)
                            .map_err(|m| invalid(&key, format!("{}: {m}", path.display())))?;
                        Ok(Secret::new(pem))
                    };
                    if let Some(path) = &t.key_file {
                        t.key = Some(read(format!("{at}.key_file"), path)?);
                    }
                    let mut previous = Vec::new();
                    for (i, path) in t.previous_key_files.iter().enumerate() {
                        previous.push(read(format!("{at}.previous_key_files[{i}]"), path)?);
                    }
                    t.previous_keys = previous;
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            )
        })?;
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be above 0"));
        }
        if self.server.read_timeout.0 <= Duration::zero() {
            return Err(invalid("server.read_timeout", "must be above 0"));
        }
        if !(1..=1_000_000).contains(&self.server.max_inflight_bodies) {
            return Err(invalid(
                "server.max_inflight_bodies",
                "must be between 1 and 1000000",
            ));
        }
        if self.server.metrics_refresh.0 < Duration::seconds(1) {
            return Err(invalid("server.metrics_refresh", "must be at least 1s"));
        }
        crate::db::DbUrl::parse(&self.database.url).map_err(|m| invalid("database.url", m))?;
        if self.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be above 0"));
        }
        if self.database.writers == 0 {
            return Err(invalid("database.writers", "must be above 0"));
        }

        let mut names = HashSet::new();
        for (i, t) in self.api.tokens.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    format!("api.tokens[{i}].name"),
                    format!("`{}` is used twice", t.name),
                ));
            }
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("api.tokens[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the token)",
                ));
            }
        }

        if let Some(g) = &self.sources.github {
            if g.repositories.is_empty() {
                return Err(invalid(
                    "sources.github.repositories",
                    "lists no repository",
                ));
            }
            for (i, r) in g.repositories.iter().enumerate() {
                let parts: Vec<&str> = r.split('/').collect();
                if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                    return Err(invalid(
                        format!("sources.github.repositories[{i}]"),
                        format!("`{r}` is not OWNER/REPO"),
                    ));
                }
            }
            if g.approval_label.trim().is_empty() {
                return Err(invalid("sources.github.approval_label", "is empty"));
            }
        }
        if let Some(j) = &self.sources.jira {
            if j.projects.is_empty() {
                return Err(invalid("sources.jira.projects", "lists no project"));
            }
            if j.approved_statuses.is_empty() {
                return Err(invalid("sources.jira.approved_statuses", "lists no status"));
            }
        }

        let mut principals = HashSet::new();
        for (i, id) in self.identities.iter().enumerate() {
            if id.principal.trim().is_empty() {
                return Err(invalid(format!("identities[{i}].principal"), "is empty"));
            }
            if !principals.insert(id.principal.as_str()) {
                return Err(invalid(
                    format!("identities[{i}].principal"),
                    format!("`{}` is listed twice", id.principal),
                ));
            }
            for p in id.accounts.keys() {
                if !self.providers.contains_key(p) {
                    return Err(invalid(
                        format!("identities[{i}].accounts.{p}"),
                        format!("no provider `{p}` is configured"),
                    ));
                }
            }
        }
        for source in Source::ALL {
            let mut seen = HashSet::new();
            for (i, id) in self.identities.iter().enumerate() {
                if let Some(acct) = id.account_in(source) {
                    if !seen.insert(acct) {
                        return Err(invalid(
                            format!("identities[{i}].{source}"),
                            format!("account `{acct}` belongs to two principals"),
                        ));
                    }
                }
            }
        }

        for (name, _) in self.providers.iter() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    format!("providers.{name}"),
                    "a provider name is letters, digits, `-` and `_`",
                ));
            }
        }
        for (name, p) in self.providers.iter() {
            if let ProviderConfig::Postgres(pg) = p {
                let at = format!("providers.{name}");
                for (key, roles) in [
                    ("roles", &pg.roles),
                    ("allow_privileged", &pg.allow_privileged),
                ] {
                    for (i, role) in roles.iter().enumerate() {
                        crate::domain::check_pg_role(role)
                            .map_err(|m| invalid(format!("{at}.{key}[{i}]"), m))?;
                    }
                }
                if pg.timeout.0 > Duration::minutes(10) {
                    return Err(invalid(format!("{at}.timeout"), "is longer than 10m"));
                }
            }
        }
        for (name, p) in self.providers.iter() {
            if let ProviderConfig::Http(h) = p {
                let ok = url::Url::parse(&h.url)
                    .map(|u| matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(false);
                if !ok {
                    return Err(invalid(
                        format!("providers.{name}.url"),
                        format!("`{}` is not an http(s) URL", h.url),
                    ));
                }
            }
        }

        for (i, p) in self.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            if p.resources.is_empty() {
                return Err(invalid(format!("{at}.resources"), "lists no resource"));
            }
            for (j, r) in p.resources.iter().enumerate() {
                let provider = r.split('/').next().unwrap_or_default();
                if !r.contains('/')
                    || (!provider.contains('*') && !self.providers.contains_key(provider))
                {
                    return Err(invalid(
                        format!("{at}.resources[{j}]"),
                        format!("`{r}` does not name a configured provider as PROVIDER/TARGET"),
                    ));
                }
            }
            for (j, s) in p.sources.iter().enumerate() {
                let (src, scope) = s
                    .split_once(':')
                    .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
                let ok = match src {
                    "github" | "jira" | "servicenow" => scope.is_none_or(|x| !x.is_empty()),
                    "ci" | "*" => scope.is_none(),
                    _ => false,
                };
                if !ok {
                    return Err(invalid(
                        format!("{at}.sources[{j}]"),
                        format!("`{s}` is not github, jira, jira:PROJECT, servicenow, ci or *"),
                    ));
                }
            }
            if let Some(d) = p.default_duration {
                if d > p.max_duration {
                    return Err(invalid(
                        format!("{at}.default_duration"),
                        "is longer than max_duration",
                    ));
                }
            }
        }

        for (name, p) in self.providers.iter() {
            if let ProviderConfig::Token(t) = p {
                if t.issuer.trim().is_empty() {
                    return Err(invalid(format!("providers.{name}.issuer"), "is empty"));
                }
            }
        }

        let issuer_names: HashSet<&str> = self.ci.issuers.iter().map(|i| i.name.as_str()).collect();
        let mut seen_issuers = HashSet::new();
        for (i, iss) in self.ci.issuers.iter().enumerate() {
            if iss.jwks_file.is_some() == iss.jwks_url.is_some() {
                return Err(invalid(
                    format!("ci.issuers[{i}]"),
                    "give exactly one of jwks_file and jwks_url",
                ));
            }
            if iss.name.is_empty()
                || !iss
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(
                    format!("ci.issuers[{i}].name"),
                    "an issuer name is letters, digits, `-`, `_` and `.`",
                ));
            }
            if !seen_issuers.insert(iss.name.as_str()) {
                return Err(invalid(
                    format!("ci.issuers[{i}].name"),
                    format!("`{}` is used twice", iss.name),
                ));
            }
            if iss.issuer.trim().is_empty() {
                return Err(invalid(format!("ci.issuers[{i}].issuer"), "is empty"));
            }
            if iss.audience.trim().is_empty() {
                return Err(invalid(format!("ci.issuers[{i}].audience"), "is empty"));
            }
            if let Some(u) = &iss.jwks_url {
                let ok = url::Url::parse(u)
                    .map(|u| matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(false);
                if !ok {
                    return Err(invalid(
                        format!("ci.issuers[{i}].jwks_url"),
                        format!("`{u}` is not an http(s) URL"),
                    ));
                }
            }
        }
        for (i, t) in self.ci.trust.iter().enumerate() {
            if !issuer_names.contains(t.issuer.as_str()) {
                return Err(invalid(
                    format!("ci.trust[{i}].issuer"),
                    format!("no [[ci.issuers]] is named `{}`", t.issuer),
                ));
            }
            if t.principal.trim().is_empty() {
                return Err(invalid(format!("ci.trust[{i}].principal"), "is empty"));
            }
            // A rule without claims would trust every pipeline the issuer
            // signs for, in any repository.
            if t.claims.is_empty() {
                return Err(invalid(
                    format!("ci.trust[{i}].claims"),
                    "names no claim; bind the rule to a repository or project, e.g. { repository = \"acme/app\" }",
                ));
            }
            for (j, r) in t.resources.iter().enumerate() {
                if r.parse::<Resource>().is_err() && !r.contains('*') {
                    return Err(invalid(
                        format!("ci.trust[{i}].resources[{j}]"),
                        format!("`{r}` is not PROVIDER/TARGET"),
                    ));
                }
            }
        }
        if self.jobs.apply_attempts == 0 {
            return Err(invalid("jobs.apply_attempts", "must be at least 1"));
        }
        if self.jobs.concurrency == 0 {
            return Err(invalid("jobs.concurrency", "must be at least 1"));
        }
        if self.jobs.lease.0 < Duration::seconds(1) {
            return Err(invalid("jobs.lease", "must be at least 1s"));
        }
        // A call that outlived its job's lease could overlap the next
        // runner's call for the same grant.
        for (name, p) in self.providers.iter() {
            let Some(timeout) = p.timeout() else {
                continue;
            };
            if timeout.0 <= Duration::zero() {
                return Err(invalid(
                    format!("providers.{name}.timeout"),
                    "must be above 0",
                ));
            }
            if timeout >= self.jobs.lease {
                return Err(invalid(
                    format!("providers.{name}.timeout"),
                    format!(
                        "must be shorter than jobs.lease ({})",
                        crate::domain::format_duration(self.jobs.lease.0)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The principal a source account maps to, if `[[identities]]` names it.
    /// Whether warrant still follows tickets of `source` in `project` (a
    /// GitHub `OWNER/REPO`, a Jira project key; ServiceNow has one table).
    /// Names compare as the sources' parsers compare them: case and
    /// surrounding blanks aside.
    pub fn watches(&self, source: Source, project: &str) -> bool {
        let listed = |list: &[String]| {
            list.iter()
                .any(|p| p.trim().to_lowercase() == project.trim().to_lowercase())
        };
        match source {
            Source::Github => self
                .sources
                .github
                .as_ref()
                .is_some_and(|g| listed(&g.repositories)),
            Source::Jira => self
                .sources
                .jira
                .as_ref()
                .is_some_and(|j| listed(&j.projects)),
            Source::Servicenow => self.sources.servicenow.is_some(),
        }
    }

    pub fn principal_for(&self, source: Source, account: &str) -> Option<&Identity> {
        self.identities
            .iter()
            .find(|i| i.account_in(source) == Some(account))
    }

    pub fn identity(&self, principal: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.principal == principal)
    }

    /// The subject's account on a provider: `accounts.PROVIDER`, else the principal.
    pub fn account_on(&self, principal: &str, provider: &str) -> String {
        self.identity(principal)
            .and_then(|i| i.accounts.get(provider).cloned())
            .unwrap_or_else(|| principal.to_string())
    }
}

impl Identity {
    pub fn account_in(&self, source: Source) -> Option<&str> {
        match source {
            Source::Github => self.github.as_deref(),
            Source::Jira => self.jira.as_deref(),
            Source::Servicenow => self.servicenow.as_deref(),
        }
    }
}

/// An optional secret named by `token_env`: absent if the key is absent.
fn load_optional(
    at: &str,
    env_key: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match env_key {
        None => Ok(None),
        Some(_) => load_secret(at, "token", env_key, &None, env).map(Some),
    }
}

fn load_secret(
    at: &str,
    what: &str,
    env_key: &Option<String>,
    file_key: &Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    match (env_key, file_key) {
        (Some(var), None) => match env(var) {
            Some(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
            _ => Err(invalid(
                format!("{at}.{what}_env"),
                format!("environment variable `{var}` is not set"),
            )),
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
            Ok(_) => Err(invalid(
                format!("{at}.{what}_file"),
                format!("{} is empty", path.display()),
            )),
            Err(e) => Err(invalid(
                format!("{at}.{what}_file"),
                format!("cannot read {}: {e}", path.display()),
            )),
        },
        (Some(_), Some(_)) => Err(invalid(
            format!("{at}.{what}_env"),
            format!("give one of {what}_env and {what}_file, not both"),
        )),
        (None, None) => Err(invalid(
            format!("{at}.{what}_env"),
            format!("missing: name the secret with {what}_env or {what}_file"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "GH" => Some("gh-secret".into()),
            "HOOKS" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &env)
    }

    #[test]
    fn empty_config_has_safe_defaults() {
        let c = parse("").unwrap();
        assert!(
            c.jobs.lease.0 <= Duration::seconds(14),
            "taken over within 15s"
        );
        assert_eq!(c.database.url, "sqlite://warrant.db");
        assert_eq!(c.server.max_body_bytes, 1 << 20);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"x\"", "server.listen"),
            ("[server]\nbogus = 1", "server"),
            ("[server]\nmax_body_bytes = \"big\"", "server.max_body_bytes"),
            ("[server]\nread_timeout = \"0s\"", "server.read_timeout"),
            ("[server]\nmax_inflight_bodies = 0", "server.max_inflight_bodies"),
            ("[server]\nmetrics_refresh = \"0s\"", "server.metrics_refresh"),
            ("[providers.hooks]\nkind = \"http\"\nurl = \"http://x\"\nsecret_env = \"NOPE\"", "providers.hooks.secret_env"),
            ("[sources.github]\nsecret_env = \"NOPE\"\nrepositories = [\"a/b\"]", "sources.github.secret_env"),
            ("[[policies]]\nname = \"p\"\nresources = [\"x/y\"]\nsources = [\"github\"]\nmax_duration = \"4x\"", "policies[0].max_duration"),
            ("[[policies]]\nname = \"p\"\nresources = [\"x/y\"]\nsources = [\"github\"]\nmax_duration = \"4h\"", "policies[0].resources[0]"),
            ("[providers.db]\nkind = \"postgres\"\nurl_env = \"GH\"\nallow_privileged = [\"ok\", \"no way\"]", "providers.db.allow_privileged[1]"),
            ("[providers.db]\nkind = \"postgres\"\nurl_env = \"GH\"\nallow_privileged = \"admin\"", "providers.db.allow_privileged"),
            ("[providers.db]\nkind = \"postgres\"\nurl_env = \"GH\"\nroles = [\"../x\"]", "providers.db.roles[0]"),
            ("[providers.db]\nkind = \"postgres\"\nurl_env = \"GH\"\ntimeout = \"1d\"", "providers.db.timeout"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn a_provider_timeout_must_be_shorter_than_the_lease() {
        let http =
            "[providers.hooks]\nkind = \"http\"\nurl = \"http://x\"\nsecret_env = \"HOOKS\"\n";
        let refused = [
            format!("{http}timeout = \"60s\"\n"),
            format!("{http}timeout = \"2m\"\n"),
            format!("{http}timeout = \"5s\"\n[jobs]\nlease = \"5s\"\n"),
            format!("{http}timeout = \"0s\"\n"),
        ];
        for text in &refused {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains("`providers.hooks.timeout`"),
                "{text:?} gave {err}"
            );
        }
        let ok = parse(&format!("{http}timeout = \"4s\"\n[jobs]\nlease = \"5s\"\n")).unwrap();
        assert_eq!(
            ok.providers["hooks"].timeout(),
            Some(ConfigDuration(Duration::seconds(4)))
        );
        // The defaults (10s for postgres and github_team) against a short lease.
        for kind in [
            "kind = \"github_team\"\norg = \"acme\"\ntoken_env = \"GH\"",
            "kind = \"postgres\"\nurl_env = \"GH\"",
        ] {
            let text = format!("[providers.p]\n{kind}\n[jobs]\nlease = \"10s\"\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("`providers.p.timeout`"), "{text:?} gave {err}");
            let text =
                format!("[providers.p]\n{kind}\ntimeout = \"9s\"\n[jobs]\nlease = \"10s\"\n");
            assert!(parse(&text).is_ok(), "{text:?}");
        }
        let err = parse("[jobs]\nlease = \"0s\"\n").unwrap_err().to_string();
        assert!(err.contains("`jobs.lease`"), "{err}");
    }

    #[test]
    fn resource_patterns_are_not_resources() {
        let c = parse(
            r#"
[[policies]]
name = "p"
resources = ["hooks/*", "hooks/**", "hooks/a/*/b", "*/readonly"]
sources = ["github"]
max_duration = "4h"
[providers.hooks]
kind = "http"
url = "http://127.0.0.1:9/x"
secret_env = "HOOKS"
[[ci.issuers]]
name = "gh"
issuer = "https://issuer"
audience = "warrant"
jwks_file = "/dev/null"
[[ci.trust]]
issuer = "gh"
principal = "ci:acme/app"
claims = { repository = "acme/app" }
resources = ["hooks/*", "hooks/**"]
max_duration = "30m"
"#,
        )
        .unwrap();
        assert_eq!(c.policies[0].resources.len(), 4);
        assert_eq!(c.ci.trust[0].resources, ["hooks/*", "hooks/**"]);
    }

    #[test]
    fn secrets_do_not_print() {
        let c = parse("[sources.github]\nsecret_env = \"GH\"\nrepositories = [\"a/b\"]").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("gh-secret"));
        assert!(dbg.contains("redacted"));
    }
}
