//! Tests that run the real `warrant` binary as separate processes: signals,
//! exit codes, SIGKILL mid-flight, two replicas on one database, and a
//! database outage. These use the real clock, so they wait on conditions
//! with deadlines rather than on timers.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/payloads.rs"]
mod payloads;

mod cli;
mod crash;
mod openapi;
mod outage;
mod proc;
mod race;
mod replicas;
mod sinks;
