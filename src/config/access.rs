//! Who may do what: the API's bearer tokens and their roles (`[api]`), the
//! people behind source accounts (`[[identities]]`) and the policies that
//! say which tickets warrant which resources (`[[policies]]`).

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::{invalid, ConfigDuration, ConfigError, ProviderConfig};
use crate::domain::Source;

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
    /// Only `POST /v1/introspect`: for the services that check credentials,
    /// which need not read grants or the audit trail.
    Introspector,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Introspector => "introspector",
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

impl Identity {
    pub fn account_in(&self, source: Source) -> Option<&str> {
        match source {
            Source::Github => self.github.as_deref(),
            Source::Jira => self.jira.as_deref(),
            Source::Servicenow => self.servicenow.as_deref(),
        }
    }
}

impl ApiConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
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
        Ok(())
    }
}

pub(super) fn validate_identities(
    identities: &[Identity],
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<(), ConfigError> {
    let mut principals = HashSet::new();
    for (i, id) in identities.iter().enumerate() {
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
            if !providers.contains_key(p) {
                return Err(invalid(
                    format!("identities[{i}].accounts.{p}"),
                    format!("no provider `{p}` is configured"),
                ));
            }
        }
    }
    for source in Source::ALL {
        let mut seen = HashSet::new();
        for (i, id) in identities.iter().enumerate() {
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
    Ok(())
}

pub(super) fn validate_policies(
    policies: &[Policy],
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<(), ConfigError> {
    for (i, p) in policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        if p.resources.is_empty() {
            return Err(invalid(format!("{at}.resources"), "lists no resource"));
        }
        for (j, r) in p.resources.iter().enumerate() {
            let provider = r.split('/').next().unwrap_or_default();
            if !r.contains('/') || (!provider.contains('*') && !providers.contains_key(provider)) {
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
    Ok(())
}
