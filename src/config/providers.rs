//! The providers (`[providers.NAME]`): one section per configured provider,
//! its `kind` choosing which struct it is read into, with the secrets each
//! kind needs and the rules its values must keep. What a provider does with
//! them lives in `crate::providers`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::Duration;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::secrets::{redacted, redacted_all};
use super::{invalid, ConfigDuration, ConfigError, DriftMode, FIELD_MARK};
use crate::access::{Deps, Provider};
use crate::domain::{Resource, TargetRule};

/// What every provider section does for the configuration: name its kind,
/// bound its calls, read its secrets, check its values, state its target
/// rule (`TargetRule`), and build its provider. Each kind implements it in
/// its own file under `providers/`, beside the provider it builds.
pub trait ProviderSection: TargetRule + fmt::Debug + Send + Sync {
    /// The deadline of one call to the provider; `None` for a provider
    /// that calls nothing outside warrant.
    fn timeout(&self) -> Option<ConfigDuration>;
    /// Reads the secrets the section names; `at` is `providers.NAME`.
    fn load_secrets(
        &mut self,
        _at: &str,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        Ok(())
    }
    /// The kind's own rules on its values; `at` is `providers.NAME`.
    fn validate(&self, _at: &str) -> Result<(), ConfigError> {
        Ok(())
    }
    /// The provider this section configures.
    fn build(&self, name: &str, deps: &Deps) -> Box<dyn Provider>;
    /// The section's own drift mode, for a kind that lists holders and
    /// takes `drift = ...` in its section; `None` follows `[drift]`.
    fn drift(&self) -> Option<DriftMode> {
        None
    }
    /// The one spelling of `account` at this kind, where it has several
    /// (`mysql`: `dave` is `dave@%`): grants, the access ledger and drift
    /// checks compare accounts as text, so each access must be written once.
    fn canonical_account(&self, account: &str) -> String {
        account.to_string()
    }
}

/// The registry of provider kinds: one line per kind, `"kind" =>
/// Variant(SectionStruct)`. It makes `ProviderConfig` (one variant per
/// kind), reads a section into the struct its `kind` names, and reaches
/// each section through `ProviderSection`.
macro_rules! provider_kinds {
    ($($kind:literal => $variant:ident($section:ty)),+ $(,)?) => {
        #[derive(Debug, Clone)]
        pub enum ProviderConfig {
            $($variant($section)),+
        }

        /// Every kind's name, as `kind = ` takes it.
        pub const PROVIDER_KINDS: &[&str] = &[$($kind),+];

        impl ProviderConfig {
            pub fn kind(&self) -> &'static str {
                match self {
                    $(ProviderConfig::$variant(_) => $kind),+
                }
            }

            pub fn section(&self) -> &dyn ProviderSection {
                match self {
                    $(ProviderConfig::$variant(s) => s),+
                }
            }

            fn section_mut(&mut self) -> &mut dyn ProviderSection {
                match self {
                    $(ProviderConfig::$variant(s) => s),+
                }
            }

            fn read<E: serde::de::Error>(kind: &str, table: toml::Table) -> Result<Self, E> {
                match kind {
                    $($kind => section_from(table).map(ProviderConfig::$variant),)+
                    other => Err(E::custom(format!(
                        "{FIELD_MARK}kind: unknown provider kind `{}` ({})",
                        crate::domain::truncate(other, 40),
                        PROVIDER_KINDS.join(", ")
                    ))),
                }
            }
        }
    };
}

provider_kinds! {
    "postgres" => Postgres(PostgresProvider),
    "http" => Http(HttpProvider),
    "github_team" => GithubTeam(GithubTeamProvider),
    "token" => Token(TokenProvider),
    "aws_identity_center" => AwsIdentityCenter(AwsIdentityCenterProvider),
    "ssh" => Ssh(SshProvider),
    "ldap_group" => LdapGroup(LdapGroupProvider),
    "mysql" => Mysql(MysqlProvider),
}

/// Reads one section's table into its struct; an error names the key.
fn section_from<'a, T: Deserialize<'a>, E: serde::de::Error>(table: toml::Table) -> Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().message();
        if path == "." {
            E::custom(message)
        } else {
            E::custom(format!("{FIELD_MARK}{path}: {message}"))
        }
    })
}

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        match table.remove("kind") {
            Some(toml::Value::String(kind)) => ProviderConfig::read(&kind, table),
            Some(_) => Err(D::Error::custom(format!(
                "{FIELD_MARK}kind: must be a string"
            ))),
            None => Err(D::Error::custom(format!(
                "missing field `kind` ({})",
                PROVIDER_KINDS.join(", ")
            ))),
        }
    }
}

