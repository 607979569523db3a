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
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::auth::Introspector;
use crate::api::error::{blocking, ApiError, ErrorBody};
use crate::api::AppState;
use crate::ci::oidc::{TokenError, Verified};
use crate::ci::{self as ci_core, CiRequest, Outcome, Released};
use crate::domain::{parse_duration, Resource, TicketKey};
use crate::grants::Grant;
use crate::policy::ci::{self as decide, CiDenial};
use crate::providers::credential::{self, CredentialError};
use crate::providers::ssh::CaChoice;
use crate::providers::token::{self as token_kind, KeyError};

pub fn config(cfg: &mut impl crate::api::Routes) {
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

/// What a pipeline asks for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// The ticket that warrants the deploy: `github:OWNER/REPO#N`,
    /// `jira:KEY-N`, `servicenow:NUMBER`.
    ticket: String,
    /// `provider/target`.
    resource: String,
    /// How long, e.g. `30m` (at most the trust rule's `max_duration`).
    duration: Option<String>,
    /// For an `ssh` resource: the OpenSSH public key to certify.
    public_key: Option<String>,
}

/// A pipeline's grant, with its credential when the provider issues one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CiGrant {
    pub grant: Grant,
    /// A signed JWT for `token` providers, an OpenSSH user certificate
    /// (one line) for `ssh` providers; null for the others.
    pub credential: Option<String>,
}

/// The grant a pipeline released.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CiReleased {
    pub grant: Grant,
}

/// An RFC 7662 introspection request, form-encoded or JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // only describes the body `token_param` reads
struct IntrospectRequest {
    /// The credential to check.
    #[schema(min_length = 1, pattern = r"\S")]
    token: String,
}

#[utoipa::path(
    post,
    path = "/v1/ci/grants",
    operation_id = "create_ci_grant",
    tag = "ci",
    request_body(content = CreateBody, content_type = "application/json"),
    security(("ci_oidc" = [])),
    responses(
        (status = 200, description = "This pipeline's live grant for the same ticket and resource", body = CiGrant),
        (status = 201, description = "A new grant", body = CiGrant),
        (status = 400, description = "A bad body, ticket key, resource or duration; for an `ssh` resource a missing or unusable `public_key`, and `public_key` for any other", body = ErrorBody),
        (status = 401, description = "No valid OIDC token", body = ErrorBody),
        (status = 403, description = "No trust rule or the ticket does not warrant it (`reason` says which)", body = ErrorBody),
        (status = 404, description = "warrant has not seen the ticket", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The ticket's state does not warrant it now (`reason` says why)", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The issuer's keys or the database are unavailable, or too many bodies are in flight: retry; or (`not_configured`) the provider cannot issue its credential until configured, e.g. `[keys]`", body = ErrorBody),
    )
)]
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
    Ok(HttpResponse::build(status).json(CiGrant {
        grant: Grant::from(grant),
        credential,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/ci/grants/{id}",
    operation_id = "release_ci_grant",
    tag = "ci",
    params(("id" = String, Path, description = "The grant's id")),
    security(("ci_oidc" = [])),
    responses(
        (status = 200, description = "The released grant", body = CiReleased),
        (status = 400, description = "A bad path", body = ErrorBody),
        (status = 401, description = "No valid OIDC token", body = ErrorBody),
        (status = 403, description = "No trust rule matches, or the grant is not this pipeline's", body = ErrorBody),
        (status = 404, description = "No such grant", body = ErrorBody),
        (status = 409, description = "The grant cannot be released now", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The issuer's keys or the database are unavailable: retry", body = ErrorBody),
    )
)]
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
            Ok(HttpResponse::Ok().json(CiReleased {
                grant: Grant::from(*g),
            }))
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

#[utoipa::path(
    post,
    path = "/v1/introspect",
    operation_id = "introspect",
    tag = "ci",
    request_body(content(
        (IntrospectRequest = "application/x-www-form-urlencoded"),
        (IntrospectRequest = "application/json"),
    )),
    security(("api_token" = ["introspector"])),
    responses(
        (status = 200, description = "RFC 7662: exactly `{\"active\": false}`, or the credential's claims with `\"active\": true`", body = Object),
        (status = 400, description = "No `token` given", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role is not introspector", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or too many bodies are in flight: retry", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "jwks",
    tag = "ci",
    responses(
        (status = 200, description = "A JWK Set (RFC 7517): `{\"keys\": [...]}`, each key with the issuers (`iss`) whose credentials it signs", body = Object),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CaQuery {
    /// The `ssh` provider whose CA to serve; may be left out when only one
    /// is configured.
    provider: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/ssh/ca.pub",
    operation_id = "ssh_ca_public_key",
    tag = "ci",
    params(CaQuery),
    responses(
        (status = 200, description = "The `ssh` provider's CA public key, one OpenSSH line, for sshd's `TrustedUserCAKeys`", body = String, content_type = "text/plain"),
        (status = 400, description = "Several `ssh` providers and none named, or a bad query", body = ErrorBody),
        (status = 404, description = "No such `ssh` provider", body = ErrorBody),
    )
)]
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
