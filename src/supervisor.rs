//! Keeps warrant's long-running loops alive. Each loop that commits or
//! revokes (a commit lane, the job runner, the sweeper, the gauge refresher)
//! registers a `Part` in the service's `Health`; a supervisor restarts the
//! loop whenever it panics or ends while the service still runs, and the
//! part shows as down until it runs again, so `/readyz` answers 503 while
//! anything that keeps revocations going is missing.
//!
//! Revocation must never stop: a loop that dies silently while `/healthz`
//! still answers 200 is the failure this module exists to prevent.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The first pause before a restart; it doubles up to `MAX_BACKOFF` while a
/// loop keeps failing, so a loop that panics at once does not spin.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One supervised loop's standing.
#[derive(Debug)]
pub struct Part {
    name: String,
    up: AtomicBool,
    restarts: AtomicU64,
}

impl Part {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Records that the loop died and is about to be started again.
    pub fn died(&self) {
        self.set_up(false);
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every supervised part of one running service.
#[derive(Debug, Default)]
pub struct Health {
    parts: Mutex<Vec<Arc<Part>>>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Adds a part, down until its loop reports that it runs.
    pub fn register(&self, name: impl Into<String>) -> Arc<Part> {
        let part = Arc::new(Part {
            name: name.into(),
            up: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
        });
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(part.clone());
        part
    }

    /// Removes a part that was stopped on purpose (a shutdown), so it does
    /// not count as down.
    pub fn retire(&self, part: &Arc<Part>) {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| !Arc::ptr_eq(p, part));
    }

    /// The names of the parts that are not running now.
    pub fn down(&self) -> Vec<String> {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| !p.is_up())
            .map(|p| p.name.clone())
            .collect()
    }

    /// Restarts so far, summed over every part.
    pub fn restarts(&self) -> u64 {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| p.restarts())
            .sum()
    }
}

/// Runs the loop `make` builds under a supervisor: whenever it panics or
/// returns while `stop` is still false, it is built and started again
/// after a pause. The returned task ends once `stop` is true and the loop
/// has returned.
pub fn spawn<F, Fut>(
    health: &Health,
    name: &str,
    mut stop: watch::Receiver<bool>,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let part = health.register(name);
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            part.set_up(true);
            // A task of its own, so a panic in the loop reaches us as a
            // `JoinError` instead of unwinding through the supervisor.
            let outcome = tokio::spawn(make()).await;
            if *stop.borrow() {
                part.set_up(false);
                break;
            }
            part.died();
            match outcome {
                Err(e) if e.is_panic() => {
                    tracing::error!(part = part.name(), "loop panicked; restarting it")
                }
                Err(_) => tracing::error!(part = part.name(), "loop was cancelled; restarting it"),
                Ok(()) => tracing::error!(part = part.name(), "loop ended; restarting it"),
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            if *stop.borrow() {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// The text of a panic's payload, for logs and audit events.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_loop_that_panics_is_restarted_and_shows_down_meanwhile() {
        let health = Health::new();
        let (stop_tx, stop) = watch::channel(false);
        let runs = Arc::new(AtomicUsize::new(0));
        let (release_tx, release) = watch::channel(false);
        let r = runs.clone();
        let task = spawn(&health, "test-loop", stop, move || {
            let r = r.clone();
            let mut release = release.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                // The third run stays up until the test lets it go.
                while !*release.borrow() {
                    if release.changed().await.is_err() {
                        break;
                    }
                }
            }
        });
        for _ in 0..200 {
            if runs.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(health.down().is_empty(), "{:?}", health.down());
        assert_eq!(health.restarts(), 2);

        // A loop that ends while the service runs is down until restarted.
        let _ = release_tx.send(true);
        let mut saw_down = false;
        for _ in 0..200 {
            if health.down() == vec!["test-loop".to_string()] {
                saw_down = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(saw_down);
        let _ = stop_tx.send(true);
        task.await.unwrap();
    }

    #[test]
    fn retired_parts_do_not_count() {
        let health = Health::new();
        let a = health.register("a");
        let b = health.register("b");
        b.set_up(true);
        assert_eq!(health.down(), vec!["a".to_string()]);
        health.retire(&a);
        assert!(health.down().is_empty());
        assert_eq!(panic_text(&"x"), "x");
    }
}
