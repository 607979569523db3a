//! The `token` provider: a grant's credential is a short-lived JWT that
//! warrant signs (`sub` = the grant's subject, `resource`, `ticket`,
//! `grant_id`, `iat`, `exp` = the grant's expiry, `iss`, `aud`, and the
//! key's `kid` in the header). Nothing is applied at a provider: a
//! credential is good while its signature verifies, it has not expired, and
//! its grant is live, which `POST /v1/introspect` answers (RFC 7662).
//!
//! A credential is scoped: `aud` is the provider's `audience`, else the
//! grant's resource, so a service accepts only credentials meant for it;
//! `iss` is the provider's `issuer`, else `{server.public_url}/providers/NAME`,
//! so credentials of two token providers cannot stand in for each other.
//!
//! Each token provider signs with its `key_file` (P-256 → ES256, Ed25519 →
//! EdDSA), or with a P-256 key that warrant generates at first start and
//! keeps in `signing_keys`, sealed under the `[keys]` key-encryption key
//! (`crypto::sealed`; without that key warrant refuses to keep one). The key
//! is created under a lock (PostgreSQL advisory lock, SQLite's single
//! writer) only if no current key exists, so replicas agree on one; under
//! the same lock, keys an older version stored in plain text are sealed.
//! With `rotate_after` a new key takes over when the current one is that
//! old; the old one stays published at `GET /.well-known/jwks.json` until
//! every credential it signed has expired (`retired_at`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use crate::config::{invalid, ConfigDuration, ConfigError, ProviderSection, TokenProvider};
use crate::config::{Config, ProviderConfig};
use crate::crypto::keys::SigningKey;
use crate::crypto::sealed::{self, Kek, OpenError};
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
        for (name, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(format!("{at}.{name}"), "is empty"));
            }
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
    /// The credentials' `iss`: the configured `issuer`, else the service's
    /// public URL plus the provider's name.
    issuer: String,
    /// The credentials' `aud`; `None` puts the grant's resource there.
    audience: Option<String>,
    /// `key_file`; `None` signs with the generated key.
    file: Option<Arc<SigningKey>>,
    previous: Vec<Arc<SigningKey>>,
}

impl ProviderKeys {
    fn audience<'a>(&'a self, resource: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(resource)
    }
}

/// A key, and the token providers that sign with it.
type KeyOwners<'a> = (Arc<SigningKey>, Vec<&'a str>);

