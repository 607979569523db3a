//! `POST /webhooks/{source}`: the intake, in the order that keeps bad input
//! harmless — size, time and number of bodies in flight (while reading; see
//! `read_body`), signature on the raw bytes (constant-time), delivery id,
//! parse (each through the source's `sources::TicketSource`), then dedupe
//! on the delivery id inside the same transaction as every change the
//! delivery makes.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::error::{ApiError, ErrorBody};
use crate::api::AppState;
use crate::domain::Source;
use crate::intake::{Delivery, Ingested, Outcome};
use crate::metrics::WebhookLabels;
use crate::sources::{self, Inbound, Parsed, TicketSource};

pub fn config(cfg: &mut impl crate::api::Routes) {
    cfg.route("/webhooks/{source}", web::post().to(receive));
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body within the intake's bounds, so an unauthenticated sender
/// costs little however it behaves: a declared length over the limit is
/// refused before anything is read (413); reading takes one of
/// `server.max_inflight_bodies` permits, and when none is free the answer
/// is 503 at once (a queue would only hold more sockets open); the whole
/// body must arrive within `server.read_timeout` (408).
pub(crate) async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let limit = state.ctx.config.server.max_body_bytes;
    let declared = header(req, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let Ok(_permit) = state.bodies.try_acquire() else {
        return Err(ApiError::Busy);
    };
    tokio::time::timeout(
        state.ctx.config.server.read_timeout.std(),
        read_limited(payload, limit),
    )
    .await
    .map_err(|_| ApiError::RequestTimeout)?
}

/// Reads the body, refusing as soon as it passes the limit. The buffer
/// grows with the bytes that have arrived: a declared `Content-Length`
/// reserves nothing.
async fn read_limited(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let read = |chunk: Result<web::Bytes, actix_web::error::PayloadError>| {
        chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => ApiError::PayloadTooLarge(limit),
            other => ApiError::BadRequest(format!("cannot read the body: {other}")),
        })
    };
    // A body that arrives as one chunk is used as it is, without a copy.
    let first = match payload.next().await {
        Some(chunk) => read(chunk)?,
        None => return Ok(web::Bytes::new()),
    };
    if first.len() > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let Some(second) = payload.next().await else {
        return Ok(first);
    };
    let mut body = web::BytesMut::with_capacity(first.len().saturating_mul(2).min(limit));
    body.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        let chunk = read(chunk)?;
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
        next = payload.next().await;
    }
    Ok(body.freeze())
}

/// The intake reads a source's headers straight from the request.
impl sources::Headers for HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        header(self, name)
    }
}

/// What became of a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    /// `accepted`, `duplicate` (its delivery id was seen before) or
    /// `ignored` (not an event warrant acts on).
    #[schema(example = "accepted")]
    pub status: &'static str,
    /// The source's delivery id.
    pub delivery: String,
    /// The ticket it is about, when it names one.
    pub ticket: Option<String>,
}

#[utoipa::path(
    post,
    path = "/webhooks/{source}",
    operation_id = "receive_webhook",
    tag = "webhooks",
    params(("source" = inline(Source), Path, description = "The ticket source (it must be configured)")),
    request_body(
        content = Object,
        description = "The source's own webhook JSON, signed by it: GitHub `X-Hub-Signature-256` (with `X-GitHub-Delivery`, `X-GitHub-Event`), Jira `X-Hub-Signature` (with `X-Atlassian-Webhook-Identifier`), ServiceNow Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`)",
        content_type = "application/json"
    ),
    security(("github_signature" = []), ("jira_signature" = []), ("servicenow_signature" = [])),
    responses(
        (status = 200, description = "Accepted, a duplicate, or ignored; committed before the answer", body = WebhookAnswer),
        (status = 400, description = "A bad header or a body that is not the source's JSON", body = ErrorBody),
        (status = 401, description = "The signature is missing or wrong, or the timestamp is outside the tolerance", body = ErrorBody),
        (status = 404, description = "No such source, or it is not configured", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `server.read_timeout`", body = ErrorBody),
        (status = 413, description = "The body is larger than `server.max_body_bytes`", body = ErrorBody),
        (status = 500, description = "Internal error (the body says nothing more)", body = ErrorBody),
        (status = 503, description = "Too many bodies in flight, or the database is unavailable: retry", body = ErrorBody),
    )
)]
async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let source: Source = path.into_inner().parse().map_err(|_| {
        ApiError::NotFound("no such webhook source (github, jira or servicenow)".into())
    })?;
    let Some(ticket_source) = sources::configured(&state.ctx.config.sources, source) else {
        return Err(ApiError::NotFound(format!(
            "source `{source}` is not configured"
        )));
    };
    let result = receive_configured(&state, &req, source, ticket_source, payload).await;
    let outcome = match &result {
        Ok((o, _)) => match o {
            Outcome::Accepted(_) => "accepted",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::Ignored(_) => "ignored",
        },
        Err(ApiError::Unauthorized(_)) => "unauthorized",
        Err(ApiError::BadRequest(_)) => "bad_request",
        Err(ApiError::PayloadTooLarge(_)) => "too_large",
        Err(ApiError::RequestTimeout) => "timeout",
        Err(ApiError::Busy) => "busy",
        Err(_) => "error",
    };
    state
        .ctx
        .metrics
        .webhooks
        .get_or_create(&WebhookLabels {
            source: source.to_string(),
            outcome: outcome.into(),
        })
        .inc();
    let (outcome, delivery) = result?;
    let (status, ticket) = match outcome {
        Outcome::Accepted(t) => ("accepted", t.map(|k| k.to_string())),
        Outcome::Duplicate(t) => ("duplicate", t),
        Outcome::Ignored(t) => ("ignored", t.map(|k| k.to_string())),
    };
    tracing::info!(%source, delivery = %delivery, status, ticket = ticket.as_deref().unwrap_or("-"), "webhook");
    Ok(HttpResponse::Ok().json(WebhookAnswer {
        status,
        delivery,
        ticket,
    }))
}

async fn receive_configured(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    source: Source,
    ticket_source: &dyn TicketSource,
    payload: web::Payload,
) -> Result<(Outcome, String), ApiError> {
    let body = read_body(state, req, payload).await?;
    let now = state.ctx.clock.now();
    let inbound = Inbound {
        headers: req,
        body: &body,
        now,
        tolerance: state.ctx.config.server.timestamp_tolerance.0,
    };
    ticket_source.verify(&inbound)?;
    let id = ticket_source.delivery_id(&inbound)?;
    let parsed = ticket_source.parse(&inbound)?;
    let delivery = Delivery {
        source,
        id: id.clone(),
        body_sha256: hex::encode(Sha256::digest(&body)),
        parsed,
    };
    let lane = match &delivery.parsed {
        Parsed::Ticket(ev) => ev.key.to_string(),
        Parsed::Ignored {
            ticket: Some(k), ..
        } => k.to_string(),
        Parsed::Ignored { ticket: None, .. } => id.clone(),
    };
    let Ingested { outcome, queued } = state.ctx.commit.ingest(&lane, now, delivery).await?;
    if queued {
        state.ctx.wake.notify_one();
    }
    Ok((outcome, id))
}
