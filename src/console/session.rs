//! The console's cookies: the session of a signed-in person and the
//! short-lived sign-in state kept between the redirect to the provider and
//! its callback. Both are JSON sealed with XChaCha20-Poly1305 under
//! `[ui] session_key` (`crypto::sealed`), which both hides and
//! authenticates them; each kind is sealed for its own name, so one cannot
//! be passed off as the other. Sessions are not stored server-side: a
//! cookie is good until the expiry sealed inside it.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::HttpRequest;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::crypto::sealed::{self, Kek};

pub const SESSION_COOKIE: &str = "warrant_session";
pub const LOGIN_COOKIE: &str = "warrant_login";
/// How long a person has to finish signing in at the provider.
pub const LOGIN_TTL_SECONDS: i64 = 600;

/// What a person may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UiRole {
    Admin,
    Auditor,
}

impl UiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UiRole::Admin => "admin",
            UiRole::Auditor => "auditor",
        }
    }
}

/// A signed-in person, as the session cookie holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    pub iss: String,
    pub sub: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: UiRole,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// Unix seconds after which the session is over.
    pub exp: i64,
}

impl Person {
    /// How this person is named to people: name, else email, else subject.
    pub fn display(&self) -> &str {
        self.name
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.sub)
    }

    /// How this person appears in the audit trail: the issuer and subject
    /// that identify them, and the name and email that a reader knows.
    pub fn actor(&self) -> String {
        let mut who = String::new();
        if let Some(n) = &self.name {
            who.push_str(n);
        }
        if let Some(e) = &self.email {
            if !who.is_empty() {
                who.push(' ');
            }
            who.push('<');
            who.push_str(e);
            who.push('>');
        }
        if who.is_empty() {
            format!("ui:{}#{}", self.iss, self.sub)
        } else {
            format!("ui:{}#{} ({who})", self.iss, self.sub)
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == UiRole::Admin
    }

    /// Whether a form's token is this session's, in constant time.
    pub fn csrf_ok(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        presented.len() == self.csrf.len()
            && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// What the callback needs to finish a sign-in it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginState {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// The console page to land on afterwards.
    pub next: String,
    pub exp: i64,
}

/// A fresh random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Seals `value` for the cookie `name`.
pub fn seal<T: Serialize>(kek: &Kek, name: &str, value: &T) -> Option<String> {
    let json = serde_json::to_vec(value).ok()?;
    sealed::seal(kek, name, &json).ok()
}

/// Opens the cookie `name` of this request, if it is there and was sealed
/// by this key for this name.
pub fn open<T: DeserializeOwned>(kek: &Kek, req: &HttpRequest, name: &str) -> Option<T> {
    let cookie = req.cookie(name)?;
    let plain = sealed::open(kek, name, cookie.value()).ok()?;
    serde_json::from_slice(plain.expose_secret()).ok()
}

/// The session of this request, if one is there and not yet over.
pub fn person(kek: &Kek, req: &HttpRequest, now: DateTime<Utc>) -> Option<Person> {
    open::<Person>(kek, req, SESSION_COOKIE).filter(|p| now.timestamp() < p.exp)
}

/// A console cookie: HttpOnly, SameSite=Lax, for `/ui` only, and Secure
/// unless warrant listens on loopback (plain-HTTP development).
pub fn cookie(name: &str, value: String, max_age: i64, secure: bool) -> Cookie<'static> {
    Cookie::build(name.to_string(), value)
        .path("/ui")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(max_age.max(0)))
        .finish()
}

/// A cookie that removes `name` from the browser.
pub fn removal(name: &str, secure: bool) -> Cookie<'static> {
    let mut c = cookie(name, String::new(), 0, secure);
    c.make_removal();
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn kek() -> Kek {
        let key = secrecy::SecretString::from("Y29uc29sZS1zZXNzaW9uLWtleS1mb3ItdGVzdHMhISE=");
        Kek::from_secret(&key).unwrap()
    }

    fn person(exp: i64) -> Person {
        Person {
            iss: "https://login.example.com".into(),
            sub: "ada".into(),
            name: Some("Ada Admin".into()),
            email: Some("ada@example.com".into()),
            role: UiRole::Admin,
            csrf: random_token(),
            exp,
        }
    }

    fn request(name: &str, value: &str) -> HttpRequest {
        actix_web::test::TestRequest::default()
            .cookie(Cookie::new(name.to_string(), value.to_string()))
            .to_http_request()
    }

    #[test]
    fn a_session_opens_only_as_itself_and_until_it_expires() {
        let k = kek();
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        let p = person(now.timestamp() + 60);
        let sealed = seal(&k, SESSION_COOKIE, &p).unwrap();
        assert!(!sealed.contains("ada@example.com"));
        let got = super::person(&k, &request(SESSION_COOKIE, &sealed), now).unwrap();
        assert_eq!(got.sub, "ada");
        assert!(got.csrf_ok(&p.csrf));
        assert!(!got.csrf_ok("forged"));
        assert!(!got.csrf_ok(""));
        // Over, moved to the sign-in cookie, or sealed by another key: no session.
        assert!(super::person(
            &k,
            &request(SESSION_COOKIE, &sealed),
            now + chrono::Duration::seconds(60)
        )
        .is_none());
        let as_login = seal(&k, LOGIN_COOKIE, &p).unwrap();
        assert!(super::person(&k, &request(SESSION_COOKIE, &as_login), now).is_none());
        let other = Kek::from_secret(&secrecy::SecretString::from(
            "b3RoZXItc2Vzc2lvbi1rZXktZm9yLXRlc3RzISEhISE=",
        ))
        .unwrap();
        assert!(super::person(&other, &request(SESSION_COOKIE, &sealed), now).is_none());
        assert_eq!(
            p.actor(),
            "ui:https://login.example.com#ada (Ada Admin <ada@example.com>)"
        );
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_off_loopback() {
        let c = cookie(SESSION_COOKIE, "v".into(), 60, true).to_string();
        for attr in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/ui",
            "Max-Age=60",
        ] {
            assert!(c.contains(attr), "{attr} in {c}");
        }
        assert!(!cookie(SESSION_COOKIE, "v".into(), 60, false)
            .to_string()
            .contains("Secure"));
    }
}
