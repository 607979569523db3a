//! The ticket sources (`[sources.github]`, `[sources.jira]`,
//! `[sources.servicenow]`): which projects warrant follows, how their fields
//! are read, the secret their webhooks are signed with and the token for
//! back-links.

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::secrets::{load_optional, load_secret, redacted};
use super::{invalid, ConfigError};
use crate::crypto::signature::whsec_key;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    pub github: Option<GithubSource>,
    pub jira: Option<JiraSource>,
    pub servicenow: Option<ServicenowSource>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSource {
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<SecretString>,
    pub repositories: Vec<String>,
    #[serde(default = "default_approval_label")]
    pub approval_label: String,
    /// Back-links: GitHub REST API base (GitHub Enterprise too).
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// Back-links: the API token; unset means no comments on issues.
    pub token_env: Option<String>,
    #[serde(skip)]
    pub token: Option<SecretString>,
}

fn default_approval_label() -> String {
    "access-approved".into()
}

pub(super) fn default_github_api() -> String {
    "https://api.github.com".into()
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraSource {
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<SecretString>,
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
    pub token: Option<SecretString>,
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

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicenowSource {
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<SecretString>,
    #[serde(default)]
    pub fields: ServicenowFields,
    /// Back-links: the instance's base URL, e.g. https://acme.service-now.com.
    pub api_url: Option<String>,
    /// `user:password` (basic auth) or an OAuth bearer token.
    pub token_env: Option<String>,
    #[serde(skip)]
    pub token: Option<SecretString>,
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

impl fmt::Debug for GithubSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubSource")
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .field("repositories", &self.repositories)
            .field("approval_label", &self.approval_label)
            .field("api_url", &self.api_url)
            .field("token_env", &self.token_env)
            .field("token", &redacted(&self.token))
            .finish()
    }
}

impl fmt::Debug for JiraSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JiraSource")
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .field("projects", &self.projects)
            .field("approved_statuses", &self.approved_statuses)
            .field("closed_statuses", &self.closed_statuses)
            .field("fields", &self.fields)
            .field("api_url", &self.api_url)
            .field("token_env", &self.token_env)
            .field("token", &redacted(&self.token))
            .finish()
    }
}

impl fmt::Debug for ServicenowSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServicenowSource")
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .field("fields", &self.fields)
            .field("api_url", &self.api_url)
            .field("token_env", &self.token_env)
            .field("token", &redacted(&self.token))
            .finish()
    }
}

impl SourcesConfig {
    pub(super) fn load_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(g) = &mut self.github {
            g.secret = Some(load_secret(
                "sources.github",
                "secret",
                &g.secret_env,
                &g.secret_file,
                env,
            )?);
            g.token = load_optional("sources.github", &g.token_env, env)?;
        }
        if let Some(j) = &mut self.jira {
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
        if let Some(s) = &mut self.servicenow {
            let secret = load_secret(
                "sources.servicenow",
                "secret",
                &s.secret_env,
                &s.secret_file,
                env,
            )?;
            whsec_key(secret.expose_secret())
                .map_err(|m| invalid("sources.servicenow.secret_env", m))?;
            s.secret = Some(secret);
            s.token = load_optional("sources.servicenow", &s.token_env, env)?;
            if s.token.is_some() && s.api_url.is_none() {
                return Err(invalid(
                    "sources.servicenow.api_url",
                    "is needed with token_env (the instance's base URL)",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(g) = &self.github {
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
        if let Some(j) = &self.jira {
            if j.projects.is_empty() {
                return Err(invalid("sources.jira.projects", "lists no project"));
            }
            if j.approved_statuses.is_empty() {
                return Err(invalid("sources.jira.approved_statuses", "lists no status"));
            }
        }
        Ok(())
    }
}
