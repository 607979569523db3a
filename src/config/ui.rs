//! The console for people (`[ui]`): the session key and lifetime, and the
//! company's OpenID Connect provider that signs people in (`[ui.oidc]`),
//! with the claim whose values make a person an admin or an auditor.
//! Without a `[ui]` section there is no console.

use std::fmt;
use std::path::PathBuf;

use chrono::Duration;
use secrecy::SecretString;
use serde::Deserialize;

use super::secrets::{load_secret, redacted};
use super::{invalid, ConfigDuration, ConfigError};

fn default_session_ttl() -> ConfigDuration {
    ConfigDuration(Duration::hours(8))
}

fn default_roles_claim() -> String {
    "groups".into()
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// The key that seals session cookies: 32 random bytes, base64.
    pub session_key_env: Option<String>,
    pub session_key_file: Option<PathBuf>,
    /// How long a sign-in lasts (default 8h).
    #[serde(default = "default_session_ttl")]
    pub session_ttl: ConfigDuration,
    pub oidc: UiOidc,
    #[serde(skip)]
    pub session_key: Option<SecretString>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiOidc {
    /// The provider's issuer URL; its discovery document is read from
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// Where the provider sends people back: warrant's `/ui/callback`.
    pub redirect_url: String,
    /// The ID token claim that lists a person's groups or roles.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Values of `roles_claim` that make a person an admin.
    #[serde(default)]
    pub admin_values: Vec<String>,
    /// Values of `roles_claim` that make a person an auditor.
    #[serde(default)]
    pub auditor_values: Vec<String>,
    /// The scopes asked for; some providers put groups in the ID token
    /// only when a scope such as `groups` is asked.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(skip)]
    pub client_secret: Option<SecretString>,
}

impl fmt::Debug for UiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UiConfig")
            .field("session_key_env", &self.session_key_env)
            .field("session_key_file", &self.session_key_file)
            .field("session_ttl", &self.session_ttl)
            .field("oidc", &self.oidc)
            .field("session_key", &redacted(&self.session_key))
            .finish()
    }
}

impl fmt::Debug for UiOidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UiOidc")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret_env", &self.client_secret_env)
            .field("client_secret_file", &self.client_secret_file)
            .field("redirect_url", &self.redirect_url)
            .field("roles_claim", &self.roles_claim)
            .field("admin_values", &self.admin_values)
            .field("auditor_values", &self.auditor_values)
            .field("scopes", &self.scopes)
            .field("client_secret", &redacted(&self.client_secret))
            .finish()
    }
}

fn http_url(key: &str, value: &str) -> Result<url::Url, ConfigError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        _ => Err(invalid(key, format!("`{value}` is not an http(s) URL"))),
    }
}

