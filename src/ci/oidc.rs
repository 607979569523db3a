//! Checks a CI pipeline's OIDC token (GitHub Actions, GitLab) against its
//! issuer: the signature with a key from the issuer's JWKS (`jwks_file` or
//! `jwks_url`), then `iss`, `aud`, `exp` and `nbf` with 60 s of leeway
//! against warrant's clock. Only RS256 and ES256 are accepted, and the
//! algorithm comes from the key, never from the token alone: `alg: none`
//! and HMAC tokens (say, signed with the issuer's public key as the secret)
//! are refused before any key is touched.
//!
//! Keys are cached per issuer. An unknown `kid` loads the JWKS again, at
//! most once a minute per issuer; a cache older than an hour is refreshed on
//! its next use (and kept if the refresh fails).

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{CiIssuer, Config};
use crate::domain::truncate;

/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: i64 = 60;
/// An unknown `kid` loads the JWKS again at most this often.
const REFETCH_INTERVAL: i64 = 60;
/// A JWKS older than this is loaded again on its next use.
const MAX_AGE: i64 = 3600;
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is not a JWT: {0}")]
    Malformed(String),
    #[error("algorithm `{0}` is not accepted (RS256 or ES256 only)")]
    Algorithm(String),
    #[error("issuer `{0}` is not in [[ci.issuers]]")]
    UnknownIssuer(String),
    #[error("the issuer's JWKS has no usable key `{0}`")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token expired at {0}")]
    Expired(String),
    #[error("the token is not valid before {0}")]
    NotYetValid(String),
    #[error("the token's audience does not include `{0}`")]
    Audience(String),
    #[error("the token has no `{0}` claim")]
    Missing(&'static str),
    /// The issuer's keys could not be loaded at all: try again later.
    #[error("the keys of issuer {0} cannot be loaded")]
    KeysUnavailable(String),
}

/// A token that checked out: which `[[ci.issuers]]` it came from, and its claims.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The `[[ci.issuers]]` name.
    pub issuer: String,
    pub claims: Map<String, Value>,
}

#[derive(Clone)]
struct IssuerKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<IssuerKey>,
    loaded_at: Option<DateTime<Utc>>,
    attempted_at: Option<DateTime<Utc>>,
}

struct Issuer {
    config: CiIssuer,
    cache: tokio::sync::Mutex<KeyCache>,
}

/// The configured CI issuers with their cached keys.
pub struct Verifier {
    issuers: Vec<Issuer>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.config.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn b64url(part: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed("a part is not base64url".into()))
}

fn json_object(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = b64url(part)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

/// The keys of a JWKS document that warrant accepts: RSA keys for RS256
/// and P-256 keys for ES256, meant for signatures. Other keys are skipped;
/// a set with none of these is valid, and verifies nothing.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let mut out = Vec::new();
    for k in keys {
        // A key of a kind this library does not know is skipped, not fatal.
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue;
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push((jwk.common.key_id.clone(), alg, key));
    }
    Ok(out)
}

fn seconds(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    match claims.get(name)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    }
}

fn when(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(crate::domain::rfc3339)
        .unwrap_or_else(|| secs.to_string())
}

/// `aud`, `exp`, `nbf` and `iat` against the issuer and the time.
pub fn check_claims(
    claims: &Map<String, Value>,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<(), TokenError> {
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => return Err(TokenError::Missing("aud")),
    };
    if !aud_ok {
        return Err(TokenError::Audience(audience.to_string()));
    }
    let now = now.timestamp();
    let exp = seconds(claims, "exp").ok_or(TokenError::Missing("exp"))?;
    if now > exp.saturating_add(LEEWAY_SECONDS) {
        return Err(TokenError::Expired(when(exp)));
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = seconds(claims, name) {
            if t > now.saturating_add(LEEWAY_SECONDS) {
                return Err(TokenError::NotYetValid(when(t)));
            }
        }
    }
    Ok(())
}

impl Verifier {
    pub fn new(config: &Config) -> Verifier {
        Verifier {
            issuers: config
                .ci
                .issuers
                .iter()
                .map(|c| Issuer {
                    config: c.clone(),
                    cache: tokio::sync::Mutex::new(KeyCache::default()),
                })
                .collect(),
        }
    }

