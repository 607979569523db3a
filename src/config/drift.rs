//! Drift checks (`[drift]`): how often providers that list holders are
//! compared with the grants, what is done about access held without a
//! grant (`drift`: report it, or also revoke it), and which accounts are
//! never reported. A provider's section may set its own `drift` (postgres
//! does); what a check does is `crate::drift`'s.

use chrono::Duration;
use serde::{Deserialize, Serialize};

use super::{invalid, ConfigDuration, ConfigError};

/// What a check does with access held without a live grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Record it (audit `drift.found`, metric, `GET /v1/drift`).
    Report,
    /// Record it and remove it at the provider (audit `drift.removed`).
    Revoke,
    /// Do not check this provider.
    Off,
}

impl DriftMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftMode::Report => "report",
            DriftMode::Revoke => "revoke",
            DriftMode::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// How often a check runs (one replica at a time).
    pub interval: ConfigDuration,
    /// The mode of every provider whose section does not set its own.
    pub drift: DriftMode,
    /// Accounts never reported nor removed (the provider's own login,
    /// break-glass accounts, roles that own others).
    pub exempt_accounts: Vec<String>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            interval: ConfigDuration(Duration::minutes(5)),
            drift: DriftMode::Report,
            exempt_accounts: Vec::new(),
        }
    }
}

impl DriftConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // Under a second, checks would run back to back and every one
        // lists every target's holders.
        if self.interval.0 < Duration::seconds(1) {
            return Err(invalid("drift.interval", "must be at least 1s"));
        }
        for (i, a) in self.exempt_accounts.iter().enumerate() {
            if a.trim().is_empty() {
                return Err(invalid(format!("drift.exempt_accounts[{i}]"), "is empty"));
            }
        }
        Ok(())
    }

    pub fn is_exempt(&self, account: &str) -> bool {
        self.exempt_accounts.iter().any(|a| a == account)
    }
}

impl super::Config {
    /// The drift mode of provider `name`: its section's own `drift`, else
    /// `[drift] drift`.
    pub fn drift_mode(&self, name: &str) -> DriftMode {
        self.providers
            .get(name)
            .and_then(|p| p.section().drift())
            .unwrap_or(self.drift.drift)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &|name| {
            (name == "DB").then(|| "postgres://x/y".into())
        })
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse("").unwrap();
        assert_eq!(c.drift.interval, ConfigDuration(Duration::minutes(5)));
        assert_eq!(c.drift.drift, DriftMode::Report);
        let c = parse(
            "[drift]\ninterval = \"1m\"\ndrift = \"revoke\"\nexempt_accounts = [\"postgres\"]\n\
             [providers.a]\nkind = \"postgres\"\nurl_env = \"DB\"\ntimeout = \"5s\"\ndrift = \"off\"\n\
             [providers.b]\nkind = \"postgres\"\nurl_env = \"DB\"\ntimeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.drift_mode("a"), DriftMode::Off);
        assert_eq!(c.drift_mode("b"), DriftMode::Revoke);
        assert!(c.drift.is_exempt("postgres"));
        assert!(!c.drift.is_exempt("dave"));
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[drift]\ninterval = \"0s\"", "drift.interval"),
            ("[drift]\ndrift = \"delete\"", "drift.drift"),
            (
                "[drift]\nexempt_accounts = [\" \"]",
                "drift.exempt_accounts[0]",
            ),
            ("[drift]\nevery = \"1m\"", "drift"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }
}
