//! `GET /v1/drift`: the open drift findings (access a provider holds that
//! no live grant warrants), for admins and auditors, a page at a time.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::api::auth::Caller;
use crate::api::error::{blocking, ApiError, ErrorBody};
use crate::api::AppState;
use crate::db::drift::{self, FindingRow};
use crate::domain::{from_micros, rfc3339};

pub fn config(cfg: &mut impl crate::api::Routes) {
    cfg.route("/v1/drift", web::get().to(list));
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Findings at this provider.
    provider: Option<String>,
    /// The cursor: the `next` of the previous page.
    after: Option<String>,
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<i64>,
}

/// A finding as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Finding {
    id: String,
    provider: String,
    account: String,
    target: String,
    resource: String,
    found_at: String,
    state: String,
    /// What checks do about it now: `report` or `revoke` (the provider's
    /// drift mode; `off` if its checks have since been turned off).
    mode: &'static str,
}

/// A page of open findings; `next` is the cursor of the following page,
/// when there may be one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FindingPage {
    pub findings: Vec<Finding>,
    pub next: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/drift",
    operation_id = "list_drift_findings",
    tag = "drift",
    params(ListQuery),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "A page of open findings", body = FindingPage),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read findings", body = ErrorBody),
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
    let limit = q.limit.unwrap_or(1000);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 5000".into(),
        ));
    }
    let st = state.clone();
    let rows: Vec<FindingRow> = blocking(move || {
        Ok(st
            .ctx
            .db
            .read(|c| drift::open(c, q.provider.as_deref(), q.after.as_deref(), limit))?)
    })
    .await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|f| f.id.clone())
    } else {
        None
    };
    let config = &state.ctx.config;
    let findings: Vec<Finding> = rows
        .into_iter()
        .map(|f| Finding {
            mode: config.drift_mode(&f.provider).as_str(),
            resource: format!("{}/{}", f.provider, f.target),
            found_at: rfc3339(from_micros(f.found_at)),
            id: f.id,
            provider: f.provider,
            account: f.account,
            target: f.target,
            state: f.state,
        })
        .collect();
    Ok(HttpResponse::Ok().json(FindingPage { findings, next }))
}