    /// Verifies a bearer token from a pipeline.
    pub async fn verify(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        token: &str,
    ) -> Result<Verified, TokenError> {
        let token = token.trim();
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 || parts[0].is_empty() || parts[1].is_empty() {
            return Err(TokenError::Malformed(
                "a JWT has three parts separated by dots".into(),
            ));
        }
        let header = json_object(parts[0], "header")?;
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            Some(other) => return Err(TokenError::Algorithm(truncate(other, 20))),
            None => return Err(TokenError::Algorithm("(none given)".into())),
        };
        if parts[2].is_empty() {
            return Err(TokenError::Signature);
        }
        let kid = header.get("kid").and_then(Value::as_str);
        // Unverified, only to pick the issuer whose keys to try.
        let unverified = json_object(parts[1], "payload")?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::Missing("iss"))?;
        let mut last = None;
        for issuer in self.issuers.iter().filter(|i| i.config.issuer == iss) {
            match issuer.verify(http, now, token, alg, kid).await {
                Ok(claims) => {
                    return Ok(Verified {
                        issuer: issuer.config.name.clone(),
                        claims,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TokenError::UnknownIssuer(truncate(iss, 120))))
    }
}

impl Issuer {
    async fn verify(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, TokenError> {
        let key = self.key(http, now, kid, alg).await?;
        let mut validation = Validation::new(key.alg);
        // Times are checked below against warrant's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    TokenError::Algorithm(format!("{alg:?}"))
                }
                _ => TokenError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(TokenError::UnknownIssuer(truncate(
                claims.get("iss").and_then(Value::as_str).unwrap_or(""),
                120,
            )));
        }
        check_claims(&claims, &self.config.audience, now)?;
        Ok(claims)
    }

    /// The key for `kid` (or the only key of the algorithm, when the token
    /// names none), loading the JWKS when it is missing, stale or lacks it.
    async fn key(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<IssuerKey, TokenError> {
        let mut cache = self.cache.lock().await;
        let may_attempt = |c: &KeyCache| {
            c.attempted_at
                .is_none_or(|t| (now - t).num_seconds().abs() >= REFETCH_INTERVAL)
        };
        let stale = cache
            .loaded_at
            .is_none_or(|t| (now - t).num_seconds().abs() >= MAX_AGE);
        let mut load_error = None;
        if stale && may_attempt(&cache) {
            load_error = self.reload(http, now, &mut cache).await.err();
        }
        let find = |c: &KeyCache| -> Option<IssuerKey> {
            match kid {
                Some(kid) => c
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .cloned(),
                None => {
                    let mut same = c.keys.iter().filter(|k| k.alg == alg);
                    match (same.next(), same.next()) {
                        (Some(k), None) => Some(k.clone()),
                        _ => None,
                    }
                }
            }
        };
        if let Some(k) = find(&cache) {
            return Ok(k);
        }
        if may_attempt(&cache) {
            load_error = self.reload(http, now, &mut cache).await.err();
            if let Some(k) = find(&cache) {
                return Ok(k);
            }
        }
        if cache.loaded_at.is_none() {
            if let Some(e) = load_error {
                tracing::warn!(issuer = %self.config.name, error = %e, "CI issuer keys unavailable");
            }
            return Err(TokenError::KeysUnavailable(self.config.name.clone()));
        }
        Err(TokenError::UnknownKey(truncate(
            kid.unwrap_or("(no kid, several keys)"),
            80,
        )))
    }

    async fn reload(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        cache: &mut KeyCache,
    ) -> Result<(), String> {
        cache.attempted_at = Some(now);
        let result = match (&self.config.jwks_file, &self.config.jwks_url) {
            (Some(path), _) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            (None, Some(url)) => fetch(http, url).await,
            (None, None) => Err("neither jwks_file nor jwks_url is set".into()),
        }
        .and_then(|bytes| parse_jwks(&bytes));
        match result {
            Ok(keys) => {
                if keys.is_empty() {
                    tracing::warn!(issuer = %self.config.name, "the JWKS has no RS256 or ES256 signing key");
                }
                cache.keys = keys
                    .into_iter()
                    .map(|(kid, alg, key)| IssuerKey { kid, alg, key })
                    .collect();
                cache.loaded_at = Some(now);
                tracing::info!(issuer = %self.config.name, keys = cache.keys.len(), "CI issuer keys loaded");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.name, error = %e, "cannot load CI issuer keys");
                Err(e)
            }
        }
    }
}

