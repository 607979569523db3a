//! The credential a CI grant hands back to its pipeline, chosen by the kind
//! of the grant's provider: `token` signs a JWT (`token::KeyRing`), `ssh`
//! signs an OpenSSH certificate for the public key the request brought
//! (`ssh::Authorities`), and every other kind answers none, since its
//! access is applied at the provider instead.
//!
//! What a request brings for its credential (`Material`) is checked against
//! that kind before anything is stored: an `ssh` resource needs a valid
//! `public_key`, and any other resource takes none (a key sent to the wrong
//! resource is a mistake the pipeline should hear about, not silently
//! dropped).

use chrono::{DateTime, Utc};
use ssh_key::PublicKey;

use super::ssh::{self, Authorities, CertError};
use super::token::{self, KeyRing};
use crate::config::{Config, ProviderConfig};
use crate::db::grants::GrantRow;
use crate::db::Db;
use crate::domain::Resource;

/// What a request brought for its credential, checked for its resource.
#[derive(Debug, Clone)]
pub enum Material {
    Nothing,
    /// The public key an `ssh` certificate is signed for.
    SshKey(Box<PublicKey>),
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Token(#[from] token::CredentialError),
    #[error(transparent)]
    Ssh(#[from] CertError),
    /// An `ssh` grant reached issuing without a key: `material` was skipped.
    #[error("provider `{0}` needs a public key to sign")]
    NoKey(String),
}

/// Every kind's signing keys, built once from the configuration.
#[derive(Debug)]
pub struct Credentials {
    /// The `token` providers' signing keys (also `jwks.json` and introspection).
    pub tokens: KeyRing,
    /// The `ssh` providers' CAs (also `/v1/ssh/ca.pub`).
    pub ssh: Authorities,
}

impl Credentials {
    pub fn new(config: &Config) -> Result<Credentials, String> {
        Ok(Credentials {
            tokens: KeyRing::new(config)?,
            ssh: Authorities::new(config)?,
        })
    }

    /// The credential for `grant`, if its provider's kind issues one.
    pub fn issue(
        &self,
        config: &Config,
        db: &Db,
        now: DateTime<Utc>,
        grant: &GrantRow,
        material: &Material,
    ) -> Result<Option<String>, CredentialError> {
        let provider = grant.resource.split('/').next().unwrap_or_default();
        match (config.providers.get(provider), material) {
            (Some(ProviderConfig::Token(_)), _) => Ok(self.tokens.issue(db, now, grant)?),
            (Some(ProviderConfig::Ssh(_)), Material::SshKey(key)) => {
                Ok(Some(self.ssh.issue(provider, grant, key)?))
            }
            (Some(ProviderConfig::Ssh(_)), Material::Nothing) => {
                Err(CredentialError::NoKey(provider.to_string()))
            }
            _ => Ok(None),
        }
    }
}

/// Checks what a request brought for its credential against the kind of
/// `resource`'s provider; the error is the request's fault (a 400).
pub fn material(
    config: &Config,
    resource: &Resource,
    public_key: Option<&str>,
) -> Result<Material, String> {
    let provider = resource.provider();
    match (config.providers.get(provider), public_key) {
        (Some(ProviderConfig::Ssh(_)), Some(text)) => {
            Ok(Material::SshKey(Box::new(ssh::parse_public_key(text)?)))
        }
        (Some(ProviderConfig::Ssh(_)), None) => Err(format!(
            "`{resource}` is an ssh resource: send the key to certify as `public_key` \
             (one OpenSSH public key line, e.g. `ssh-ed25519 AAAA…`)"
        )),
        (_, None) => Ok(Material::Nothing),
        (other, Some(_)) => Err(format!(
            "`public_key` is only for ssh resources, and provider `{}` is {}",
            crate::domain::shown(provider, 60),
            other.map_or("not configured".to_string(), |p| format!(
                "a `{}` provider",
                p.kind()
            ))
        )),
    }
}
