//! `GET /v1/grants`, `GET /v1/grants/{id}`, `POST /v1/grants/{id}/revoke`,
//! and the ticket's whole trace at `GET /v1/tickets/{key}`.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::auth::Caller;
use crate::api::error::{blocking, ApiError, ErrorBody};
use crate::api::AppState;
use crate::audit::Event;
use crate::db;
use crate::domain::{from_micros, rfc3339, GrantState, RevokeReason, TicketKey};
use crate::engine;
use crate::grants::{self, Filter, Grant};
use crate::ticket::Snapshot;

pub fn config(cfg: &mut impl crate::api::Routes) {
    cfg.route("/v1/grants", web::get().to(list))
        .route("/v1/grants/{id}", web::get().to(get))
        .route("/v1/access", web::get().to(access))
        .route("/v1/grants/{id}/revoke", web::post().to(revoke))
        .route("/v1/tickets/{key:.*}", web::get().to(ticket));
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Grants of this ticket.
    ticket: Option<String>,
    /// Grants of this subject.
    subject: Option<String>,
    /// Grants of this resource (`provider/target`).
    resource: Option<String>,
    #[param(value_type = Option<GrantState>, inline)]
    state: Option<String>,
    /// Grants whose window holds this time (RFC 3339).
    #[param(format = DateTime)]
    active_at: Option<String>,
    /// The cursor: the `next` of the previous page.
    after: Option<String>,
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<i64>,
}

/// A page of grants; `next` is the cursor of the following page, when
/// there may be one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantPage {
    pub grants: Vec<Grant>,
    pub next: Option<String>,
}

/// The live grants holding one access, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccessHolders {
    pub provider: String,
    pub account: String,
    pub target: String,
    pub grants: Vec<Grant>,
}

/// One decision warrant made on a ticket.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    pub at: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub detail: String,
}

/// Everything warrant knows of a ticket: its latest snapshot, the
/// decisions, the grants and the audit events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TicketTrace {
    #[schema(value_type = String)]
    pub ticket: TicketKey,
    /// The ticket as warrant last read it.
    #[schema(value_type = Option<Object>)]
    pub snapshot: Option<Snapshot>,
    /// The latest decision.
    pub decision: Option<Decision>,
    pub decisions: Vec<Decision>,
    pub grants: Vec<Grant>,
    pub events: Vec<Event>,
}

pub fn parse_time(name: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "`{name}` must be an RFC 3339 time, e.g. 2026-11-25T10:00:00Z"
            ))
        })
}

#[utoipa::path(
    get,
    path = "/v1/grants",
    operation_id = "list_grants",
    tag = "grants",
    params(ListQuery),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "A page of grants, oldest first", body = GrantPage),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read grants", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
async fn list(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 5000".into(),
        ));
    }
    let filter = Filter {
        ticket: q.ticket,
        subject: q.subject,
        resource: q.resource,
        state: q
            .state
            .map(|s| s.parse::<GrantState>().map_err(ApiError::BadRequest))
            .transpose()?,
        active_at: q
            .active_at
            .map(|t| parse_time("active_at", &t))
            .transpose()?,
        after: q.after,
        limit,
    };
    let st = state.clone();
    let (rows, ledger) = blocking(move || {
        Ok(st.ctx.db.read(|c| {
            let rows = grants::list(c, &filter)?;
            let ids: Vec<String> = rows.iter().map(|g| g.id.clone()).collect();
            Ok((rows, db::access::of(c, &ids)?))
        })?)
    })
    .await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|g| g.id.clone())
    } else {
        None
    };
    let grants = Grant::all_with_access(rows, &ledger);
    Ok(HttpResponse::Ok().json(GrantPage { grants, next }))
}

