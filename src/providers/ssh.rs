//! The `ssh` provider: a CI grant's credential is an OpenSSH user
//! certificate that warrant signs for the public key the pipeline sent
//! (`"public_key"` in `POST /v1/ci/grants`): its principal is the grant's
//! account, it is valid from the grant's start to its end (whole seconds,
//! never past the end), its key id is the grant's id, its serial a random
//! non-zero 64-bit number, and its extensions the provider's `extensions`
//! (default `permit-pty`). Hosts trust it through `TrustedUserCAKeys`, fed
//! from `GET /v1/ssh/ca.pub`, and let the principal log in as a user through
//! `AuthorizedPrincipalsFile`.
//!
//! The CA key is an unencrypted Ed25519 OpenSSH private key, read from
//! `ca_key_file` (or `ca_key_env`) at load and never stored in the
//! database; a key that is unreadable, encrypted or not Ed25519 stops the
//! load with an error naming the key.
//!
//! Nothing outside warrant is called: `apply` and `remove` succeed at once,
//! since a certificate ends on its own. It cannot be recalled before its end
//! except by a key revocation list on the hosts (`RevokedKeys`; `ssh-keygen
//! -k` revokes by key id, which is the grant id, or by the key, whose
//! fingerprint the `ci.request` audit event records): a grant revoked early,
//! by its ticket closing or by the pipeline's release, leaves its
//! certificate valid until the grant's planned end. Keep CI windows short.
//! The same run asking again gets the same grant and a fresh certificate
//! (new serial) for the same window and the key it sends this time.
//!
//! The target does not reach the certificate: every host that trusts a
//! provider's CA accepts all its certificates for the principals it lists.
//! Scope by provider (one CA per group of hosts), and use the target as the
//! name policies and trust rules match. Only CI grants carry a certificate
//! back; a person's grant of an `ssh` resource delivers nothing, so give
//! `ssh` resources to `sources = ["ci"]` policies.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey};

use super::{Call, Deps, Provider, ProviderError};
use crate::config::secrets::load_secret;
use crate::config::{invalid, Config, ConfigDuration, ConfigError, ProviderConfig};
use crate::config::{ProviderSection, SshProvider};
use crate::db::grants::GrantRow;
use crate::domain::TargetRule;

/// Extensions OpenSSH defines for user certificates (PROTOCOL.certkeys);
/// anything else must be a vendor's `name@domain`.
const STANDARD_EXTENSIONS: &[&str] = &[
    "no-touch-required",
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// The shortest RSA key a certificate is signed for (OpenSSH's own
/// minimum since 9.x is 1024; NIST's is 2048).
const MIN_RSA_BITS: usize = 2048;

/// A certificate names its principal and its window, not its target: the
/// contract's syntax is all a target needs.
impl TargetRule for SshProvider {
    fn check_target(&self, _target: &str) -> Result<(), String> {
        Ok(())
    }
}

impl ProviderSection for SshProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        None
    }

    /// Reads the CA key and checks that warrant can sign with it.
    fn load_secrets(
        &mut self,
        at: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let text = load_secret(at, "ca_key", &self.ca_key_env, &self.ca_key_file, env)?;
        let (key, source) = match (&self.ca_key_file, &self.ca_key_env) {
            (Some(path), _) => (format!("{at}.ca_key_file"), path.display().to_string()),
            (None, Some(var)) => (format!("{at}.ca_key_env"), format!("${var}")),
            (None, None) => (format!("{at}.ca_key_file"), String::new()),
        };
        CaKey::parse(&text).map_err(|e| invalid(key, format!("{source}: {e}")))?;
        self.ca_key = Some(text);
        Ok(())
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (i, name) in self.extensions.iter().enumerate() {
            let key = format!("{at}.extensions[{i}]");
            if !STANDARD_EXTENSIONS.contains(&name.as_str()) && !is_vendor_extension(name) {
                return Err(invalid(
                    key,
                    format!(
                        "`{}` is not an OpenSSH extension ({}) nor a vendor's `name@domain`",
                        crate::domain::shown(name, 60),
                        STANDARD_EXTENSIONS.join(", ")
                    ),
                ));
            }
            if self.extensions[..i].contains(name) {
                return Err(invalid(key, format!("`{name}` is listed twice")));
            }
        }
        Ok(())
    }

    fn build(&self, _name: &str, _deps: &Deps) -> Box<dyn Provider> {
        Box::new(Ssh)
    }
}

fn is_vendor_extension(name: &str) -> bool {
    name.split_once('@').is_some_and(|(n, domain)| {
        !n.is_empty()
            && domain.contains('.')
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_graphic())
    })
}

/// The `ssh` provider as a `Provider`: the certificate is the access, and
/// it ends by itself, so there is nothing to apply or remove.
pub struct Ssh;

