#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

//! End-to-end tests through HTTP against the real app, on SQLite and on
//! PostgreSQL.

mod helpers;
mod payloads;

mod audit;
mod audit_load;
mod aws;
mod backlinks;
mod checkpoints;
mod ci;
mod console;
mod drift;
mod health;
mod hostile;
mod http_bounds;
mod keys;
mod ldap;
mod leases;
mod ledger;
mod lifecycle;
mod mysql;
mod openapi;
mod people;
mod sinks;
mod ssh;
mod supervision;
mod targets;
mod webhooks;
