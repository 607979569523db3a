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
//! lane, so two lanes never wait on each other's rows. A lane takes its
//! queued grant-job units before its queued deliveries, and the lanes take
//! turns at the audit chain's head from the append to the commit.
//!
//! A unit that panics is one failed unit, not a dead lane: its batch is
//! rolled back and split like a failed one, and the unit alone answers
//! `StoreError::Panicked`. Each lane thread is also supervised: if its
//! loop ever dies it is restarted, and its `Health` part is down meanwhile.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, NewEvent};
use crate::config::Config;
use crate::db::{Conn, Db, StoreError};
use crate::intake::{Delivery, Ingest, Ingested};
use crate::metrics::Metrics;
use crate::supervisor::{panic_text, Health};

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

/// A webhook delivery: these are taken together, so that a batch reads
/// and writes its tickets once (through the lane's `Ingest`).
struct Intake {
    at: DateTime<Utc>,
    delivery: Delivery,
    reply: oneshot::Sender<Result<Ingested, StoreError>>,
}

enum Queued {
    Intake(Box<Intake>),
    Other(Box<dyn Unit>),
}

/// The lanes. Cheap to clone; the writer threads stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Committer {
    lanes: Arc<Vec<mpsc::Sender<Queued>>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Committer({} lanes)", self.lanes.len())
    }
}

