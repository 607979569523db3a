//! The configuration file: its shape, defaults, environment overrides, secret
//! loading and validation. Every error names the key it is about, so
//! `warrant check-config` can say exactly what to fix. Each part of the file
//! has its own module: `runtime` (server, database, jobs), `access` (API
//! tokens, identities, policies), `sources`, `providers`, `ci`, `drift`, `ui` (the
//! console), and `secrets` for how secrets are read and kept.

mod access;
mod audit;
mod ci;
mod drift;
mod providers;
mod runtime;
pub(crate) mod secrets;
mod sources;
mod ui;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::Duration;
use serde::{Deserialize, Deserializer};

pub use access::{ApiConfig, ApiToken, Identity, Policy, Role};
pub use audit::{AuditConfig, KeysConfig, SinkConfig, SinkKind};
pub use ci::{CiConfig, CiIssuer, CiTrust};
pub use drift::{DriftConfig, DriftMode};
pub use providers::{
    check_names, timeout_at_most_10m, AwsIdentityCenterProvider, GithubTeamProvider, HttpProvider,
    LdapGroupProvider, MemberAttribute, MysqlProvider, PostgresProvider, ProviderConfig,
    ProviderSection, SshProvider, TokenProvider, PROVIDER_KINDS,
};
pub use runtime::{DatabaseConfig, JobsConfig, LogFormat, ServerConfig};
pub use sources::{
    GithubSource, JiraFields, JiraSource, ServicenowFields, ServicenowSource, SourcesConfig,
};
pub use ui::{UiConfig, UiOidc};

use crate::domain::{parse_duration, Source};

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

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Marks an error inside a provider table with the key it is about; serde's
/// tagged enums would otherwise only name the table.
const FIELD_MARK: &str = "\u{1}field ";

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
    #[serde(default)]
    pub drift: DriftConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    /// The console for people; none without a `[ui]` section.
    #[serde(default)]
    pub ui: Option<UiConfig>,
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

    /// For commands that only read the trail and the grants (`grants
    /// list`, `audit verify`, `audit export`): the file is parsed and
    /// validated, but no secret of a source, provider, sink or `[keys]` is
    /// read, so an auditor needs only the database settings (and, for
    /// checkpoints, the checkpoint key's file if no public key is given).
    pub fn load_for_reading(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let env = |name: &str| std::env::var(name).ok();
        let mut config = Config::parse(&text, &env)?;
        config.audit.load_checkpoint_key()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a configuration; `env` looks up environment variables.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::parse(text, env)?;
        config.load_secrets(env)?;
        config.validate()?;
        Ok(config)
    }

    /// The file's shape and the environment's overrides, no secrets read.
    fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
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
        Ok(config)
    }

    fn load_secrets(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        self.sources.load_secrets(env)?;
        self.audit.load_secrets(env)?;
        self.keys.load_secrets(env)?;
        if let Some(ui) = &mut self.ui {
            ui.load_secrets(env)?;
        }
        providers::load_secrets(&mut self.providers, env)
    }

    /// Checks every section, in the order of the file's sections, so the
    /// first error reported is the same whatever else is wrong.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.database.validate()?;
        self.api.validate()?;
        self.sources.validate()?;
        access::validate_identities(&self.identities, &self.providers)?;
        providers::validate(&self.providers)?;
        access::validate_policies(&self.policies, &self.providers)?;
        self.ci.validate()?;
        self.jobs.validate()?;
        self.drift.validate()?;
        self.audit.validate()?;
        if let Some(ui) = &self.ui {
            ui.validate()?;
        }
        providers::validate_timeouts(&self.providers, self.jobs.lease)
    }

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

    /// The principal a source account maps to, if `[[identities]]` names it.
    pub fn principal_for(&self, source: Source, account: &str) -> Option<&Identity> {
        self.identities
            .iter()
            .find(|i| i.account_in(source) == Some(account))
    }

    pub fn identity(&self, principal: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.principal == principal)
    }

    /// The subject's account on a provider: `accounts.PROVIDER`, else the
    /// principal, in the one spelling the provider's kind compares
    /// (`ProviderSection::canonical_account`).
    pub fn account_on(&self, principal: &str, provider: &str) -> String {
        let account = self
            .identity(principal)
            .and_then(|i| i.accounts.get(provider).cloned())
            .unwrap_or_else(|| principal.to_string());
        match self.providers.get(provider) {
            Some(p) => p.section().canonical_account(&account),
            None => account,
        }
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
            ("[server]\npublic_url = \"ftp://x\"", "server.public_url"),
            ("[providers.d]\nkind = \"token\"\naudience = \" \"", "providers.d.audience"),
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
