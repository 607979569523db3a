//! What intake hands the commit lanes: a verified, parsed webhook
//! (`Delivery`), what it came to (`Ingested`), and the handler a lane runs
//! its batch of deliveries through (`Ingest`, which the engine implements).
//! It sits below both, so the lanes never name the engine.

use chrono::{DateTime, Utc};

use crate::audit::NewEvent;
use crate::config::Config;
use crate::db::{Conn, StoreError};
use crate::domain::{Source, TicketKey};
use crate::sources::Parsed;

/// A webhook that passed its signature check and parsed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: Source,
    pub id: String,
    pub body_sha256: String,
    pub parsed: Parsed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted(Option<TicketKey>),
    Duplicate(Option<String>),
    Ignored(Option<TicketKey>),
}

/// What one delivery came to, and whether it scheduled job work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub outcome: Outcome,
    pub queued: bool,
}

/// Folds a batch of deliveries in, inside the lane's transaction: one
/// answer and its audit events per delivery, in order. Given to the lanes
/// when they start.
pub trait Ingest: Send + Sync + 'static {
    fn batch(
        &self,
        conn: &mut Conn<'_>,
        config: &Config,
        items: &[(DateTime<Utc>, &Delivery)],
    ) -> Result<Vec<(Ingested, Vec<NewEvent>)>, StoreError>;
}
