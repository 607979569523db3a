//! The console's pages, rendered on the server by `maud` templates compiled
//! into the binary; every value is escaped as it is written (ticket titles
//! and claims are hostile input). Plain links, forms, labels and buttons,
//! so the keyboard and any browser work, and a little inline CSS. Each
//! page reads through the query code behind the JSON API (`grants::list`,
//! `db::tickets`, `db::audit`, `db::drift`, `audit::verify`,
//! `evidence::checkpoint`); revoking calls `engine::revoke_by_hand`, as
//! `POST /v1/grants/{id}/revoke` does.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::session::Person;
use super::{require, signed_in, Console, ConsoleError, Page};
use crate::api::audit::{export_line, Format, CSV_HEADER};
use crate::api::error::{blocking, ApiError};
use crate::api::grants::manual_reason;
use crate::api::AppState;
use crate::audit::{self, EventRow, Verification};
use crate::db;
use crate::db::drift::FindingRow;
use crate::db::tickets::{DecisionRow, TicketRow};
use crate::domain::{from_micros, to_micros, truncate, GrantState, TicketKey};
use crate::grants::{self, Filter, GrantRow};
use crate::ticket::Snapshot;

pub(super) fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(live))
        .route("/tickets/{key:.*}", web::get().to(trace))
        .route("/grants", web::get().to(grants_page))
        .route("/grants/{id}/revoke", web::post().to(revoke))
        .route("/who", web::get().to(who))
        .route("/attention", web::get().to(attention))
        .route("/audit", web::get().to(audit_page))
        .route("/audit/export", web::get().to(export));
}

