//! Signing people in through the company's OpenID Connect provider
//! (`[ui.oidc]`): the authorization code flow with PKCE (S256), `state`
//! and `nonce`. The provider's endpoints come from its discovery document;
//! the ID token is checked against its JWKS (the CI verifier's key parsing
//! and claim checks, `ci::oidc`): the signature with a key the JWKS names
//! (RS256 or ES256, the algorithm taken from the key), then `iss` against
//! the configured issuer, `aud` (and `azp`) against our client id, `exp`,
//! and the `nonce` this sign-in sent.
//!
//! The discovery document and keys are cached; an unknown `kid` loads
//! them again at most once a minute, and a cache older than an hour is
//! refreshed on its next use.

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::ci::oidc::{check_claims, fetch, parse_jwks};
use crate::config::UiOidc;
use crate::domain::truncate;

const REFETCH_INTERVAL: i64 = 60;
const MAX_AGE: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The provider cannot be reached or answers nonsense: try again later.
    #[error("the sign-in provider is unavailable: {0}")]
    Unavailable(String),
    /// What came back does not check out.
    #[error("the sign-in did not check out: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Default)]
struct Cache {
    discovery: Option<Discovery>,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    loaded_at: Option<DateTime<Utc>>,
    attempted_at: Option<DateTime<Utc>>,
}

