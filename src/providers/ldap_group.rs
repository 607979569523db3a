//! The `ldap_group` provider: membership of an LDAP group. Target `T` is
//! the group `cn=T,{group_base}`; a grant adds the account to the group's
//! `member_attribute` and a revoke deletes it: for `member` and
//! `uniqueMember` the value is the account's DN, made from the `user_dn`
//! template (`uid={account},ou=people,dc=acme,dc=test`); for `memberUid`
//! it is the account itself. Each call opens its own connection (`ldaps://`,
//! or `ldap://` with StartTLS; plain LDAP only to a loopback test server),
//! binds as `bind_dn`, makes one request and unbinds, all within the
//! provider's `timeout`.
//!
//! Values stay values: the account is escaped per RFC 4514 where it goes
//! into a DN, the target likewise into `cn=T`, and either per RFC 4515
//! where it goes into a search filter, so no account or target can name
//! another entry or widen a search. Targets are narrowed further (see
//! `check_group`): a group's cn is 1 to 64 ASCII letters, digits, `.`, `_`
//! and `-`, starting with a letter or digit.
//!
//! What counts as success, and what as failure, follows what the directory
//! says: a value already present (attributeOrValueExists, 20) is a grant
//! done and a value already absent (noSuchAttribute, 16) a revoke done. A
//! group that does not exist (noSuchObject, 32) is a failed grant whose
//! message names the group's DN, retried like any failure, since the group
//! may be created meanwhile; a revoke from a group that does not exist
//! succeeds (nothing is left to take away, as `postgres` treats a dropped
//! role). A value the server refuses by syntax (21, 34) can never be
//! granted and fails the grant at once. A revoke that would leave a
//! `groupOfNames` without a member (objectClassViolation, 65) fails with a
//! message saying so; such groups need a placeholder member.
//!
//! For drift checks the group's values are read back and each DN is mapped
//! to its account through `user_dn`; a member whose DN does not fit the
//! template (a placeholder, someone added by other means) is reported as
//! `dn:` followed by its DN, so drift still sees it, `exempt_accounts` can
//! name it, and a drift removal deletes exactly that DN. For the same
//! reason an account that itself begins with `dn:` is refused a grant.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Mod, Scope, SearchEntry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use secrecy::{ExposeSecret, SecretString};

use super::{Call, Deps, Provider, ProviderError};
use crate::config::secrets::load_secret;
use crate::config::{
    check_names, invalid, timeout_at_most_10m, ConfigDuration, ConfigError, DriftMode,
    LdapGroupProvider, MemberAttribute, ProviderSection,
};
use crate::domain::TargetRule;

/// The longest group cn a target may name: X.520's upper bound for a
/// common name, which directories commonly enforce.
pub const MAX_GROUP: usize = 64;

/// How a holder that is a member entry outside `user_dn` is reported.
pub const DN_PREFIX: &str = "dn:";

/// A group's cn as a target: 1 to `MAX_GROUP` ASCII letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit. Narrower than the
/// contract's syntax so a group name means the same in every directory and
/// never needs escaping (it is escaped all the same).
pub fn check_group(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("the group name is empty".into());
    };
    if name.len() > MAX_GROUP {
        return Err(format!("a group name is at most {MAX_GROUP} characters"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err("a group name starts with an ASCII letter or digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "a group name is ASCII letters, digits, `.`, `_` and `-`, not `{}`",
            c.escape_default()
        ));
    }
    Ok(())
}

/// The `ldap_group` provider's target rule: one group cn, and one of
/// `groups` when the provider lists any.
pub fn check_target(groups: &[String], target: &str) -> Result<(), String> {
    check_group(target)?;
    if !groups.is_empty() && !groups.iter().any(|g| g == target) {
        return Err("the provider's `groups` does not list it".into());
    }
    Ok(())
}

impl TargetRule for LdapGroupProvider {
    fn check_target(&self, target: &str) -> Result<(), String> {
        check_target(&self.groups, target)
    }
}

