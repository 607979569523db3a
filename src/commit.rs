//! Group commit for the hot write paths (webhook intake and grant jobs).
//!
//! Each unit of work changes some rows and names the audit events that
//! record the change. Units queue on a lane; the lane's writer thread runs
//! everything queued in one transaction, appends all of its events to the
//! chain at once (so the chain's head is locked once per batch, not once
//! per webhook) and commits durably once; only then does each caller get
//! its answer. Nothing is acknowledged before the commit that holds it.
//!
//! A unit that fails rolls its whole batch back, and every unit of that
//! batch then runs again in a transaction of its own, so one bad unit never
//! costs the others their answer. Units for one ticket always take the same
//! lane, so two lanes never wait on each other's rows.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, NewEvent};
use crate::db::{Conn, Db, StoreError};
use crate::metrics::Metrics;

/// The most units one transaction takes: enough to share a commit among
/// many webhooks, few enough that the batch's locks are held only briefly.
const MAX_BATCH: usize = 64;
/// How many units may wait per lane before callers wait to enqueue.
const QUEUE: usize = 4096;

type Work<T> = dyn FnMut(&mut Conn<'_>, &mut Vec<NewEvent>) -> Result<T, StoreError> + Send;

/// One caller's unit with its answer channel; the type of its result is
/// hidden so units of any kind share a lane.
trait Unit: Send {
    fn at(&self) -> DateTime<Utc>;
    fn run(&mut self, conn: &mut Conn<'_>, events: &mut Vec<NewEvent>) -> Result<(), StoreError>;
    fn complete(self: Box<Self>, committed: Result<(), StoreError>);
}

struct Typed<T> {
    at: DateTime<Utc>,
    work: Box<Work<T>>,
    out: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Unit for Typed<T> {
    fn at(&self) -> DateTime<Utc> {
        self.at
    }

    fn run(&mut self, conn: &mut Conn<'_>, events: &mut Vec<NewEvent>) -> Result<(), StoreError> {
        self.out = None;
        self.out = Some((self.work)(conn, events)?);
        Ok(())
    }

    fn complete(self: Box<Self>, committed: Result<(), StoreError>) {
        let Typed { out, reply, .. } = *self;
        let answer = committed.and_then(|()| {
            out.ok_or_else(|| StoreError::Unavailable("the unit did not run".into()))
        });
        // The caller may have gone (its request was cancelled); the work is
        // committed either way.
        let _ = reply.send(answer);
    }
}

/// The lanes. Cheap to clone; the writer threads stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Committer {
    lanes: Arc<Vec<mpsc::Sender<Box<dyn Unit>>>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Committer({} lanes)", self.lanes.len())
    }
}

impl Committer {
    /// Starts `lanes` writer threads (SQLite has one writer, so it gets one).
    pub fn start(db: Db, lanes: usize, metrics: Arc<Metrics>) -> Committer {
        let lanes = if db.backend() == "sqlite" {
            1
        } else {
            lanes.max(1)
        };
        let senders = (0..lanes)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Box<dyn Unit>>(QUEUE);
                let db = db.clone();
                let metrics = metrics.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("warrant-commit-{i}"))
                    .spawn(move || lane(db, rx, metrics));
                if let Err(e) = spawned {
                    // Without its thread the lane's receiver is gone and
                    // every submit to it answers 503.
                    tracing::error!(error = %e, lane = i, "cannot start a commit lane");
                }
                tx
            })
            .collect();
        Committer {
            lanes: Arc::new(senders),
        }
    }

    /// Runs `work` in the next batch of the lane for `key` (a ticket key),
    /// with its events appended to the audit chain at `at`, and answers once
    /// that batch is committed. `work` may run more than once, each time in
    /// a fresh transaction, so it must not have effects outside the database.
    pub async fn submit<T, F>(&self, key: &str, at: DateTime<Utc>, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut Conn<'_>, &mut Vec<NewEvent>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let unit: Box<dyn Unit> = Box::new(Typed {
            at,
            work: Box::new(work),
            out: None,
            reply,
        });
        let lane = &self.lanes[lane_of(key, self.lanes.len())];
        lane.send(unit)
            .await
            .map_err(|_| StoreError::Unavailable("the commit lane has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the commit lane has stopped".into()))?
    }
}

fn lane_of(key: &str, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

fn lane(db: Db, mut rx: mpsc::Receiver<Box<dyn Unit>>, metrics: Arc<Metrics>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(u) => batch.push(u),
                Err(_) => break,
            }
        }
        metrics.commit_batch.observe(batch.len() as f64);
        run_batch(&db, batch);
    }
}

fn run_batch(db: &Db, mut batch: Vec<Box<dyn Unit>>) {
    if batch.len() > 1 {
        // A deadlock with another replica or a dropped connection is worth
        // one more try of the whole batch before it is split.
        let mut tries = 0;
        loop {
            tries += 1;
            match together(db, &mut batch) {
                Ok(()) => {
                    for u in batch {
                        u.complete(Ok(()));
                    }
                    return;
                }
                Err(StoreError::Unavailable(why)) if tries >= 2 => {
                    for u in batch {
                        u.complete(Err(StoreError::Unavailable(why.clone())));
                    }
                    return;
                }
                Err(StoreError::Unavailable(_)) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, units = batch.len(), "batch failed; running its units one by one");
                    break;
                }
            }
        }
    }
    for mut u in batch {
        let at = u.at();
        let result = db.write(|conn| {
            let mut events = Vec::new();
            u.run(conn, &mut events)?;
            audit::append(conn, at, events)
        });
        u.complete(result);
    }
}

fn together(db: &Db, batch: &mut [Box<dyn Unit>]) -> Result<(), StoreError> {
    db.write(|conn| {
        let mut all = Vec::with_capacity(batch.len());
        for u in batch.iter_mut() {
            let mut events = Vec::new();
            u.run(conn, &mut events)?;
            all.push((u.at(), events));
        }
        audit::append_each(conn, all)
    })
}

#[cfg(test)]
mod tests {
    use super::lane_of;

    #[test]
    fn one_key_always_takes_one_lane() {
        for key in ["jira:OPS-1", "github:acme/x#2", "servicenow:CHG1"] {
            let first = lane_of(key, 4);
            assert!(first < 4);
            assert!((0..10).all(|_| lane_of(key, 4) == first));
            assert_eq!(lane_of(key, 1), 0);
        }
    }
}
