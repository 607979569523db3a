//! Bearer tokens for the people's API. Tokens are configured as SHA-256
//! hashes; a presented token is hashed and compared in constant time.
//!
//! Two extractors split the roles: `Caller` (admin and auditor, every
//! route but introspection) and `Introspector` (only `POST
//! /v1/introspect`). Each refuses the other's roles, so a service's
//! introspection token reads nothing else and a person's token cannot be
//! handed to a service to check credentials with.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::config::Role;

/// Who is calling, once their token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            other => Err(ApiError::Forbidden(format!(
                "token `{}` has role {}; this needs admin",
                self.name,
                other.as_str()
            ))),
        }
    }

    /// How this caller appears in the audit trail.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::Internal)?;
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
    let presented = hash_token(token);
    let mut found = None;
    // Compare against every entry so timing does not tell which one matched.
    for t in &state.ctx.config.api.tokens {
        if bool::from(
            t.sha256
                .to_ascii_lowercase()
                .as_bytes()
                .ct_eq(presented.as_bytes()),
        ) {
            found = Some(Caller {
                name: t.name.clone(),
                role: t.role,
            });
        }
    }
    found.ok_or_else(|| ApiError::Unauthorized("invalid token".into()))
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    /// An admin or auditor; an introspector's token is refused (403).
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authenticate(req).and_then(|c| match c.role {
            Role::Admin | Role::Auditor => Ok(c),
            Role::Introspector => Err(ApiError::Forbidden(format!(
                "token `{}` has role introspector; it may call only POST /v1/introspect",
                c.name
            ))),
        }))
    }
}

/// A caller with the `introspector` role, the only one that may introspect.
#[derive(Debug, Clone)]
pub struct Introspector(pub Caller);

impl FromRequest for Introspector {
    type Error = ApiError;
    type Future = Ready<Result<Introspector, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authenticate(req).and_then(|c| match c.role {
            Role::Introspector => Ok(Introspector(c)),
            other => Err(ApiError::Forbidden(format!(
                "token `{}` has role {}; introspection needs role introspector",
                c.name,
                other.as_str()
            ))),
        }))
    }
}