impl ProviderSection for LdapGroupProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        Some(self.timeout)
    }

    fn load_secrets(
        &mut self,
        at: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.bind_password = Some(load_secret(
            at,
            "bind_password",
            &self.bind_password_env,
            &self.bind_password_file,
            env,
        )?);
        Ok(())
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let tls = check_url(&self.url, self.starttls)
            .map_err(|(key, m)| invalid(format!("{at}.{key}"), m))?;
        if let Some(path) = &self.ca_file {
            if !tls {
                return Err(invalid(
                    format!("{at}.ca_file"),
                    "is used only with TLS (ldaps://, or ldap:// with StartTLS)",
                ));
            }
            read_ca(path).map_err(|m| invalid(format!("{at}.ca_file"), m))?;
        }
        for (key, dn) in [("bind_dn", &self.bind_dn), ("group_base", &self.group_base)] {
            match parse_dn(dn) {
                Ok(rdns) if !rdns.is_empty() => {}
                Ok(_) => return Err(invalid(format!("{at}.{key}"), "is empty")),
                Err(m) => return Err(invalid(format!("{at}.{key}"), format!("is not a DN: {m}"))),
            }
        }
        match (self.member_attribute.holds_dns(), &self.user_dn) {
            (true, Some(t)) => {
                UserDn::parse(t).map_err(|m| invalid(format!("{at}.user_dn"), m))?;
            }
            (true, None) => {
                return Err(invalid(
                    format!("{at}.user_dn"),
                    format!(
                        "missing: `{}` holds DNs, so the account's DN is needed, e.g. \
                         \"uid={{account}},ou=people,dc=acme,dc=test\"",
                        self.member_attribute.as_str()
                    ),
                ))
            }
            (false, Some(_)) => {
                return Err(invalid(
                    format!("{at}.user_dn"),
                    "is not used with member_attribute = \"memberUid\" (its values are accounts)",
                ))
            }
            (false, None) => {}
        }
        check_names(at, &[("groups", &self.groups)], check_group)?;
        timeout_at_most_10m(at, self.timeout)
    }

    fn build(&self, name: &str, _deps: &Deps) -> Box<dyn Provider> {
        Box::new(LdapGroup::new(name, self))
    }

    fn drift(&self) -> Option<DriftMode> {
        self.drift
    }
}

/// Checks the URL; answers whether it uses TLS. An error names its key.
fn check_url(raw: &str, starttls: bool) -> Result<bool, (&'static str, String)> {
    let url = url::Url::parse(raw).map_err(|e| ("url", format!("is not a URL: {e}")))?;
    let tls = match url.scheme() {
        "ldaps" => true,
        "ldap" => starttls,
        other => {
            return Err((
                "url",
                format!("scheme `{other}`: use ldaps://, or ldap:// (with StartTLS)"),
            ))
        }
    };
    let host = url.host_str().unwrap_or("");
    if host.is_empty() {
        return Err(("url", "names no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err((
            "url",
            "must not carry credentials: use bind_dn and bind_password_env".into(),
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(("url", "names only a host and a port".into()));
    }
    if !tls && !is_loopback(host) {
        return Err((
            "starttls",
            format!(
                "`false` would send the bind password in clear to `{host}`: plain LDAP is \
                 allowed only to a loopback host (localhost, 127.0.0.0/8, ::1)"
            ),
        ));
    }
    Ok(tls)
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The certificates of a PEM file, each one usable as a trust anchor.
fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{}: a certificate cannot be used: {e}", path.display()))?;
    }
    Ok(certs)
}

/// The TLS settings: only the CAs of `ca_file` when given, else the
/// system's trust store.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_ca(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Escapes `value` for use as an attribute value in a DN (RFC 4514 §2.4):
/// `"`, `+`, `,`, `;`, `<`, `>`, `\`, a leading space or `#`, a trailing
/// space and NUL, and besides them `=` and every control character, each
/// byte as `\XX`.
pub fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for (i, c) in value.char_indices() {
        let escape = matches!(c, '"' | '+' | ',' | ';' | '<' | '=' | '>' | '\\')
            || c.is_control()
            || (i == 0 && matches!(c, ' ' | '#'))
            || (c == ' ' && i + 1 == value.len());
        push(&mut out, c, escape);
    }
    out
}

/// Escapes `value` for use as an assertion value in a search filter
/// (RFC 4515 §3): `*`, `(`, `)`, `\` and NUL, and every other control
/// character, each byte as `\XX`.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        push(
            &mut out,
            c,
            matches!(c, '*' | '(' | ')' | '\\') || c.is_control(),
        );
    }
    out
}

fn push(out: &mut String, c: char, escape: bool) {
    if escape {
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            let _ = write!(out, "\\{b:02X}");
        }
    } else {
        out.push(c);
    }
}

/// One attribute of an RDN: its type in lower case, its value unescaped (a
/// `#`-hex value is kept as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ava {
    pub attr: String,
    pub value: String,
}

