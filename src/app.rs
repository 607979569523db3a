//! The running service: shared state, the HTTP server bound to its port,
//! and the job runner beside it. `App::build` binds (port 0 in tests) and
//! returns before serving, so callers can read the port.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::{web, HttpMessage, HttpResponse};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::api::error::ApiError;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::db::{Db, StoreError};
use crate::metrics::{HttpLabels, Metrics};

/// What every handler and job shares.
#[derive(Debug)]
pub struct AppState {
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
    pub providers: crate::providers::Providers,
    /// CI issuers and their cached JWKS.
    pub ci: crate::ci::oidc::Verifier,
    /// The `token` providers' signing keys.
    pub tokens: crate::providers::token::KeyRing,
    /// Group commit for webhook intake and grant jobs.
    pub commit: crate::commit::Committer,
    /// Which supervised loops run now (`/readyz`).
    pub health: Arc<crate::supervisor::Health>,
    /// Permits to read a webhook body (`server.max_inflight_bodies`).
    pub bodies: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("signing keys: {0}")]
    Keys(String),
}

/// How to run: tests inject a clock; replicas may split API and jobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub clock: Arc<dyn Clock>,
    pub run_jobs: bool,
    pub handle_signals: bool,
    pub workers: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            run_jobs: true,
            handle_signals: true,
            workers: None,
        }
    }
}

pub struct App {
    server: Server,
    port: u16,
    state: web::Data<AppState>,
    runner: Option<crate::jobs::RunnerHandle>,
    /// Tells the supervised loops beside the server (the gauge refresher)
    /// that the service is stopping.
    stop_loops: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// What a blocking start-up task needs, without the HTTP-only parts.
    fn clone_parts(&self) -> (Db, Arc<Config>, Arc<dyn Clock>) {
        (self.db.clone(), self.config.clone(), self.clock.clone())
    }

    pub fn new(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, AppError> {
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
            .map_err(|e| AppError::Http(e.to_string()))?;
        let providers = crate::providers::Providers::new(&config);
        let ci = crate::ci::oidc::Verifier::new(&config);
        let tokens = crate::providers::token::KeyRing::new(&config).map_err(AppError::Keys)?;
        let metrics = Arc::new(Metrics::new());
        let bodies = Arc::new(tokio::sync::Semaphore::new(
            config.server.max_inflight_bodies,
        ));
        let config = Arc::new(config);
        let health = crate::supervisor::Health::new();
        let commit = crate::commit::Committer::start(
            db.clone(),
            config.clone(),
            config.database.writers,
            metrics.clone(),
            &health,
        );
        Ok(AppState {
            commit,
            health,
            bodies,
            providers,
            ci,
            tokens,
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

impl App {
    /// Migrates the database, binds the listener and prepares the server.
    pub async fn build(config: Config, options: Options) -> Result<App, AppError> {
        let state = AppState::new(config, options.clock.clone())?;
        let db = state.db.clone();
        let applied = web::block(move || db.migrate())
            .await
            .map_err(|_| StoreError::Unavailable("migration task failed".into()))??;
        if applied > 0 {
            tracing::info!(applied, backend = state.db.backend(), "migrations applied");
        }
        // Tickets of a repository or project dropped from the configuration
        // are closed before anything else runs, so their grants end now.
        let st = state.clone_parts();
        let closed = web::block(move || crate::engine::close_unwatched(&st.0, &st.1, st.2.now()))
            .await
            .map_err(|_| StoreError::Unavailable("start-up reconcile task failed".into()))??;
        if closed > 0 {
            tracing::info!(tickets = closed, "closed tickets warrant no longer watches");
        }
        let addr = state.config.server.listen.clone();
        let listener = TcpListener::bind(&addr).map_err(|source| AppError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let state = web::Data::new(state);
        // The generated signing key exists from the first start on.
        let st = state.clone();
        web::block(move || st.tokens.prepare(&st.db, st.clock.now()))
            .await
            .map_err(|_| StoreError::Unavailable("signing key task failed".into()))??;
        let shutdown = state.config.server.shutdown_timeout.std().as_secs();
        let data = state.clone();
        let mut server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .configure(configure_extractors)
                .configure(crate::api::config)
                .default_service(web::to(|| async {
                    ApiError::NotFound("no such route".into()).error_response_owned()
                }))
                .wrap_fn(observe)
        })
        .shutdown_timeout(shutdown)
        .listen(listener)
        .map_err(|source| AppError::Bind { addr, source })?;
        if let Some(n) = options.workers {
            server = server.workers(n);
        }
        if !options.handle_signals {
            server = server.disable_signals();
        }
        let server = server.run();
        let (stop_loops, loops_stopped) = tokio::sync::watch::channel(false);
        {
            let st = state.clone();
            let stopped = loops_stopped.clone();
            crate::supervisor::spawn(&state.health, "gauge-refresher", loops_stopped, move || {
                let refresh = crate::store::refresh_gauges_forever(
                    st.db.clone(),
                    st.metrics.clone(),
                    st.clock.clone(),
                    st.config.server.metrics_refresh.std(),
                );
                let mut stopped = stopped.clone();
                async move {
                    tokio::select! {
                        _ = refresh => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                }
            });
        }
        let runner = if options.run_jobs {
            Some(crate::jobs::Runner::spawn(state.clone().into_inner()))
        } else {
            None
        };
        tracing::info!(port, backend = state.db.backend(), "warrant listening");
        Ok(App {
            server,
            port,
            state,
            runner,
            stop_loops,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone().into_inner()
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or a stop through the handle), then
    /// lets in-flight requests finish and the runner put down its work.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let _ = self.stop_loops.send(true);
        if let Some(runner) = self.runner {
            runner.stop().await;
        }
        tracing::info!("warrant stopped");
        result
    }
}

trait OwnedErrorResponse {
    fn error_response_owned(self) -> HttpResponse;
}

impl OwnedErrorResponse for ApiError {
    fn error_response_owned(self) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

fn configure_extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|err, _| {
                ApiError::BadRequest(format!("invalid JSON body: {err}")).into()
            }),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|err, _| ApiError::BadRequest(format!("invalid query: {err}")).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::BadRequest(format!("invalid path: {err}")).into()),
    );
}

/// Request id, a tracing span, and the per-route request metrics.
fn observe<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let start = Instant::now();
    // Labels come from fixed sets, so no request can add a series.
    let method = crate::metrics::method_label(req.method());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let span = tracing::info_span!("request", id = %request_id, %method, %route);
    let fut = srv.call(req).instrument(span.clone());
    fut.map(move |res| {
        let mut res = res?;
        let status = res.status().as_u16();
        if let Some(m) = metrics {
            let labels = HttpLabels {
                method,
                route,
                status,
            };
            m.http_requests.get_or_create(&labels).inc();
            m.http_duration
                .get_or_create(&labels)
                .observe(start.elapsed().as_secs_f64());
        }
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&request_id) {
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-request-id"),
                v,
            );
        }
        span.in_scope(|| {
            tracing::debug!(
                status,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "done"
            )
        });
        Ok(res)
    })
}

#[derive(Debug, Clone)]
pub struct RequestId(pub String);
