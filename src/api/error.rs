//! The one place where errors become HTTP answers. 4xx bodies say what is
//! wrong; 5xx bodies say nothing internal; an unavailable database is 503 so
//! senders retry.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::db::StoreError;
use crate::sources::IntakeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Refused by a decision: the body carries the machine-readable reason.
    #[error("{message}")]
    Denied { reason: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { reason: String, message: String },
    #[error("body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive within `server.read_timeout`.
    #[error("the body did not arrive in time")]
    RequestTimeout,
    /// Too many bodies are being read at once (`server.max_inflight_bodies`).
    #[error("too many requests in flight, try again")]
    Busy,
    #[error("service unavailable, try again")]
    Unavailable,
    /// What was asked needs configuration warrant lacks (the message
    /// names the key); other requests are served.
    #[error("{0}")]
    NotConfigured(String),
    #[error("internal error")]
    Internal,
}

/// Every error's body. `error` is the kind (`bad_request`, `unauthorized`,
/// `forbidden`, `denied`, `not_found`, `conflict`, `payload_too_large`,
/// `request_timeout`, `busy`, `unavailable`, `internal`); a refusal by a
/// decision (`denied`, `conflict`) adds its machine-readable `reason`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    #[schema(example = "bad_request")]
    pub error: &'static str,
    /// What is wrong, for a person; a 5xx says nothing internal.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Denied { .. } => "denied",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::Busy => "busy",
            ApiError::Unavailable => "unavailable",
            ApiError::NotConfigured(_) => "not_configured",
            ApiError::Internal => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Denied { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unavailable | ApiError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let reason = match self {
            ApiError::Denied { reason, .. } | ApiError::Conflict { reason, .. } => {
                Some(reason.clone())
            }
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            reason,
        };
        let mut resp = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::Unavailable = self {
            resp.insert_header(("Retry-After", "5"));
        }
        if let ApiError::Busy = self {
            resp.insert_header(("Retry-After", "1"));
        }
        // The rest of a body that is not read would be taken for the next
        // request on this connection.
        if let ApiError::RequestTimeout | ApiError::Busy | ApiError::PayloadTooLarge(_) = self {
            resp.force_close();
        }
        resp.json(body)
    }
}

/// A refused delivery: a bad signature is 401, a bad header or body 400,
/// a source without a usable secret our own fault.
impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Unauthorized(_) => ApiError::Unauthorized(e.to_string()),
            IntakeError::BadHeader(_) | IntakeError::Body(_) => ApiError::BadRequest(e.to_string()),
            IntakeError::Misconfigured => ApiError::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "database unavailable");
                ApiError::Unavailable
            }
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(m) => ApiError::Conflict {
                reason: "conflict".into(),
                message: m,
            },
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::Internal
            }
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        tracing::error!("blocking task failed");
        ApiError::Internal
    }
}

/// Runs blocking database work off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    actix_web::web::block(f).await?
}
