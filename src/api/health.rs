//! Liveness, readiness and metrics endpoints.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::api::error::blocking;
use crate::api::AppState;

pub fn config(cfg: &mut impl crate::api::Routes) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// The process answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Whether warrant can keep its promises now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub database: Option<&'static str>,
    /// The supervised parts that are down (and being restarted).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub down: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub message: Option<&'static str>,
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "The process answers", body = Health))
)]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "The database answers and every supervised part runs", body = Readiness),
        (status = 503, description = "The database is unreachable, migrations are pending, or a part that commits or revokes is restarting", body = Readiness),
    )
)]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // A loop that commits or revokes is down (and being restarted): the
    // process answers, but it cannot keep its promises now.
    let down = state.ctx.health.down();
    if !down.is_empty() {
        tracing::warn!(parts = ?down, "not ready: supervised parts are down");
        return HttpResponse::ServiceUnavailable().json(Readiness {
            status: "unavailable",
            database: Some(state.ctx.db.backend()),
            down: Some(down),
            message: Some("parts of warrant that commit or revoke are restarting"),
        });
    }
    let db = state.ctx.db.clone();
    match blocking(move || Ok(db.ready())).await {
        Ok(Ok(())) => HttpResponse::Ok().json(Readiness {
            status: "ready",
            database: Some(state.ctx.db.backend()),
            down: None,
            message: None,
        }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready");
            HttpResponse::ServiceUnavailable().json(Readiness {
                status: "unavailable",
                database: Some(state.ctx.db.backend()),
                down: None,
                message: Some("database unreachable or migrations pending"),
            })
        }
        Err(_) => HttpResponse::ServiceUnavailable().json(Readiness {
            status: "unavailable",
            database: None,
            down: None,
            message: None,
        }),
    }
}

/// Renders only: the gauges that need the database are kept fresh by
/// `store::refresh_gauges_forever` (every `server.metrics_refresh`), so an
/// unauthenticated scrape never runs a query.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.ctx.metrics.render())
}
