//! The console for people at `/ui/` (`[ui]`): sign-in through the
//! company's OpenID Connect provider (`oidc`), the sealed session cookie
//! (`session`), and the server-rendered pages (`pages`): the live grants,
//! a ticket's trace, grants with filters and revocation for admins, "who
//! had R at T", what needs attention, and the audit trail's status and
//! export. Pages read through the same query code as the JSON API and
//! revoke through the same engine call; every sign-in, sign-out and
//! revocation is an audit event naming the person.
//!
//! Without a `[ui]` section no route is registered, so `/ui/` is a 404.

pub mod oidc;
mod pages;
pub mod session;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::error::{blocking, ApiError};
use crate::api::AppState;
use crate::audit::{self, NewEvent};
use crate::config::{Config, UiConfig};
use crate::crypto::sealed::Kek;
use session::{LoginState, Person, UiRole, LOGIN_COOKIE, LOGIN_TTL_SECONDS, SESSION_COOKIE};

/// The console's own state beside the handlers' `AppState`.
#[derive(Debug)]
pub struct Console {
    config: UiConfig,
    kek: Kek,
    oidc: oidc::Client,
    /// Cookies are `Secure` unless warrant listens on loopback.
    secure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    SignIn(#[from] oidc::SignInError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::Api(e) => e.status_code(),
            ConsoleError::SignIn(oidc::SignInError::Unavailable(_)) => StatusCode::BAD_GATEWAY,
            ConsoleError::SignIn(oidc::SignInError::Invalid(_)) => StatusCode::BAD_REQUEST,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (title, text) = match self {
            ConsoleError::SignIn(e) => {
                tracing::warn!(error = %e, "console sign-in failed");
                (
                    "Sign-in failed".to_string(),
                    format!("{e}. Try again from the start."),
                )
            }
            // 5xx texts stay in our log.
            _ if status.is_server_error() => (
                "Something went wrong".to_string(),
                "warrant could not answer this page; try again shortly.".to_string(),
            ),
            other => (
                status.canonical_reason().unwrap_or("Error").to_string(),
                other.to_string(),
            ),
        };
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(pages::error_page(&title, &text).into_string())
    }
}

type Page = Result<HttpResponse, ConsoleError>;

impl Console {
    /// The console of this configuration, if it has a `[ui]` section.
    pub fn new(config: &Config) -> Result<Option<Console>, String> {
        let Some(ui) = &config.ui else {
            return Ok(None);
        };
        let key = ui
            .session_key
            .as_ref()
            .ok_or("ui.session_key_env: the session key is not loaded")?;
        let kek = Kek::from_secret(key).map_err(|e| format!("ui.session_key_env: {e}"))?;
        let secure = !config
            .server
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        Ok(Some(Console {
            config: ui.clone(),
            kek,
            oidc: oidc::Client::new(ui.oidc.clone()),
            secure,
        }))
    }

    fn person(&self, req: &HttpRequest, now: DateTime<Utc>) -> Option<Person> {
        session::person(&self.kek, req, now)
    }