/// Parses a DN (RFC 4514) into its RDNs, most specific first. `""` is the
/// empty DN.
pub fn parse_dn(dn: &str) -> Result<Vec<Vec<Ava>>, String> {
    let b = dn.as_bytes();
    let mut rdns = Vec::new();
    if dn.trim().is_empty() {
        return Ok(rdns);
    }
    let mut rdn = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let attr = dn[start..i].trim();
        if i == b.len() {
            return Err(format!("`{}` has no `=`", crate::domain::shown(attr, 40)));
        }
        if attr.is_empty()
            || !attr
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!(
                "`{}` is not an attribute type",
                crate::domain::shown(attr, 40)
            ));
        }
        i += 1;
        let mut value = Vec::new();
        let hex_form = b.get(i) == Some(&b'#');
        while i < b.len() && b[i] != b',' && b[i] != b'+' {
            if b[i] == b'\\' && !hex_form {
                match (b.get(i + 1), b.get(i + 2)) {
                    (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        value.push(hex(h) << 4 | hex(l));
                        i += 3;
                    }
                    (Some(&c), _) if b" \"#+,;<=>\\".contains(&c) => {
                        value.push(c);
                        i += 2;
                    }
                    _ => return Err("a `\\` escapes nothing".into()),
                }
            } else {
                value.push(b[i]);
                i += 1;
            }
        }
        let value = String::from_utf8(value).map_err(|_| "a value is not UTF-8".to_string())?;
        rdn.push(Ava {
            attr: attr.to_ascii_lowercase(),
            value,
        });
        match b.get(i) {
            None => {
                rdns.push(rdn);
                return Ok(rdns);
            }
            Some(b'+') => {}
            Some(_) => rdns.push(std::mem::take(&mut rdn)),
        }
        i += 1;
    }
}

/// The value of a hex digit (the caller checked it is one).
fn hex(c: u8) -> u8 {
    char::from(c).to_digit(16).map_or(0, |d| d as u8)
}

/// The `user_dn` template: a DN in which `{account}` is the whole value of
/// one attribute.
#[derive(Debug, Clone)]
pub struct UserDn {
    raw: String,
    rdns: Vec<Vec<Ava>>,
    slot: (usize, usize),
}

impl UserDn {
    pub fn parse(raw: &str) -> Result<UserDn, String> {
        const SHAPE: &str = "`{account}` must be the whole value of one attribute, as in \
             \"uid={account},ou=people,dc=acme,dc=test\"";
        if raw.matches("{account}").count() != 1 {
            return Err(format!("holds `{{account}}` not exactly once; {SHAPE}"));
        }
        let rdns = parse_dn(raw).map_err(|m| format!("is not a DN: {m}"))?;
        let slots: Vec<(usize, usize)> = rdns
            .iter()
            .enumerate()
            .flat_map(|(i, rdn)| {
                rdn.iter()
                    .enumerate()
                    .filter(|(_, a)| a.value == "{account}")
                    .map(move |(j, _)| (i, j))
            })
            .collect();
        match slots[..] {
            [slot] => Ok(UserDn {
                raw: raw.to_string(),
                rdns,
                slot,
            }),
            _ => Err(SHAPE.into()),
        }
    }

    /// The account's DN, the account escaped.
    pub fn dn(&self, account: &str) -> String {
        self.raw.replacen("{account}", &escape_dn_value(account), 1)
    }

    /// The account whose DN `dn` is, if `dn` fits the template: the same
    /// attributes, the same other values (compared without regard to
    /// case, as directories compare names).
    pub fn account(&self, dn: &str) -> Option<String> {
        let rdns = parse_dn(dn).ok()?;
        if rdns.len() != self.rdns.len() {
            return None;
        }
        let mut account = None;
        for (i, (want, got)) in self.rdns.iter().zip(&rdns).enumerate() {
            if want.len() != got.len() {
                return None;
            }
            for (j, (w, g)) in want.iter().zip(got).enumerate() {
                if w.attr != g.attr {
                    return None;
                }
                if (i, j) == self.slot {
                    account = Some(g.value.clone());
                } else if w.value.to_lowercase() != g.value.to_lowercase() {
                    return None;
                }
            }
        }
        account
    }
}

/// A `uniqueMember` value may end in an optional UID (`DN#'0101'B`).
fn without_uid(value: &str) -> &str {
    if let Some(at) = value.rfind("#'") {
        let bits = &value[at + 2..];
        if let Some(bits) = bits.strip_suffix("'B") {
            if bits.chars().all(|c| c == '0' || c == '1') {
                return &value[..at];
            }
        }
    }
    value
}

