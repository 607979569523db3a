//! Evidence that outlives a compromised database: signed checkpoints of
//! the audit chain kept outside it (`checkpoint`).

pub mod checkpoint;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::Context;

/// Starts the checkpoint loop under a supervisor (part `checkpointer`),
/// when checkpoints are configured.
pub fn spawn(ctx: Arc<Context>, stopped: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    ctx.config.audit.checkpoint_dir.as_ref()?;
    let health = ctx.health.clone();
    Some(crate::supervisor::spawn(
        &health,
        "checkpointer",
        stopped.clone(),
        move || checkpoint::run_forever(ctx.clone(), stopped.clone()),
    ))
}
