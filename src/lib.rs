//! warrant: just-in-time access warranted by a ticket.
//!
//! A webhook updates a ticket snapshot (`sources`, `ticket`); one pure
//! function decides what the snapshot warrants (`policy`); a reconciler
//! moves grants toward it (`engine`) through durable jobs (`jobs`) that call
//! the providers (`providers`); every change is audited (`audit`).
//! Workers share a `context::Context`; HTTP handlers an `api::AppState`
//! around it; `app` builds both and is imported by nothing but `cli`.

pub mod access;
pub mod api;
pub mod app;
pub mod audit;
pub mod backlinks;
pub mod ci;
pub mod cli;
pub mod clock;
pub mod commit;
pub mod config;
pub mod console;
pub mod context;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod drift;
pub mod engine;
pub mod evidence;
pub mod grants;
pub mod intake;
pub mod jobs;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod queue;
pub mod redact;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod supervisor;
pub mod ticket;