/// The `ldap_group` provider, built from its section.
pub struct LdapGroup {
    name: String,
    url: String,
    starttls: bool,
    /// `None` for plain LDAP; an error (from the CA file) is answered by
    /// every call.
    tls: Option<Result<Arc<ClientConfig>, String>>,
    bind_dn: String,
    bind_password: Option<SecretString>,
    user_dn: Option<UserDn>,
    group_base: String,
    attribute: MemberAttribute,
    groups: Vec<String>,
    timeout: Duration,
}

impl LdapGroup {
    pub fn new(name: &str, cfg: &LdapGroupProvider) -> LdapGroup {
        let tls = check_url(&cfg.url, cfg.starttls)
            .unwrap_or(true)
            .then(|| tls_config(cfg.ca_file.as_deref()));
        LdapGroup {
            name: name.to_string(),
            url: cfg.url.clone(),
            starttls: cfg.starttls,
            tls,
            bind_dn: cfg.bind_dn.clone(),
            bind_password: cfg.bind_password.clone(),
            user_dn: cfg.user_dn.as_deref().and_then(|t| UserDn::parse(t).ok()),
            group_base: cfg.group_base.clone(),
            attribute: cfg.member_attribute,
            groups: cfg.groups.clone(),
            timeout: cfg.timeout.std().max(Duration::from_millis(1)),
        }
    }

    /// The DN of the group that target `group` names.
    pub fn group_dn(&self, group: &str) -> String {
        format!("cn={},{}", escape_dn_value(group), self.group_base)
    }

    /// The attribute value that stands for `account`: its DN through
    /// `user_dn` (or the DN itself for a `dn:` holder), or the account.
    fn value_of(&self, account: &str) -> Result<String, ProviderError> {
        if !self.attribute.holds_dns() {
            return Ok(account.to_string());
        }
        if let Some(dn) = account.strip_prefix(DN_PREFIX) {
            return Ok(dn.to_string());
        }
        match &self.user_dn {
            Some(t) => Ok(t.dn(account)),
            None => Err(ProviderError::Call(format!(
                "providers.{}.user_dn is not a usable template",
                self.name
            ))),
        }
    }

    /// How a value of the group is reported as a holder.
    fn holder(&self, value: &str) -> String {
        if !self.attribute.holds_dns() {
            return value.to_string();
        }
        let dn = match self.attribute {
            MemberAttribute::UniqueMember => without_uid(value),
            _ => value,
        };
        match self.user_dn.as_ref().and_then(|t| t.account(dn)) {
            Some(a) if !a.is_empty() && !a.starts_with(DN_PREFIX) => a,
            _ => format!("{DN_PREFIX}{dn}"),
        }
    }

    /// A bound connection.
    async fn connect(&self) -> Result<Ldap, ProviderError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone().map_err(|e| {
                ProviderError::Call(format!("providers.{}.ca_file: {e}", self.name))
            })?);
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| {
                ProviderError::Call(crate::redact::redact(
                    &format!("cannot reach the LDAP server at {}: {e}", self.url),
                    &[],
                ))
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection closed with an error");
            }
        });
        let Some(password) = &self.bind_password else {
            return Err(ProviderError::Call(format!(
                "providers.{}.bind_password_env is not loaded",
                self.name
            )));
        };
        let password = password.expose_secret();
        let failed = |why: String| {
            ProviderError::Call(crate::redact::redact(
                &format!("LDAP bind as `{}` failed: {why}", self.bind_dn),
                &[password],
            ))
        };
        let bound = ldap
            .with_timeout(self.timeout)
            .simple_bind(&self.bind_dn, password)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if bound.rc != 0 {
            return Err(failed(describe(&bound)));
        }
        Ok(ldap)
    }

    /// One modification of `group`, on a connection of its own.
    async fn modify(&self, group: &str, change: Mod<String>) -> Result<LdapResult, ProviderError> {
        let mut ldap = self.connect().await?;
        let result = ldap
            .with_timeout(self.timeout)
            .modify(group, vec![change])
            .await;
        let _ = ldap.unbind().await;
        result.map_err(|e| ProviderError::Call(format!("LDAP modify of `{group}`: {e}")))
    }

    /// A base search of `group`, on a connection of its own.
    async fn read(
        &self,
        group: &str,
        filter: &str,
        attrs: Vec<&str>,
    ) -> Result<(Vec<SearchEntry>, LdapResult), ProviderError> {
        let mut ldap = self.connect().await?;
        let result = ldap
            .with_timeout(self.timeout)
            .search(group, Scope::Base, filter, attrs)
            .await;
        let _ = ldap.unbind().await;
        let found =
            result.map_err(|e| ProviderError::Call(format!("LDAP search of `{group}`: {e}")))?;
        Ok((
            found.0.into_iter().map(SearchEntry::construct).collect(),
            found.1,
        ))
    }

    /// Whether `group` is truly absent, not merely hidden from the bind
    /// account: its base (`group_base`) reads, and the group does not.
    async fn group_absent(&self, group: &str) -> Result<bool, ProviderError> {
        let (_, base) = self
            .read(&self.group_base, "(objectClass=*)", vec!["1.1"])
            .await?;
        if base.rc != 0 {
            return Ok(false);
        }
        let (_, again) = self.read(group, "(objectClass=*)", vec!["1.1"]).await?;
        Ok(again.rc == 32)
    }

    fn missing(group: &str) -> ProviderError {
        ProviderError::Call(format!(
            "LDAP group `{group}` does not exist (noSuchObject)"
        ))
    }
}

