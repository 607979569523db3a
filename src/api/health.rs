//! Liveness, readiness and metrics endpoints.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::api::error::blocking;
use crate::api::AppState;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // A loop that commits or revokes is down (and being restarted): the
    // process answers, but it cannot keep its promises now.
    let down = state.ctx.health.down();
    if !down.is_empty() {
        tracing::warn!(parts = ?down, "not ready: supervised parts are down");
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "unavailable",
            "database": state.ctx.db.backend(),
            "down": down,
            "message": "parts of warrant that commit or revoke are restarting",
        }));
    }
    let db = state.ctx.db.clone();
    match blocking(move || Ok(db.ready())).await {
        Ok(Ok(())) => HttpResponse::Ok()
            .json(json!({ "status": "ready", "database": state.ctx.db.backend() })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "unavailable",
                "database": state.ctx.db.backend(),
                "message": "database unreachable or migrations pending",
            }))
        }
        Err(_) => HttpResponse::ServiceUnavailable().json(json!({ "status": "unavailable" })),
    }
}

/// Renders only: the gauges that need the database are kept fresh by
/// `store::refresh_gauges_forever` (every `server.metrics_refresh`), so an
/// unauthenticated scrape never runs a query.
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.ctx.metrics.render())
}