impl ProviderConfig {
    /// The section's target rule, stated in its provider's own file.
    pub fn rule(&self) -> &dyn TargetRule {
        self.section()
    }

    /// The target rule of provider `name`: the contract's syntax, then the
    /// narrower rule of its kind. The error names the rule.
    pub fn check_target(&self, name: &str, target: &str) -> Result<(), String> {
        crate::domain::check_target(target)
            .and_then(|()| self.rule().check_target(target))
            .map_err(|why| {
                format!(
                    "provider `{name}` ({}) refuses target `{}`: {why}",
                    self.kind(),
                    crate::domain::shown(target, 80)
                )
            })
    }

    pub fn timeout(&self) -> Option<ConfigDuration> {
        self.section().timeout()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresProvider {
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    #[serde(skip)]
    pub url: Option<SecretString>,
    /// Roles this provider may grant; empty means any role a policy allows.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Roles it may grant although they are, or belong to, a role with
    /// SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS; any other such role
    /// is refused at grant time.
    #[serde(default)]
    pub allow_privileged: Vec<String>,
    /// The deadline of one grant or revoke (shorter than `jobs.lease`); on
    /// the provider's server also the longest a statement, a wait for a
    /// lock or a wait for a connection may take.
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
    /// This provider's drift mode; default `[drift] drift`.
    pub drift: Option<DriftMode>,
    /// End the account's open sessions after its access is removed, so a
    /// session that already did `SET ROLE` loses the role too.
    #[serde(default = "yes")]
    pub terminate_sessions: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlProvider {
    /// A `mysql://user:password@host:port` URL (a secret).
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    #[serde(skip)]
    pub url: Option<SecretString>,
    /// Roles this provider may grant; empty means any role a policy allows.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Roles it may grant although they hold, or are granted a role that
    /// holds, SUPER, GRANT OPTION, CREATE USER or ALL PRIVILEGES on `*.*`;
    /// any other such role is refused at grant time.
    #[serde(default)]
    pub allow_privileged: Vec<String>,
    /// Make the granted role the account's default role while granted, so
    /// it is in force at login without `SET ROLE`.
    #[serde(default)]
    pub default_role: bool,
    /// End the account's open sessions after its access is removed: a
    /// session that took the role keeps it until it ends.
    #[serde(default = "yes")]
    pub terminate_sessions: bool,
    /// The deadline of one grant or revoke (shorter than `jobs.lease`); on
    /// the server also the longest a wait for a metadata lock may take.
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
    /// This provider's drift mode; default `[drift] drift`.
    pub drift: Option<DriftMode>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProvider {
    pub url: String,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub secret: Option<SecretString>,
    #[serde(default = "default_http_timeout")]
    pub timeout: ConfigDuration,
}

fn default_http_timeout() -> ConfigDuration {
    ConfigDuration(Duration::seconds(5))
}

fn default_provider_timeout() -> ConfigDuration {
    ConfigDuration(Duration::seconds(10))
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubTeamProvider {
    #[serde(default = "super::sources::default_github_api")]
    pub api_url: String,
    pub org: String,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(skip)]
    pub token: Option<SecretString>,
    /// The deadline of one grant or revoke; shorter than `jobs.lease`.
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
}

/// AWS IAM Identity Center account assignments. No secrets here: the
/// credentials come from the standard AWS chain (environment, profile,
/// web identity, container or instance metadata), so none is ever in the
/// file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIdentityCenterProvider {
    /// The Identity Center instance (`arn:aws:sso:::instance/ssoins-...`).
    pub instance_arn: String,
    /// The identity store whose `UserName`s are the accounts (`d-...`).
    pub identity_store_id: String,
    /// The region the instance lives in.
    pub region: String,
    /// Another endpoint for both APIs (a VPC endpoint, or an emulator).
    pub endpoint_url: Option<String>,
    /// The deadline of one grant or revoke, waiting for AWS to finish the
    /// assignment included; shorter than `jobs.lease`.
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
    /// This provider's drift mode; default `[drift] drift`.
    pub drift: Option<DriftMode>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenProvider {
    /// PKCS#8 PEM signing key (P-256 for ES256, or Ed25519 for EdDSA);
    /// without it a P-256 key is generated and kept in the database.
    pub key_file: Option<PathBuf>,
    /// Earlier `key_file`s, still published and accepted after a rotation
    /// until the credentials they signed have expired.
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
    /// For the generated key: make a new one when it is this old. The old
    /// one stays published until every credential it signed has expired.
    /// (One generated key serves every token provider without `key_file`;
    /// the shortest `rotate_after` among them applies.)
    pub rotate_after: Option<ConfigDuration>,
    /// The credentials' `iss`; default `{server.public_url}/providers/NAME`.
    pub issuer: Option<String>,
    /// The credentials' `aud`; default the grant's resource (`NAME/TARGET`).
    pub audience: Option<String>,
    /// The contents of `key_file`, read and checked at load.
    #[serde(skip)]
    pub key: Option<SecretString>,
    /// The contents of `previous_key_files`.
    #[serde(skip)]
    pub previous_keys: Vec<SecretString>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshProvider {
    /// The certificate authority's Ed25519 private key, in OpenSSH format
    /// (`ssh-keygen -t ed25519`, no passphrase), from a file or from an
    /// environment variable.
    pub ca_key_file: Option<PathBuf>,
    pub ca_key_env: Option<String>,
    /// The certificates' extensions (`permit-pty`, `permit-port-forwarding`,
    /// `permit-agent-forwarding`, `permit-X11-forwarding`, `permit-user-rc`,
    /// or a vendor's `name@domain`).
    #[serde(default = "default_ssh_extensions")]
    pub extensions: Vec<String>,
    /// The text of the CA key, read and checked at load.
    #[serde(skip)]
    pub ca_key: Option<SecretString>,
}

fn default_ssh_extensions() -> Vec<String> {
    vec!["permit-pty".into()]
}

/// An `ldap_group` provider: membership of `cn=TARGET,{group_base}` in an
/// LDAP directory (`crate::providers::ldap_group`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapGroupProvider {
    /// `ldaps://HOST[:PORT]`, or `ldap://HOST[:PORT]` with StartTLS.
    pub url: String,
    /// StartTLS on an `ldap://` URL; `false` (plain LDAP, the password in
    /// clear) is accepted only for a loopback host.
    #[serde(default = "yes")]
    pub starttls: bool,
    /// PEM file of the CA(s) to trust instead of the system's store.
    pub ca_file: Option<PathBuf>,
    /// The DN warrant binds as.
    pub bind_dn: String,
    pub bind_password_env: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    #[serde(skip)]
    pub bind_password: Option<SecretString>,
    /// The account's DN, with `{account}` as one whole RDN value, e.g.
    /// `uid={account},ou=people,dc=acme,dc=test`; not used (and refused)
    /// with `member_attribute = "memberUid"`.
    pub user_dn: Option<String>,
    /// Where the groups are: target `T` is the group `cn=T,{group_base}`.
    pub group_base: String,
    #[serde(default)]
    pub member_attribute: MemberAttribute,
    /// Groups (cn) this provider may grant; empty means any a policy allows.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The deadline of one grant, revoke or read (shorter than `jobs.lease`).
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
    /// This provider's drift mode; default `[drift] drift`.
    pub drift: Option<DriftMode>,
}

/// The group attribute an `ldap_group` provider writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MemberAttribute {
    /// `groupOfNames`: the account's DN.
    #[default]
    #[serde(rename = "member")]
    Member,
    /// `groupOfUniqueNames`: the account's DN.
    #[serde(rename = "uniqueMember")]
    UniqueMember,
    /// `posixGroup` (RFC 2307): the account itself.
    #[serde(rename = "memberUid")]
    MemberUid,
}

impl MemberAttribute {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberAttribute::Member => "member",
            MemberAttribute::UniqueMember => "uniqueMember",
            MemberAttribute::MemberUid => "memberUid",
        }
    }

    /// Whether its values are DNs (else the account itself).
    pub fn holds_dns(self) -> bool {
        self != MemberAttribute::MemberUid
    }
}

impl fmt::Debug for LdapGroupProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapGroupProvider")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password_env", &self.bind_password_env)
            .field("bind_password_file", &self.bind_password_file)
            .field("bind_password", &redacted(&self.bind_password))
            .field("user_dn", &self.user_dn)
            .field("group_base", &self.group_base)
            .field("member_attribute", &self.member_attribute)
            .field("groups", &self.groups)
            .field("timeout", &self.timeout)
            .field("drift", &self.drift)
            .finish()
    }
}

