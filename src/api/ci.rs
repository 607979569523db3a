//! CI deploy rights over HTTP, and the public side of the providers that
//! issue credentials (`token`, `ssh`).
//!
//! - `POST /v1/ci/grants` and `DELETE /v1/ci/grants/{id}`: for pipelines,
//!   authenticated by their OIDC token (`Authorization: Bearer <JWT>`).
//! - `GET /.well-known/jwks.json`: the public keys of the credentials.
//! - `POST /v1/introspect` (RFC 7662): for API tokens of role `introspector`.
//! - `GET /v1/ssh/ca.pub[?provider=NAME]`: an `ssh` provider's CA public
//!   key, for hosts' `TrustedUserCAKeys` (the provider may be left out when
//!   only one is configured).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::auth::Introspector;
use crate::api::error::{blocking, ApiError};
use crate::api::AppState;
use crate::ci::oidc::{TokenError, Verified};
use crate::ci::{self as ci_core, CiRequest, Outcome, Released};
use crate::domain::{parse_duration, Resource, TicketKey};
use crate::grants::Grant;
use crate::policy::ci::{self as decide, CiDenial};
use crate::providers::credential::{self, CredentialError};
use crate::providers::ssh::CaChoice;
use crate::providers::token::{self as token_kind, KeyError};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/ci/grants", web::post().to(create))
        .route("/v1/ci/grants/{id}", web::delete().to(release))
        .route("/v1/introspect", web::post().to(introspect))
        .route("/.well-known/jwks.json", web::get().to(jwks))
        .route("/v1/ssh/ca.pub", web::get().to(ssh_ca));
}

