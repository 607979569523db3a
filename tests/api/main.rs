#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

//! End-to-end tests through HTTP against the real app, on SQLite and on
//! PostgreSQL.

mod helpers;
mod payloads;

mod audit;
mod backlinks;
mod ci;
mod health;
mod hostile;
mod lifecycle;
mod people;
mod webhooks;
