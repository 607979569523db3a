//! The `token` provider: a grant's credential is a short-lived JWT that
//! warrant signs (`sub` = the grant's subject, `resource`, `ticket`,
//! `grant_id`, `iat`, `exp` = the grant's expiry, `iss`, and the key's `kid`
//! in the header). Nothing is applied at a provider: a credential is good
//! while its signature verifies, it has not expired, and its grant is live,
//! which `POST /v1/introspect` answers (RFC 7662).
//!
//! Each token provider signs with its `key_file` (P-256 → ES256, Ed25519 →
//! EdDSA), or with a P-256 key that warrant generates at first start and
//! keeps in `signing_keys`: created under a lock (PostgreSQL advisory lock,
//! SQLite's single writer) only if no current key exists, so replicas agree
//! on one. With `rotate_after` a new key takes over when the current one is
//! that old; the old one stays published at `GET /.well-known/jwks.json`
//! until every credential it signed has expired (`retired_at`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use crate::config::{invalid, ConfigDuration, ConfigError, ProviderSection, TokenProvider};
use crate::config::{Config, ProviderConfig};
use crate::crypto::keys::SigningKey;
use crate::db::grants::GrantRow;
use crate::db::keys::{self, KeyRow};
use crate::db::{Conn, Db, StoreError};
use crate::domain::TargetRule;
use crate::domain::{from_micros, to_micros, GrantState};
use futures_util::future::BoxFuture;

use super::{Call, Deps, Provider, ProviderError};

/// A token names its target in a signed credential; the contract's syntax
/// is all it needs.
impl TargetRule for TokenProvider {
    fn check_target(&self, _target: &str) -> Result<(), String> {
        Ok(())
    }
}

impl ProviderSection for TokenProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        None
    }

    /// Reads `key_file` and `previous_key_files`, each checked to be a
    /// signing key warrant can use.
    fn load_secrets(
        &mut self,
        at: &str,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let read = |key: String, path: &Path| -> Result<SecretString, ConfigError> {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
            SigningKey::from_pem(&pem)
                .map_err(|m| invalid(&key, format!("{}: {m}", path.display())))?;
            Ok(SecretString::from(pem))
        };
        if let Some(path) = &self.key_file {
            self.key = Some(read(format!("{at}.key_file"), path)?);
        }
        let mut previous = Vec::new();
        for (i, path) in self.previous_key_files.iter().enumerate() {
            previous.push(read(format!("{at}.previous_key_files[{i}]"), path)?);
        }
        self.previous_keys = previous;
        Ok(())
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.issuer.trim().is_empty() {
            return Err(invalid(format!("{at}.issuer"), "is empty"));
        }
        Ok(())
    }

    fn build(&self, _name: &str, _deps: &Deps) -> Box<dyn Provider> {
        Box::new(Token)
    }
}

/// The `token` provider as a `Provider`: a grant is the credential itself,
/// so there is nothing to apply or remove, and introspection answers from
/// the grant's state (see `KeyRing`).
pub struct Token;

impl Provider for Token {
    fn carries_end(&self) -> bool {
        true
    }

    fn apply<'a>(&'a self, _c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, _c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
}

/// How long the generated keys are cached before the table is read again.
const RELOAD_SECONDS: i64 = 60;

/// The generated keys as last read from the table.
#[derive(Debug, Clone)]
struct Generated {
    current: Arc<SigningKey>,
    current_created_at: DateTime<Utc>,
    /// The current key and every earlier one not yet retired.
    all: Vec<Arc<SigningKey>>,
    loaded_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct ProviderKeys {
    issuer: String,
    /// `key_file`; `None` signs with the generated key.
    file: Option<Arc<SigningKey>>,
    previous: Vec<Arc<SigningKey>>,
}

/// A key, and the token providers that sign with it.
type KeyOwners<'a> = (Arc<SigningKey>, Vec<&'a str>);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot sign the credential: {0}")]
    Sign(String),
}

/// Every token provider's keys, and the generated key cached from the database.
#[derive(Debug)]
pub struct KeyRing {
    providers: BTreeMap<String, ProviderKeys>,
    rotate_after: Option<Duration>,
    /// How long a rotated-out key stays published: the longest a
    /// credential can live, plus leeway.
    grace: Duration,
    generated: Mutex<Option<Generated>>,
}

