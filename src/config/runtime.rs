//! How the process runs: the HTTP server (`[server]`), the database
//! (`[database]`) and the job runner (`[jobs]`), with their defaults and the
//! bounds each value must keep.

use std::net::SocketAddr;

use chrono::Duration;
use serde::Deserialize;

use super::{invalid, ConfigDuration, ConfigError};

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
    /// The URL clients reach this service at (behind a load balancer, its
    /// URL); default `http://{listen}`. Names the issuers of credentials.
    pub public_url: Option<String>,
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
            public_url: None,
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

impl ServerConfig {
    /// `public_url`, else `http://{listen}`; without a trailing `/`.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.public_url {
            let ok = url::Url::parse(u).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.has_host()
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if !ok {
                return Err(invalid(
                    "server.public_url",
                    format!("`{u}` is not an http(s) URL like https://warrant.example.com"),
                ));
            }
        }
        self.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.listen),
            )
        })?;
        if self.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be above 0"));
        }
        if self.read_timeout.0 <= Duration::zero() {
            return Err(invalid("server.read_timeout", "must be above 0"));
        }
        if !(1..=1_000_000).contains(&self.max_inflight_bodies) {
            return Err(invalid(
                "server.max_inflight_bodies",
                "must be between 1 and 1000000",
            ));
        }
        if self.metrics_refresh.0 < Duration::seconds(1) {
            return Err(invalid("server.metrics_refresh", "must be at least 1s"));
        }
        Ok(())
    }
}

impl DatabaseConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        crate::db::DbUrl::parse(&self.url).map_err(|m| invalid("database.url", m))?;
        if self.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be above 0"));
        }
        if self.writers == 0 {
            return Err(invalid("database.writers", "must be above 0"));
        }
        Ok(())
    }
}

impl JobsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.apply_attempts == 0 {
            return Err(invalid("jobs.apply_attempts", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(invalid("jobs.concurrency", "must be at least 1"));
        }
        if self.lease.0 < Duration::seconds(1) {
            return Err(invalid("jobs.lease", "must be at least 1s"));
        }
        Ok(())
    }
}