/// The provider, with its discovery document and keys once loaded.
pub struct Client {
    config: UiOidc,
    cache: tokio::sync::Mutex<Cache>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

/// A verified ID token's claims.
#[derive(Debug, Clone)]
pub struct Identity {
    pub iss: String,
    pub sub: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub claims: Map<String, Value>,
}

/// The PKCE challenge of a verifier (S256).
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl Client {
    pub fn new(config: UiOidc) -> Client {
        Client {
            config,
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    async fn reload(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        cache: &mut Cache,
    ) -> Result<(), SignInError> {
        cache.attempted_at = Some(now);
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let bytes = fetch(http, &url).await.map_err(SignInError::Unavailable)?;
        let d: Discovery = serde_json::from_slice(&bytes).map_err(|e| {
            SignInError::Unavailable(format!("the discovery document is not readable: {e}"))
        })?;
        // A document naming another issuer would let that issuer's tokens in.
        if !same_issuer(&d.issuer, &self.config.issuer) {
            return Err(SignInError::Unavailable(format!(
                "the discovery document names issuer `{}`, not `{}`",
                truncate(&d.issuer, 120),
                self.config.issuer
            )));
        }
        let jwks = fetch(http, &d.jwks_uri)
            .await
            .map_err(SignInError::Unavailable)?;
        let keys = parse_jwks(&jwks)
            .map_err(|e| SignInError::Unavailable(format!("the JWKS is not readable: {e}")))?;
        cache.discovery = Some(d);
        cache.keys = keys;
        cache.loaded_at = Some(now);
        Ok(())
    }

    async fn discovery(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
    ) -> Result<Discovery, SignInError> {
        let mut cache = self.cache.lock().await;
        let stale = cache
            .loaded_at
            .is_none_or(|t| (now - t).num_seconds().abs() >= MAX_AGE);
        if stale {
            if let Err(e) = self.reload(http, now, &mut cache).await {
                // A stale document still serves while the provider is down.
                if cache.discovery.is_none() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "cannot refresh the sign-in provider's discovery document");
            }
        }
        cache
            .discovery
            .clone()
            .ok_or_else(|| SignInError::Unavailable("no discovery document".into()))
    }

    /// Where to send the browser to sign in.
    pub async fn authorize_url(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, SignInError> {
        let d = self.discovery(http, now).await?;
        let mut url = url::Url::parse(&d.authorization_endpoint).map_err(|_| {
            SignInError::Unavailable("the authorization endpoint is not a URL".into())
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &challenge(verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Trades the code for tokens and returns the verified ID token's identity.
    pub async fn finish(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, SignInError> {
        let d = self.discovery(http, now).await?;
        // RFC 6749 2.3.1: the credentials are form-encoded before Basic.
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let resp = http
            .post(&d.token_endpoint)
            .basic_auth(
                enc(&self.config.client_id),
                Some(enc(self
                    .config
                    .client_secret
                    .as_ref()
                    .map(|s| s.expose_secret())
                    .unwrap_or_default())),
            )
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.config.redirect_url.as_str()),
                ("code_verifier", verifier),
            ])
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| SignInError::Unavailable(format!("token endpoint: {e}")))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|_| {
            SignInError::Invalid(format!("the token endpoint answered {status} without JSON"))
        })?;
        if !status.is_success() {
            let err = body.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(SignInError::Invalid(format!(
                "the token endpoint refused the code ({status}: {})",
                truncate(err, 80)
            )));
        }
        let token = body
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| SignInError::Invalid("the token answer has no id_token".into()))?;
        self.verify(http, now, token, nonce).await
    }

    async fn key(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Algorithm, DecodingKey), SignInError> {
        let mut cache = self.cache.lock().await;
        let find = |c: &Cache| -> Option<(Algorithm, DecodingKey)> {
            let mut fit = c
                .keys
                .iter()
                .filter(|(k, a, _)| *a == alg && kid.is_none_or(|kid| k.as_deref() == Some(kid)));
            match (fit.next(), fit.next(), kid) {
                // Without a `kid`, only a key that is the only one fits.
                (Some((_, a, k)), None, _) | (Some((_, a, k)), Some(_), Some(_)) => {
                    Some((*a, k.clone()))
                }
                _ => None,
            }
        };
        if let Some(k) = find(&cache) {
            return Ok(k);
        }
        let may_attempt = cache
            .attempted_at
            .is_none_or(|t| (now - t).num_seconds().abs() >= REFETCH_INTERVAL);
        if may_attempt {
            self.reload(http, now, &mut cache).await?;
            if let Some(k) = find(&cache) {
                return Ok(k);
            }
        }
        Err(SignInError::Invalid(format!(
            "the provider's JWKS has no {alg:?} key `{}`",
            truncate(kid.unwrap_or("(none named)"), 80)
        )))
    }

    async fn verify(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        token: &str,
        nonce: &str,
    ) -> Result<Identity, SignInError> {
        let (alg, kid) = header_of(token)?;
        let (alg, key) = self.key(http, now, kid.as_deref(), alg).await?;
        identity_of(
            token,
            alg,
            &key,
            &self.config.issuer,
            &self.config.client_id,
            nonce,
            now,
        )
    }
}

/// The ID token's algorithm and key id. Only asymmetric algorithms: an
/// HMAC token "signed" with a public key, or `none`, is refused before any
/// key is touched.
fn header_of(token: &str) -> Result<(Algorithm, Option<String>), SignInError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| SignInError::Invalid(format!("the ID token is not a JWT: {e}")))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(SignInError::Invalid(format!(
            "ID token algorithm {:?} is not accepted (RS256 or ES256)",
            header.alg
        )));
    }
    Ok((header.alg, header.kid))
}

