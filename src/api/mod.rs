//! The HTTP surface: each area registers its own routes.

pub mod error;
pub mod health;

use actix_web::web;

pub fn config(cfg: &mut web::ServiceConfig) {
    health::config(cfg);
}