/// Largest request body a pipeline or an introspection sends.
const MAX_BODY: usize = 64 * 1024;

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <OIDC token>".into())
        })?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <OIDC token>`".into()))
}

/// The pipeline's verified token. The token itself is never logged.
async fn verified(state: &AppState, req: &HttpRequest) -> Result<Verified, ApiError> {
    let token = bearer(req)?;
    state
        .ci
        .verify(&state.ctx.http, state.ctx.clock.now(), token)
        .await
        .map_err(|e| match e {
            TokenError::KeysUnavailable(issuer) => {
                tracing::warn!(%issuer, "CI token not checked: the issuer's keys are unavailable");
                ApiError::Unavailable
            }
            other => {
                tracing::info!(error = %other, "CI token refused");
                ApiError::Unauthorized(other.to_string())
            }
        })
}

fn refused(d: CiDenial) -> ApiError {
    let reason = d.reason.as_str().to_string();
    if d.reason.is_ticket_state() {
        ApiError::Conflict {
            reason,
            message: d.detail,
        }
    } else {
        ApiError::Denied {
            reason,
            message: d.detail,
        }
    }
}

/// The signing keys' errors: a store error as any other; the rest (no or
/// a wrong `[keys]` secret) logged for the operator, a bare 500 outside.
fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Store(s) => s.into(),
        e @ KeyError::NoKek(_) => ApiError::NotConfigured(e.to_string()),
        other => {
            tracing::error!(error = %other, "signing keys unusable");
            ApiError::Internal
        }
    }
}

fn credential_error(e: CredentialError) -> ApiError {
    match e {
        CredentialError::Token(token_kind::CredentialError::Keys(k)) => key_error(k),
        other => {
            tracing::error!(error = %other, "cannot sign a credential");
            ApiError::Internal
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    ticket: String,
    resource: String,
    duration: Option<String>,
    /// For an `ssh` resource: the OpenSSH public key to certify.
    public_key: Option<String>,
}

async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let v = verified(&state, &req).await?;
    // Bounded like a webhook body: in size, in time and in how many are
    // read at once.
    let body = crate::api::webhooks::read_body(&state, &req, payload).await?;
    if body.len() > MAX_BODY {
        return Err(ApiError::PayloadTooLarge(MAX_BODY));
    }
    let body: CreateBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body: {e} (expected {{\"ticket\", \"resource\", \"duration\", \"public_key\"}})"
        ))
    })?;
    let ticket: TicketKey = body.ticket.parse().map_err(ApiError::BadRequest)?;
    let resource: Resource = body.resource.parse().map_err(ApiError::BadRequest)?;
    let duration = body
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("`duration`: {e}")))?;
    let material = credential::material(&state.ctx.config, &resource, body.public_key.as_deref())
        .map_err(ApiError::BadRequest)?;
    let issuer = state
        .ctx
        .config
        .ci
        .issuers
        .iter()
        .find(|i| i.name == v.issuer)
        .ok_or(ApiError::Internal)?;
    let run = ci_core::run_of(issuer, &v.claims).map_err(ApiError::Unauthorized)?;
    let trusted = decide::trust(&state.ctx.config, &v.issuer, &v.claims, &resource).map_err(|d| {
        tracing::info!(issuer = %v.issuer, reason = %d.reason, %resource, "CI request not trusted");
        refused(d)
    })?;
    let request = CiRequest {
        issuer: v.issuer.clone(),
        run,
        principal: trusted.rule.principal.clone(),
        trust_rule: trusted.index,
        matched: trusted.matched,
        sub: v
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string),
        ticket,
        resource,
        duration,
        max_duration: trusted.rule.max_duration.0,
        public_key: match &material {
            credential::Material::SshKey(k) => Some(k.fingerprint(Default::default()).to_string()),
            credential::Material::Nothing => None,
        },
    };
    state
        .ctx
        .credentials
        .tokens
        .usable(request.resource.provider())
        .map_err(key_error)?;
    let now = state.ctx.clock.now();
    let st = state.clone();
    let r = request.clone();
    let (outcome, credential) = blocking(move || {
        let outcome = ci_core::request(&st.ctx.db, &st.ctx.config, now, &r)?;
        let credential = match &outcome {
            Outcome::Created(g) | Outcome::Existing(g) => st
                .ctx
                .credentials
                .issue(&st.ctx.config, &st.ctx.db, now, g, &material)
                .map_err(credential_error)?,
            Outcome::Denied(_) | Outcome::UnknownTicket => None,
        };
        Ok((outcome, credential))
    })
    .await?;
    let (status, grant) = match outcome {
        Outcome::Created(g) => {
            state.ctx.wake.notify_one();
            (StatusCode::CREATED, g)
        }
        Outcome::Existing(g) => (StatusCode::OK, g),
        Outcome::Denied(d) => {
            tracing::info!(
                principal = %request.principal, ticket = %request.ticket, reason = %d.reason,
                "CI request denied"
            );
            return Err(refused(d));
        }
        Outcome::UnknownTicket => {
            return Err(ApiError::NotFound(format!(
                "warrant has not seen ticket {}",
                request.ticket
            )))
        }
    };
    tracing::info!(
        principal = %request.principal, ticket = %request.ticket, grant = %grant.id,
        run = %request.run, status = status.as_u16(), "CI grant"
    );
    Ok(HttpResponse::build(status).json(json!({
        "grant": Grant::from(grant),
        "credential": credential,
    })))
}

async fn release(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let v = verified(&state, &req).await?;
    let principals: Vec<String> = decide::principals(&state.ctx.config, &v.issuer, &v.claims)
        .into_iter()
        .map(str::to_string)
        .collect();
    if principals.is_empty() {
        return Err(ApiError::Denied {
            reason: "untrusted".into(),
            message: format!(
                "no [[ci.trust]] rule of issuer {} matches this token's claims",
                v.issuer
            ),
        });
    }
    let id = id.into_inner();
    let now = state.ctx.clock.now();
    let st = state.clone();
    let (issuer, gid) = (v.issuer.clone(), id.clone());
    let released = blocking(move || {
        Ok(ci_core::release(
            &st.ctx.db,
            &st.ctx.config,
            now,
            &gid,
            &issuer,
            &principals,
        )?)
    })
    .await?;
    match released {
        Released::NotFound => Err(ApiError::NotFound("no such grant".into())),
        Released::NotYours => Err(ApiError::Denied {
            reason: "not_holder".into(),
            message: format!("grant {id} is not held by this pipeline's identity"),
        }),
        Released::Done(g) => {
            state.ctx.wake.notify_one();
            tracing::info!(grant = %g.id, principal = %g.subject, "CI grant released");
            Ok(HttpResponse::Ok().json(json!({ "grant": Grant::from(*g) })))
        }
    }
}

/// The `token` parameter of an RFC 7662 request: form-encoded, or JSON.
fn token_param(req: &HttpRequest, body: &[u8]) -> Result<String, ApiError> {
    let json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
    let token = if json {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
    } else {
        url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    };
    token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        ApiError::BadRequest(
            "give the credential as `token` (form-encoded token=..., or JSON {\"token\": ...})"
                .into(),
        )
    })
}

async fn introspect(
    state: web::Data<AppState>,
    _caller: Introspector,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = crate::api::webhooks::read_body(&state, &req, payload).await?;
    if body.len() > MAX_BODY {
        return Err(ApiError::PayloadTooLarge(MAX_BODY));
    }
    let token = token_param(&req, &body)?;
    let now = state.ctx.clock.now();
    let st = state.clone();
    let answer = blocking(move || {
        st.ctx
            .credentials
            .tokens
            .introspect(&st.ctx.db, now, &token)
            .map_err(key_error)
    })
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(answer))
}

async fn jwks(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let now = state.ctx.clock.now();
    let st = state.clone();
    let keys = blocking(move || {
        st.ctx
            .credentials
            .tokens
            .jwks(&st.ctx.db, now)
            .map_err(key_error)
    })
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=60"))
        .json(keys))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaQuery {
    provider: Option<String>,
}

async fn ssh_ca(
    state: web::Data<AppState>,
    query: web::Query<CaQuery>,
) -> Result<HttpResponse, ApiError> {
    let line = state
        .ctx
        .credentials
        .ssh
        .public_key(query.provider.as_deref())
        .map_err(|e| match e {
            CaChoice::Ambiguous(_) => ApiError::BadRequest(e.to_string()),
            CaChoice::None | CaChoice::Unknown(_) => ApiError::NotFound(e.to_string()),
        })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .body(line))
}