impl Committer {
    /// Starts `lanes` writer threads (SQLite has one writer, so it gets one),
    /// each registered in `health` as `commit-lane-N`; their deliveries are
    /// folded in by `ingest`.
    pub fn start(
        db: Db,
        config: Arc<Config>,
        ingest: Arc<dyn Ingest>,
        lanes: usize,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> Committer {
        let lanes = db.writers(lanes);
        let guess = Arc::new(audit::Guess::default());
        let senders = (0..lanes)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Queued>(QUEUE);
                let db = db.clone();
                let (config, metrics, guess) = (config.clone(), metrics.clone(), guess.clone());
                let ingest = ingest.clone();
                let part = health.register(format!("commit-lane-{i}"));
                let spawned = std::thread::Builder::new()
                    .name(format!("warrant-commit-{i}"))
                    .spawn(move || supervise_lane(&part, db, config, ingest, guess, rx, metrics));
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
        self.send(key, Queued::Other(unit)).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Records a verified, parsed delivery (in the lane of `key`, its
    /// ticket) and answers once it is committed.
    pub async fn ingest(
        &self,
        key: &str,
        at: DateTime<Utc>,
        delivery: Delivery,
    ) -> Result<Ingested, StoreError> {
        let (reply, answer) = oneshot::channel();
        let intake = Intake {
            at,
            delivery,
            reply,
        };
        self.send(key, Queued::Intake(Box::new(intake))).await?;
        answer.await.map_err(|_| stopped())?
    }

    async fn send(&self, key: &str, q: Queued) -> Result<(), StoreError> {
        self.lanes[lane_of(key, self.lanes.len())]
            .send(q)
            .await
            .map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the commit lane has stopped".into())
}

fn lane_of(key: &str, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// Runs a lane's loop until its channel closes (the service is stopping),
/// restarting it if it ever panics. Units still queued survive a restart;
/// only the batch in hand when the loop died is lost, and its callers are
/// answered with an error when their reply channels drop.
fn supervise_lane(
    part: &crate::supervisor::Part,
    db: Db,
    config: Arc<Config>,
    ingest: Arc<dyn Ingest>,
    guess: Arc<audit::Guess>,
    mut rx: mpsc::Receiver<Queued>,
    metrics: Arc<Metrics>,
) {
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        part.set_up(true);
        let ran = catch_unwind(AssertUnwindSafe(|| {
            lane(
                &db,
                &config,
                ingest.as_ref(),
                &guess,
                &mut rx,
                &mut pending,
                &metrics,
            )
        }));
        match ran {
            Ok(()) => break,
            Err(payload) => {
                part.died();
                tracing::error!(
                    lane = part.name(),
                    panic = %panic_text(payload.as_ref()),
                    "commit lane panicked; restarting it"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    part.set_up(false);
}

fn lane(
    db: &Db,
    config: &Config,
    ingest: &dyn Ingest,
    guess: &audit::Guess,
    rx: &mut mpsc::Receiver<Queued>,
    pending: &mut VecDeque<Queued>,
    metrics: &Metrics,
) {
    loop {
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(u) => pending.push_back(u),
                None => break,
            }
        }
        // Taken off the channel only up to its own bound, so callers still
        // wait when the lane is behind.
        while pending.len() < QUEUE {
            match rx.try_recv() {
                Ok(u) => pending.push_back(u),
                Err(_) => break,
            }
        }
        let batch = next_batch(pending);
        metrics.commit_batch.observe(batch.len() as f64);
        run_batch(db, config, ingest, guess, batch);
    }
}

/// The next batch: grant-job units (steps, claims, expiries) first, then
/// deliveries in arrival order. Under a flood of webhooks a grant step
/// would otherwise wait behind every delivery queued before it, and a
/// grant applied or revoked late is the cost that matters. Each unit checks
/// the state it changes, so their order across units does not matter.
fn next_batch(pending: &mut VecDeque<Queued>) -> Vec<Queued> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut rest = VecDeque::with_capacity(pending.len());
    for q in pending.drain(..) {
        if batch.len() < MAX_BATCH && matches!(q, Queued::Other(_)) {
            batch.push(q);
        } else {
            rest.push_back(q);
        }
    }
    while batch.len() < MAX_BATCH {
        match rest.pop_front() {
            Some(q) => batch.push(q),
            None => break,
        }
    }
    *pending = rest;
    batch
}

fn run_batch(
    db: &Db,
    config: &Config,
    ingest: &dyn Ingest,
    guess: &audit::Guess,
    mut batch: Vec<Queued>,
) {
    // A deadlock with another replica or a dropped connection is worth
    // one more try of the whole batch before it is split.
    let mut tries = 0;
    loop {
        tries += 1;
        // A panic in any unit fails the batch like an error would; the
        // units then run one by one, so it fails only the unit that panics.
        let ran = catch_unwind(AssertUnwindSafe(|| {
            together(db, config, ingest, guess, &mut batch)
        }))
        .unwrap_or_else(|payload| Err(panicked(payload.as_ref())));
        match ran {
            Ok(ingested) => {
                let mut ingested = ingested.into_iter();
                for q in batch {
                    match q {
                        Queued::Intake(i) => {
                            let answer = ingested.next().ok_or_else(stopped);
                            let _ = i.reply.send(answer);
                        }
                        Queued::Other(u) => u.complete(Ok(())),
                    }
                }
                return;
            }
            // Alone in its batch, a unit's own error is its answer.
            Err(e)
                if batch.len() == 1 && (tries >= 2 || !matches!(e, StoreError::Unavailable(_))) =>
            {
                match batch.pop() {
                    Some(Queued::Intake(i)) => {
                        let _ = i.reply.send(Err(e));
                    }
                    Some(Queued::Other(u)) => u.complete(Err(e)),
                    None => {}
                }
                return;
            }
            Err(StoreError::Unavailable(why)) if tries >= 2 => {
                for q in batch {
                    let e = StoreError::Unavailable(why.clone());
                    match q {
                        Queued::Intake(i) => {
                            let _ = i.reply.send(Err(e));
                        }
                        Queued::Other(u) => u.complete(Err(e)),
                    }
                }
                return;
            }
            Err(StoreError::Unavailable(_)) => continue,
            Err(e) => {
                tracing::warn!(error = %e, units = batch.len(), "batch failed; running its units one by one");
                break;
            }
        }
    }
    for q in batch {
        match q {
            Queued::Intake(i) => {
                let result = alone(|| {
                    db.write(|conn| {
                        let mut one = ingest.batch(conn, config, &[(i.at, &i.delivery)])?;
                        let (ingested, events) = one.pop().ok_or_else(stopped)?;
                        audit::append(conn, i.at, events)?;
                        Ok(ingested)
                    })
                });
                if let Err(StoreError::Panicked(why)) = &result {
                    tracing::error!(source = %i.delivery.source, delivery = %i.delivery.id, panic = %why, "a delivery panicked; it alone fails");
                }
                let _ = i.reply.send(result);
            }
            Queued::Other(mut u) => {
                let at = u.at();
                let result = alone(|| {
                    db.write(|conn| {
                        let mut events = Vec::new();
                        u.run(conn, &mut events)?;
                        audit::append(conn, at, events)
                    })
                });
                if let Err(StoreError::Panicked(why)) = &result {
                    tracing::error!(panic = %why, "a unit of work panicked; it alone fails");
                }
                u.complete(result);
            }
        }
    }
}

/// Runs one unit's transaction; a panic inside it becomes its error. The
/// transaction is not committed, and the pool discards a connection that
/// was checked out while a thread panicked.
fn alone<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panicked(payload.as_ref())))
}

fn panicked(payload: &(dyn std::any::Any + Send)) -> StoreError {
    StoreError::Panicked(panic_text(payload))
}

/// Runs the whole batch in one transaction: the deliveries together first,
/// then the other units in their order, then one append to the chain. The
/// lanes take turns from the append to the commit, each starting from the
/// head the one before it committed.
fn together(
    db: &Db,
    config: &Config,
    ingest: &dyn Ingest,
    guess: &audit::Guess,
    batch: &mut [Queued],
) -> Result<Vec<Ingested>, StoreError> {
    let (ingested, mut turn, head) = db.write(|conn| {
        let items: Vec<(DateTime<Utc>, &Delivery)> = batch
            .iter()
            .filter_map(|q| match q {
                Queued::Intake(i) => Some((i.at, &i.delivery)),
                Queued::Other(_) => None,
            })
            .collect();
        let mut groups = Vec::with_capacity(batch.len());
        let mut ingested = Vec::with_capacity(items.len());
        if !items.is_empty() {
            for ((at, _), (result, events)) in items.iter().zip(ingest.batch(conn, config, &items)?)
            {
                groups.push((*at, events));
                ingested.push(result);
            }
        }
        for q in batch.iter_mut() {
            if let Queued::Other(u) = q {
                let mut events = Vec::new();
                u.run(conn, &mut events)?;
                groups.push((u.at(), events));
            }
        }
        let turn = guess.lock();
        let head = audit::append_guessing(conn, groups, turn.clone())?;
        Ok((ingested, turn, head))
    })?;
    *turn = head;
    Ok(ingested)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> Queued {
        let (reply, _) = oneshot::channel();
        Queued::Intake(Box::new(Intake {
            at: chrono::DateTime::UNIX_EPOCH,
            delivery: Delivery {
                source: crate::domain::Source::Github,
                id: id.into(),
                body_sha256: String::new(),
                parsed: crate::sources::Parsed::Ignored {
                    why: "test".into(),
                    ticket: None,
                },
            },
            reply,
        }))
    }

    fn step(n: usize) -> Queued {
        let (reply, _) = oneshot::channel();
        Queued::Other(Box::new(Typed {
            at: chrono::DateTime::UNIX_EPOCH,
            work: Box::new(move |_, _| Ok(n)),
            out: None,
            reply,
        }))
    }

    fn shape(batch: &[Queued]) -> String {
        batch
            .iter()
            .map(|q| match q {
                Queued::Intake(i) => i.delivery.id.clone(),
                Queued::Other(_) => "s".into(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn job_units_go_first_and_deliveries_keep_their_order() {
        let mut pending: VecDeque<Queued> = (0..MAX_BATCH + 10)
            .map(|i| delivery(&format!("d{i}")))
            .collect();
        pending.push_back(step(1));
        pending.push_back(delivery("late"));
        pending.push_back(step(2));
        let first = next_batch(&mut pending);
        assert_eq!(first.len(), MAX_BATCH);
        let expected: Vec<String> = ["s".to_string(), "s".to_string()]
            .into_iter()
            .chain((0..MAX_BATCH - 2).map(|i| format!("d{i}")))
            .collect();
        assert_eq!(shape(&first), expected.join(","));
        let second = next_batch(&mut pending);
        let rest: Vec<String> = (MAX_BATCH - 2..MAX_BATCH + 10)
            .map(|i| format!("d{i}"))
            .chain(["late".to_string()])
            .collect();
        assert_eq!(shape(&second), rest.join(","));
        assert!(pending.is_empty());
    }

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