pub(crate) async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let resp = http
        .get(url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: status {}", resp.status()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("GET {url}: larger than {MAX_JWKS_BYTES} bytes"));
    }
    let bytes = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("GET {url}: larger than {MAX_JWKS_BYTES} bytes"));
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jsonwebtoken::{EncodingKey, Header};
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use serde_json::json;

    const ISS: &str = "https://token.actions.githubusercontent.com";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    struct EcKey {
        secret: p256::SecretKey,
        kid: &'static str,
    }

    impl EcKey {
        fn new(kid: &'static str) -> Self {
            EcKey {
                secret: p256::SecretKey::random(&mut rand::rngs::OsRng),
                kid,
            }
        }
        fn jwk(&self) -> Value {
            let p = self.secret.public_key().to_encoded_point(false);
            json!({ "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                    "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap()) })
        }
        fn sign(&self, claims: &Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(self.kid.into());
            let der = self.secret.to_pkcs8_der().unwrap();
            jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap()
        }
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "aud": "warrant", "sub": "repo:acme/app:environment:production",
            "repository": "acme/app", "run_id": "1", "run_attempt": "1",
            "iat": now().timestamp(), "nbf": now().timestamp(), "exp": now().timestamp() + 300,
        })
    }

    fn write_jwks(path: &std::path::Path, keys: &[Value]) {
        std::fs::write(path, json!({ "keys": keys }).to_string()).unwrap();
    }

    fn verifier(path: &std::path::Path) -> Verifier {
        let text = format!(
            "[[ci.issuers]]\nname = \"gh\"\nissuer = \"{ISS}\"\naudience = \"warrant\"\njwks_file = \"{}\"\n",
            path.display()
        );
        Verifier::new(&Config::from_toml(&text, &|_| None).unwrap())
    }

    #[tokio::test]
    async fn es256_and_rs256_verify_and_claims_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let ec = EcKey::new("ec-1");
        let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let rsa_jwk = {
            use rsa::traits::PublicKeyParts;
            let pk = rsa_key.to_public_key();
            json!({ "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
                    "n": b64(&pk.n().to_bytes_be()), "e": b64(&pk.e().to_bytes_be()) })
        };
        write_jwks(&path, &[ec.jwk(), rsa_jwk]);
        let v = verifier(&path);
        let http = reqwest::Client::new();

        let ok = v.verify(&http, now(), &ec.sign(&claims())).await.unwrap();
        assert_eq!(ok.issuer, "gh");
        assert_eq!(ok.claims["repository"], "acme/app");

        let rsa_der = {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            rsa_key.to_pkcs1_der().unwrap()
        };
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        let rs = jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_rsa_der(rsa_der.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&http, now(), &rs).await.is_ok());

        // RS256 header on the EC key's kid: the key decides the algorithm.
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("ec-1".into());
        let confused = jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_rsa_der(rsa_der.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&http, now(), &confused).await.is_err());

        // HS256 signed with the public key as the HMAC secret.
        let public_pem = ec
            .secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("ec-1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            v.verify(&http, now(), &hs).await,
            Err(TokenError::Algorithm(a)) if a == "HS256"
        ));

        // Leeway: 59 s past exp passes, 61 s does not.
        let mut c = claims();
        c["exp"] = json!(now().timestamp() - 59);
        assert!(v.verify(&http, now(), &ec.sign(&c)).await.is_ok());
        c["exp"] = json!(now().timestamp() - 61);
        assert!(matches!(
            v.verify(&http, now(), &ec.sign(&c)).await,
            Err(TokenError::Expired(_))
        ));
        let mut c = claims();
        c["nbf"] = json!(now().timestamp() + 61);
        assert!(matches!(
            v.verify(&http, now(), &ec.sign(&c)).await,
            Err(TokenError::NotYetValid(_))
        ));
        let mut c = claims();
        c["aud"] = json!(["sts.amazonaws.com", "warrant"]);
        assert!(v.verify(&http, now(), &ec.sign(&c)).await.is_ok());
        c["aud"] = json!("sts.amazonaws.com");
        assert!(matches!(
            v.verify(&http, now(), &ec.sign(&c)).await,
            Err(TokenError::Audience(_))
        ));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            v.verify(&http, now(), &ec.sign(&c)).await,
            Err(TokenError::Missing("exp"))
        ));
        let mut c = claims();
        c["iss"] = json!("https://gitlab.example.com");
        assert!(matches!(
            v.verify(&http, now(), &ec.sign(&c)).await,
            Err(TokenError::UnknownIssuer(_))
        ));
        assert!(matches!(
            v.verify(&http, now(), "a.b").await,
            Err(TokenError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn unknown_kid_reloads_at_most_once_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let old = EcKey::new("old");
        let new = EcKey::new("new");
        write_jwks(&path, &[old.jwk()]);
        let v = verifier(&path);
        let http = reqwest::Client::new();
        assert!(v.verify(&http, now(), &old.sign(&claims())).await.is_ok());

        // The issuer rotates; within the minute the file is not read again.
        write_jwks(&path, &[old.jwk(), new.jwk()]);
        let t = now() + chrono::Duration::seconds(30);
        assert!(matches!(
            v.verify(&http, t, &new.sign(&claims())).await,
            Err(TokenError::UnknownKey(k)) if k == "new"
        ));
        let t = now() + chrono::Duration::seconds(61);
        assert!(v.verify(&http, t, &new.sign(&claims())).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_without_kid_uses_the_only_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let k = EcKey::new("only");
        write_jwks(&path, &[k.jwk()]);
        let v = verifier(&path);
        let der = k.secret.to_pkcs8_der().unwrap();
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(),
            &EncodingKey::from_ec_der(der.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&reqwest::Client::new(), now(), &t).await.is_ok());
    }

    #[tokio::test]
    async fn an_empty_key_set_verifies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        write_jwks(&path, &[]);
        let v = verifier(&path);
        let k = EcKey::new("k");
        assert!(matches!(
            v.verify(&reqwest::Client::new(), now(), &k.sign(&claims()))
                .await,
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn missing_keys_are_unavailable_not_unauthorized() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(&dir.path().join("absent.json"));
        let k = EcKey::new("k");
        assert!(matches!(
            v.verify(&reqwest::Client::new(), now(), &k.sign(&claims()))
                .await,
            Err(TokenError::KeysUnavailable(_))
        ));
    }

    #[test]
    fn jwks_skips_keys_it_does_not_take() {
        let ec = EcKey::new("ec");
        let doc = json!({ "keys": [
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            { "kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA" },
            { "kty": "weird" },
            ec.jwk(),
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0.as_deref(), Some("ec"));
        assert!(
            parse_jwks(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"not json").is_err());
    }
}
