//! What a provider kind is, below every layer that uses one: the `Provider`
//! trait each kind implements, the `Call` it receives for one grant, the
//! errors it answers, and what building one may take (`Deps`). The
//! configuration's sections build their kind through this trait
//! (`config::ProviderSection`), and `providers` holds the kinds themselves.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::clock::Clock;

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

/// One provider kind: the calls that apply and remove a grant, and list
/// who holds a target where the kind can. Both `apply` and `remove` must be
/// idempotent at the provider. Each kind lives in its own file and is built
/// from its section by `build`; the same file states the kind's target rule
/// as `domain::TargetRule` on its section, so decisions read it through the
/// configuration (`Config::check_resource`) without building providers.
pub trait Provider: Send + Sync {
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>>;
    fn remove<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Whether the access this kind applies carries an end the provider
    /// knows (a credential's expiry, a receiver told `expires_at`): when a
    /// later grant of the same access ends later, the provider is told so.
    fn carries_end(&self) -> bool {
        false
    }
    /// Who holds `target` at the provider, for drift checks; `None` when
    /// the kind cannot list holders.
    fn holders<'a>(
        &'a self,
        _target: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }
    /// Whether `account` holds `target`; `None` when the kind cannot say.
    /// A kind that can ask for one holder overrides this: the grant job
    /// asks it before each first apply and after each removal, where
    /// listing a large group would be wasted.
    fn holds<'a>(
        &'a self,
        target: &'a str,
        account: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>, ProviderError>> {
        Box::pin(async move {
            Ok(self
                .holders(target)
                .await?
                .map(|all| all.iter().any(|h| h == account)))
        })
    }
}

/// What building a provider may take besides its section.
pub struct Deps {
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
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
    /// A grant call that tells a later end of access already applied (an
    /// extension), not the first apply: a receiver keyed on the call's
    /// identity must see it as a new call.
    #[serde(skip)]
    pub extension: bool,
}

impl Call<'_> {
    /// The call's identity, stable across its retries (an idempotency
    /// key): `GRANT-grant`, `GRANT-revoke`, and for an extension
    /// `GRANT-grant-until-UNIXTIME` of the new end.
    pub fn id(&self) -> String {
        if self.extension {
            let until = chrono::DateTime::parse_from_rfc3339(&self.expires_at)
                .map(|t| t.timestamp().to_string())
                .unwrap_or_else(|_| self.expires_at.clone());
            format!("{}-{}-until-{until}", self.grant_id, self.action.as_str())
        } else {
            format!("{}-{}", self.grant_id, self.action.as_str())
        }
    }
}
