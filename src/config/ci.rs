//! Pipelines as requesters (`[ci]`): the OIDC issuers whose tokens warrant
//! accepts and the trust rules that map a pipeline's claims to a principal
//! and the resources it may be granted.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, ConfigDuration, ConfigError};
use crate::domain::Resource;

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

impl CiConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let issuer_names: HashSet<&str> = self.issuers.iter().map(|i| i.name.as_str()).collect();
        let mut seen_issuers = HashSet::new();
        for (i, iss) in self.issuers.iter().enumerate() {
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
        for (i, t) in self.trust.iter().enumerate() {
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
        Ok(())
    }
}
