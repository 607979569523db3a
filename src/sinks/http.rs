//! The `http` sink: POSTs each batch as `{"batch": ID, "events": [EVENT,
//! …]}`, signed per Standard Webhooks (`crypto::signature`) with
//! `webhook-id` = the batch id, so a receiver that sees the same id twice
//! may drop the second. 2xx within `timeout` is delivered; any other
//! answer, a timeout or no connection is a failure.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use secrecy::{ExposeSecret, SecretString};

use super::{Batch, Sink, SinkError};
use crate::clock::Clock;
use crate::config::SinkConfig;
use crate::context::Context;
use crate::crypto::signature::{
    sign_standard, whsec_key, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP,
};

pub struct HttpSink {
    url: String,
    secret: SecretString,
    timeout: StdDuration,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl HttpSink {
    pub fn new(cfg: &SinkConfig, ctx: &Context) -> Result<HttpSink, SinkError> {
        // Both are checked at configuration load; these errors name no
        // secret.
        let url = cfg
            .url
            .clone()
            .ok_or_else(|| SinkError("an http sink needs a url".into()))?;
        let secret = cfg
            .secret
            .clone()
            .ok_or_else(|| SinkError("an http sink needs a secret".into()))?;
        Ok(HttpSink {
            url,
            secret,
            timeout: cfg.timeout.std(),
            client: ctx.http.clone(),
            clock: ctx.clock.clone(),
        })
    }

    /// `what` went wrong, said about the endpoint without its credentials,
    /// its query or the secret.
    fn failure(&self, what: &str) -> SinkError {
        let mut secrets = vec![self.secret.expose_secret().to_string()];
        if let Ok(u) = url::Url::parse(&self.url) {
            secrets.extend(u.password().map(str::to_string));
            secrets.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
        }
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let text = format!("POST {}{what}", crate::redact::url(&self.url));
        SinkError(crate::redact::redact(&text, &secrets))
    }

    async fn post(&self, batch: &Batch) -> Result<(), SinkError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "batch": batch.id,
            "events": batch.events,
        }))
        .map_err(|e| SinkError(format!("cannot write the batch: {e}")))?;
        let key = whsec_key(self.secret.expose_secret()).map_err(SinkError)?;
        let ts = self.clock.now().timestamp();
        let signature = sign_standard(&key, &batch.id, ts, &body);
        let resp = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header(WEBHOOK_ID, &batch.id)
            .header(WEBHOOK_TIMESTAMP, ts.to_string())
            .header(WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| self.failure(&format!(": {}", describe(&e))))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(self.failure(&format!(" answered {}", status.as_u16())))
        }
    }
}

impl Sink for HttpSink {
    fn deliver<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> futures_util::future::BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.post(batch))
    }
}

/// What a failed request came to, in words that name no URL (reqwest's
/// own text carries the URL, credentials and all).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_redirect() {
        "redirected".into()
    } else {
        let text = e.to_string();
        match e.url() {
            Some(u) => text.replace(u.as_str(), ""),
            None => text,
        }
    }
}
