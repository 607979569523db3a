//! The auditors' read of the trail: `GET /v1/audit` (filters, cursor
//! paging), `GET /v1/audit/export` (streamed JSON lines or CSV, flat
//! memory), `GET /v1/audit/verify`, and the checkpoints that anchor the
//! chain outside the database: `GET /v1/audit/checkpoint-key` (the public
//! key that verifies them) and `GET /v1/audit/checkpoints`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::api::auth::Caller;
use crate::api::error::{blocking, ApiError, ErrorBody};
use crate::api::grants::parse_time;
use crate::api::AppState;
use crate::audit::{self, Event, EventRow, Verification};
use crate::crypto::checkpoint::Checkpoint;

pub fn config(cfg: &mut impl crate::api::Routes) {
    cfg.route("/v1/audit", web::get().to(list))
        .route("/v1/audit/export", web::get().to(export))
        .route("/v1/audit/verify", web::get().to(verify))
        .route("/v1/audit/checkpoint-key", web::get().to(checkpoint_key))
        .route("/v1/audit/checkpoints", web::get().to(checkpoints));
}

use crate::db::audit::{page, Filter as AuditFilter};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Query {
    /// Events of this ticket.
    ticket: Option<String>,
    /// Events of this grant.
    grant: Option<String>,
    /// Events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Events before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// The cursor: events after this sequence number.
    after: Option<i64>,
    /// Page size (the export reads in pages of 1000 whatever it is).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
    /// The export's format: `jsonl` (default) or `csv`; the list ignores it.
    #[param(value_type = Option<ExportFormat>, inline)]
    format: Option<String>,
}

/// The export's formats.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // only describes the `format` parameter
enum ExportFormat {
    Jsonl,
    Csv,
}

/// A page of events, oldest first; `next` is the cursor of the following
/// page, when there may be one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub next: Option<i64>,
}

/// The public key that verifies checkpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointPublicKey {
    #[schema(example = "Ed25519")]
    pub alg: &'static str,
    pub key_id: String,
    /// The raw 32-byte key, base64.
    pub public_key: String,
    /// The key as PEM (SPKI).
    pub pem: String,
}

/// A page of checkpoints, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointPage {
    pub checkpoints: Vec<Checkpoint>,
    pub next: Option<i64>,
}

fn filter_of(q: &Query, default_limit: i64) -> Result<AuditFilter, ApiError> {
    let limit = q.limit.unwrap_or(default_limit);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 10000".into(),
        ));
    }
    Ok(AuditFilter {
        ticket: q.ticket.clone(),
        grant: q.grant.clone(),
        since: q
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?,
        after: q.after.unwrap_or(0).max(0),
        limit,
    })
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "list_audit_events",
    tag = "audit",
    params(Query),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read the trail", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
async fn list(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<Query>,
) -> Result<HttpResponse, ApiError> {
    let f = filter_of(&q, 100)?;
    let st = state.clone();
    let limit = f.limit;
    let rows = blocking(move || Ok(page(&st.ctx.db, &f)?)).await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| r.seq)
    } else {
        None
    };
    let events: Vec<Event> = rows.into_iter().map(Event::from).collect();
    Ok(HttpResponse::Ok().json(EventPage { events, next }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "jsonl" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            other => Err(format!(
                "format `{}` is not jsonl or csv",
                crate::domain::truncate(other, 20)
            )),
        }
    }
}

