//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated
//! from the handlers' `#[utoipa::path]` annotations and the bodies'
//! `ToSchema` derives, so it changes with the code. Served without auth:
//! it says what the API is, nothing about what it holds.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use crate::api::{audit, ci, drift, grants, health, webhooks};

pub fn config(cfg: &mut impl crate::api::Routes) {
    cfg.route("/openapi.json", web::get().to(document));
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "warrant",
        description = "Just-in-time access warranted by an approved ticket, revoked when the ticket closes or the window ends."
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        webhooks::receive,
        grants::list,
        grants::get,
        grants::access,
        grants::revoke,
        grants::ticket,
        audit::list,
        audit::export,
        audit::verify,
        audit::checkpoint_key,
        audit::checkpoints,
        ci::create,
        ci::release,
        ci::introspect,
        ci::jwks,
        ci::ssh_ca,
        drift::list,
        document,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document"),
        (name = "webhooks", description = "Ticket sources' deliveries"),
        (name = "grants", description = "Grants, accesses and tickets"),
        (name = "audit", description = "The audit trail and its checkpoints"),
        (name = "ci", description = "CI deploy rights and the token provider's public side"),
        (name = "drift", description = "Access held without a grant"),
    )
)]
pub struct ApiDoc;

/// The ways callers prove who they are.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str, format: Option<&str>| {
            let mut b = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description));
            if let Some(f) = format {
                b = b.bearer_format(f);
            }
            SecurityScheme::Http(b.build())
        };
        components.add_security_scheme(
            "api_token",
            bearer(
                "An API token from `[[api.tokens]]`. The operation's roles say which may call it: admin, auditor (reads) or introspector (only `POST /v1/introspect`).",
                None,
            ),
        );
        components.add_security_scheme(
            "ci_oidc",
            bearer(
                "The pipeline's OIDC ID token, from an issuer in `[[ci.issuers]]`.",
                Some("JWT"),
            ),
        );
        let header = |name: &str, description: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                name,
                description,
            )))
        };
        components.add_security_scheme(
            "github_signature",
            header(
                "X-Hub-Signature-256",
                "GitHub: `sha256=HEX`, HMAC-SHA256 of the raw body with the source's secret.",
            ),
        );
        components.add_security_scheme(
            "jira_signature",
            header(
                "X-Hub-Signature",
                "Jira: `sha256=HEX`, HMAC-SHA256 of the raw body with the source's secret.",
            ),
        );
        components.add_security_scheme(
            "servicenow_signature",
            header(
                "webhook-signature",
                "ServiceNow, Standard Webhooks: `v1,BASE64` over `webhook-id.webhook-timestamp.body`, with the `webhook-id` and `webhook-timestamp` headers.",
            ),
        );
    }
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "health",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object))
)]
async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