/// A result as the directory gave it: name, code and its message.
fn describe(r: &LdapResult) -> String {
    let name = match r.rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        65 => "objectClassViolation",
        _ => "error",
    };
    let mut out = format!("{name} ({})", r.rc);
    if !r.text.trim().is_empty() {
        out.push_str(": ");
        out.push_str(&crate::domain::truncate(r.text.trim(), 200));
    }
    out
}

impl Provider for LdapGroup {
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            check_target(&self.groups, call.target).map_err(|why| {
                ProviderError::Refused(format!(
                    "LDAP group `{}`: {why}",
                    crate::domain::shown(call.target, 80)
                ))
            })?;
            if call.account.is_empty() {
                return Err(ProviderError::Refused("the account is empty".into()));
            }
            if self.attribute.holds_dns() && call.account.starts_with(DN_PREFIX) {
                return Err(ProviderError::Refused(format!(
                    "account `{}` begins with `{DN_PREFIX}`, which names a directory entry \
                     in drift reports; warrant adds only accounts through user_dn",
                    crate::domain::shown(call.account, 80)
                )));
            }
            let value = self.value_of(call.account)?;
            let group = self.group_dn(call.target);
            let attr = self.attribute.as_str();
            let r = self
                .modify(
                    &group,
                    Mod::Add(attr.to_string(), HashSet::from([value.clone()])),
                )
                .await?;
            match r.rc {
                0 | 20 => Ok(()),
                // Active Directory answers entryAlreadyExists for a member
                // already there; success once a read confirms it.
                68 if self.holds(call.target, call.account).await? == Some(true) => Ok(()),
                32 => Err(Self::missing(&group)),
                21 | 34 => Err(ProviderError::Refused(format!(
                    "the LDAP server refuses `{value}` as a `{attr}` of `{group}`: {}",
                    describe(&r)
                ))),
                50 => Err(ProviderError::Call(format!(
                    "`{}` may not add to `{attr}` of `{group}`: {}",
                    self.bind_dn,
                    describe(&r)
                ))),
                _ => Err(ProviderError::Call(format!(
                    "adding to LDAP group `{group}`: {}",
                    describe(&r)
                ))),
            }
        })
    }

    fn remove<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let value = self.value_of(call.account)?;
            let group = self.group_dn(call.target);
            let attr = self.attribute.as_str();
            let r = self
                .modify(
                    &group,
                    Mod::Delete(attr.to_string(), HashSet::from([value])),
                )
                .await?;
            match r.rc {
                0 | 16 => Ok(()),
                // Active Directory answers unwillingToPerform for a value
                // that is not there; success once a read confirms it.
                53 if self.holds(call.target, call.account).await? == Some(false) => Ok(()),
                // noSuchObject is also what a bind without rights to see the
                // group gets: done only when the group's base is visible and
                // the group is not in it.
                32 if self.group_absent(&group).await? => {
                    tracing::warn!(
                        provider = %self.name,
                        group = %group,
                        "LDAP group does not exist: nothing to remove"
                    );
                    Ok(())
                }
                32 => Err(ProviderError::Call(format!(
                    "LDAP group `{group}` is not visible to `{}` (noSuchObject) although \
                     `{}` is: check the bind account's rights",
                    self.bind_dn, self.group_base
                ))),
                65 => Err(ProviderError::Call(format!(
                    "removing the last `{attr}` of LDAP group `{group}` is refused by its \
                     object class ({}); give the group a placeholder member",
                    describe(&r)
                ))),
                50 => Err(ProviderError::Call(format!(
                    "`{}` may not remove from `{attr}` of `{group}`: {}",
                    self.bind_dn,
                    describe(&r)
                ))),
                _ => Err(ProviderError::Call(format!(
                    "removing from LDAP group `{group}`: {}",
                    describe(&r)
                ))),
            }
        })
    }

    /// The group's values, each as an account (or `dn:DN`).
    fn holders<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ProviderError>> {
        Box::pin(async move {
            let group = self.group_dn(target);
            let attr = self.attribute.as_str();
            let (entries, r) = self.read(&group, "(objectClass=*)", vec![attr]).await?;
            match r.rc {
                0 => {}
                32 => return Err(Self::missing(&group)),
                _ => {
                    return Err(ProviderError::Call(format!(
                        "reading LDAP group `{group}`: {}",
                        describe(&r)
                    )))
                }
            }
            let mut holders = Vec::new();
            for entry in entries {
                for (name, values) in entry.attrs {
                    if name.eq_ignore_ascii_case(attr) {
                        holders.extend(values.iter().map(|v| self.holder(v)));
                    } else if name
                        .to_ascii_lowercase()
                        .starts_with(&format!("{};range=", attr.to_ascii_lowercase()))
                    {
                        // Active Directory hands out a large group's
                        // members in ranges; a partial list would report
                        // the rest as gone.
                        return Err(ProviderError::Call(format!(
                            "LDAP group `{group}` answered `{attr}` in ranges, which warrant \
                             does not read"
                        )));
                    }
                }
            }
            Ok(Some(holders))
        })
    }

    /// One membership, asked with a filter rather than read from the list.
    fn holds<'a>(
        &'a self,
        target: &'a str,
        account: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>, ProviderError>> {
        Box::pin(async move {
            let group = self.group_dn(target);
            let value = self.value_of(account)?;
            let filter = format!(
                "({}={})",
                self.attribute.as_str(),
                escape_filter_value(&value)
            );
            let (entries, r) = self.read(&group, &filter, vec!["1.1"]).await?;
            match r.rc {
                0 => Ok(Some(!entries.is_empty())),
                32 if self.group_absent(&group).await? => Ok(Some(false)),
                // Not visible, so warrant cannot say.
                32 => Ok(None),
                _ => Err(ProviderError::Call(format!(
                    "reading LDAP group `{group}`: {}",
                    describe(&r)
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section: the defaults below with `more`'s keys over them; a key
    /// set to `"-"` is left out.
    fn cfg(more: &str) -> LdapGroupProvider {
        let mut table: toml::Table = toml::from_str(
            "url = \"ldaps://ldap.acme.test\"\n\
             bind_dn = \"cn=warrant,ou=services,dc=acme,dc=test\"\n\
             bind_password_env = \"LDAP_PW\"\n\
             group_base = \"ou=groups,dc=acme,dc=test\"\n\
             user_dn = \"uid={account},ou=people,dc=acme,dc=test\"",
        )
        .unwrap();
        table.extend(toml::from_str::<toml::Table>(more).unwrap());
        table.retain(|_, v| v.as_str() != Some("-"));
        toml::Value::Table(table).try_into().unwrap()
    }

    fn error(cfg: &LdapGroupProvider) -> String {
        cfg.validate("providers.dir").unwrap_err().to_string()
    }

    #[test]
    fn dn_values_are_escaped_per_rfc_4514() {
        for (raw, escaped) in [
            ("alice", "alice"),
            ("x,cn=admins", "x\\2Ccn\\3Dadmins"),
            ("a+b", "a\\2Bb"),
            ("say \"hi\"", "say \\22hi\\22"),
            ("back\\slash", "back\\5Cslash"),
            ("<tag>", "\\3Ctag\\3E"),
            ("a;b", "a\\3Bb"),
            ("#lead", "\\23lead"),
            ("mid#dle", "mid#dle"),
            (" lead", "\\20lead"),
            ("trail ", "trail\\20"),
            ("in side", "in side"),
            (" ", "\\20"),
            ("nul\0", "nul\\00"),
            ("line\nfeed", "line\\0Afeed"),
            ("star*(paren)", "star*(paren)"),
            ("ünï", "ünï"),
        ] {
            assert_eq!(escape_dn_value(raw), escaped, "{raw:?}");
            // What is escaped reads back as the value it was, alone.
            let dn = format!("uid={escaped},dc=test");
            let rdns = parse_dn(&dn).unwrap();
            assert_eq!(rdns.len(), 2, "{dn}");
            assert_eq!(
                rdns[0],
                [Ava {
                    attr: "uid".into(),
                    value: raw.into()
                }]
            );
        }
    }

    #[test]
    fn filter_values_are_escaped_per_rfc_4515() {
        for (raw, escaped) in [
            ("alice", "alice"),
            ("*", "\\2A"),
            ("a)(uid=*", "a\\29\\28uid=\\2A"),
            ("back\\slash", "back\\5Cslash"),
            ("nul\0", "nul\\00"),
            ("x,cn=admins", "x,cn=admins"),
            ("uid=x\\2Ccn\\3Dadmins", "uid=x\\5C2Ccn\\5C3Dadmins"),
        ] {
            assert_eq!(escape_filter_value(raw), escaped, "{raw:?}");
            let filter = format!("(memberUid={escaped})");
            assert!(ldap3::parse_filter(&filter).is_ok(), "{filter}");
        }
    }

    #[test]
    fn dns_parse_with_both_escape_forms() {
        let rdns = parse_dn("UID=x\\,cn\\3Dadmins+cn=two,ou=people, dc=acme").unwrap();
        assert_eq!(rdns.len(), 3);
        assert_eq!(
            rdns[0],
            [
                Ava {
                    attr: "uid".into(),
                    value: "x,cn=admins".into()
                },
                Ava {
                    attr: "cn".into(),
                    value: "two".into()
                },
            ]
        );
        assert_eq!(rdns[2][0].attr, "dc");
        assert_eq!(
            parse_dn("cn=#04024869,dc=x").unwrap()[0][0].value,
            "#04024869"
        );
        assert!(parse_dn("").unwrap().is_empty());
        for bad in [
            "cn",
            "cn=a,dc",
            "=a",
            "cn=a\\",
            "cn=a\\q",
            "c n=a",
            "cn=\\ff\\fe",
        ] {
            assert!(parse_dn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_template_maps_accounts_both_ways() {
        let t = UserDn::parse("uid={account},ou=people,dc=acme,dc=test").unwrap();
        assert_eq!(t.dn("bob"), "uid=bob,ou=people,dc=acme,dc=test");
        for account in ["bob", "x,cn=admins", " #odd ", "a\\b\0c", "ünï"] {
            assert_eq!(
                t.account(&t.dn(account)).as_deref(),
                Some(account),
                "{account:?}"
            );
        }
        // As the server writes them back: other case, other escapes.
        assert_eq!(
            t.account("UID=x\\2Ccn\\3Dadmins,OU=People,dc=ACME,dc=test")
                .as_deref(),
            Some("x,cn=admins")
        );
        for other in [
            "cn=admin,dc=acme,dc=test",
            "uid=bob,ou=people,dc=acme,dc=test,dc=more",
            "uid=bob,ou=staff,dc=acme,dc=test",
            "cn=bob,ou=people,dc=acme,dc=test",
            "uid=bob+cn=b,ou=people,dc=acme,dc=test",
            "not a dn",
        ] {
            assert_eq!(t.account(other), None, "{other}");
        }
        for bad in [
            "ou=people,dc=acme",
            "uid={account},cn={account},dc=acme",
            "uid=x{account},dc=acme",
            "uid={account},dc",
        ] {
            assert!(UserDn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn holders_outside_the_template_are_reported_by_dn() {
        let p = LdapGroup::new("dir", &cfg(""));
        assert_eq!(p.holder("uid=bob,ou=people,dc=acme,dc=test"), "bob");
        assert_eq!(
            p.holder("cn=admin,dc=acme,dc=test"),
            "dn:cn=admin,dc=acme,dc=test"
        );
        // An account that would read as a `dn:` report is reported by DN.
        assert_eq!(
            p.holder("uid=dn:x,ou=people,dc=acme,dc=test"),
            "dn:uid=dn:x,ou=people,dc=acme,dc=test"
        );
        assert_eq!(
            p.value_of("dn:cn=admin,dc=acme,dc=test").unwrap(),
            "cn=admin,dc=acme,dc=test"
        );
        assert_eq!(
            p.value_of("x,cn=admins").unwrap(),
            "uid=x\\2Ccn\\3Dadmins,ou=people,dc=acme,dc=test"
        );
        assert_eq!(p.group_dn("ops"), "cn=ops,ou=groups,dc=acme,dc=test");
        assert_eq!(
            p.group_dn("x,cn=admins"),
            "cn=x\\2Ccn\\3Dadmins,ou=groups,dc=acme,dc=test"
        );
        let unique = LdapGroup::new("dir", &cfg("member_attribute = \"uniqueMember\""));
        assert_eq!(
            unique.holder("uid=bob,ou=people,dc=acme,dc=test#'0101'B"),
            "bob"
        );
        let uid = LdapGroup::new(
            "dir",
            &cfg("member_attribute = \"memberUid\"\nuser_dn = \"-\""),
        );
        assert_eq!(uid.holder("bob"), "bob");
        assert_eq!(uid.value_of("dn:x").unwrap(), "dn:x");
    }

    #[test]
    fn targets_are_group_names() {
        let c = cfg("");
        for ok in ["ops", "db-admins", "a.b_c", "9lives", &"g".repeat(64)] {
            assert!(c.check_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-ops",
            ".ops",
            "a/b",
            "a,b",
            "a=b",
            "a+b",
            "a b",
            "a@b",
            "a:b",
            "ops\0",
            "gr\u{f6}up",
            &"g".repeat(65),
        ] {
            assert!(c.check_target(bad).is_err(), "{bad}");
        }
        let c = cfg("groups = [\"ops\"]");
        assert!(c.check_target("ops").is_ok());
        assert!(c.check_target("admins").unwrap_err().contains("groups"));
    }

    #[test]
    fn plain_ldap_only_to_loopback() {
        for ok in [
            "url = \"ldap://127.0.0.1:3389\"\nstarttls = false",
            "url = \"ldap://localhost\"\nstarttls = false",
            "url = \"ldap://[::1]:389\"\nstarttls = false",
            "url = \"ldap://ldap.acme.test\"",
            "url = \"ldaps://ldap.acme.test:636\"\nstarttls = false",
        ] {
            assert!(cfg(ok).validate("providers.dir").is_ok(), "{ok}");
        }
        for bad in [
            "ldap://ldap.acme.test",
            "ldap://10.0.0.1",
            "ldap://127.example",
        ] {
            let e = error(&cfg(&format!("url = \"{bad}\"\nstarttls = false")));
            assert!(
                e.contains("providers.dir.starttls") && e.contains("clear"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn sections_are_checked_at_load() {
        for (more, key) in [
            ("url = \"https://ldap.acme.test\"", "url"),
            ("url = \"ldaps://u:p@ldap.acme.test\"", "url"),
            ("url = \"ldaps://ldap.acme.test/dc=x?uid\"", "url"),
            ("url = \"ldaps://\"", "url"),
            ("bind_dn = \"warrant\"", "bind_dn"),
            ("group_base = \"\"", "group_base"),
            ("groups = [\"a,b\"]", "groups[0]"),
            ("timeout = \"11m\"", "timeout"),
            ("ca_file = \"/nonexistent/ca.pem\"", "ca_file"),
            (
                "url = \"ldap://127.0.0.1\"\nstarttls = false\nca_file = \"/x.pem\"",
                "ca_file",
            ),
            ("user_dn = \"-\"", "user_dn"),
            ("user_dn = \"uid=x,dc=acme\"", "user_dn"),
            ("member_attribute = \"memberUid\"", "user_dn"),
        ] {
            let e = error(&cfg(more));
            assert!(e.contains(&format!("providers.dir.{key}")), "{more}: {e}");
        }
        assert!(cfg("member_attribute = \"memberUid\"\nuser_dn = \"-\"")
            .validate("providers.dir")
            .is_ok());
        let unknown: Result<LdapGroupProvider, _> = toml::from_str(
            "url = \"ldaps://h\"\nbind_dn = \"cn=a\"\ngroup_base = \"dc=x\"\n\
             member_attribute = \"owner\"",
        );
        assert!(unknown.is_err());
        // A secret never shows.
        let mut c = cfg("");
        c.bind_password = Some(SecretString::from("hunter2-secret"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_deploy_example_is_a_valid_section() {
        let text = include_str!("../../deploy/ldap/warrant-ldap.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        let providers = table["providers"].as_table().unwrap();
        assert!(!providers.is_empty());
        for (name, section) in providers {
            let mut section = section.as_table().unwrap().clone();
            assert_eq!(section.remove("kind").unwrap().as_str(), Some("ldap_group"));
            let cfg: LdapGroupProvider = toml::Value::Table(section).try_into().unwrap();
            cfg.validate(&format!("providers.{name}")).unwrap();
        }
    }
}
