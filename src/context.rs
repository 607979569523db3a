//! What workers share: the job runner, the sweeper, the commit lanes, the
//! back-link sender, the gauge refresher and the start-up reconcile receive
//! a `Context` and nothing of the HTTP layer. `api::AppState` wraps one for
//! the handlers; `warrant reconcile` builds one alone, without HTTP parts.

use std::sync::Arc;

use crate::clock::Clock;
use crate::commit::Committer;
use crate::config::Config;
use crate::db::{Db, StoreError};
use crate::intake::Ingest;
use crate::metrics::Metrics;
use crate::providers::credential::Credentials;
use crate::providers::Providers;
use crate::supervisor::Health;

/// What every worker shares.
#[derive(Debug)]
pub struct Context {
    pub config: Arc<Config>,
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// One client for every outbound call, with timeouts and a user agent.
    pub http: reqwest::Client,
    /// Wakes the job runner when this process enqueues work.
    pub wake: Arc<tokio::sync::Notify>,
    /// Names this process in job leases.
    pub instance: String,
    pub providers: Providers,
    /// The signing keys of the kinds that issue credentials (`token`, `ssh`).
    pub credentials: Credentials,
    /// Group commit for webhook intake and grant jobs.
    pub commit: Committer,
    /// Which supervised loops run now (`/readyz`).
    pub health: Arc<Health>,
}

/// Why the shared parts could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("signing keys: {0}")]
    Keys(String),
}

impl Context {
    /// Opens the pool, builds the outbound client and the providers, and
    /// starts the commit lanes (so it needs a Tokio runtime), which fold
    /// deliveries in through `ingest`. Nothing is migrated or served yet.
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        ingest: Arc<dyn Ingest>,
    ) -> Result<Context, ContextError> {
        let db = Db::open(
            &config.database.url,
            config.database.pool_size,
            config.database.connect_timeout.std(),
        )?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("warrant/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ContextError::Http(e.to_string()))?;
        let credentials = Credentials::new(&config).map_err(ContextError::Keys)?;
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let providers =
            Providers::new(config.clone(), http.clone(), clock.clone(), metrics.clone());
        let health = Health::new();
        let commit = Committer::start(
            db.clone(),
            config.clone(),
            ingest,
            config.database.writers,
            metrics.clone(),
            &health,
        );
        Ok(Context {
            commit,
            health,
            providers,
            credentials,
            config,
            db,
            clock,
            metrics,
            http,
            wake: Arc::new(tokio::sync::Notify::new()),
            instance: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        })
    }
}
