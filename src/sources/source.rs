//! What every ticket source is: one type behind `TicketSource` that checks
//! a delivery's signature, reads its delivery id, parses its body and posts
//! a note on one of its tickets. The intake calls these in that order (see
//! `api::webhooks`); back-links call `post_note`. This module also owns what
//! the sources share for it: the delivery-id rule, the errors the intake
//! maps to HTTP, and the authentication and answer checks of a note.

use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};

use super::{Parsed, SourceError};
use crate::crypto::signature::SignatureError;
use crate::domain::TicketKey;

/// The request's headers, as the intake reads them; names are
/// case-insensitive.
pub trait Headers {
    fn header(&self, name: &str) -> Option<&str>;
}

/// Headers given by name, for deliveries that did not come over HTTP
/// (`warrant simulate`).
impl<const N: usize> Headers for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// One delivery as a source sees it: the raw body, its headers, and the
/// time and tolerance for sources whose signatures carry a timestamp.
pub struct Inbound<'a> {
    pub headers: &'a dyn Headers,
    pub body: &'a [u8],
    pub now: DateTime<Utc>,
    pub tolerance: chrono::Duration,
}

impl Inbound<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name)
    }
}

/// Why a delivery is refused before it changes anything. `api::error`
/// maps these to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The signature is missing, malformed, stale or wrong (401).
    #[error("{0}")]
    Unauthorized(#[from] SignatureError),
    /// A header the source needs is missing or not valid (400).
    #[error("{0}")]
    BadHeader(String),
    /// The body is not the source's payload (400).
    #[error("{0}")]
    Body(#[from] SourceError),
    /// The source has no usable secret; configuration validation keeps
    /// this from happening (500).
    #[error("the source's secret is missing or unusable")]
    Misconfigured,
}

/// A ticket source: GitHub, Jira or ServiceNow, each in its own file,
/// implemented on its configuration section and found by
/// `sources::configured`.
pub trait TicketSource: Send + Sync {
    /// Checks the signature on the raw body (constant-time).
    fn verify(&self, inbound: &Inbound<'_>) -> Result<(), IntakeError>;
    /// The id that dedupes redeliveries.
    fn delivery_id(&self, inbound: &Inbound<'_>) -> Result<String, IntakeError>;
    /// What the authentic body amounts to.
    fn parse(&self, inbound: &Inbound<'_>) -> Result<Parsed, IntakeError>;
    /// True when the source is configured to post notes (`token_env`).
    fn posts_notes(&self) -> bool;
    /// Posts `text` on the ticket. Errors are short and hold no token.
    fn post_note<'a>(
        &'a self,
        client: &'a reqwest::Client,
        key: &'a TicketKey,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// A delivery id from header `name`: printable ASCII, at most 200 bytes.
pub fn delivery_id(raw: Option<&str>, name: &str) -> Result<String, IntakeError> {
    match raw.map(str::trim) {
        Some(id)
            if !id.is_empty() && id.len() <= 200 && id.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(id.to_string())
        }
        Some(_) => Err(IntakeError::BadHeader(format!(
            "header {name} is not a valid delivery id"
        ))),
        None => Err(IntakeError::BadHeader(format!("header {name} is missing"))),
    }
}

/// The key without its source prefix: `OWNER/REPO#N`, `PROJ-1`, `CHG0001`.
pub(crate) fn key_rest(key: &TicketKey) -> &str {
    key.as_str()
        .split_once(':')
        .map(|(_, r)| r)
        .unwrap_or_default()
}

/// A note's credentials: `user:secret` is basic auth (Jira Cloud,
/// ServiceNow); anything else a bearer token.
pub(crate) fn note_auth(
    req: reqwest::RequestBuilder,
    token: &SecretString,
) -> reqwest::RequestBuilder {
    match token.expose_secret().split_once(':') {
        Some(_) => req.header(
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(token.expose_secret())
            ),
        ),
        None => req.bearer_auth(token.expose_secret()),
    }
}

/// The answer to a note's request, or a short error naming `what`.
pub(crate) async fn note_answer(
    resp: Result<reqwest::Response, reqwest::Error>,
    what: &str,
) -> Result<reqwest::Response, String> {
    let resp = resp.map_err(|e| {
        crate::redact::redact(
            &format!(
                "{what}: {}",
                if e.is_timeout() {
                    "timed out"
                } else {
                    "request failed"
                }
            ),
            &[],
        )
    })?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(crate::redact::redact(
            &format!("{what} answered {}", resp.status().as_u16()),
            &[],
        ))
    }
}