pub const CSV_HEADER: &str = "seq,at,type,ticket,grant_id,actor,data,prev_hash,hash\n";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One exported line, newline included.
pub fn export_line(row: EventRow, format: Format) -> String {
    match format {
        Format::Jsonl => {
            let mut s = serde_json::to_string(&Event::from(row)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Csv => {
            let e = Event::from(row);
            let data = e.data.to_string();
            format!(
                "{},{},{},{},{},{},{},{},{}\n",
                e.seq,
                e.at,
                csv_field(&e.kind),
                csv_field(e.ticket.as_deref().unwrap_or("")),
                csv_field(e.grant_id.as_deref().unwrap_or("")),
                csv_field(&e.actor),
                csv_field(&data),
                e.prev_hash,
                e.hash
            )
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/audit/export",
    operation_id = "export_audit_events",
    tag = "audit",
    params(Query),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "Every matching event, streamed; a page that cannot be read cuts the stream off without its last chunk",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, description = "A bad filter or format", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read the trail", body = ErrorBody),
    )
)]
async fn export(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<Query>,
) -> Result<HttpResponse, ApiError> {
    let format: Format = q
        .format
        .as_deref()
        .unwrap_or("jsonl")
        .parse()
        .map_err(ApiError::BadRequest)?;
    let mut f = filter_of(&q, 1000)?;
    f.limit = 1000;
    let db = state.ctx.db.clone();
    // Pages are fetched as the client reads, so memory stays flat.
    let stream = futures_util::stream::unfold(
        (Some(f), format == Format::Csv),
        move |(cursor, header)| {
            let db = db.clone();
            async move {
                let mut f = cursor?;
                let mut out = String::new();
                if header {
                    out.push_str(CSV_HEADER);
                }
                let fetch = f.clone();
                // A page that cannot be read ends the stream with an error:
                // the chunked body is cut off without its last chunk, so the
                // client sees a failed download, never a short export that
                // looks complete.
                let rows = match tokio::task::spawn_blocking(move || page(&db, &fetch)).await {
                    Ok(Ok(rows)) => rows,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, after = f.after, "audit export stopped: a page cannot be read");
                        return Some((Err(export_failed()), (None, false)));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, after = f.after, "audit export stopped: the page task failed");
                        return Some((Err(export_failed()), (None, false)));
                    }
                };
                let done = (rows.len() as i64) < f.limit;
                if let Some(last) = rows.last() {
                    f.after = last.seq;
                }
                for r in rows {
                    out.push_str(&export_line(r, format));
                }
                let next = if done { None } else { Some(f) };
                Some((
                    Ok::<_, actix_web::Error>(web::Bytes::from(out)),
                    (next, false),
                ))
            }
        },
    );
    let content_type = match format {
        Format::Jsonl => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .streaming(stream))
}

/// The error that aborts an export stream (its text stays in our log).
fn export_failed() -> actix_web::Error {
    actix_web::error::ErrorInternalServerError("audit export failed")
}

#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    operation_id = "verify_audit_chain",
    tag = "audit",
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "What walking the chain found", body = Verification),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read the trail", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
async fn verify(state: web::Data<AppState>, _caller: Caller) -> Result<HttpResponse, ApiError> {
    let st = state.clone();
    let v = blocking(move || Ok(audit::verify(&st.ctx.db)?)).await?;
    Ok(HttpResponse::Ok().json(v))
}

/// The public key that verifies checkpoints, as PEM (SPKI) and raw base64.
#[utoipa::path(
    get,
    path = "/v1/audit/checkpoint-key",
    operation_id = "get_checkpoint_key",
    tag = "audit",
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "The checkpoint key", body = CheckpointPublicKey),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read the trail", body = ErrorBody),
        (status = 404, description = "Checkpoints are not configured", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
async fn checkpoint_key(
    state: web::Data<AppState>,
    _caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let key = crate::evidence::checkpoint::key(&state.ctx.config)
        .map_err(|e| {
            tracing::error!(error = %e, "the checkpoint key cannot be read");
            ApiError::Internal
        })?
        .ok_or_else(|| ApiError::NotFound("checkpoints are not configured".into()))?;
    let public = key.public();
    let pem = crate::crypto::checkpoint::public_pem(&public).map_err(|e| {
        tracing::error!(error = %e, "the checkpoint public key cannot be encoded");
        ApiError::Internal
    })?;
    use base64::Engine;
    Ok(HttpResponse::Ok().json(CheckpointPublicKey {
        alg: "Ed25519",
        key_id: crate::crypto::checkpoint::key_id(&public),
        public_key: base64::engine::general_purpose::STANDARD.encode(public.as_bytes()),
        pem,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CheckpointQuery {
    /// The cursor: checkpoints after this sequence number.
    after: Option<i64>,
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// The checkpoints made so far, oldest first, each as its file holds it.
#[utoipa::path(
    get,
    path = "/v1/audit/checkpoints",
    operation_id = "list_checkpoints",
    tag = "audit",
    params(CheckpointQuery),
    security(("api_token" = ["admin", "auditor"])),
    responses(
        (status = 200, description = "A page of checkpoints", body = CheckpointPage),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 403, description = "The token's role may not read the trail", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The database is unavailable: retry", body = ErrorBody),
    )
)]
async fn checkpoints(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<CheckpointQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 10000".into(),
        ));
    }
    let after = q.after.unwrap_or(0);
    let st = state.clone();
    let list =
        blocking(move || Ok(crate::evidence::checkpoint::list(&st.ctx.db, after, limit)?)).await?;
    let next = if list.len() as i64 == limit {
        list.last().map(|c| c.seq)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(CheckpointPage {
        checkpoints: list,
        next,
    }))
}