const CSS: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
header{display:flex;flex-wrap:wrap;align-items:center;gap:1rem;padding:.6rem 1.2rem;background:#1f2933;color:#fff}
header a{color:#e4e7eb;text-decoration:none;padding:.2rem .4rem;border-radius:4px}
header a[aria-current=page],header a:hover,header a:focus{background:#3e4c59;color:#fff}
.brand{font-weight:700;color:#fff}
.who{margin-left:auto;display:flex;gap:.6rem;align-items:center}
main{padding:1rem 1.2rem;max-width:80rem}
table{border-collapse:collapse;width:100%;background:#fff;margin:.6rem 0 1.2rem}
th,td{border-bottom:1px solid #e4e7eb;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f2f4;font-weight:600}
a{color:#0b5cad}
:focus-visible{outline:3px solid #f0b429;outline-offset:1px}
.state{font-weight:600}.s-active{color:#18794e}.s-revoking,.s-granting,.s-pending{color:#a15c07}.s-failed{color:#b42318}.s-revoked{color:#5f6b7a}
form.inline{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center;margin:0}
form.filters{display:flex;flex-wrap:wrap;gap:.8rem;align-items:flex-end;background:#fff;padding:.8rem;border:1px solid #e4e7eb}
form.filters label{display:flex;flex-direction:column;font-size:.9em}
input,select,button{font:inherit;padding:.25rem .4rem}
button{cursor:pointer}
ol.timeline{list-style:none;padding:0;border-left:3px solid #cbd2d9;margin-left:.4rem}
ol.timeline li{margin:0 0 .7rem;padding-left:.8rem}
ol.timeline time{color:#5f6b7a;font-size:.9em;display:block}
.kind{font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;background:#f0f2f4;padding:.4rem;margin:.2rem 0;font-size:.85em}
.ok{color:#18794e;font-weight:600}.bad{color:#b42318;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}
";

const NAV: [(&str, &str); 5] = [
    ("/ui/", "Live grants"),
    ("/ui/grants", "Grants"),
    ("/ui/who", "Who had access"),
    ("/ui/attention", "Attention"),
    ("/ui/audit", "Audit"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · warrant" }
            style { (PreEscaped(CSS)) }
        }
    }
}

fn layout(title: &str, p: &Person, current: &str, body: Markup) -> HttpResponse {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    nav aria-label="Console" {
                        a.brand href="/ui/" { "warrant" }
                        @for (href, label) in NAV {
                            a href=(href) aria-current=[(href == current).then_some("page")] { (label) }
                        }
                    }
                    div.who {
                        span { (p.display()) " · " (p.role.as_str()) }
                        form.inline method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(p.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    html_response(page)
}

fn html_response(page: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(page.into_string())
}

/// A page for someone who may not be signed in (errors, signed out).
pub(super) fn error_page(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main { h1 { (title) } p { (text) } p { a href="/ui/" { "Back to the console" } } } }
        }
    }
}

pub(super) fn signed_out() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Signed out"))
            body { main { h1 { "Signed out" } p { "You have signed out of warrant's console." } p { a href="/ui/" { "Sign in again" } } } }
        }
    }
}

fn when(us: i64) -> String {
    from_micros(us).format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn when_opt(us: Option<i64>) -> String {
    us.map(when).unwrap_or_default()
}

fn trace_href(key: &str) -> String {
    format!("/ui/tickets/{}", utf8_percent_encode(key, NON_ALPHANUMERIC))
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// A reason code in words: `approval_withdrawn` → "approval withdrawn".
fn words(code: &str) -> String {
    code.replace(['_', '.'], " ")
}

fn state_cell(state: &str) -> Markup {
    html! { span class={ "state s-" (state) } { (state) } }
}

/// The grants as a table; admins get a revoke form on each live one.
fn grants_table(rows: &[GrantRow], p: &Person, back: &str) -> Markup {
    if rows.is_empty() {
        return html! { p { "No grants." } };
    }
    html! {
        table {
            thead { tr {
                th scope="col" { "Ticket" } th scope="col" { "Subject" } th scope="col" { "Account" }
                th scope="col" { "Resource" } th scope="col" { "State" } th scope="col" { "Starts" }
                th scope="col" { "Expires" } th scope="col" { "Revoked" }
                @if p.is_admin() { th scope="col" { "Revoke" } }
            } }
            tbody {
                @for g in rows {
                    tr data-grant=(g.id) {
                        td { a href=(trace_href(&g.ticket)) { (g.ticket) } }
                        td { (g.subject) }
                        td { (g.account) }
                        td { (g.resource) }
                        td { (state_cell(&g.state)) @if let Some(f) = &g.failure { br; small { (truncate(f, 200)) } } }
                        td { (when(g.starts_at)) }
                        td { (when(g.expires_at)) }
                        td { (when_opt(g.revoked_at)) @if let Some(r) = &g.revoke_reason { br; small { (words(r)) } } }
                        @if p.is_admin() {
                            td {
                                @if g.state().is_live() {
                                    (revoke_form(g, p, back))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn revoke_form(g: &GrantRow, p: &Person, back: &str) -> Markup {
    let field = format!("reason-{}", g.id);
    html! {
        form.inline.revoke method="post" action={ "/ui/grants/" (enc(&g.id)) "/revoke" } {
            input type="hidden" name="csrf" value=(p.csrf);
            input type="hidden" name="back" value=(back);
            label for=(field) { "Reason" }
            input id=(field) type="text" name="reason" required maxlength="500" placeholder="why, for the audit trail";
            button type="submit" { "Revoke" }
        }
    }
}

const LIVE_STATES: [GrantState; 4] = [
    GrantState::Pending,
    GrantState::Granting,
    GrantState::Active,
    GrantState::Revoking,
];

/// The live grants (and those being revoked), newest first.
fn live_rows(conn: &mut db::Conn<'_>, limit: i64) -> Result<Vec<GrantRow>, db::StoreError> {
    let mut rows = Vec::new();
    for s in LIVE_STATES {
        rows.extend(grants::list(
            conn,
            &Filter {
                state: Some(s),
                limit,
                ..Filter::default()
            },
        )?);
    }
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    rows.truncate(limit as usize);
    Ok(rows)
}

async fn live(c: web::Data<Console>, st: web::Data<AppState>, req: HttpRequest) -> Page {
    let p = signed_in!(c, st, req);
    let ctx = st.ctx.clone();
    let rows = blocking(move || Ok(ctx.db.read(|conn| live_rows(conn, 1000))?)).await?;
    Ok(layout(
        "Live grants",
        &p,
        "/ui/",
        html! {
            p { "Grants that hold, or are about to hold or lose, access; newest first." }
            (grants_table(&rows, &p, "/ui/"))
        },
    ))
}

/// The ticket key from the raw path, decoded exactly once.
fn ticket_key(req: &HttpRequest) -> Result<TicketKey, ConsoleError> {
    let raw = req
        .uri()
        .path()
        .strip_prefix("/ui/tickets/")
        .unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ConsoleError::BadRequest("the ticket key is not UTF-8".into()))?;
    decoded.parse().map_err(ConsoleError::BadRequest)
}

/// The ticket's page at its source, where the configuration says enough.
fn source_link(config: &crate::config::Config, key: &str, s: Option<&Snapshot>) -> Option<String> {
    let (source, rest) = key.split_once(':')?;
    match source {
        "github" => {
            let (repo, n) = rest.rsplit_once('#')?;
            let web = config
                .sources
                .github
                .as_ref()
                .map(|g| g.api_url.trim_end_matches('/').to_string())
                .map(|api| {
                    if api == "https://api.github.com" {
                        "https://github.com".to_string()
                    } else {
                        api.trim_end_matches("/api/v3").to_string()
                    }
                })
                .unwrap_or_else(|| "https://github.com".into());
            Some(format!("{web}/{repo}/issues/{n}"))
        }
        "jira" => {
            let base = config.sources.jira.as_ref()?.api_url.as_ref()?;
            Some(format!(
                "{}/browse/{}",
                base.trim_end_matches('/'),
                enc(rest)
            ))
        }
        "servicenow" => {
            let base = config.sources.servicenow.as_ref()?.api_url.as_ref()?;
            let table = s.map(|s| s.project.as_str()).unwrap_or("change_request");
            Some(format!(
                "{}/{}.do?sysparm_query=number={}",
                base.trim_end_matches('/'),
                enc(table),
                enc(rest)
            ))
        }
        _ => None,
    }
}

type Trace = (TicketRow, Vec<DecisionRow>, Vec<GrantRow>, Vec<EventRow>);

async fn trace(c: web::Data<Console>, st: web::Data<AppState>, req: HttpRequest) -> Page {
    let p = signed_in!(c, st, req);
    let key = ticket_key(&req)?;
    let ctx = st.ctx.clone();
    let k = key.to_string();
    let found: Option<Trace> = blocking(move || {
        Ok(ctx.db.read(|conn| {
            let Some(row) = db::tickets::load(conn, &k)? else {
                return Ok(None);
            };
            let decisions = db::tickets::decisions_of(conn, &k)?;
            let grants = grants::of_ticket(conn, &k)?;
            let events = db::audit::of_ticket(conn, &k, 10_000)?;
            Ok(Some((row, decisions, grants, events)))
        })?)
    })
    .await?;
    let Some((row, decisions, grants, events)) = found else {
        return Err(ApiError::NotFound(format!("warrant has not seen ticket {key}")).into());
    };
    let snapshot: Option<Snapshot> = serde_json::from_str(&row.snapshot).ok();
    let link = source_link(&st.ctx.config, key.as_str(), snapshot.as_ref());
    let back = here_path(&req);
    // One timeline: decisions, grant steps and audit events, by time.
    let mut items: Vec<(i64, &'static str, Markup)> = Vec::new();
    for d in &decisions {
        items.push((
            d.at,
            "Decision",
            html! {
                strong { (words(&d.outcome)) }
                @if let Some(r) = &d.reason { " — " (words(r)) }
                @if !d.detail.is_empty() { br; (d.detail) }
            },
        ));
    }
    for g in &grants {
        items.push((
            g.created_at,
            "Grant created",
            html! { (g.subject) " on " (g.resource) " (" (g.account) "), " (when(g.starts_at)) " to " (when(g.expires_at)) },
        ));
        if let Some(a) = g.activated_at {
            items.push((a, "Grant active", html! { (g.subject) " on " (g.resource) }));
        }
        if let Some(r) = g.revoked_at {
            items.push((
                r,
                "Grant revoked",
                html! { (g.subject) " on " (g.resource) @if let Some(w) = &g.revoke_reason { " — " (words(w)) } },
            ));
        }
    }
    for e in &events {
        let data = serde_json::from_str::<serde_json::Value>(&e.data)
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            .unwrap_or_else(|_| e.data.clone());
        items.push((
            e.at,
            "Audit event",
            html! {
                strong { (e.type_) } " by " (e.actor)
                @if let Some(g) = &e.grant_id { " · grant " code { (g) } }
                details { summary { "What was recorded (event " (e.seq) ")" } pre { (data) } }
            },
        ));
    }
    items.sort_by_key(|(at, _, _)| *at);
    let body = html! {
        @if let Some(s) = &snapshot {
            p { strong { (s.title) } }
            dl {
                dt { "Status" } dd { (s.source_status) " (" (format!("{:?}", s.status).to_lowercase()) ")" }
                dt { "Project" } dd { (s.project) }
                @if let Some(r) = &s.request {
                    dt { "Subject" } dd { (r.subject) }
                    dt { "Resource" } dd { (r.resource) }
                    @if let Some(t) = r.start { dt { "Start" } dd { (when(to_micros(t))) } }
                    @if let Some(t) = r.end { dt { "End" } dd { (when(to_micros(t))) } }
                    @if let Some(d) = &r.duration { dt { "Duration" } dd { (d) } }
                    dt { "Justification" } dd { (r.justification) }
                }
                @if let Some(e) = &s.request_error { dt { "Request" } dd { "unreadable: " (e) } }
                dt { "Approved" } dd {
                    @if let Some(a) = &s.approval {
                        "by " (a.approvers.join(", ")) " at " (when(to_micros(a.at)))
                    } @else { "no" }
                }
            }
        }
        @if let Some(l) = &link { p { a href=(l) rel="noreferrer" { "Open the ticket in its source" } } }
        h2 { "Grants" }
        (grants_table(&grants, &p, &back))
        h2 { "Timeline" }
        ol.timeline {
            @for (at, kind, text) in &items {
                li { time { (when(*at)) } span.kind { (kind) } ": " (text) }
            }
        }
    };
    Ok(layout(&format!("Ticket {key}"), &p, "", body))
}

fn here_path(req: &HttpRequest) -> String {
    super::here(req)
}

#[derive(Debug, Default, Deserialize)]
struct GrantsQuery {
    ticket: Option<String>,
    subject: Option<String>,
    resource: Option<String>,
    state: Option<String>,
    active_at: Option<String>,
    after: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A time typed by a person: RFC 3339, or a `datetime-local` value in UTC.
fn parse_when(name: &str, s: &str) -> Result<DateTime<Utc>, ConsoleError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    Err(ConsoleError::BadRequest(format!(
        "{name} must be a time such as 2026-11-25T10:00:00Z (UTC)"
    )))
}

const PAGE: i64 = 50;

async fn grants_page(
    c: web::Data<Console>,
    st: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<GrantsQuery>,
) -> Page {
    let p = signed_in!(c, st, req);
    let q = q.into_inner();
    let filter = Filter {
        ticket: nonempty(&q.ticket),
        subject: nonempty(&q.subject),
        resource: nonempty(&q.resource),
        state: nonempty(&q.state)
            .map(|s| s.parse::<GrantState>().map_err(ConsoleError::BadRequest))
            .transpose()?,
        active_at: nonempty(&q.active_at)
            .map(|t| parse_when("the time", &t))
            .transpose()?,
        after: nonempty(&q.after),
        limit: PAGE,
    };
    let ctx = st.ctx.clone();
    let f = filter.clone();
    let rows = blocking(move || Ok(ctx.db.read(|conn| grants::list(conn, &f))?)).await?;
    let next = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|g| g.id.clone()))
        .flatten()
        .map(|after| {
            let mut u = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("ticket", &filter.ticket),
                ("subject", &filter.subject),
                ("resource", &filter.resource),
                ("active_at", &nonempty(&q.active_at)),
            ] {
                if let Some(v) = v {
                    u.append_pair(k, v);
                }
            }
            if let Some(s) = filter.state {
                u.append_pair("state", s.as_str());
            }
            u.append_pair("after", &after);
            format!("/ui/grants?{}", u.finish())
        });
    let v = |s: &Option<String>| s.clone().unwrap_or_default();
    let back = here_path(&req);
    let body = html! {
        form.filters method="get" action="/ui/grants" {
            label { "Ticket" input type="text" name="ticket" value=(v(&q.ticket)) placeholder="github:acme/access-requests#7"; }
            label { "Subject" input type="text" name="subject" value=(v(&q.subject)); }
            label { "Resource" input type="text" name="resource" value=(v(&q.resource)) placeholder="provider/target"; }
            label { "State" select name="state" {
                option value="" { "any" }
                @for s in GrantState::ALL {
                    option value=(s.as_str()) selected[filter.state == Some(*s)] { (s.as_str()) }
                }
            } }
            label { "Active at (UTC)" input type="text" name="active_at" value=(v(&q.active_at)) placeholder="2026-11-25T10:00:00Z"; }
            button type="submit" { "Filter" }
        }
        p { "Oldest first, " (PAGE) " to a page." }
        (grants_table(&rows, &p, &back))
        @if let Some(n) = &next { p { a href=(n) rel="next" { "Next page" } } }
    };
    Ok(layout("Grants", &p, "/ui/grants", body))
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    /// Absent in a forged form: refused as a wrong token, not a bad form.
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    back: Option<String>,
}

async fn revoke(
    c: web::Data<Console>,
    st: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    form: web::Form<RevokeForm>,
) -> Page {
    let now = st.ctx.clock.now();
    // A form sent without a session is refused, not sent to sign in.
    let p = c
        .person(&req, now)
        .ok_or_else(|| ConsoleError::Forbidden("you are not signed in".into()))?;
    let form = form.into_inner();
    if !p.csrf_ok(&form.csrf) {
        return Err(ConsoleError::Forbidden(
            "this form is not from your session (CSRF token)".into(),
        ));
    }
    if !p.is_admin() {
        return Err(ConsoleError::Forbidden(format!(
            "{} is an {}; revoking needs an admin",
            p.display(),
            p.role.as_str()
        )));
    }
    let text = form.reason.trim();
    if text.is_empty() {
        return Err(ConsoleError::BadRequest(
            "give a reason for the revocation; it goes into the audit trail".into(),
        ));
    }
    let (reason, note) = manual_reason(Some(text));
    let id = id.into_inner();
    let actor = p.actor();
    let ctx = st.ctx.clone();
    let row = blocking(move || {
        Ok(crate::engine::revoke_by_hand(
            &ctx.db,
            &ctx.config,
            now,
            &id,
            reason,
            &actor,
            note.as_deref(),
        )?)
    })
    .await?;
    st.ctx.wake.notify_one();
    let Some(g) = row else {
        return Err(ApiError::NotFound("no such grant".into()).into());
    };
    let back = form
        .back
        .map(|b| super::safe_next(&b))
        .unwrap_or_else(|| trace_href(&g.ticket));
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, back))
        .finish())
}

#[derive(Debug, Default, Deserialize)]
struct WhoQuery {
    resource: Option<String>,
    at: Option<String>,
}

async fn who(
    c: web::Data<Console>,
    st: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<WhoQuery>,
) -> Page {
    let p = signed_in!(c, st, req);
    let q = q.into_inner();
    let asked = match (nonempty(&q.resource), nonempty(&q.at)) {
        (Some(r), Some(t)) => Some((r, parse_when("the time", &t)?)),
        (None, None) => None,
        _ => {
            return Err(ConsoleError::BadRequest(
                "give both a resource and a time".into(),
            ))
        }
    };
    let rows = match &asked {
        Some((r, t)) => {
            let f = Filter {
                resource: Some(r.clone()),
                active_at: Some(*t),
                limit: 1000,
                ..Filter::default()
            };
            let ctx = st.ctx.clone();
            Some(blocking(move || Ok(ctx.db.read(|conn| grants::list(conn, &f))?)).await?)
        }
        None => None,
    };
    let back = here_path(&req);
    let v = |s: &Option<String>| s.clone().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/ui/who" {
            label { "Resource" input type="text" name="resource" required value=(v(&q.resource)) placeholder="provider/target"; }
            label { "At (UTC)" input type="text" name="at" required value=(v(&q.at)) placeholder="2026-11-25T10:00:00Z"; }
            button type="submit" { "Who had it?" }
        }
        @if let (Some((r, t)), Some(rows)) = (&asked, &rows) {
            h2 { "Who had " (r) " at " (when(to_micros(*t))) }
            @if rows.is_empty() {
                p { "Nobody: no grant of " (r) " was active then." }
            } @else {
                (grants_table(rows, &p, &back))
            }
        }
    };
    Ok(layout("Who had access", &p, "/ui/who", body))
}

type Attention = (Vec<GrantRow>, Vec<GrantRow>, Vec<GrantRow>, Vec<FindingRow>);

async fn attention(c: web::Data<Console>, st: web::Data<AppState>, req: HttpRequest) -> Page {
    let p = signed_in!(c, st, req);
    let now = to_micros(st.ctx.clock.now());
    let ctx = st.ctx.clone();
    let (revoking, failed, overdue, drift): Attention = blocking(move || {
        Ok(ctx.db.read(|conn| {
            let by_state = |conn: &mut db::Conn<'_>, s| {
                grants::list(
                    conn,
                    &Filter {
                        state: Some(s),
                        limit: 500,
                        ..Filter::default()
                    },
                )
            };
            let revoking = by_state(conn, GrantState::Revoking)?;
            let failed = by_state(conn, GrantState::Failed)?;
            let mut overdue = live_rows(conn, 5000)?;
            overdue.retain(|g| g.state().is_live() && g.expires_at <= now);
            let drift = db::drift::open(conn, None, None, 500)?;
            Ok((revoking, failed, overdue, drift))
        })?)
    })
    .await?;
    let config = &st.ctx.config;
    let back = "/ui/attention";
    let body = html! {
        h2 { "Stuck in revoking (" (revoking.len()) ")" }
        p { "Revocations are retried until the provider confirms; these have not been confirmed yet." }
        (grants_table(&revoking, &p, back))
        h2 { "Overdue revocations (" (overdue.len()) ")" }
        p { "Live grants whose window has ended; the job runner has not revoked them yet." }
        (grants_table(&overdue, &p, back))
        h2 { "Failed grants (" (failed.len()) ")" }
        (grants_table(&failed, &p, back))
        h2 { "Drift findings (" (drift.len()) ")" }
        @if drift.is_empty() {
            p { "No open findings." }
        } @else {
            table {
                thead { tr { th scope="col" { "Provider" } th scope="col" { "Account" } th scope="col" { "Target" } th scope="col" { "Found" } th scope="col" { "Mode" } } }
                tbody { @for f in &drift {
                    tr { td { (f.provider) } td { (f.account) } td { (f.target) } td { (when(f.found_at)) } td { (config.drift_mode(&f.provider).as_str()) } }
                } }
            }
        }
    };
    Ok(layout("Attention", &p, "/ui/attention", body))
}

#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    verify: Option<String>,
}

async fn audit_page(
    c: web::Data<Console>,
    st: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<AuditQuery>,
) -> Page {
    let p = signed_in!(c, st, req);
    let run_verify = q.verify.is_some();
    let ctx = st.ctx.clone();
    let (verification, checkpoints): (Option<Verification>, Vec<_>) = blocking(move || {
        let v = if run_verify {
            Some(audit::verify(&ctx.db)?)
        } else {
            None
        };
        Ok((v, crate::evidence::checkpoint::list(&ctx.db, 0, 10_000)?))
    })
    .await?;
    let body = html! {
        h2 { "Hash chain" }
        @match &verification {
            Some(v) if v.ok => p.ok { "Verified: " (v.events) " events, the chain is intact up to its head " code { (v.head) } "." },
            Some(v) => p.bad { "Broken: the chain fails at event " (v.first_bad.unwrap_or(0)) " (" (v.events) " events read)." },
            None => p { "The chain is checked on request, since it reads every event." },
        }
        form.inline method="get" action="/ui/audit" {
            input type="hidden" name="verify" value="1";
            button type="submit" { "Verify the chain now" }
        }
        h2 { "Checkpoints" }
        @match checkpoints.last() {
            Some(last) => p { (checkpoints.len()) " checkpoints; the latest signs event " (last.seq) " at " (last.at) " with key " code { (last.key_id) } "." },
            None => p { "No checkpoint has been made (checkpoints need [audit] checkpoint settings)." },
        }
        h2 { "Export" }
        form.filters method="get" action="/ui/audit/export" {
            label { "Format" select name="format" { option value="jsonl" { "JSON lines" } option value="csv" { "CSV" } } }
            label { "Ticket (optional)" input type="text" name="ticket"; }
            label { "Since (UTC, optional)" input type="text" name="since" placeholder="2026-11-01T00:00:00Z"; }
            label { "Until (UTC, optional)" input type="text" name="until"; }
            button type="submit" { "Download" }
        }
    };
    Ok(layout("Audit", &p, "/ui/audit", body))
}

#[derive(Debug, Default, Deserialize)]
struct ExportQuery {
    format: Option<String>,
    ticket: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

async fn export(
    c: web::Data<Console>,
    st: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<ExportQuery>,
) -> Page {
    let _p = signed_in!(c, st, req);
    let q = q.into_inner();
    let format: Format = q
        .format
        .as_deref()
        .unwrap_or("jsonl")
        .parse()
        .map_err(ConsoleError::BadRequest)?;
    let f = db::audit::Filter {
        ticket: nonempty(&q.ticket),
        since: nonempty(&q.since)
            .map(|t| parse_when("since", &t))
            .transpose()?,
        until: nonempty(&q.until)
            .map(|t| parse_when("until", &t))
            .transpose()?,
        limit: 1000,
        ..db::audit::Filter::default()
    };
    let db = st.ctx.db.clone();
    // A page at a time as the browser reads, as `GET /v1/audit/export`
    // does; a page that cannot be read cuts the download off unfinished,
    // so it never looks complete.
    let stream =
        futures_util::stream::unfold((Some(f), format == Format::Csv), move |(cursor, header)| {
            let db = db.clone();
            async move {
                let mut f = cursor?;
                let mut out = String::new();
                if header {
                    out.push_str(CSV_HEADER);
                }
                let fetch = f.clone();
                let rows =
                    match tokio::task::spawn_blocking(move || db::audit::page(&db, &fetch)).await {
                        Ok(Ok(rows)) => rows,
                        _ => {
                            tracing::error!(
                                after = f.after,
                                "console audit export stopped: a page cannot be read"
                            );
                            return Some((
                                Err(actix_web::error::ErrorInternalServerError("export failed")),
                                (None, false),
                            ));
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
        });
    let (content_type, name) = match format {
        Format::Jsonl => ("application/x-ndjson", "warrant-audit.jsonl"),
        Format::Csv => ("text/csv; charset=utf-8", "warrant-audit.csv"),
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .streaming(stream))
}
