//! The HTTP surface: each area registers its own routes.

pub mod audit;
pub mod auth;
pub mod ci;
pub mod drift;
pub mod error;
pub mod grants;
pub mod health;
pub mod openapi;
pub mod state;
pub mod webhooks;

pub use state::AppState;

use actix_web::{web, Route};

pub fn config(cfg: &mut web::ServiceConfig) {
    register(cfg);
}

/// Where the areas put their routes: the server's `ServiceConfig`, or a
/// `Paths` list, so the OpenAPI test sees exactly the paths the server
/// serves and a route added without documentation fails it.
pub trait Routes {
    fn route(&mut self, path: &str, route: Route) -> &mut Self;
}

impl Routes for web::ServiceConfig {
    fn route(&mut self, path: &str, route: Route) -> &mut Self {
        web::ServiceConfig::route(self, path, route)
    }
}

/// The route paths as registered (actix patterns, e.g. `/v1/tickets/{key:.*}`).
#[derive(Debug, Default)]
pub struct Paths(pub Vec<String>);

impl Routes for Paths {
    fn route(&mut self, path: &str, _route: Route) -> &mut Self {
        if !self.0.iter().any(|p| p == path) {
            self.0.push(path.to_string());
        }
        self
    }
}

/// Every path the server routes, in registration order.
pub fn paths() -> Vec<String> {
    let mut paths = Paths::default();
    register(&mut paths);
    paths.0
}

fn register(cfg: &mut impl Routes) {
    health::config(cfg);
    webhooks::config(cfg);
    grants::config(cfg);
    audit::config(cfg);
    ci::config(cfg);
    drift::config(cfg);
    openapi::config(cfg);
}