impl KeyRing {
    pub fn new(config: &Config) -> Result<KeyRing, String> {
        let mut providers = BTreeMap::new();
        let mut rotate_after: Option<Duration> = None;
        for (name, p) in &config.providers {
            let ProviderConfig::Token(t) = p else {
                continue;
            };
            let parse = |s: &SecretString, what: &str| {
                SigningKey::from_pem(s.expose_secret())
                    .map(Arc::new)
                    .map_err(|e| format!("providers.{name}.{what}: {e}"))
            };
            let file = t.key.as_ref().map(|s| parse(s, "key_file")).transpose()?;
            let previous = t
                .previous_keys
                .iter()
                .map(|s| parse(s, "previous_key_files"))
                .collect::<Result<Vec<_>, _>>()?;
            if file.is_none() {
                if let Some(d) = t.rotate_after {
                    rotate_after = Some(rotate_after.map_or(d.0, |r| r.min(d.0)));
                }
            }
            providers.insert(
                name.clone(),
                ProviderKeys {
                    issuer: t.issuer.clone(),
                    file,
                    previous,
                },
            );
        }
        let longest = config
            .ci
            .trust
            .iter()
            .map(|t| t.max_duration.0)
            .max()
            .unwrap_or(Duration::hours(1));
        Ok(KeyRing {
            providers,
            rotate_after,
            grace: longest + Duration::minutes(5),
            generated: Mutex::new(None),
        })
    }

    fn needs_generated(&self) -> bool {
        self.providers.values().any(|p| p.file.is_none())
    }

    /// Makes sure the generated key exists (at start, so replicas agree early).
    pub fn prepare(&self, db: &Db, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.generated(db, now, false).map(|_| ())
    }

