//! `GET /openapi.json`: an OpenAPI 3.1 document, served without a token,
//! that covers exactly the routes the server registers, method by method,
//! with the security schemes and the one error body. A route added
//! without its `#[utoipa::path]` fails here.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Backend, TestApp, ADMIN_TOKEN};
use crate::{app, backend_tests};

/// An actix pattern as OpenAPI writes it: `{key:.*}` becomes `{key}`.
fn openapi_path(pattern: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    let mut skipping = false;
    for c in pattern.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push(c);
            }
            ':' if in_param => skipping = true,
            '}' if in_param => {
                in_param = false;
                skipping = false;
                out.push(c);
            }
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    out
}

/// The pattern with each parameter filled in, for a request.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push_str("probe");
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

async fn document(app: &TestApp) -> Value {
    // No token: the document is public.
    let r = app
        .client
        .get(format!("{}/openapi.json", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json")));
    r.json().await.unwrap()
}

/// The methods the server routes on `path`: a method without a route there
/// falls through to the app's default answer, 404 `no such route`.
async fn served_methods(app: &TestApp, path: &str) -> Vec<String> {
    let mut served = Vec::new();
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ] {
        let r = app
            .client
            .request(method.clone(), format!("{}{}", app.addr, concrete(path)))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let unrouted = status == 405 || (status == 404 && body["message"] == "no such route");
        if !unrouted {
            served.push(method.as_str().to_ascii_lowercase());
        }
    }
    served
}

async fn document_is_openapi_3_1_and_covers_every_route(backend: Backend) {
    let app = app!(backend);
    let doc = document(&app).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let registered = warrant::api::paths();
    assert!(registered.len() >= 20, "{registered:?}");
    for pattern in &registered {
        let path = openapi_path(pattern);
        let Some(item) = paths.get(&path) else {
            panic!("route {pattern} is registered but not in /openapi.json");
        };
        let served = served_methods(&app, &path).await;
        assert!(!served.is_empty(), "{path}: no method answers");
        for method in ["get", "post", "put", "patch", "delete"] {
            assert_eq!(
                item.get(method).is_some(),
                served.iter().any(|m| m == method),
                "{path}: {method} is served {served:?} but the document says otherwise"
            );
        }
    }
    for path in paths.keys() {
        assert!(
            registered.iter().any(|p| &openapi_path(p) == path),
            "{path} is in the document but no route serves it"
        );
    }
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|o| o.values()))
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "operation ids repeat: {ids:?}");
}

async fn security_schemes_and_error_bodies_are_documented(backend: Backend) {
    let app = app!(backend);
    let doc = document(&app).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_token"]["type"], "http");
    assert_eq!(schemes["api_token"]["scheme"], "bearer");
    assert_eq!(schemes["ci_oidc"]["scheme"], "bearer");
    assert_eq!(schemes["ci_oidc"]["bearerFormat"], "JWT");
    for (name, header) in [
        ("github_signature", "X-Hub-Signature-256"),
        ("jira_signature", "X-Hub-Signature"),
        ("servicenow_signature", "webhook-signature"),
    ] {
        assert_eq!(schemes[name]["type"], "apiKey", "{name}");
        assert_eq!(schemes[name]["in"], "header", "{name}");
        assert_eq!(schemes[name]["name"], header, "{name}");
    }
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    assert_eq!(
        security("/v1/grants", "get"),
        serde_json::json!([{ "api_token": ["admin", "auditor"] }])
    );
    assert_eq!(
        security("/v1/grants/{id}/revoke", "post"),
        serde_json::json!([{ "api_token": ["admin"] }])
    );
    assert_eq!(
        security("/v1/introspect", "post"),
        serde_json::json!([{ "api_token": ["introspector"] }])
    );
    assert_eq!(
        security("/v1/ci/grants", "post"),
        serde_json::json!([{ "ci_oidc": [] }])
    );
    assert_eq!(
        security("/webhooks/{source}", "post")
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert!(security("/openapi.json", "get").is_null());

    // Every 4xx and 5xx is the one error body, and an operation behind a
    // token says what happens without one.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    if path == "/readyz" {
                        continue;
                    }
                    assert_eq!(
                        resp["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
            if op.get("security").is_some() {
                assert!(
                    op["responses"].get("401").is_some(),
                    "{method} {path} has no 401"
                );
            }
        }
    }
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error", "message"]));

    // What the server sends matches: a refused token and an unknown grant.
    let r = app
        .client
        .get(format!("{}/v1/grants", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].is_string());
    let (status, body) = app.get_json("/v1/grants/nope", ADMIN_TOKEN).await;
    assert_eq!(status, 404);
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["error", "message"], "{body}");
}

/// Found by schemathesis: PostgreSQL text cannot hold NUL, so a filter or
/// an id with `%00` failed the query with a 500. It is a 400 on both.
async fn a_nul_in_the_url_is_a_bad_request(backend: Backend) {
    let app = app!(backend);
    for path in [
        "/v1/grants?subject=a%00b",
        "/v1/grants?after=%00",
        "/v1/grants/a%00b",
        "/v1/audit?ticket=x%00",
        "/v1/drift?provider=%00",
        "/v1/access?provider=hooks&account=a%00&target=t",
    ] {
        let (status, body) = app.get_json(path, ADMIN_TOKEN).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}");
    }
    // Text that only looks like it after decoding is left alone.
    let (status, body) = app.get_json("/v1/grants?subject=%2500", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
}

/// Found by schemathesis: a revocation's body that was not a `RevokeBody`
/// was taken for no body, so `{"reasn": "drift"}` revoked as `manual`.
async fn a_revocation_body_that_does_not_parse_is_refused(backend: Backend) {
    let app = app!(backend);
    for body in [
        serde_json::json!({ "reasn": "drift" }),
        serde_json::json!({ "reason": 42 }),
        serde_json::json!("drift"),
    ] {
        let (status, answer) = app
            .post_json("/v1/grants/nope/revoke", ADMIN_TOKEN, &body)
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "bad_request");
    }
    // No body, or a good one, reaches the grant (none here).
    let r = app
        .client
        .post(format!("{}/v1/grants/nope/revoke", app.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (status, _) = app
        .post_json(
            "/v1/grants/nope/revoke",
            ADMIN_TOKEN,
            &serde_json::json!({ "reason": "drift" }),
        )
        .await;
    assert_eq!(status, 404);
}

backend_tests!(
    document_is_openapi_3_1_and_covers_every_route,
    security_schemes_and_error_bodies_are_documented,
    a_nul_in_the_url_is_a_bad_request,
    a_revocation_body_that_does_not_parse_is_refused
);