impl Provider for Ssh {
    fn carries_end(&self) -> bool {
        true
    }

    fn apply<'a>(&'a self, _c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, _c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Why a CA key cannot sign. Messages never carry the key's text.
#[derive(Debug, thiserror::Error)]
pub enum CaKeyError {
    #[error("not an OpenSSH private key ({0})")]
    Unreadable(String),
    #[error("the key is encrypted with a passphrase; warrant needs it unencrypted")]
    Encrypted,
    #[error("the key is {0}; warrant signs with Ed25519 (ssh-keygen -t ed25519)")]
    NotEd25519(String),
}

/// A CA's private key. Its `Debug` shows only the public fingerprint.
pub struct CaKey {
    key: PrivateKey,
    /// The public key, one OpenSSH line.
    public: String,
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKey")
            .field(
                "fingerprint",
                &self.key.fingerprint(HashAlg::Sha256).to_string(),
            )
            .finish()
    }
}

impl CaKey {
    pub fn parse(text: &SecretString) -> Result<CaKey, CaKeyError> {
        // The secret is read trimmed; the PEM reader wants its final newline.
        let mut pem = Zeroizing::new(text.expose_secret().to_string());
        pem.push('\n');
        let key = PrivateKey::from_openssh(pem.as_bytes())
            .map_err(|e| CaKeyError::Unreadable(e.to_string()))?;
        if key.is_encrypted() {
            return Err(CaKeyError::Encrypted);
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(CaKeyError::NotEd25519(key.algorithm().to_string()));
        }
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| CaKeyError::Unreadable(e.to_string()))?;
        Ok(CaKey { key, public })
    }
}

/// Why no certificate was signed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("provider `{0}` is not an ssh provider")]
    Unknown(String),
    #[error("grant {0}'s window cannot be a certificate's")]
    Window(String),
    #[error("cannot sign the certificate: {0}")]
    Sign(#[from] ssh_key::Error),
}

/// Which CA `GET /v1/ssh/ca.pub` should serve, when the request does not say.
#[derive(Debug, thiserror::Error)]
pub enum CaChoice {
    #[error("no ssh provider is configured")]
    None,
    #[error("no ssh provider `{0}` is configured")]
    Unknown(String),
    #[error("several ssh providers are configured; name one with ?provider= ({0})")]
    Ambiguous(String),
}

#[derive(Debug)]
struct Authority {
    key: CaKey,
    extensions: Vec<String>,
}

/// Every ssh provider's CA, by provider name.
#[derive(Debug, Default)]
pub struct Authorities {
    cas: BTreeMap<String, Authority>,
}

impl Authorities {
    pub fn new(config: &Config) -> Result<Authorities, String> {
        let mut cas = BTreeMap::new();
        for (name, p) in &config.providers {
            let ProviderConfig::Ssh(s) = p else {
                continue;
            };
            let Some(text) = &s.ca_key else {
                return Err(format!("providers.{name}.ca_key_file: not loaded"));
            };
            let key =
                CaKey::parse(text).map_err(|e| format!("providers.{name}.ca_key_file: {e}"))?;
            cas.insert(
                name.clone(),
                Authority {
                    key,
                    extensions: s.extensions.clone(),
                },
            );
        }
        Ok(Authorities { cas })
    }

    /// The public key of provider `name`'s CA (or of the only ssh
    /// provider), one OpenSSH line, as `TrustedUserCAKeys` reads it.
    pub fn public_key(&self, name: Option<&str>) -> Result<String, CaChoice> {
        let (name, ca) = match name {
            Some(n) => self
                .cas
                .get_key_value(n)
                .ok_or_else(|| CaChoice::Unknown(crate::domain::shown(n, 60)))?,
            None => {
                let mut all = self.cas.iter();
                match (all.next(), all.next()) {
                    (Some(only), None) => only,
                    (None, _) => return Err(CaChoice::None),
                    (Some(_), Some(_)) => {
                        let names: Vec<&str> = self.cas.keys().map(String::as_str).collect();
                        return Err(CaChoice::Ambiguous(names.join(", ")));
                    }
                }
            }
        };
        Ok(format!("{} warrant:{name}\n", ca.key.public))
    }