    /// The generated keys, read again when the cache is a minute old, a
    /// rotation is due, or `force` (an unknown `kid`) asks for it.
    fn generated(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<Option<Generated>, StoreError> {
        if !self.needs_generated() {
            return Ok(None);
        }
        let mut cache = self.generated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = cache.as_ref() {
            let age = (now - g.loaded_at).num_seconds().abs();
            let rotation_due = self
                .rotate_after
                .is_some_and(|d| g.current_created_at + d <= now);
            let fresh = age < RELOAD_SECONDS && !rotation_due && !(force && age >= 1);
            if fresh {
                return Ok(Some(g.clone()));
            }
        }
        let rows = db.write(|conn| ensure_key(conn, now, self.rotate_after, self.grace))?;
        let mut all = Vec::new();
        let mut current = None;
        for row in &rows {
            match SigningKey::from_pem(&row.private_pem) {
                Ok(k) => {
                    let k = Arc::new(k.with_kid(&row.kid));
                    if current.is_none() && row.retired_at.is_none() {
                        current = Some((k.clone(), from_micros(row.created_at)));
                    }
                    all.push(k);
                }
                Err(e) => {
                    tracing::error!(kid = %row.kid, error = %e, "a stored signing key is unreadable; skipping it")
                }
            }
        }
        let Some((current, current_created_at)) = current else {
            return Err(StoreError::Corrupt(
                "no usable current key in signing_keys".into(),
            ));
        };
        let g = Generated {
            current,
            current_created_at,
            all,
            loaded_at: now,
        };
        *cache = Some(g.clone());
        Ok(Some(g))
    }

    /// `GET /.well-known/jwks.json`: every key a valid credential may carry.
    pub fn jwks(&self, db: &Db, now: DateTime<Utc>) -> Result<Value, StoreError> {
        let mut keys: Vec<Value> = Vec::new();
        let mut push = |k: &SigningKey| {
            if !keys.iter().any(|j| j["kid"] == json!(k.kid)) {
                keys.push(k.jwk.clone());
            }
        };
        for p in self.providers.values() {
            p.file.iter().chain(p.previous.iter()).for_each(|k| push(k));
        }
        if let Some(g) = self.generated(db, now, false)? {
            g.all.iter().for_each(|k| push(k));
        }
        Ok(json!({ "keys": keys }))
    }

    /// The credential for a grant, if its provider is a token provider.
    pub fn issue(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        grant: &GrantRow,
    ) -> Result<Option<String>, CredentialError> {
        let provider = grant.resource.split('/').next().unwrap_or_default();
        let Some(p) = self.providers.get(provider) else {
            return Ok(None);
        };
        let key = match &p.file {
            Some(k) => k.clone(),
            None => match self.generated(db, now, false)? {
                Some(g) => g.current,
                None => return Err(CredentialError::Sign("no signing key".into())),
            },
        };
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        let claims = json!({
            "iss": p.issuer,
            "sub": grant.subject,
            "resource": grant.resource,
            "ticket": grant.ticket,
            "grant_id": grant.id,
            "iat": now.timestamp(),
            "exp": from_micros(grant.expires_at).timestamp(),
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map(Some)
            .map_err(|e| CredentialError::Sign(e.to_string()))
    }

    /// The key with this `kid`, and the token providers that sign with it.
    fn find(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        kid: &str,
    ) -> Result<Option<KeyOwners<'_>>, StoreError> {
        let mut owners = Vec::new();
        let mut found = None;
        for (name, p) in &self.providers {
            if let Some(k) = p
                .file
                .iter()
                .chain(p.previous.iter())
                .find(|k| k.kid == kid)
            {
                owners.push(name.as_str());
                found = Some(k.clone());
            }
        }
        if found.is_some() {
            return Ok(found.map(|k| (k, owners)));
        }
        let mut g = self.generated(db, now, false)?;
        if g.as_ref()
            .is_some_and(|g| !g.all.iter().any(|k| k.kid == kid))
        {
            // Another replica may have rotated since this one last looked.
            g = self.generated(db, now, true)?;
        }
        let Some(key) = g.and_then(|g| g.all.iter().find(|k| k.kid == kid).cloned()) else {
            return Ok(None);
        };
        let owners = self
            .providers
            .iter()
            .filter(|(_, p)| p.file.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        Ok(Some((key, owners)))
    }

    /// RFC 7662 introspection: `{"active": true, ...}` only while the
    /// credential's signature verifies with a key of its resource's
    /// provider, it is unexpired, and its grant is `granting` or `active`;
    /// otherwise exactly `{"active": false}`.
    pub fn introspect(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        token: &str,
    ) -> Result<Value, StoreError> {
        Ok(self
            .active_claims(db, now, token.trim())?
            .map(Value::Object)
            .unwrap_or_else(|| json!({ "active": false })))
    }

    fn active_claims(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        token: &str,
    ) -> Result<Option<Map<String, Value>>, StoreError> {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(None);
        };
        let Some(kid) = header.kid else {
            return Ok(None);
        };
        let Some((key, owners)) = self.find(db, now, &kid)? else {
            return Ok(None);
        };
        let mut validation = Validation::new(key.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let Ok(data) =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
        else {
            return Ok(None);
        };
        let c = data.claims;
        let text = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_string);
        let (Some(sub), Some(resource), Some(ticket), Some(grant_id), Some(iss)) = (
            text("sub"),
            text("resource"),
            text("ticket"),
            text("grant_id"),
            text("iss"),
        ) else {
            return Ok(None);
        };
        let Some(exp) = c.get("exp").and_then(Value::as_i64) else {
            return Ok(None);
        };
        if now.timestamp() >= exp {
            return Ok(None);
        }
        let provider = resource.split('/').next().unwrap_or_default();
        if !owners.contains(&provider)
            || self.providers.get(provider).map(|p| p.issuer.as_str()) != Some(iss.as_str())
        {
            return Ok(None);
        }
        let Some(g) = db.read(|conn| crate::db::grants::get(conn, &grant_id))? else {
            return Ok(None);
        };
        let live = matches!(g.state(), GrantState::Active | GrantState::Granting);
        if !live || g.subject != sub || g.resource != resource || g.ticket != ticket {
            return Ok(None);
        }
        let mut out = Map::new();
        out.insert("active".into(), json!(true));
        for name in [
            "sub", "exp", "iat", "iss", "grant_id", "resource", "ticket", "jti",
        ] {
            if let Some(v) = c.get(name) {
                out.insert(name.into(), v.clone());
            }
        }
        out.insert("token_type".into(), json!("Bearer"));
        Ok(Some(out))
    }
}

/// Inside one write transaction: makes a key if there is no current one (or
/// the current one is due for rotation), retires the one it replaces, and
/// returns every key not yet retired, newest first.
fn ensure_key(
    conn: &mut Conn<'_>,
    now: DateTime<Utc>,
    rotate_after: Option<Duration>,
    grace: Duration,
) -> Result<Vec<KeyRow>, StoreError> {
    keys::lock(conn)?;
    let at = to_micros(now);
    let current = keys::current(conn)?;
    let due = match &current {
        None => true,
        Some(k) => rotate_after.is_some_and(|d| from_micros(k.created_at) + d <= now),
    };
    if due {
        let (key, pem) = SigningKey::generate().map_err(StoreError::Corrupt)?;
        let row = KeyRow {
            kid: key.kid.clone(),
            alg: format!("{:?}", key.alg),
            private_pem: pem,
            public_jwk: key.jwk.to_string(),
            created_at: at,
            retired_at: None,
        };
        keys::insert(conn, &row)?;
        if current.is_some() {
            let retire = to_micros(now + grace);
            keys::retire_all_but(conn, &row.kid, retire)?;
            tracing::info!(kid = %row.kid, "signing key rotated");
        } else {
            tracing::info!(kid = %row.kid, "signing key generated");
        }
    }
    keys::unretired(conn, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::schema::signing_keys;
    use crate::dispatch;
    use diesel::prelude::*;

    fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let db = Db::open(&url, 2, std::time::Duration::from_secs(5)).unwrap();
        db.migrate().unwrap();
        (dir, db)
    }

    fn ring(extra: &str) -> KeyRing {
        let text = format!(
            "[providers.deploy]\nkind = \"token\"\n{extra}\n\
             [[ci.issuers]]\nname = \"gh\"\nissuer = \"https://x\"\naudience = \"w\"\njwks_file = \"/x\"\n\
             [[ci.trust]]\nissuer = \"gh\"\nprincipal = \"ci:a\"\nclaims = {{ repository = \"a\" }}\n\
             resources = [\"deploy/p\"]\nmax_duration = \"30m\"\n"
        );
        KeyRing::new(&Config::from_toml(&text, &|_| None).unwrap()).unwrap()
    }

    fn kids(v: &Value) -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn replicas_agree_on_the_generated_key() {
        use chrono::TimeZone;
        let (_dir, db) = sqlite();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let (a, b) = (ring(""), ring(""));
        a.prepare(&db, now).unwrap();
        b.prepare(&db, now).unwrap();
        let (ja, jb) = (a.jwks(&db, now).unwrap(), b.jwks(&db, now).unwrap());
        assert_eq!(kids(&ja).len(), 1);
        assert_eq!(kids(&ja), kids(&jb));
        assert!(
            ja.to_string().find("\"d\"").is_none(),
            "no private part is published"
        );
    }

    #[test]
    fn rotation_keeps_the_old_key_until_its_credentials_expired() {
        use chrono::TimeZone;
        let (_dir, db) = sqlite();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let r = ring("rotate_after = \"1d\"");
        let first = kids(&r.jwks(&db, t0).unwrap());
        assert_eq!(first.len(), 1);
        // A day later a new key signs; the old one is still published.
        let t1 = t0 + Duration::days(1);
        let both = kids(&r.jwks(&db, t1).unwrap());
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(both[1], first[0]);
        let current = r.generated(&db, t1, false).unwrap().unwrap().current;
        assert_ne!(current.kid, first[0]);
        // Once every credential it signed has expired (30m + leeway), it goes.
        let t2 = t1 + Duration::minutes(36);
        assert_eq!(kids(&r.jwks(&db, t2).unwrap()), vec![current.kid.clone()]);
    }

    #[test]
    fn a_key_file_signs_and_stays_out_of_the_database() {
        use chrono::TimeZone;
        let (_dir, db) = sqlite();
        let dir = tempfile::tempdir().unwrap();
        let (k, pem) = SigningKey::generate().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, pem).unwrap();
        let r = ring(&format!("key_file = \"{}\"", path.display()));
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        r.prepare(&db, now).unwrap();
        assert_eq!(kids(&r.jwks(&db, now).unwrap()), vec![k.kid.clone()]);
        let stored: i64 = db
            .read(|c| Ok(dispatch!(c, c => signing_keys::table.count().get_result(c))?))
            .unwrap();
        assert_eq!(stored, 0, "no key is generated when every provider has one");
    }
}
