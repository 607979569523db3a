//! The HTTP surface: each area registers its own routes.

pub mod audit;
pub mod auth;
pub mod ci;
pub mod drift;
pub mod error;
pub mod grants;
pub mod health;
pub mod state;
pub mod webhooks;

pub use state::AppState;

use actix_web::web;

pub fn config(cfg: &mut web::ServiceConfig) {
    health::config(cfg);
    webhooks::config(cfg);
    grants::config(cfg);
    audit::config(cfg);
    ci::config(cfg);
    drift::config(cfg);
}