#[utoipa::path(
    get,
    path = "/v1/grants/{id}",
    operation_id = "get_grant",
    tag = "grants",
    params(("id" = String, Path, description = "The grant's id")),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "The grant", body = Grant),
        (status = 400, description = "A bad path", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read grants", body = ErrorBody),
        (status = 404, description = "No such grant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
async fn get(
    state: web::Data<AppState>,
    _caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let st = state.clone();
    let found = blocking(move || {
        Ok(st.ctx.db.read(|c| {
            let Some(g) = grants::get(c, &id)? else {
                return Ok(None);
            };
            let ledger = db::access::get(c, &id)?;
            Ok(Some((g, ledger)))
        })?)
    })
    .await?;
    match found {
        Some((g, ledger)) => {
            Ok(HttpResponse::Ok().json(Grant::from(g).with_access(ledger.as_ref())))
        }
        None => Err(ApiError::NotFound("no such grant".into())),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AccessQuery {
    /// The provider's name in the configuration.
    #[param(min_length = 1)]
    provider: String,
    /// The account at the provider.
    #[param(min_length = 1)]
    account: String,
    /// The target at the provider.
    #[param(min_length = 1)]
    target: String,
}

/// `GET /v1/access?provider=&account=&target=`: the live grants holding one
/// access, oldest first, each saying whether it holds it at the provider
/// or shares it.
#[utoipa::path(
    get,
    path = "/v1/access",
    operation_id = "get_access",
    tag = "grants",
    params(AccessQuery),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "The live grants holding the access", body = AccessHolders),
        (status = 400, description = "A missing or empty parameter", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read grants", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
async fn access(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<AccessQuery>,
) -> Result<HttpResponse, ApiError> {
    let AccessQuery {
        provider,
        account,
        target,
    } = q.into_inner();
    if provider.is_empty() || account.is_empty() || target.is_empty() {
        return Err(ApiError::BadRequest(
            "`provider`, `account` and `target` are all required".into(),
        ));
    }
    let resource = format!("{provider}/{target}");
    let st = state.clone();
    let (r, a) = (resource.clone(), account.clone());
    let (rows, ledger) = blocking(move || {
        Ok(st.ctx.db.read(|c| {
            let rows = db::access::holding(c, &r, &a)?;
            let ids: Vec<String> = rows.iter().map(|g| g.id.clone()).collect();
            Ok((rows, db::access::of(c, &ids)?))
        })?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(AccessHolders {
        provider,
        account,
        target,
        grants: Grant::all_with_access(rows, &ledger),
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// `manual` (the default) or `drift`; any other text is kept as a note
    /// on a `manual` revocation.
    reason: Option<String>,
}

/// The reason recorded for a revocation by hand: `manual` or `drift` as
/// given; any other text is kept as a note on a `manual` revocation.
pub fn manual_reason(text: Option<&str>) -> (RevokeReason, Option<String>) {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => match t.parse::<RevokeReason>() {
            Ok(r @ (RevokeReason::Manual | RevokeReason::Drift)) => (r, None),
            _ => (RevokeReason::Manual, Some(crate::domain::truncate(t, 500))),
        },
        None => (RevokeReason::Manual, None),
    }
}

#[utoipa::path(
    post,
    path = "/v1/grants/{id}/revoke",
    operation_id = "revoke_grant",
    tag = "grants",
    params(("id" = String, Path, description = "The grant's id")),
    request_body(content = Option<RevokeBody>, description = "Optional; without it the reason is `manual`"),
    security(("api_token" = ["admin"])),
    responses(
        (status = 200, description = "The grant, revoking or revoked", body = Grant),
        (status = 400, description = "A bad path, or a body that is not `{\"reason\": TEXT}`", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token is not an admin's", body = ErrorBody),
        (status = 404, description = "No such grant", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The grant cannot be revoked now", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or too many bodies are in flight: retry", body = ErrorBody),
    )
)]
async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    // No body is the default reason; a body that is not a `RevokeBody` is
    // refused rather than taken for none, so a misspelt field never turns
    // into a revocation for another reason.
    let body = crate::api::webhooks::read_body(&state, &req, payload).await?;
    let body: RevokeBody = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "invalid JSON body: {e} (expected {{\"reason\": TEXT}} or none)"
            ))
        })?
    };
    let (reason, note) = manual_reason(body.reason.as_deref());
    let id = id.into_inner();
    let st = state.clone();
    let now = state.ctx.clock.now();
    let actor = caller.actor();
    let row = blocking(move || {
        Ok(engine::revoke_by_hand(
            &st.ctx.db,
            &st.ctx.config,
            now,
            &id,
            reason,
            &actor,
            note.as_deref(),
        )?)
    })
    .await?;
    state.ctx.wake.notify_one();
    match row {
        Some(g) => Ok(HttpResponse::Ok().json(Grant::from(g))),
        None => Err(ApiError::NotFound("no such grant".into())),
    }
}

/// The ticket key from the raw path, so `%2F` and `%23` decode exactly once.
fn ticket_key(req: &HttpRequest) -> Result<TicketKey, ApiError> {
    let raw = req
        .uri()
        .path()
        .strip_prefix("/v1/tickets/")
        .unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("the ticket key is not UTF-8".into()))?;
    decoded.parse().map_err(ApiError::BadRequest)
}

#[utoipa::path(
    get,
    path = "/v1/tickets/{key}",
    operation_id = "get_ticket",
    tag = "grants",
    params(("key" = String, Path,
        pattern = r"^(github:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+#[0-9]+|jira:[A-Za-z0-9_]+-[0-9]+|servicenow:[A-Za-z0-9_.-]+)$",
        example = "github:acme/access-requests#1",
        description = "The ticket key, percent-encoded: `github:OWNER/REPO#N`, `jira:KEY-N`, `servicenow:NUMBER`")),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "The ticket's whole trace", body = TicketTrace),
        (status = 400, description = "Not a ticket key", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read tickets", body = ErrorBody),
        (status = 404, description = "warrant has not seen the ticket", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
async fn ticket(
    state: web::Data<AppState>,
    _caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let key = ticket_key(&req)?;
    let st = state.clone();
    let k = key.to_string();
    let found = blocking(move || {
        Ok(st.ctx.db.read(|conn| {
            let Some(row) = db::tickets::load(conn, &k)? else {
                return Ok(None);
            };
            let decisions = db::tickets::decisions_of(conn, &k)?;
            let grants = grants::of_ticket(conn, &k)?;
            let events = db::audit::of_ticket(conn, &k, 10_000)?;
            Ok(Some((row, decisions, grants, events)))
        })?)
    })
    .await?;
    let Some((row, decisions, grants, events)) = found else {
        return Err(ApiError::NotFound(format!(
            "warrant has not seen ticket {key}"
        )));
    };
    let snapshot: Option<Snapshot> = serde_json::from_str(&row.snapshot).ok();
    let decisions: Vec<Decision> = decisions
        .into_iter()
        .map(|d| Decision {
            at: rfc3339(from_micros(d.at)),
            outcome: d.outcome,
            reason: d.reason,
            detail: d.detail,
        })
        .collect();
    let decision = decisions.last().cloned();
    Ok(HttpResponse::Ok().json(TicketTrace {
        ticket: key,
        snapshot,
        decision,
        decisions,
        grants: grants.into_iter().map(Grant::from).collect(),
        events: events.into_iter().map(Event::from).collect(),
    }))
}
