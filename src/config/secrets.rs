//! Secrets in the configuration: read from the environment variable named by
//! `*_env` or the file named by `*_file`, held as `secrecy::SecretString` (so
//! they are wiped on drop and read only through `expose_secret`), and shown
//! as `[redacted]` by every section's `Debug`.

use std::path::PathBuf;

use secrecy::SecretString;

use super::{invalid, ConfigError};

/// How a loaded secret shows in `Debug`: whether it is there, never what it is.
pub(crate) fn redacted(secret: &Option<SecretString>) -> Option<&'static str> {
    secret.as_ref().map(|_| "[redacted]")
}

/// `redacted` for a list of secrets: how many, never what.
pub(super) fn redacted_all(secrets: &[SecretString]) -> Vec<&'static str> {
    secrets.iter().map(|_| "[redacted]").collect()
}

/// An optional secret named by `token_env`: absent if the key is absent.
pub(super) fn load_optional(
    at: &str,
    env_key: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SecretString>, ConfigError> {
    match env_key {
        None => Ok(None),
        Some(_) => load_secret(at, "token", env_key, &None, env).map(Some),
    }
}

pub(crate) fn load_secret(
    at: &str,
    what: &str,
    env_key: &Option<String>,
    file_key: &Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SecretString, ConfigError> {
    match (env_key, file_key) {
        (Some(var), None) => match env(var) {
            Some(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim())),
            _ => Err(invalid(
                format!("{at}.{what}_env"),
                format!("environment variable `{var}` is not set"),
            )),
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim())),
            Ok(_) => Err(invalid(
                format!("{at}.{what}_file"),
                format!("{} is empty", path.display()),
            )),
            Err(e) => Err(invalid(
                format!("{at}.{what}_file"),
                format!("cannot read {}: {e}", path.display()),
            )),
        },
        (Some(_), Some(_)) => Err(invalid(
            format!("{at}.{what}_env"),
            format!("give one of {what}_env and {what}_file, not both"),
        )),
        (None, None) => Err(invalid(
            format!("{at}.{what}_env"),
            format!("missing: name the secret with {what}_env or {what}_file"),
        )),
    }
}
