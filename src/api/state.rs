//! The state HTTP handlers share: the workers' `Context` and the parts only
//! requests use (the CI token verifier, the permits to read a body).
//! Nothing below the HTTP layer sees it.

use std::sync::Arc;

use crate::ci::oidc::Verifier;
use crate::context::Context;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// What handlers share with the workers (database, clock, commit lanes…).
    pub ctx: Arc<Context>,
    /// CI issuers and their cached JWKS.
    pub ci: Verifier,
    /// Permits to read a webhook body (`server.max_inflight_bodies`).
    pub bodies: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(ctx: Arc<Context>) -> AppState {
        let ci = Verifier::new(&ctx.config);
        let bodies = Arc::new(tokio::sync::Semaphore::new(
            ctx.config.server.max_inflight_bodies,
        ));
        AppState { ctx, ci, bodies }
    }
}