/// The ID token checked with the issuer's key: signature, `iss`, `aud`
/// (and `azp`), `exp`, `nbf`/`iat`, `nonce`, `sub`.
fn identity_of(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: DateTime<Utc>,
) -> Result<Identity, SignInError> {
    let mut validation = Validation::new(alg);
    // Times are checked against warrant's clock below, with the CI
    // verifier's leeway.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
        .map_err(|e| SignInError::Invalid(format!("the ID token does not verify: {e}")))?;
    let claims = data.claims;
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if !same_issuer(iss, issuer) {
        return Err(SignInError::Invalid(format!(
            "the ID token's issuer `{}` is not `{}`",
            truncate(iss, 120),
            issuer
        )));
    }
    check_claims(&claims, client_id, now)
        .map_err(|e| SignInError::Invalid(format!("the ID token: {e}")))?;
    // With several audiences the token must have been issued to us.
    if let Some(Value::Array(auds)) = claims.get("aud") {
        if auds.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(client_id) {
            return Err(SignInError::Invalid(
                "the ID token has several audiences and `azp` is not this client".into(),
            ));
        }
    }
    let got = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if got.is_empty() || got != nonce {
        return Err(SignInError::Invalid(
            "the ID token's nonce is not the one this sign-in sent".into(),
        ));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| SignInError::Invalid("the ID token has no `sub`".into()))?
        .to_string();
    let text = |n: &str| {
        claims
            .get(n)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| truncate(s, 200))
    };
    Ok(Identity {
        iss: iss.to_string(),
        sub: truncate(&sub, 255),
        name: text("name"),
        email: text("email"),
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jsonwebtoken::{EncodingKey, Header};
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    use serde_json::json;

    const ISS: &str = "https://login.example.com";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    struct Key(p256::SecretKey);

    impl Key {
        fn new() -> Key {
            Key(p256::SecretKey::random(&mut rand::rngs::OsRng))
        }
        fn decoding(&self) -> DecodingKey {
            let p = self.0.public_key().to_encoded_point(false);
            let jwk = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
                "alg": "ES256", "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap()) }] });
            let mut keys = parse_jwks(jwk.to_string().as_bytes()).unwrap();
            keys.remove(0).2
        }
        fn sign(&self, claims: &Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("k1".into());
            let der = self.0.to_pkcs8_der().unwrap();
            jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap()
        }
    }

    fn claims() -> Value {
        json!({ "iss": ISS, "aud": "warrant-console", "sub": "ada", "nonce": "n-1",
                "name": "Ada", "email": "ada@example.com", "groups": ["warrant-admins"],
                "iat": now().timestamp(), "exp": now().timestamp() + 300 })
    }

    fn check(key: &Key, token: &str) -> Result<Identity, SignInError> {
        let (alg, kid) = header_of(token)?;
        assert_eq!(kid.as_deref(), Some("k1"));
        identity_of(
            token,
            alg,
            &key.decoding(),
            ISS,
            "warrant-console",
            "n-1",
            now(),
        )
    }

    #[test]
    fn an_id_token_is_checked_in_full() {
        let key = Key::new();
        let ok = check(&key, &key.sign(&claims())).unwrap();
        assert_eq!(
            (ok.sub.as_str(), ok.email.as_deref()),
            ("ada", Some("ada@example.com"))
        );
        assert_eq!(ok.claims["groups"][0], "warrant-admins");

        let changed = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            key.sign(&c)
        };
        let refused = [
            ("nonce", changed("nonce", json!("n-2"))),
            ("nonce", {
                let mut c = claims();
                c.as_object_mut().unwrap().remove("nonce");
                key.sign(&c)
            }),
            ("audience", changed("aud", json!("another-client"))),
            ("azp", changed("aud", json!(["warrant-console", "other"]))),
            ("issuer", changed("iss", json!("https://evil.example.com"))),
            ("expired", changed("exp", json!(now().timestamp() - 120))),
            ("sub", changed("sub", json!(""))),
            ("signature", Key::new().sign(&claims())),
        ];
        for (what, token) in refused {
            let err = check(&key, &token).unwrap_err().to_string();
            assert!(
                err.contains(what) || (what == "signature" && err.contains("does not verify")),
                "{what}: {err}"
            );
        }
        // Several audiences are fine when the token was issued to us.
        let mut c = claims();
        c["aud"] = json!(["warrant-console", "other"]);
        c["azp"] = json!("warrant-console");
        assert!(check(&key, &key.sign(&c)).is_ok());
    }

    #[test]
    fn hmac_and_none_tokens_are_refused_before_any_key() {
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"the public key as a secret"),
        )
        .unwrap();
        assert!(header_of(&hs).unwrap_err().to_string().contains("HS256"));
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims().to_string().as_bytes())
        );
        assert!(header_of(&none).is_err());
    }

    #[test]
    fn the_pkce_challenge_is_s256() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
