use crate::helpers::Backend;
use crate::{app, backend_tests};

async fn health_ready_and_metrics(backend: Backend) {
    let app = app!(backend);
    let r = app
        .client
        .get(format!("{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(format!("{}/readyz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(format!("{}/nowhere", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"warrant_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("warrant_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(r#"warrant_grants{state="revoking"} 0"#),
        "{text}"
    );
}

backend_tests!(health_ready_and_metrics);