impl fmt::Debug for PostgresProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresProvider")
            .field("url_env", &self.url_env)
            .field("url_file", &self.url_file)
            .field("url", &redacted(&self.url))
            .field("roles", &self.roles)
            .field("allow_privileged", &self.allow_privileged)
            .field("timeout", &self.timeout)
            .field("drift", &self.drift)
            .field("terminate_sessions", &self.terminate_sessions)
            .finish()
    }
}

impl fmt::Debug for MysqlProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlProvider")
            .field("url_env", &self.url_env)
            .field("url_file", &self.url_file)
            .field("url", &redacted(&self.url))
            .field("roles", &self.roles)
            .field("allow_privileged", &self.allow_privileged)
            .field("default_role", &self.default_role)
            .field("terminate_sessions", &self.terminate_sessions)
            .field("timeout", &self.timeout)
            .field("drift", &self.drift)
            .finish()
    }
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProvider")
            .field("url", &self.url)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for GithubTeamProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubTeamProvider")
            .field("api_url", &self.api_url)
            .field("org", &self.org)
            .field("token_env", &self.token_env)
            .field("token_file", &self.token_file)
            .field("token", &redacted(&self.token))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("key_file", &self.key_file)
            .field("previous_key_files", &self.previous_key_files)
            .field("rotate_after", &self.rotate_after)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("key", &redacted(&self.key))
            .field("previous_keys", &redacted_all(&self.previous_keys))
            .finish()
    }
}

