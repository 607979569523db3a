//! The durable queue below the job kinds: a kind is a type implementing
//! `Job` (its row's kind, dedupe key and payload come from that type
//! alone, and `enqueue` writes it inside the caller's transaction); a run
//! settles its row (`settle`) and holds a renewed `lease`. The kinds live
//! beside what they drive (`grants::job`, `backlinks::job`) and are
//! registered in one place, `jobs::kinds`; the runner is `jobs`.

pub mod lease;
pub mod settle;

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;
use crate::db::grants::GrantRow;
use crate::db::{Conn, StoreError};

pub use crate::db::jobs::JobRow;
pub use lease::Lease;
pub use settle::{backoff, blocking, finish_in, retry_at, Finish};

/// One kind of job: its payload is the type itself, stored as JSON.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Sized + 'static {
    /// The row's `kind`.
    const KIND: &'static str;

    /// Jobs with the same key are one job: enqueueing again moves it.
    fn dedupe_key(&self) -> String;

    /// Reads a stored payload; `None` drops the job as done.
    fn decode(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }

    /// Runs the job once; the answer says how its row is settled.
    fn run(
        self,
        ctx: &Arc<Context>,
        run: Run<'_>,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// The row's `payload`: through a `Value`, so the text is what `json!`
    /// would write.
    fn payload(&self) -> Result<String, StoreError> {
        Ok(serde_json::to_value(self)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .to_string())
    }

    /// Schedules this job at `run_at` (or moves it there), resetting its
    /// attempts, inside the caller's transaction.
    fn enqueue(
        &self,
        conn: &mut Conn<'_>,
        run_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let payload = self.payload()?;
        crate::db::jobs::upsert(conn, Self::KIND, &self.dedupe_key(), &payload, run_at, now)
    }
}

/// What a run has besides its payload: its row, its lease, and the grant
/// it drives if the claim read one.
pub struct Run<'a> {
    pub job: &'a JobRow,
    pub lease: &'a Lease,
    pub grant: Option<GrantRow>,
}
