//! The evidence settings: `[audit]` (signed checkpoints of the chain's head,
//! written outside the database, and `[[audit.sinks]]` that receive every
//! event) and `[keys]` (the key that encrypts the signing keys warrant
//! generates and keeps in the database). What is done with them lives in
//! `crate::evidence` (checkpoints) and `crate::sinks`.

use std::fmt;
use std::path::PathBuf;

use chrono::Duration;
use secrecy::SecretString;
use serde::Deserialize;

use super::secrets::{load_secret, redacted};
use super::{invalid, ConfigDuration, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Where checkpoint files are written, one per checkpoint; none are
    /// written without it.
    pub checkpoint_dir: Option<PathBuf>,
    /// The Ed25519 private key (PKCS#8 PEM) that signs checkpoints; never
    /// stored in the database.
    pub checkpoint_key_file: Option<PathBuf>,
    /// How often a checkpoint is written (when the chain has grown).
    pub checkpoint_interval: ConfigDuration,
    /// The key's PEM, read and checked at load.
    #[serde(skip)]
    pub checkpoint_key: Option<SecretString>,
    pub sinks: Vec<SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_dir: None,
            checkpoint_key_file: None,
            checkpoint_interval: ConfigDuration(Duration::minutes(1)),
            checkpoint_key: None,
            sinks: Vec::new(),
        }
    }
}

/// Where events are shipped as they are appended.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The sink's stable name: its cursor is kept under it (default: the
    /// URL or the address).
    pub name: Option<String>,
    pub kind: SinkKind,
    /// `http`: where batches are POSTed.
    pub url: Option<String>,
    /// `http`: the Standard Webhooks secret (`whsec_…`).
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<SecretString>,
    /// `syslog`: `host:port`, RFC 5424 over TCP (octet-counted frames).
    pub address: Option<String>,
    /// Events per batch (`http`) or per connection turn (`syslog`).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The deadline of one delivery.
    #[serde(default = "default_sink_timeout")]
    pub timeout: ConfigDuration,
}

fn default_batch() -> usize {
    100
}

fn default_sink_timeout() -> ConfigDuration {
    ConfigDuration(Duration::seconds(5))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Http,
    Syslog,
}

impl SinkConfig {
    /// The name the sink's cursor is kept under.
    pub fn id(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.url.clone())
            .or_else(|| self.address.clone())
            .unwrap_or_default()
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .field("address", &self.address)
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AuditConfig {
    pub(super) fn load_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.load_checkpoint_key()?;
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if sink.kind == SinkKind::Http {
                let at = format!("audit.sinks[{i}]");
                let secret = load_secret(&at, "secret", &sink.secret_env, &sink.secret_file, env)?;
                crate::crypto::signature::whsec_key(secrecy::ExposeSecret::expose_secret(&secret))
                    .map_err(|m| invalid(format!("{at}.secret_env"), m))?;
                sink.secret = Some(secret);
            }
        }
        Ok(())
    }

    /// Reads and checks `checkpoint_key_file`, if one is set.
    pub(super) fn load_checkpoint_key(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.checkpoint_key_file {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "audit.checkpoint_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            crate::crypto::checkpoint::signing_key_from_pem(&pem).map_err(|m| {
                invalid(
                    "audit.checkpoint_key_file",
                    format!("{}: {m}", path.display()),
                )
            })?;
            self.checkpoint_key = Some(SecretString::from(pem));
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.checkpoint_dir.is_some() != self.checkpoint_key_file.is_some() {
            return Err(invalid(
                "audit.checkpoint_dir",
                "checkpoints need both checkpoint_dir and checkpoint_key_file",
            ));
        }
        if self.checkpoint_interval.0 < Duration::seconds(1) {
            return Err(invalid("audit.checkpoint_interval", "must be at least 1s"));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let at = format!("audit.sinks[{i}]");
            match sink.kind {
                SinkKind::Http => {
                    let ok = sink
                        .url
                        .as_deref()
                        .and_then(|u| url::Url::parse(u).ok())
                        .is_some_and(|u| matches!(u.scheme(), "http" | "https"));
                    if !ok {
                        return Err(invalid(format!("{at}.url"), "an http(s) URL is required"));
                    }
                }
                SinkKind::Syslog => {
                    let ok = sink
                        .address
                        .as_deref()
                        .and_then(|a| a.rsplit_once(':'))
                        .is_some_and(|(host, port)| {
                            !host.is_empty() && port.parse::<u16>().is_ok()
                        });
                    if !ok {
                        return Err(invalid(format!("{at}.address"), "`host:port` is required"));
                    }
                }
            }
            if !(1..=10_000).contains(&sink.batch_size) {
                return Err(invalid(format!("{at}.batch_size"), "must be 1 to 10000"));
            }
            if sink.timeout.0 <= Duration::zero() || sink.timeout.0 > Duration::minutes(5) {
                return Err(invalid(
                    format!("{at}.timeout"),
                    "must be above 0 and at most 5m",
                ));
            }
            if !ids.insert(sink.id()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("another sink is named `{}`", sink.id()),
                ));
            }
        }
        Ok(())
    }
}

/// `[keys]`: the key-encryption key for signing keys kept in the database:
/// 32 random bytes, base64, from `secret_env` or `secret_file`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<SecretString>,
}

impl fmt::Debug for KeysConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeysConfig")
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

impl KeysConfig {
    pub(super) fn load_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if self.secret_env.is_none() && self.secret_file.is_none() {
            return Ok(());
        }
        let secret = load_secret("keys", "secret", &self.secret_env, &self.secret_file, env)?;
        crate::crypto::keys::key_encryption_key(&secret)
            .map_err(|m| invalid("keys.secret_env", m))?;
        self.secret = Some(secret);
        Ok(())
    }
}
