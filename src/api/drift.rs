//! `GET /v1/drift`: the open drift findings (access a provider holds that
//! no live grant warrants), for admins and auditors, a page at a time.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::auth::Caller;
use crate::api::error::{blocking, ApiError};
use crate::api::AppState;
use crate::db::drift::{self, FindingRow};
use crate::domain::{from_micros, rfc3339};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/drift", web::get().to(list));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    provider: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// A finding as the API shows it.
#[derive(Debug, Serialize)]
struct Finding {
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
    Ok(HttpResponse::Ok().json(json!({ "findings": findings, "next": next })))
}