impl UiConfig {
    pub(super) fn load_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let key = load_secret(
            "ui",
            "session_key",
            &self.session_key_env,
            &self.session_key_file,
            env,
        )?;
        crate::crypto::keys::key_encryption_key(&key)
            .map_err(|m| invalid("ui.session_key_env", m))?;
        self.session_key = Some(key);
        self.oidc.client_secret = Some(load_secret(
            "ui.oidc",
            "client_secret",
            &self.oidc.client_secret_env,
            &self.oidc.client_secret_file,
            env,
        )?);
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let ttl = self.session_ttl.0;
        if ttl < Duration::minutes(1) || ttl > Duration::days(7) {
            return Err(invalid(
                "ui.session_ttl",
                "must be between 1m and 7d (a sign-in is asked again after it)",
            ));
        }
        let o = &self.oidc;
        http_url("ui.oidc.issuer", &o.issuer)?;
        if o.client_id.trim().is_empty() {
            return Err(invalid("ui.oidc.client_id", "is empty"));
        }
        let redirect = http_url("ui.oidc.redirect_url", &o.redirect_url)?;
        if redirect.path() != "/ui/callback" {
            return Err(invalid(
                "ui.oidc.redirect_url",
                "must be warrant's own /ui/callback, e.g. https://warrant.example.com/ui/callback",
            ));
        }
        if o.roles_claim.trim().is_empty() {
            return Err(invalid("ui.oidc.roles_claim", "is empty"));
        }
        if o.admin_values.is_empty() && o.auditor_values.is_empty() {
            return Err(invalid(
                "ui.oidc.admin_values",
                "neither admin_values nor auditor_values is given, so nobody could use the console",
            ));
        }
        if let Some(v) = o.admin_values.iter().find(|v| o.auditor_values.contains(v)) {
            return Err(invalid(
                "ui.oidc.auditor_values",
                format!("`{v}` is also in admin_values; give each value one role"),
            ));
        }
        if !o.scopes.iter().any(|s| s == "openid") {
            return Err(invalid("ui.oidc.scopes", "must include `openid`"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const KEY: &str = "Y29uc29sZS1zZXNzaW9uLWtleS1mb3ItdGVzdHMhISE=";

    fn env(name: &str) -> Option<String> {
        match name {
            "WARRANT_UI_SESSION_KEY" => Some(KEY.into()),
            "WARRANT_UI_CLIENT_SECRET" => Some("the-client-secret".into()),
            "SHORT" => Some("c2hvcnQ=".into()),
            _ => None,
        }
    }

    const EXAMPLE: &str = include_str!("../../deploy/console.example.toml");

    #[test]
    fn the_deploy_example_loads_and_hides_its_secrets() {
        let c = Config::from_toml(EXAMPLE, &env).unwrap();
        let ui = c.ui.as_ref().unwrap();
        assert_eq!(ui.session_ttl.0, chrono::Duration::hours(8));
        assert_eq!(ui.oidc.admin_values, ["warrant-admins"]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("the-client-secret") && !dbg.contains(KEY));
        assert!(Config::from_toml("", &env).unwrap().ui.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "session_key_env = \"WARRANT_UI_SESSION_KEY\"",
                "session_key_env = \"SHORT\"",
                "ui.session_key_env",
            ),
            (
                "session_key_env = \"WARRANT_UI_SESSION_KEY\"",
                "session_key_env = \"NOPE\"",
                "ui.session_key_env",
            ),
            (
                "session_ttl = \"8h\"",
                "session_ttl = \"30d\"",
                "ui.session_ttl",
            ),
            (
                "client_secret_env = \"WARRANT_UI_CLIENT_SECRET\"",
                "client_secret_env = \"NOPE\"",
                "ui.oidc.client_secret_env",
            ),
            (
                "https://warrant.example.com/ui/callback",
                "https://warrant.example.com/callback",
                "ui.oidc.redirect_url",
            ),
            (
                "https://login.example.com/realms/acme",
                "login.example.com",
                "ui.oidc.issuer",
            ),
            (
                "admin_values = [\"warrant-admins\"]",
                "admin_values = [\"warrant-auditors\"]",
                "ui.oidc.auditor_values",
            ),
            (
                "[\"openid\", \"profile\", \"email\", \"groups\"]",
                "[\"profile\"]",
                "ui.oidc.scopes",
            ),
            (
                "roles_claim = \"groups\"",
                "roles_claim = \"groups\"\nbogus = 1",
                "ui.oidc",
            ),
        ];
        for (from, to, key) in cases {
            let text = EXAMPLE.replace(from, to);
            assert_ne!(text, EXAMPLE, "{from}");
            let err = Config::from_toml(&text, &env).unwrap_err().to_string();
            assert!(err.contains(key), "{to:?} gave {err}");
        }
        let none = EXAMPLE
            .replace("admin_values = [\"warrant-admins\"]", "")
            .replace("auditor_values = [\"warrant-auditors\"]", "");
        let err = Config::from_toml(&none, &env).unwrap_err().to_string();
        assert!(err.contains("ui.oidc.admin_values"), "{err}");
    }
}
