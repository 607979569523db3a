//! Providers apply and remove access. Resource `P/T` goes to provider `P`
//! with target `T`. Every call is idempotent at the provider: granting what
//! is held, or revoking what is gone, succeeds.
//!
//! A target reaches a provider only if it follows the contract's syntax
//! (`domain::check_target`) and its kind's narrower rule (`check_target`):
//! the decisions deny anything else as `invalid_request`, and `call` checks
//! again before a grant, so a stored grant with a bad target fails without
//! a call. Revocations are never refused for their target (see `call`).

pub mod github_team;
pub mod http;
pub mod postgres;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::Clock;
use crate::config::{Config, ProviderConfig};
use crate::db::grants::GrantRow;
use crate::domain::Resource;
use crate::domain::{from_micros, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Grant,
    Revoke,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Grant => "grant",
            Action::Revoke => "revoke",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider `{0}` is not configured")]
    Unknown(String),
    #[error("{0}")]
    Call(String),
    /// Refused before anything reached the provider (a target outside the
    /// provider's rule, a privileged role): retrying cannot help, and
    /// there is nothing to take back.
    #[error("refused: {0}")]
    Refused(String),
}

impl ProviderError {
    /// True when retrying the same call cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ProviderError::Refused(_))
    }
}

/// The target rule of provider `name`: the contract's syntax, then the
/// narrower rule of its kind. The error names the rule.
pub fn check_target(name: &str, config: &ProviderConfig, target: &str) -> Result<(), String> {
    crate::domain::check_target(target)
        .and_then(|()| match config {
            ProviderConfig::Postgres(pg) => postgres::check_target(pg, target),
            ProviderConfig::Http(_) => http::check_target(target),
            ProviderConfig::GithubTeam(_) => github_team::check_target(target),
            // A token names its target in a signed credential; the
            // contract's syntax is all it needs.
            ProviderConfig::Token(_) => Ok(()),
        })
        .map_err(|why| {
            format!(
                "provider `{name}` ({}) refuses target `{}`: {why}",
                config.kind(),
                crate::domain::shown(target, 80)
            )
        })
}

/// `check_target` for a resource; an unconfigured provider is refused too.
pub fn check_resource(config: &Config, resource: &Resource) -> Result<(), String> {
    match config.providers.get(resource.provider()) {
        Some(p) => check_target(resource.provider(), p, resource.target()),
        None => Err(format!(
            "no provider `{}` is configured",
            resource.provider()
        )),
    }
}

/// Per-provider state that outlives one call (connection pools).
/// The configured providers and what their calls need: the outbound
/// client, the clock (the `http` provider signs with the time), and a pool
/// per `postgres` provider.
pub struct Providers {
    config: Arc<Config>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    postgres: HashMap<String, postgres::Pool>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("postgres", &self.postgres.keys())
            .finish()
    }
}

impl Providers {
    pub fn new(config: Arc<Config>, http: reqwest::Client, clock: Arc<dyn Clock>) -> Providers {
        let mut postgres = HashMap::new();
        for (name, p) in &config.providers {
            if let ProviderConfig::Postgres(pg) = p {
                if let Some(url) = &pg.url {
                    postgres.insert(name.clone(), postgres::Pool::new(name, pg, url));
                }
            }
        }
        Providers {
            config,
            http,
            clock,
            postgres,
        }
    }
}

/// What a provider is told about a grant.
#[derive(Debug, Clone, Serialize)]
pub struct Call<'a> {
    pub action: Action,
    pub grant_id: &'a str,
    pub subject: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
    pub target: &'a str,
    pub ticket: &'a str,
    pub starts_at: String,
    pub expires_at: String,
}

impl Providers {
    /// Applies or removes the grant at its provider.
    pub async fn call(&self, g: &GrantRow, action: Action) -> Result<(), ProviderError> {
        let (provider, target) = g
            .resource
            .split_once('/')
            .unwrap_or((g.resource.as_str(), ""));
        let Some(config) = self.config.providers.get(provider) else {
            return Err(ProviderError::Unknown(provider.to_string()));
        };
        // The decision checked this when the grant was made; a row written
        // before that, or by hand, still never gets access applied. Removal is
        // not refused: it must not be stopped by a target an older version
        // accepted, and each provider keeps its own revoke harmless (postgres
        // quotes the role, http sends it as data, github_team refuses a URL
        // path that is not single encoded segments).
        if action == Action::Grant {
            if let Err(why) = check_target(provider, config, target) {
                tracing::warn!(grant = %g.id, provider, "grant refused: bad target");
                return Err(ProviderError::Refused(why));
            }
        }
        let call = Call {
            action,
            grant_id: &g.id,
            subject: &g.subject,
            account: &g.account,
            resource: &g.resource,
            target,
            ticket: &g.ticket,
            starts_at: rfc3339(from_micros(g.starts_at)),
            expires_at: rfc3339(from_micros(g.expires_at)),
        };
        let calling = async {
            match config {
                ProviderConfig::Http(h) => http::call(&self.http, h, &call, self.clock.now()).await,
                ProviderConfig::Postgres(_) => match self.postgres.get(provider) {
                    Some(pool) => pool.call(&call).await,
                    None => Err(ProviderError::Unknown(provider.to_string())),
                },
                ProviderConfig::GithubTeam(gh) => github_team::call(&self.http, gh, &call).await,
                // A token grant is the credential itself: nothing to apply, and
                // introspection answers from the grant's state.
                ProviderConfig::Token(_) => Ok(()),
            }
        };
        // Every call ends within its provider's `timeout`, which the
        // configuration keeps shorter than the job's lease: a call never runs
        // on after its job could have passed to another runner. An abandoned
        // call counts as failed (it may still have landed; the job retries, and
        // both actions are idempotent).
        let result = match config.timeout() {
            Some(limit) => tokio::time::timeout(limit.std(), calling)
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::Call(format!(
                        "no answer within {}",
                        crate::domain::format_duration(limit.0)
                    )))
                }),
            None => calling.await,
        };
        match &result {
            Ok(()) => {
                tracing::info!(grant = %g.id, provider, action = action.as_str(), "provider call done")
            }
            Err(e) => {
                tracing::warn!(grant = %g.id, provider, action = action.as_str(), error = %e, "provider call failed")
            }
        }
        result
    }
}
