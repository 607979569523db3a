//! The running service, built from its parts: the workers' `Context`, the
//! handlers' `AppState` around it, the HTTP server bound to its port, and
//! the job runner, drift checker, audit sinks and gauge refresher beside it. `App::build` binds (port
//! 0 in tests) and returns before serving, so callers can read the port.

use std::future::Ready;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::EitherBody;
use actix_web::dev::{Server, Service, ServiceResponse};
use actix_web::{web, HttpMessage, HttpResponse};
use futures_util::future::{Either, Map};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::context::{Context, ContextError};
use crate::db::StoreError;
use crate::metrics::HttpLabels;
use crate::providers::token::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("signing keys: {0}")]
    Keys(#[from] crate::providers::token::KeyError),
    #[error("the console: {0}")]
    Console(String),
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
    ctx: Arc<Context>,
    runner: Option<crate::jobs::RunnerHandle>,
    /// Tells the supervised loops beside the server (the gauge refresher)
    /// that the service is stopping.
    stop_loops: tokio::sync::watch::Sender<bool>,
}

impl App {
    /// Migrates the database, binds the listener and prepares the server.
    pub async fn build(config: Config, options: Options) -> Result<App, AppError> {
        let ctx = Arc::new(Context::new(
            config,
            options.clock.clone(),
            Arc::new(crate::engine::Fold),
        )?);
        let db = ctx.db.clone();
        let applied = web::block(move || db.migrate())
            .await
            .map_err(|_| StoreError::Unavailable("migration task failed".into()))??;
        if applied > 0 {
            tracing::info!(applied, backend = ctx.db.backend(), "migrations applied");
        }
        // Tickets of a repository or project dropped from the configuration
        // are closed before anything else runs, so their grants end now.
        let st = ctx.clone();
        let closed =
            web::block(move || crate::engine::close_unwatched(&st.db, &st.config, st.clock.now()))
                .await
                .map_err(|_| StoreError::Unavailable("start-up reconcile task failed".into()))??;
        if closed > 0 {
            tracing::info!(tickets = closed, "closed tickets warrant no longer watches");
        }
        let addr = ctx.config.server.listen.clone();
        let listener = TcpListener::bind(&addr).map_err(|source| AppError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let state = web::Data::new(AppState::new(ctx.clone()));
        // The generated signing key exists from the first start on. Without
        // `[keys]` to seal it none is generated: warrant serves everything
        // else, and a CI request for such a provider's credential is 503
        // naming the missing key, so one unset secret does not stop
        // revocations.
        let st = ctx.clone();
        match web::block(move || st.credentials.tokens.prepare(&st.db, st.clock.now()))
            .await
            .map_err(|_| StoreError::Unavailable("signing key task failed".into()))?
        {
            Err(e @ KeyError::NoKek(_)) => {
                tracing::error!(error = %e, "credentials cannot be issued until [keys] is set")
            }
            other => other?,
        }
        let shutdown = ctx.config.server.shutdown_timeout.std().as_secs();
        let data = state.clone();
        let console = crate::console::Console::new(&ctx.config)
            .map_err(AppError::Console)?
            .map(web::Data::new);
        let mut server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .configure(configure_extractors)
                .configure(crate::api::config)
                .configure(|cfg| crate::console::config(cfg, console.clone()))
                .default_service(web::to(|| async {
                    ApiError::NotFound("no such route".into()).error_response_owned()
                }))
                .wrap_fn(refuse_nul)
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
        let drift_stopped = loops_stopped.clone();
        // Checkpoints only read the chain and write files, so every replica
        // runs the loop (they share one sequence through the database).
        crate::evidence::spawn(ctx.clone(), loops_stopped.clone());
        let sinks_stopped = loops_stopped.clone();
        {
            let st = ctx.clone();
            let stopped = loops_stopped.clone();
            crate::supervisor::spawn(&ctx.health, "gauge-refresher", loops_stopped, move || {
                let refresh = crate::store::refresh_gauges_forever(st.clone());
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
            // Drift checks call providers, so they run where jobs run.
            crate::drift::spawn(ctx.clone(), drift_stopped);
            // Audit sinks likewise: one replica at a time delivers to each.
            crate::sinks::spawn(ctx.clone(), sinks_stopped);
            Some(crate::jobs::Runner::spawn(ctx.clone()))
        } else {
            None
        };
        tracing::info!(port, backend = ctx.db.backend(), "warrant listening");
        Ok(App {
            server,
            port,
            state,
            ctx,
            runner,
            stop_loops,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the handlers share.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone().into_inner()
    }

    /// What the workers share (tests drive the job runner through it).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
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

/// Refuses a URL whose path or query decodes to a NUL character (`%00`,
/// the only way one can be written there): PostgreSQL text cannot hold
/// it, so a filter or an id with one would fail the query and answer 500.
/// Percent-decoding is one pass, so `%00` in the raw URL is exactly a NUL
/// in a decoded value.
fn refuse_nul<S, B>(req: actix_web::dev::ServiceRequest, srv: &S) -> Checked<S::Future, B>
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let uri = req.uri();
    let nul = |s: &str| {
        s.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    if nul(uri.path()) || uri.query().is_some_and(nul) {
        let resp = ApiError::BadRequest("the URL must not contain a NUL character (%00)".into())
            .error_response_owned();
        return Either::Left(std::future::ready(Ok(req
            .into_response(resp)
            .map_into_right_body())));
    }
    let pass: fn(Answer<B>) -> Answer<EitherBody<B>> =
        |res| res.map(ServiceResponse::map_into_left_body);
    Either::Right(srv.call(req).map(pass))
}

/// What a service in the chain answers.
type Answer<B> = Result<ServiceResponse<B>, actix_web::Error>;

/// What `refuse_nul` answers: its own 400 at once, or the answer of the
/// request it let through, the body widened to either.
type Checked<F, B> = Either<Ready<Answer<EitherBody<B>>>, Passed<F, B>>;
type Passed<F, B> = Map<F, fn(Answer<B>) -> Answer<EitherBody<B>>>;

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
        .map(|s| s.ctx.metrics.clone());
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
