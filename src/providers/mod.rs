//! Providers apply and remove access. Resource `P/T` goes to provider `P`
//! with target `T`. Every call is idempotent at the provider: granting what
//! is held, or revoking what is gone, succeeds.
//!
//! Each kind is one type behind `Provider` (defined in `access`, below the
//! configuration), in its own file, which also implements
//! `config::ProviderSection` on its section: its secrets, its rules, its
//! target rule and how it builds its provider. A new kind is: its file here,
//! its section struct in `config::providers`, and one line in that file's
//! registry (`provider_kinds!`).
//!
//! A target reaches a provider only if it follows the contract's syntax
//! (`domain::check_target`) and its kind's narrower rule (`TargetRule`,
//! read through `ProviderConfig::check_target`):
//! the decisions deny anything else as `invalid_request`, and `call` checks
//! again before a grant, so a stored grant with a bad target fails without
//! a call. Revocations are never refused for their target (see `call`).

pub mod aws_identity_center;
pub mod credential;
pub mod github_team;
pub mod http;
pub mod ldap_group;
pub mod mysql;
pub mod postgres;
pub mod ssh;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use crate::access::{Action, Call, Deps, Provider, ProviderError};
use crate::clock::Clock;
use crate::config::{Config, ProviderConfig};
use crate::db::grants::GrantRow;
use crate::domain::{from_micros, rfc3339};
use crate::metrics::{Metrics, ProviderCallLabels};

/// The configured providers, built once: each holds what its calls need
/// (the outbound client, the clock, a connection pool).
pub struct Providers {
    config: Arc<Config>,
    built: HashMap<String, Box<dyn Provider>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("built", &self.built.keys())
            .finish()
    }
}

impl Providers {
    pub fn new(
        config: Arc<Config>,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Providers {
        let deps = Deps { http, clock };
        let built = config
            .providers
            .iter()
            .map(|(name, section)| (name.clone(), section.section().build(name, &deps)))
            .collect();
        Providers {
            config,
            built,
            metrics,
        }
    }

    /// Whether provider `name`'s access carries an end (`Provider::carries_end`).
    pub fn carries_end(&self, name: &str) -> bool {
        self.built.get(name).is_some_and(|p| p.carries_end())
    }

    /// Who holds `target` at provider `name` (`None`: it cannot say).
    pub async fn holders(
        &self,
        name: &str,
        target: &str,
    ) -> Result<Option<Vec<String>>, ProviderError> {
        let (Some(kind), Some(config)) = (self.built.get(name), self.config.providers.get(name))
        else {
            return Err(ProviderError::Unknown(name.to_string()));
        };
        bounded(config, kind.holders(target)).await
    }

    /// Whether `account` holds `target` at provider `name` (`None`: it
    /// cannot say).
    pub async fn holds(
        &self,
        name: &str,
        target: &str,
        account: &str,
    ) -> Result<Option<bool>, ProviderError> {
        let (Some(kind), Some(config)) = (self.built.get(name), self.config.providers.get(name))
        else {
            return Err(ProviderError::Unknown(name.to_string()));
        };
        bounded(config, kind.holds(target, account)).await
    }
}

/// A read of the provider within its `timeout`.
async fn bounded<T>(
    config: &ProviderConfig,
    read: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match config.timeout() {
        Some(limit) => tokio::time::timeout(limit.std(), read)
            .await
            .unwrap_or_else(|_| Err(ProviderError::Call("no answer in time".into()))),
        None => read.await,
    }
}

impl Providers {
    /// Applies or removes the grant at its provider.
    pub async fn call(&self, g: &GrantRow, action: Action) -> Result<(), ProviderError> {
        self.call_for(g, action, false).await
    }

    /// Tells the provider of an active grant its later end (`Call::extension`).
    pub async fn extend(&self, g: &GrantRow) -> Result<(), ProviderError> {
        self.call_for(g, Action::Grant, true).await
    }

    async fn call_for(
        &self,
        g: &GrantRow,
        action: Action,
        extension: bool,
    ) -> Result<(), ProviderError> {
        let (provider, target) = g
            .resource
            .split_once('/')
            .unwrap_or((g.resource.as_str(), ""));
        // The decision checked this when the grant was made; a row written
        // before that, or by hand, still never gets access applied. Removal is
        // not refused: it must not be stopped by a target an older version
        // accepted, and each provider keeps its own revoke harmless (postgres
        // quotes the role, http sends it as data, github_team refuses a URL
        // path that is not single encoded segments).
        if action == Action::Grant {
            let Some(config) = self.config.providers.get(provider) else {
                return Err(ProviderError::Unknown(provider.to_string()));
            };
            if let Err(why) = config.check_target(provider, target) {
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
            extension,
        };
        self.send(provider, &call).await
    }

    /// Removes `account`'s access to `target` at provider `name` that no
    /// grant holds (a drift finding): a revoke whose grant id is
    /// `drift:FINDING`, with no ticket, and the account as its subject.
    pub async fn remove_access(
        &self,
        name: &str,
        account: &str,
        target: &str,
        finding: &str,
        at: DateTime<Utc>,
    ) -> Result<(), ProviderError> {
        let grant_id = format!("drift:{finding}");
        let resource = format!("{name}/{target}");
        let at = rfc3339(at);
        let call = Call {
            action: Action::Revoke,
            grant_id: &grant_id,
            subject: account,
            account,
            resource: &resource,
            target,
            ticket: "",
            starts_at: at.clone(),
            expires_at: at,
            extension: false,
        };
        self.send(name, &call).await
    }

    /// Makes one call at `provider` within its deadline, and logs it.
    async fn send(&self, provider: &str, call: &Call<'_>) -> Result<(), ProviderError> {
        let (Some(config), Some(kind)) = (
            self.config.providers.get(provider),
            self.built.get(provider),
        ) else {
            return Err(ProviderError::Unknown(provider.to_string()));
        };
        let action = call.action;
        let calling = match action {
            Action::Grant => kind.apply(call),
            Action::Revoke => kind.remove(call),
        };
        let started = std::time::Instant::now();
        // Every call ends within its provider's `timeout`, which the
        // configuration keeps shorter than the job's lease: a call never runs
        // on after its job could have passed to another runner. An abandoned
        // call counts as failed (it may still have landed; the job retries, and
        // both actions are idempotent).
        let (result, outcome) = match config.timeout() {
            Some(limit) => match tokio::time::timeout(limit.std(), calling).await {
                Ok(done) => (done, None),
                Err(_) => (
                    Err(ProviderError::Call(format!(
                        "no answer within {}",
                        crate::domain::format_duration(limit.0)
                    ))),
                    Some("timeout"),
                ),
            },
            None => (calling.await, None),
        };
        let labels = ProviderCallLabels {
            provider: provider.to_string(),
            kind: config.kind().to_string(),
            action: action.as_str().to_string(),
            outcome: outcome
                .unwrap_or(match &result {
                    Ok(()) => "ok",
                    Err(e) if e.is_permanent() => "refused",
                    Err(_) => "failed",
                })
                .to_string(),
        };
        self.metrics.provider_calls.get_or_create(&labels).inc();
        self.metrics
            .provider_call_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let grant = call.grant_id;
        match &result {
            Ok(()) => {
                tracing::info!(
                    grant,
                    provider,
                    action = action.as_str(),
                    "provider call done"
                )
            }
            Err(e) => {
                tracing::warn!(grant, provider, action = action.as_str(), error = %e, "provider call failed")
            }
        }
        result
    }
}