/// Why the generated signing keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A provider needs the generated key, and `[keys]` names no key to
    /// seal it with.
    #[error(
        "providers.{0} has no key_file, so warrant generates its signing key and keeps it in \
         the database, sealed: set [keys] secret_env (or secret_file) to name 32 random bytes, \
         base64 (openssl rand -base64 32), or give the provider a key_file"
    )]
    NoKek(String),
    /// A stored key does not open: the wrong key-encryption key, or an
    /// altered row.
    #[error(
        "signing key {kid} in the database {why}; is [keys] secret_env the key it was sealed with?"
    )]
    Unopenable { kid: String, why: OpenError },
    #[error("signing key {kid} in the database is unreadable: {why}")]
    Unreadable { kid: String, why: String },
    #[error("cannot make a signing key: {0}")]
    Generate(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Keys(#[from] KeyError),
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
    /// `[keys]`: seals the generated keys in the database.
    kek: Option<Kek>,
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
            let issuer = t
                .issuer
                .clone()
                .unwrap_or_else(|| format!("{}/providers/{name}", config.server.public_url()));
            providers.insert(
                name.clone(),
                ProviderKeys {
                    issuer,
                    audience: t.audience.clone(),
                    file,
                    previous,
                },
            );
        }
        let kek = config
            .keys
            .secret
            .as_ref()
            .map(Kek::from_secret)
            .transpose()
            .map_err(|e| format!("keys.secret_env: {e}"))?;
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
            kek,
            generated: Mutex::new(None),
        })
    }

    /// The token providers that sign with the generated key.
    fn generated_users(&self) -> impl Iterator<Item = (&str, &ProviderKeys)> {
        self.providers
            .iter()
            .filter(|(_, p)| p.file.is_none())
            .map(|(n, p)| (n.as_str(), p))
    }

    /// Makes sure the generated key exists and every stored key is sealed
    /// (at start, so replicas agree early and a missing or wrong `[keys]`
    /// secret stops the start).
    pub fn prepare(&self, db: &Db, now: DateTime<Utc>) -> Result<(), KeyError> {
        self.generated(db, now, false).map(|_| ())
    }

    /// Whether `provider` can sign a credential now: a token provider
    /// without `key_file` needs `[keys]` to keep its generated key. Asked
    /// before a CI grant is made, so a request that cannot be given its
    /// credential changes nothing.
    pub fn usable(&self, provider: &str) -> Result<(), KeyError> {
        match self.providers.get(provider) {
            Some(p) if p.file.is_none() && self.kek.is_none() => {
                Err(KeyError::NoKek(provider.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// The generated keys for publishing and checking credentials: none
    /// without `[keys]`, since then no key was ever generated to sign one.
    fn published(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<Option<Generated>, KeyError> {
        match self.generated(db, now, force) {
            Err(KeyError::NoKek(_)) => Ok(None),
            other => other,
        }
    }

    /// The generated keys, read again when the cache is a minute old, a
    /// rotation is due, or `force` (an unknown `kid`) asks for it.
    fn generated(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<Option<Generated>, KeyError> {
        let Some((first, _)) = self.generated_users().next() else {
            return Ok(None);
        };
        let Some(kek) = &self.kek else {
            return Err(KeyError::NoKek(first.to_string()));
        };
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
        let rows = write_keys(db, |conn| {
            ensure_key(conn, kek, now, self.rotate_after, self.grace)
        })?;
        let mut all = Vec::new();
        let mut current = None;
        for row in &rows {
            let is_current = current.is_none() && row.retired_at.is_none();
            match open_key(kek, row) {
                Ok(k) => {
                    let k = Arc::new(k);
                    if is_current {
                        current = Some((k.clone(), from_micros(row.created_at)));
                    }
                    all.push(k);
                }
                // Without the current key nothing can be signed.
                Err(e) if is_current => return Err(e),
                Err(e) => {
                    tracing::error!(kid = %row.kid, error = %e, "a stored signing key is unusable; skipping it")
                }
            }
        }
        let Some((current, current_created_at)) = current else {
            return Err(StoreError::Corrupt("no usable current key in signing_keys".into()).into());
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

    /// `GET /.well-known/jwks.json`: every key a valid credential may carry,
    /// each with the issuers (`iss`) whose credentials it signs.
    pub fn jwks(&self, db: &Db, now: DateTime<Utc>) -> Result<Value, KeyError> {
        let mut keys: Vec<(&SigningKey, BTreeSet<&str>)> = Vec::new();
        fn add<'a>(
            keys: &mut Vec<(&'a SigningKey, BTreeSet<&'a str>)>,
            k: &'a SigningKey,
            issuer: &'a str,
        ) {
            match keys.iter_mut().find(|(j, _)| j.kid == k.kid) {
                Some((_, issuers)) => {
                    issuers.insert(issuer);
                }
                None => keys.push((k, BTreeSet::from([issuer]))),
            }
        }
        for p in self.providers.values() {
            for k in p.file.iter().chain(p.previous.iter()) {
                add(&mut keys, k, &p.issuer);
            }
        }
        let generated = self.published(db, now, false)?;
        if let Some(g) = &generated {
            for k in &g.all {
                for (_, p) in self.generated_users() {
                    add(&mut keys, k, &p.issuer);
                }
            }
        }
        let keys: Vec<Value> = keys
            .into_iter()
            .map(|(k, issuers)| {
                let mut jwk = k.jwk.clone();
                // JWK allows members of its own (RFC 7517 §4): this one lets a
                // verifier pick the keys of the issuer it trusts.
                jwk["iss"] = json!(issuers);
                jwk
            })
            .collect();
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
            "aud": p.audience(&grant.resource),
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
    ) -> Result<Option<KeyOwners<'_>>, KeyError> {
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
        let mut g = self.published(db, now, false)?;
        if g.as_ref()
            .is_some_and(|g| !g.all.iter().any(|k| k.kid == kid))
        {
            // Another replica may have rotated since this one last looked.
            g = self.published(db, now, true)?;
        }
        let Some(key) = g.and_then(|g| g.all.iter().find(|k| k.kid == kid).cloned()) else {
            return Ok(None);
        };
        let owners = self.generated_users().map(|(n, _)| n).collect();
        Ok(Some((key, owners)))
    }

    /// RFC 7662 introspection: `{"active": true, ...}` only while the
    /// credential's signature verifies with a key of its resource's
    /// provider, its `iss` and `aud` are that provider's, it is unexpired,
    /// and its grant is `granting` or `active`; otherwise exactly
    /// `{"active": false}`.
    pub fn introspect(&self, db: &Db, now: DateTime<Utc>, token: &str) -> Result<Value, KeyError> {
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
    ) -> Result<Option<Map<String, Value>>, KeyError> {
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
        // `aud` is compared below, with the audience of the credential's
        // own provider.
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let Ok(data) =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
        else {
            return Ok(None);
        };
        let c = data.claims;
        let text = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_string);
        let (Some(sub), Some(resource), Some(ticket), Some(grant_id), Some(iss), Some(aud)) = (
            text("sub"),
            text("resource"),
            text("ticket"),
            text("grant_id"),
            text("iss"),
            text("aud"),
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
        let Some(p) = self.providers.get(provider) else {
            return Ok(None);
        };
        if !owners.contains(&provider) || p.issuer != iss || p.audience(&resource) != aud {
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
            "sub", "aud", "exp", "iat", "iss", "grant_id", "resource", "ticket", "jti",
        ] {
            if let Some(v) = c.get(name) {
                out.insert(name.into(), v.clone());
            }
        }
        out.insert("token_type".into(), json!("Bearer"));
        Ok(Some(out))
    }
}

/// `Db::write` for key work: a key error rolls the transaction back like a
/// store error does, and comes out as itself.
fn write_keys<T>(
    db: &Db,
    f: impl FnOnce(&mut Conn<'_>) -> Result<T, KeyError>,
) -> Result<T, KeyError> {
    let mut failed = None;
    let out = db.write(|conn| {
        f(conn).map_err(|e| match e {
            KeyError::Store(s) => s,
            other => {
                let rollback = StoreError::Corrupt(other.to_string());
                failed = Some(other);
                rollback
            }
        })
    });
    match (out, failed) {
        (_, Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
        (Err(s), None) => Err(s.into()),
    }
}

/// What a key's sealed form is bound to: its own row, so a sealed key
/// copied into another row does not open there.
pub fn sealed_for(kid: &str) -> String {
    format!("warrant signing_keys {kid}")
}

/// A stored key, opened with the key-encryption key.
fn open_key(kek: &Kek, row: &KeyRow) -> Result<SigningKey, KeyError> {
    let pem = sealed::open(kek, &sealed_for(&row.kid), &row.private_key).map_err(|why| {
        KeyError::Unopenable {
            kid: row.kid.clone(),
            why,
        }
    })?;
    let pem = std::str::from_utf8(pem.expose_secret()).map_err(|_| KeyError::Unreadable {
        kid: row.kid.clone(),
        why: "not UTF-8".into(),
    })?;
    SigningKey::from_pem(pem)
        .map(|k| k.with_kid(&row.kid))
        .map_err(|why| KeyError::Unreadable {
            kid: row.kid.clone(),
            why,
        })
}

/// Seals every key still in plain text. Before sealing anything it opens
/// a key sealed earlier, so a wrong `[keys]` secret stops here instead of
/// sealing keys that the right one could then not open.
fn seal_plaintext(conn: &mut Conn<'_>, kek: &Kek) -> Result<usize, KeyError> {
    let plain = keys::unsealed(conn)?;
    if plain.is_empty() {
        return Ok(0);
    }
    if let Some(row) = keys::newest_sealed(conn)? {
        open_key(kek, &row)?;
    }
    let mut count = 0;
    for row in &plain {
        // A row that is no key is left as it is, for `generated` to report.
        if let Err(e) = SigningKey::from_pem(&row.private_key) {
            tracing::error!(kid = %row.kid, error = %e, "a stored signing key is unreadable; not sealing it");
            continue;
        }
        let text = sealed::seal(kek, &sealed_for(&row.kid), row.private_key.as_bytes())
            .map_err(KeyError::Generate)?;
        keys::set_private_key(conn, &row.kid, &text)?;
        count += 1;
    }
    tracing::info!(
        keys = count,
        "sealed signing keys an older version stored in plain text"
    );
    Ok(count)
}

/// Inside one write transaction, under the key lock: seals keys left in
/// plain text, makes a key if there is no current one (or the current one
/// is due for rotation), retires the one it replaces, and returns every key
/// not yet retired, newest first.
fn ensure_key(
    conn: &mut Conn<'_>,
    kek: &Kek,
    now: DateTime<Utc>,
    rotate_after: Option<Duration>,
    grace: Duration,
) -> Result<Vec<KeyRow>, KeyError> {
    keys::lock(conn)?;
    seal_plaintext(conn, kek)?;
    let at = to_micros(now);
    let current = keys::current(conn)?;
    let due = match &current {
        None => true,
        Some(k) => rotate_after.is_some_and(|d| from_micros(k.created_at) + d <= now),
    };
    if due {
        if let Some(k) = &current {
            // A replica with a wrong `[keys]` secret must not rotate in a
            // key that the others cannot open.
            open_key(kek, k)?;
        }
        let (key, pem) = SigningKey::generate().map_err(KeyError::Generate)?;
        let pem = SecretString::from(pem);
        let private_key = sealed::seal(kek, &sealed_for(&key.kid), pem.expose_secret().as_bytes())
            .map_err(KeyError::Generate)?;
        let row = KeyRow {
            kid: key.kid.clone(),
            alg: format!("{:?}", key.alg),
            private_key,
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
    Ok(keys::unretired(conn, at)?)
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

    /// Two key-encryption keys (32 bytes, base64).
    const KEK_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEK_B: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    /// A ring whose generated key is sealed under `KEK_A`.
    fn ring(extra: &str) -> KeyRing {
        ring_with(extra, Some(KEK_A))
    }

    fn ring_with(extra: &str, kek: Option<&'static str>) -> KeyRing {
        let keys = if kek.is_some() {
            "[keys]\nsecret_env = \"KEK\"\n"
        } else {
            ""
        };
        let text = format!(
            "[providers.deploy]\nkind = \"token\"\n{extra}\n\
             [[ci.issuers]]\nname = \"gh\"\nissuer = \"https://x\"\naudience = \"w\"\njwks_file = \"/x\"\n\
             [[ci.trust]]\nissuer = \"gh\"\nprincipal = \"ci:a\"\nclaims = {{ repository = \"a\" }}\n\
             resources = [\"deploy/p\"]\nmax_duration = \"30m\"\n{keys}"
        );
        let env = move |name: &str| (name == "KEK").then(|| kek.unwrap_or_default().to_string());
        KeyRing::new(&Config::from_toml(&text, &env).unwrap()).unwrap()
    }

    fn stored(db: &Db) -> Vec<(String, String)> {
        db.read(|c| {
            Ok(dispatch!(c, c => signing_keys::table
                .select((signing_keys::kid, signing_keys::private_pem))
                .load::<(String, String)>(c))?)
        })
        .unwrap()
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
    #[test]
    fn generated_keys_are_stored_sealed() {
        use chrono::TimeZone;
        let (_dir, db) = sqlite();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let r = ring("");
        r.prepare(&db, now).unwrap();
        let rows = stored(&db);
        assert_eq!(rows.len(), 1);
        let (kid, text) = &rows[0];
        assert!(text.starts_with("sealed:v1:"), "{text}");
        assert!(!text.contains("BEGIN"));
        // Its sealed form is bound to its row.
        let kek = Kek::from_secret(&SecretString::from(KEK_A)).unwrap();
        assert!(sealed::open(&kek, &sealed_for(kid), text).is_ok());
        assert!(sealed::open(&kek, &sealed_for("another"), text).is_err());
    }

    #[test]
    fn without_a_key_encryption_key_no_key_is_kept() {
        use chrono::TimeZone;
        let (_dir, db) = sqlite();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let err = ring_with("", None).prepare(&db, now).unwrap_err();
        assert!(
            matches!(err, KeyError::NoKek(ref p) if p == "deploy"),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("[keys] secret_env"), "{message}");
        assert!(message.contains("providers.deploy"), "{message}");
        assert!(stored(&db).is_empty());
    }

    #[test]
    fn a_wrong_key_encryption_key_is_refused_and_rotates_nothing() {
        use chrono::TimeZone;
        let (_dir, db) = sqlite();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        ring("rotate_after = \"1d\"").prepare(&db, t0).unwrap();
        let before = stored(&db);
        let wrong = ring_with("rotate_after = \"1d\"", Some(KEK_B));
        for at in [t0, t0 + Duration::days(2)] {
            let err = wrong.prepare(&db, at).unwrap_err();
            assert!(
                matches!(err, KeyError::Unopenable { ref why, .. } if *why == OpenError::Rejected),
                "{err}"
            );
            assert!(err.to_string().contains("[keys] secret_env"), "{err}");
        }
        assert_eq!(stored(&db), before, "nothing was rotated or resealed");
    }
}
