//! The `http` provider: POSTs each grant and revoke to a receiver, signed per
//! Standard Webhooks. `webhook-id` is stable per grant and action, so the
//! receiver can use it as its idempotency key across our retries.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;

use super::{Call, Deps, Provider, ProviderError};
use crate::clock::Clock;
use crate::config::secrets::load_secret;
use crate::config::{invalid, ConfigDuration, ConfigError, HttpProvider, ProviderSection};
use crate::crypto::signature::{sign_standard, whsec_key};
use crate::domain::TargetRule;

/// The `http` provider's target rule: the contract's syntax and nothing
/// narrower (so no `.` or `..` segment), since the receiver decides what a
/// target means. Stated here so every kind has its rule in its own file.
impl TargetRule for HttpProvider {
    fn check_target(&self, target: &str) -> Result<(), String> {
        crate::domain::check_target(target)
    }
}

impl ProviderSection for HttpProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        Some(self.timeout)
    }

    fn load_secrets(
        &mut self,
        at: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let secret = load_secret(at, "secret", &self.secret_env, &self.secret_file, env)?;
        whsec_key(secret.expose_secret()).map_err(|m| invalid(format!("{at}.secret_env"), m))?;
        self.secret = Some(secret);
        Ok(())
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let ok = url::Url::parse(&self.url)
            .map(|u| matches!(u.scheme(), "http" | "https"))
            .unwrap_or(false);
        if !ok {
            return Err(invalid(
                format!("{at}.url"),
                format!("`{}` is not an http(s) URL", self.url),
            ));
        }
        Ok(())
    }

    fn build(&self, _name: &str, deps: &Deps) -> Box<dyn Provider> {
        Box::new(Http::new(self, deps))
    }
}

/// The `http` provider, with the client and clock its calls take (it signs
/// with the time).
pub struct Http {
    cfg: HttpProvider,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl Http {
    pub fn new(cfg: &HttpProvider, deps: &Deps) -> Http {
        Http {
            cfg: cfg.clone(),
            client: deps.http.clone(),
            clock: deps.clock.clone(),
        }
    }
}

impl Provider for Http {
    fn carries_end(&self) -> bool {
        true
    }

    fn apply<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(call(&self.client, &self.cfg, c, self.clock.now()))
    }

    fn remove<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(call(&self.client, &self.cfg, c, self.clock.now()))
    }
}

async fn call(
    client: &reqwest::Client,
    cfg: &HttpProvider,
    call: &Call<'_>,
    now: DateTime<Utc>,
) -> Result<(), ProviderError> {
    let body = serde_json::to_vec(call).map_err(|e| ProviderError::Call(e.to_string()))?;
    let secret = cfg
        .secret
        .as_ref()
        .ok_or_else(|| ProviderError::Call("no secret".into()))?;
    let key = whsec_key(secret.expose_secret()).map_err(ProviderError::Call)?;
    let id = call.id();
    let ts = now.timestamp();
    let signature = sign_standard(&key, &id, ts, &body);
    // Errors go into the audit trail and the API: they name the endpoint
    // without its credentials or query, and hold no secret.
    let mut secrets = vec![secret.expose_secret().to_string()];
    if let Ok(u) = url::Url::parse(&cfg.url) {
        secrets.extend(u.password().map(str::to_string));
        secrets.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
    }
    let fail = |what: String| {
        let text = format!("POST {}{what}", crate::redact::url(&cfg.url));
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        ProviderError::Call(crate::redact::redact(&text, &secrets))
    };
    let resp = client
        .post(&cfg.url)
        .timeout(cfg.timeout.std())
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| fail(format!(": {}", without_url(&e))))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(fail(format!(" answered {}", status.as_u16())))
    }
}

fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_redirect() {
        "redirected".into()
    } else {
        // reqwest's text names the URL, credentials and all.
        let mut s = e.to_string();
        if let Some(u) = e.url() {
            s = s.replace(u.as_str(), "");
        }
        s
    }
}