    /// The certificate of `grant` for `key`, signed by its provider's CA,
    /// as one OpenSSH line.
    pub fn issue(
        &self,
        provider: &str,
        grant: &GrantRow,
        key: &PublicKey,
    ) -> Result<String, CertError> {
        let ca = self
            .cas
            .get(provider)
            .ok_or_else(|| CertError::Unknown(provider.to_string()))?;
        let window = || CertError::Window(grant.id.clone());
        // Whole seconds inside the grant: the start rounded up, the end down.
        let valid_after = u64::try_from(
            grant
                .starts_at
                .checked_add(999_999)
                .ok_or_else(window)?
                .div_euclid(1_000_000),
        )
        .map_err(|_| window())?;
        let valid_before =
            u64::try_from(grant.expires_at.div_euclid(1_000_000)).map_err(|_| window())?;
        if valid_before <= valid_after {
            return Err(window());
        }
        let mut cert = Builder::new_with_random_nonce(
            &mut OsRng,
            key.key_data().clone(),
            valid_after,
            valid_before,
        )?;
        let serial = serial();
        cert.serial(serial)?
            .cert_type(CertType::User)?
            .key_id(grant.id.clone())?
            .valid_principal(grant.account.clone())?;
        for name in &ca.extensions {
            cert.extension(name.clone(), String::new())?;
        }
        let cert = cert.sign(&ca.key.key)?;
        tracing::info!(
            grant = %grant.id, provider, serial, key = %key.fingerprint(HashAlg::Sha256),
            valid_before, "ssh certificate signed"
        );
        Ok(cert.to_openssh()?)
    }
}

/// A random non-zero serial: unique without a shared counter between
/// replicas (a collision among 2^64 values is not a concern at CI rates),
/// and never 0, which OpenSSH treats as "no serial" in revocation lists.
fn serial() -> u64 {
    loop {
        let s = OsRng.next_u64();
        if s != 0 {
            return s;
        }
    }
}

/// A pipeline's `public_key`, checked before anything is stored: one
/// OpenSSH public key line, of a kind current OpenSSH accepts.
pub fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    const USAGE: &str = "give one OpenSSH public key line, e.g. `ssh-ed25519 AAAA… comment`";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("`public_key` is empty; {USAGE}"));
    }
    if text.len() > 16 * 1024 || text.contains(['\n', '\r']) {
        return Err(format!("`public_key` is not one key line; {USAGE}"));
    }
    let key = PublicKey::from_openssh(text)
        .map_err(|e| format!("`public_key` is not an OpenSSH public key ({e}); {USAGE}"))?;
    match key.key_data() {
        KeyData::Ed25519(_)
        | KeyData::SkEd25519(_)
        | KeyData::Ecdsa(_)
        | KeyData::SkEcdsaSha2NistP256(_) => Ok(key),
        KeyData::Rsa(rsa) => {
            let bits = rsa.n.as_positive_bytes().map_or(0, |b| match b.first() {
                Some(first) => (b.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
                None => 0,
            });
            if bits < MIN_RSA_BITS {
                Err(format!(
                    "`public_key` is a {bits}-bit RSA key; warrant signs RSA keys of \
                     {MIN_RSA_BITS} bits or more (or use ssh-ed25519)"
                ))
            } else {
                Ok(key)
            }
        }
        _ => Err(format!(
            "`public_key` is a {} key, which OpenSSH no longer accepts; use ssh-ed25519",
            key.algorithm()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> SshProvider {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn extensions_are_openssh_or_vendor_names() {
        let ok =
            section("ca_key_env = \"X\"\nextensions = [\"permit-pty\", \"login@example.com\"]");
        assert!(ok.validate("providers.hosts").is_ok());
        assert_eq!(section("ca_key_env = \"X\"").extensions, ["permit-pty"]);
        for (bad, why) in [
            ("[\"permit-everything\"]", "not an OpenSSH extension"),
            ("[\"x@localhost\"]", "not an OpenSSH extension"),
            ("[\"permit-pty\", \"permit-pty\"]", "twice"),
        ] {
            let s = section(&format!("ca_key_env = \"X\"\nextensions = {bad}"));
            let err = s.validate("providers.hosts").unwrap_err().to_string();
            assert!(
                err.contains("providers.hosts.extensions[") && err.contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn ca_keys_are_unencrypted_ed25519() {
        let ed = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let text = ed.to_openssh(ssh_key::LineEnding::LF).unwrap();
        let parsed = CaKey::parse(&SecretString::from(text.trim())).unwrap();
        assert_eq!(parsed.public, ed.public_key().to_openssh().unwrap());
        assert!(!format!("{parsed:?}").contains(&text[40..70]));
        let err = CaKey::parse(&SecretString::from("garbage")).unwrap_err();
        assert!(matches!(err, CaKeyError::Unreadable(_)), "{err}");
    }

    #[test]
    fn public_keys_are_one_current_key() {
        let ed = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let line = ed.public_key().to_openssh().unwrap();
        assert!(parse_public_key(&format!("{line} ci@runner\n")).is_ok());
        for bad in ["", "ssh-ed25519", "ssh-ed25519 AAAA", "hello world"] {
            assert!(parse_public_key(bad).is_err(), "{bad}");
        }
        assert!(parse_public_key(&format!("{line}\n{line}"))
            .unwrap_err()
            .contains("one key line"));
    }
}