    /// Starts a sign-in: the browser goes to the provider, and comes back
    /// to `/ui/callback`, then to `next`.
    async fn sign_in(&self, st: &AppState, next: &str) -> Page {
        let now = st.ctx.clock.now();
        let login = LoginState {
            state: session::random_token(),
            nonce: session::random_token(),
            verifier: session::random_token(),
            next: safe_next(next),
            exp: now.timestamp().saturating_add(LOGIN_TTL_SECONDS),
        };
        let url = self
            .oidc
            .authorize_url(
                &st.ctx.http,
                now,
                &login.state,
                &login.nonce,
                &login.verifier,
            )
            .await?;
        let sealed = session::seal(&self.kek, LOGIN_COOKIE, &login).ok_or(ApiError::Internal)?;
        Ok(HttpResponse::Found()
            .insert_header((header::LOCATION, url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .cookie(session::cookie(
                LOGIN_COOKIE,
                sealed,
                LOGIN_TTL_SECONDS,
                self.secure,
            ))
            .finish())
    }

    fn role_of(&self, claims: &serde_json::Map<String, Value>) -> Option<UiRole> {
        let o = &self.config.oidc;
        let values: Vec<&str> = match claims.get(&o.roles_claim) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if values.iter().any(|v| o.admin_values.iter().any(|a| a == v)) {
            Some(UiRole::Admin)
        } else if values
            .iter()
            .any(|v| o.auditor_values.iter().any(|a| a == v))
        {
            Some(UiRole::Auditor)
        } else {
            None
        }
    }
}

/// Only a console path is a place to land after sign-in.
fn safe_next(next: &str) -> String {
    if next.starts_with("/ui/") && !next.starts_with("/ui//") && !next.contains('\\') {
        next.to_string()
    } else {
        "/ui/".to_string()
    }
}

/// This request's path and query, to come back to after sign-in.
fn here(req: &HttpRequest) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/ui/".into())
}

/// The signed-in person, or the redirect that signs one in.
async fn require(c: &Console, st: &AppState, req: &HttpRequest) -> Result<Person, Page> {
    match c.person(req, st.ctx.clock.now()) {
        Some(p) => Ok(p),
        None => Err(c.sign_in(st, &here(req)).await),
    }
}

/// Runs a handler body for a signed-in person.
macro_rules! signed_in {
    ($c:expr, $st:expr, $req:expr) => {
        match require(&$c, &$st, &$req).await {
            Ok(p) => p,
            Err(page) => return page,
        }
    };
}
pub(crate) use signed_in;

/// Registers the console's routes, if there is a console.
pub fn config(cfg: &mut web::ServiceConfig, console: Option<web::Data<Console>>) {
    let Some(console) = console else {
        return;
    };
    cfg.service(
        web::scope("/ui")
            .app_data(console)
            .route("", web::get().to(to_index))
            .route("/login", web::get().to(login))
            .route("/callback", web::get().to(callback))
            .route("/logout", web::post().to(logout))
            .configure(pages::config),
    );
}

async fn to_index() -> HttpResponse {
    HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login(c: web::Data<Console>, st: web::Data<AppState>, q: web::Query<LoginQuery>) -> Page {
    c.sign_in(&st, q.next.as_deref().unwrap_or("/ui/")).await
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    #[serde(flatten)]
    _rest: std::collections::HashMap<String, String>,
}

async fn callback(
    c: web::Data<Console>,
    st: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<CallbackQuery>,
) -> Page {
    use oidc::SignInError::Invalid;
    let now = st.ctx.clock.now();
    let q = q.into_inner();
    if let Some(e) = q.error {
        return Err(Invalid(format!(
            "the provider answered `{}`: {}",
            crate::domain::truncate(&e, 80),
            crate::domain::truncate(q.error_description.as_deref().unwrap_or(""), 200)
        ))
        .into());
    }
    let login: LoginState = session::open(&c.kek, &req, LOGIN_COOKIE)
        .filter(|l: &LoginState| now.timestamp() < l.exp)
        .ok_or_else(|| Invalid("this sign-in was not started here, or took too long".into()))?;
    let state = q.state.unwrap_or_default();
    {
        use subtle::ConstantTimeEq;
        if state.len() != login.state.len()
            || !bool::from(state.as_bytes().ct_eq(login.state.as_bytes()))
        {
            return Err(Invalid("the `state` is not the one this sign-in sent".into()).into());
        }
    }
    let code = q
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Invalid("the provider sent no code".into()))?;
    let who = c
        .oidc
        .finish(&st.ctx.http, now, &code, &login.verifier, &login.nonce)
        .await?;
    let role = c.role_of(&who.claims);
    let identity = json!({
        "issuer": who.iss, "sub": who.sub, "name": who.name, "email": who.email,
        "role": role.map(UiRole::as_str),
    });
    let Some(role) = role else {
        let p = Person {
            iss: who.iss.clone(),
            sub: who.sub.clone(),
            name: who.name.clone(),
            email: who.email.clone(),
            role: UiRole::Auditor,
            csrf: String::new(),
            exp: 0,
        };
        record(
            &st,
            NewEvent::new("ui.sign_in_refused", p.actor(), identity),
        )
        .await?;
        let shown = who.email.or(who.name).unwrap_or(who.sub);
        return Ok(HttpResponse::build(StatusCode::FORBIDDEN)
            .content_type("text/html; charset=utf-8")
            .cookie(session::removal(LOGIN_COOKIE, c.secure))
            .body(
                pages::error_page(
                    "No access",
                    &format!("You are signed in at your company's provider as {shown}, but none of your groups gives access to warrant's console. Ask your security team for the admin or auditor group."),
                )
                .into_string(),
            ));
    };
    let ttl = c.config.session_ttl.0.num_seconds();
    let person = Person {
        iss: who.iss,
        sub: who.sub,
        name: who.name,
        email: who.email,
        role,
        csrf: session::random_token(),
        exp: now.timestamp().saturating_add(ttl),
    };
    record(&st, NewEvent::new("ui.signed_in", person.actor(), identity)).await?;
    let sealed = session::seal(&c.kek, SESSION_COOKIE, &person).ok_or(ApiError::Internal)?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, safe_next(&login.next)))
        .cookie(session::removal(LOGIN_COOKIE, c.secure))
        .cookie(session::cookie(SESSION_COOKIE, sealed, ttl, c.secure))
        .finish())
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    c: web::Data<Console>,
    st: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Page {
    let p = c
        .person(&req, st.ctx.clock.now())
        .ok_or_else(|| ConsoleError::Forbidden("you are not signed in".into()))?;
    if !p.csrf_ok(&form.csrf) {
        return Err(ConsoleError::Forbidden(
            "this form is not from your session (CSRF token)".into(),
        ));
    }
    let identity = json!({ "issuer": p.iss, "sub": p.sub, "name": p.name, "email": p.email });
    record(&st, NewEvent::new("ui.signed_out", p.actor(), identity)).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .cookie(session::removal(SESSION_COOKIE, c.secure))
        .body(pages::signed_out().into_string()))
}

/// Appends one console event to the audit trail.
async fn record(st: &AppState, event: NewEvent) -> Result<(), ConsoleError> {
    let ctx = st.ctx.clone();
    let now = ctx.clock.now();
    blocking(move || Ok(ctx.db.write(|conn| audit::append(conn, now, vec![event]))?)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_console_paths_are_places_to_land() {
        for ok in [
            "/ui/",
            "/ui/tickets/github%3Aa%2Fb%231",
            "/ui/grants?state=active",
        ] {
            assert_eq!(safe_next(ok), ok);
        }
        for bad in [
            "https://evil.example.com/",
            "//evil.example.com/ui/",
            "/ui//evil.example.com",
            "/ui/\\evil",
            "/v1/grants",
            "",
        ] {
            assert_eq!(safe_next(bad), "/ui/", "{bad}");
        }
    }
}
