//! Durable jobs: rows in `jobs` with a `run_at`, claimed under a lease,
//! retried with capped, jittered exponential backoff. The `Job` trait, the
//! lease and the settling of a row are `queue` (below the kinds, so the
//! grant lifecycle can enqueue); the rows themselves are `db::jobs`. Each
//! kind lives in its own file beside what it drives and is registered in
//! `kinds::run`. The `runner` sleeps until the next job is due or until
//! this process enqueues one, renews each running job's lease, and fails a
//! panicking job alone.

mod claim;
pub mod kinds;
pub mod runner;

pub use crate::db::jobs::{claim, JobRow};
pub use crate::grants::job::sweep;
pub use crate::queue::{Finish, Job, Lease, Run};
pub use runner::{run_due, run_pending, Runner, RunnerHandle};