impl fmt::Debug for SshProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshProvider")
            .field("ca_key_file", &self.ca_key_file)
            .field("ca_key_env", &self.ca_key_env)
            .field("extensions", &self.extensions)
            .field("ca_key", &redacted(&self.ca_key))
            .finish()
    }
}

pub(super) fn load_secrets(
    providers: &mut BTreeMap<String, ProviderConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (name, p) in providers.iter_mut() {
        p.section_mut()
            .load_secrets(&format!("providers.{name}"), env)?;
    }
    Ok(())
}

/// Provider names and each kind's own rules.
pub(super) fn validate(providers: &BTreeMap<String, ProviderConfig>) -> Result<(), ConfigError> {
    for (name, _) in providers.iter() {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                format!("providers.{name}"),
                "a provider name is letters, digits, `-` and `_`",
            ));
        }
    }
    for (name, p) in providers.iter() {
        p.section().validate(&format!("providers.{name}"))?;
    }
    Ok(())
}

/// A call that outlived its job's lease could overlap the next runner's
/// call for the same grant.
/// Checks each name of each listed key by `rule`; an error names the key
/// and index (`providers.NAME.roles[2]`).
pub fn check_names(
    at: &str,
    lists: &[(&str, &[String])],
    rule: fn(&str) -> Result<(), String>,
) -> Result<(), ConfigError> {
    for (key, names) in lists {
        for (i, name) in names.iter().enumerate() {
            rule(name).map_err(|m| invalid(format!("{at}.{key}[{i}]"), m))?;
        }
    }
    Ok(())
}

/// The ceiling on a timeout the provider also sets on its server
/// (statements, lock waits, connections).
pub fn timeout_at_most_10m(at: &str, timeout: ConfigDuration) -> Result<(), ConfigError> {
    if timeout.0 > Duration::minutes(10) {
        return Err(invalid(format!("{at}.timeout"), "is longer than 10m"));
    }
    Ok(())
}

pub(super) fn validate_timeouts(
    providers: &BTreeMap<String, ProviderConfig>,
    lease: ConfigDuration,
) -> Result<(), ConfigError> {
    for (name, p) in providers.iter() {
        let Some(timeout) = p.timeout() else {
            continue;
        };
        if timeout.0 <= Duration::zero() {
            return Err(invalid(
                format!("providers.{name}.timeout"),
                "must be above 0",
            ));
        }
        if timeout >= lease {
            return Err(invalid(
                format!("providers.{name}.timeout"),
                format!(
                    "must be shorter than jobs.lease ({})",
                    crate::domain::format_duration(lease.0)
                ),
            ));
        }
    }
    Ok(())
}

impl super::Config {
    /// `ProviderConfig::check_target` for a resource; an unconfigured
    /// provider is refused too.
    pub fn check_resource(&self, resource: &Resource) -> Result<(), String> {
        match self.providers.get(resource.provider()) {
            Some(p) => p.check_target(resource.provider(), resource.target()),
            None => Err(format!(
                "no provider `{}` is configured",
                resource.provider()
            )),
        }
    }
}
