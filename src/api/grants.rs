//! `GET /v1/grants`, `GET /v1/grants/{id}`, `POST /v1/grants/{id}/revoke`,
//! and the ticket's whole trace at `GET /v1/tickets/{key}`.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::api::auth::Caller;
use crate::api::error::{blocking, ApiError};
use crate::api::AppState;
use crate::audit::Event;
use crate::db;
use crate::domain::{from_micros, rfc3339, GrantState, RevokeReason, TicketKey};
use crate::engine;
use crate::grants::{self, Filter, Grant};
use crate::ticket::Snapshot;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/grants", web::get().to(list))
        .route("/v1/grants/{id}", web::get().to(get))
        .route("/v1/access", web::get().to(access))
        .route("/v1/grants/{id}/revoke", web::post().to(revoke))
        .route("/v1/tickets/{key:.*}", web::get().to(ticket));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    ticket: Option<String>,
    subject: Option<String>,
    resource: Option<String>,
    state: Option<String>,
    active_at: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
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
    Ok(HttpResponse::Ok().json(json!({ "grants": grants, "next": next })))
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessQuery {
    provider: String,
    account: String,
    target: String,
}

/// `GET /v1/access?provider=&account=&target=`: the live grants holding one
/// access, oldest first, each saying whether it holds it at the provider
/// or shares it.
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
    Ok(HttpResponse::Ok().json(json!({
        "provider": provider,
        "account": account,
        "target": target,
        "grants": Grant::all_with_access(rows, &ledger),
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
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

async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: Option<web::Json<RevokeBody>>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let body = body.map(|b| b.into_inner()).unwrap_or_default();
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
    let decisions: Vec<_> = decisions
        .into_iter()
        .map(|d| json!({ "at": rfc3339(from_micros(d.at)), "outcome": d.outcome, "reason": d.reason, "detail": d.detail }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "ticket": key,
        "snapshot": snapshot,
        "decision": decisions.last(),
        "decisions": decisions,
        "grants": grants.into_iter().map(Grant::from).collect::<Vec<_>>(),
        "events": events.into_iter().map(Event::from).collect::<Vec<_>>(),
    })))
}
