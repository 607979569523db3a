//! The domain's vocabulary: ticket keys, resources, durations, grant states and
//! the machine-readable reasons for denials and revocations. Values here are
//! parsed at the edge, so an invalid one cannot travel further in.

pub mod glob;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The system a ticket lives in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Github,
    Jira,
    Servicenow,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Github, Source::Jira, Source::Servicenow];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Github => "github",
            Source::Jira => "jira",
            Source::Servicenow => "servicenow",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "github" => Ok(Source::Github),
            "jira" => Ok(Source::Jira),
            "servicenow" => Ok(Source::Servicenow),
            other => Err(format!(
                "unknown source `{other}` (expected github, jira or servicenow)"
            )),
        }
    }
}

/// A ticket's key, prefixed by its source: `github:OWNER/REPO#N`,
/// `jira:KEY-N`, `servicenow:NUMBER`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct TicketKey(String);

impl TicketKey {
    pub fn github(repo: &str, number: u64) -> Self {
        TicketKey(format!("github:{repo}#{number}"))
    }
    pub fn jira(key: &str) -> Self {
        TicketKey(format!("jira:{key}"))
    }
    pub fn servicenow(number: &str) -> Self {
        TicketKey(format!("servicenow:{number}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn source(&self) -> Source {
        // The constructor guarantees one of the three prefixes.
        if self.0.starts_with("github:") {
            Source::Github
        } else if self.0.starts_with("jira:") {
            Source::Jira
        } else {
            Source::Servicenow
        }
    }
}

impl FromStr for TicketKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{s}` is not a ticket key (github:OWNER/REPO#N, jira:KEY-N or servicenow:NUMBER)"
            )
        };
        if s.len() > 512 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad());
        }
        let (source, rest) = s.split_once(':').ok_or_else(bad)?;
        // Names are what the sources themselves allow, no more: a key is
        // put into API paths and queries (back-links), where anything else
        // could change what is addressed (a ServiceNow `^OR` in a query).
        let name = |p: &str, extra: &[char]| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
        };
        let ok = match source {
            "github" => match rest.rsplit_once('#') {
                Some((repo, n)) => {
                    repo.split_once('/').is_some_and(|(owner, name_)| {
                        name(owner, &['-', '.']) && name(name_, &['-', '.'])
                    }) && n.parse::<u64>().is_ok()
                }
                None => false,
            },
            "jira" => match rest.rsplit_once('-') {
                Some((project, n)) => name(project, &[]) && n.parse::<u64>().is_ok(),
                None => false,
            },
            "servicenow" => name(rest, &['-', '.']),
            _ => false,
        };
        if ok {
            Ok(TicketKey(s.to_string()))
        } else {
            Err(bad())
        }
    }
}

impl TryFrom<String> for TicketKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TicketKey> for String {
    fn from(k: TicketKey) -> String {
        k.0
    }
}

impl fmt::Display for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `PROVIDER/TARGET`, e.g. `prod-db/readonly`. The provider part names a
/// configured provider; the target is what that provider grants, written
/// in the contract's target syntax (`check_target`), which each provider
/// may narrow further (`providers::check_target`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct Resource {
    provider: String,
    target: String,
}

impl Resource {
    pub fn provider(&self) -> &str {
        &self.provider
    }
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// The longest target accepted.
pub const MAX_TARGET: usize = 256;

/// The characters a target segment may hold besides ASCII letters and digits.
pub const TARGET_PUNCTUATION: &str = "._:@+=,-";

/// A provider kind's own target rule, narrower than the contract's syntax
/// (`check_target`). Each kind states it in its own file
/// (`providers::<kind>`), on its configuration section, so a decision reads
/// it through the configuration without knowing the providers.
pub trait TargetRule {
    fn check_target(&self, target: &str) -> Result<(), String>;
}

/// The contract's target syntax: one or more `/`-separated segments of
/// ASCII letters, digits and `._:@+=,-`, none of them empty, `.` or `..`.
/// This refuses traversal (`a/../b`), empty segments (`a//b`, `a/`),
/// percent-encoding (`a%2Fb`), whitespace, control characters and every
/// non-ASCII character, lookalikes included, so what an approver reads is
/// the one thing a provider can receive.
pub fn check_target(target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("the target is empty".into());
    }
    if target.len() > MAX_TARGET {
        return Err(format!("the target is longer than {MAX_TARGET} bytes"));
    }
    for segment in target.split('/') {
        match segment {
            "" => return Err("the target has an empty segment (`//` or a `/` at an end)".into()),
            "." | ".." => return Err(format!("the target has a `{segment}` segment")),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && !TARGET_PUNCTUATION.contains(*c))
        {
            return Err(format!(
                "the target holds {}; a target is `/`-separated segments of ASCII letters, digits and `{TARGET_PUNCTUATION}`",
                describe_char(c)
            ));
        }
    }
    Ok(())
}

/// Names a character for an error message without writing a control or
/// invisible character into it.
fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("`{c}`")
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

/// The longest role name PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_PG_ROLE: usize = 63;

/// A role name as the `postgres` provider takes it (as a target, and in its
/// `roles` and `allow_privileged`): an ASCII letter or `_`, then up to 62
/// ASCII letters, digits, `_`, `$` or `-`. Narrower than what
/// PostgreSQL can quote, so that what an approver reads is the role, with
/// no lookalike, no case or length surprise (PostgreSQL would cut a longer
/// name to 63 bytes).
pub fn check_pg_role(role: &str) -> Result<(), String> {
    let mut chars = role.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || role.len() > MAX_PG_ROLE
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-'))
    {
        return Err(format!(
            "a PostgreSQL role name is an ASCII letter or `_`, then up to {} letters, digits, `_`, `$` or `-`",
            MAX_PG_ROLE - 1
        ));
    }
    Ok(())
}

/// A user-supplied string for an error message: shortened, with control and
/// other non-printing characters escaped.
pub fn shown(s: &str, max: usize) -> String {
    truncate(s, max).escape_debug().to_string()
}

impl FromStr for Resource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "`{}` is not a resource PROVIDER/TARGET: {why}",
                shown(s, 80)
            )
        };
        let (provider, target) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        if provider.is_empty()
            || provider.len() > 64
            || !provider
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("the provider is letters, digits, `-` and `_`"));
        }
        check_target(target).map_err(|why| bad(&why))?;
        Ok(Resource {
            provider: provider.to_string(),
            target: target.to_string(),
        })
    }
}

/// Whether a ticket's resource field is readable text shaped like
/// `PROVIDER/TARGET` (no whitespace or control characters). Sources keep
/// such a value as the ticket wrote it, so that the decision denies a
/// target outside the contract's syntax as `invalid_request` with its
/// reason, and a CI ticket may ask for a pattern (`deploy/*`).
pub fn check_resource_text(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!(
            "`{}` is not a resource PROVIDER/TARGET: {why}",
            shown(s, 80)
        )
    };
    let (provider, target) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
    if provider.is_empty() || target.is_empty() || s.len() > 64 + 1 + MAX_TARGET {
        return Err(bad("the provider or target is empty, or it is too long"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("it holds whitespace or control characters"));
    }
    Ok(())
}

impl TryFrom<String> for Resource {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Resource> for String {
    fn from(r: Resource) -> String {
        r.to_string()
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.target)
    }
}

/// A user-supplied string with its control characters written out
/// (`\u{0}`, `\n`), so a message or a recorded detail never carries a raw
/// NUL (which PostgreSQL's text refuses) or a line break.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Shortens a user-supplied string for an error message, on a char boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// Percent-encodes one URL path segment (keeps `-`, `.`, `_`, `~` and alphanumerics).
pub fn path_segment(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Parses durations written `90s`, `30m`, `4h`, `1h30m`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{}` is not a duration (write 90s, 30m, 4h, 1h30m or 2d)",
            truncate(s, 40)
        )
    };
    let s = s.trim();
    if s.is_empty() || s.len() > 32 {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut num: Option<i64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = num.unwrap_or(0);
            num = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(i64::from(d)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n = num.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if num.is_some() || total <= 0 || total > 366 * 86_400 {
        return Err(bad());
    }
    Ok(Duration::seconds(total))
}

/// Writes a duration the way `parse_duration` reads it.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.num_seconds();
    if secs <= 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if secs >= unit {
            out.push_str(&format!("{}{}", secs / unit, name));
            secs %= unit;
        }
    }
    out
}

/// RFC 3339 in UTC with only the fractional digits that are needed.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Database times are microseconds since the Unix epoch, UTC, on both backends.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $s)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", stringify!($name), " `{}` (expected one of: {})"),
                        truncate(other, 40),
                        [$($s),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Where a grant is in its life.
    // utoipa does not read the macro's per-variant renames; these are the
    // same names.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    GrantState {
        Pending => "pending",
        Granting => "granting",
        Active => "active",
        Revoking => "revoking",
        Revoked => "revoked",
        Failed => "failed",
    }
);

impl GrantState {
    /// Live grants hold, or are about to hold, access at the provider.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            GrantState::Pending | GrantState::Granting | GrantState::Active
        )
    }
}

string_enum!(
    /// Why a grant was revoked.
    RevokeReason {
        Expired => "expired",
        TicketClosed => "ticket_closed",
        ApprovalWithdrawn => "approval_withdrawn",
        RequestChanged => "request_changed",
        Manual => "manual",
        CiDone => "ci_done",
        Drift => "drift",
    }
);

string_enum!(
    /// Why a ticket warrants nothing.
    DenyReason {
        TicketClosed => "ticket_closed",
        NotApproved => "not_approved",
        UnknownSubject => "unknown_subject",
        UnknownResource => "unknown_resource",
        NoPolicy => "no_policy",
        SelfApproval => "self_approval",
        ApproverNotAllowed => "approver_not_allowed",
        ApproverUnknown => "approver_unknown",
        WindowOver => "window_over",
        InvalidRequest => "invalid_request",
        DurationExceedsPolicy => "duration_exceeds_policy",
        RequestChanged => "request_changed",
    }
);

impl DenyReason {
    /// The reason a live grant is revoked when its ticket stops warranting it.
    pub fn revoke_reason(self) -> RevokeReason {
        match self {
            DenyReason::TicketClosed => RevokeReason::TicketClosed,
            DenyReason::WindowOver => RevokeReason::Expired,
            DenyReason::RequestChanged | DenyReason::InvalidRequest => RevokeReason::RequestChanged,
            _ => RevokeReason::ApprovalWithdrawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::days(2)));
        for bad in [
            "",
            "h",
            "10",
            "1x",
            "-1h",
            "0s",
            "99999999999999999999h",
            "1h 30m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::minutes(90)), "1h30m");
    }

    #[test]
    fn ticket_keys() {
        for ok in ["github:acme/app#42", "jira:OPS-7", "servicenow:CHG0030001"] {
            assert_eq!(
                ok.parse::<TicketKey>().map(|k| k.to_string()),
                Ok(ok.into())
            );
        }
        for bad in [
            "github:acme#1",
            "github:a/b/c#1",
            "jira:OPS",
            "gitlab:x",
            "servicenow:",
            "jira:A -1",
            "servicenow:CHG1^ORnumber=CHG2",
            "github:../x#1",
            "github:a/b%2Fc#1",
            "jira:OPS/../X-1",
        ] {
            assert!(bad.parse::<TicketKey>().is_err(), "{bad}");
        }
        assert_eq!(TicketKey::github("a/b", 3).source(), Source::Github);
    }

    #[test]
    fn resources() {
        let r: Resource = "deploy/production".parse().unwrap();
        assert_eq!((r.provider(), r.target()), ("deploy", "production"));
        let r: Resource = "hooks/a/b".parse().unwrap();
        assert_eq!(r.target(), "a/b");
        for bad in ["nope", "/x", "p/", "p q/x", "p/x y", "p/x\n"] {
            assert!(bad.parse::<Resource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_follow_the_contract_syntax() {
        for ok in [
            "hooks/a",
            "hooks/a/b/c",
            "hooks/A-Z_0.9:x@y+z=w,v",
            "hooks/...",
            "hooks/.hidden",
            "hooks/a..b",
        ] {
            assert!(ok.parse::<Resource>().is_ok(), "{ok}");
        }
        for bad in [
            "hooks/..",
            "hooks/.",
            "hooks/../admin",
            "hooks/a/../../x",
            "hooks/./a",
            "hooks//a",
            "hooks/a/",
            "hooks//",
            "hooks/a%2Fb",
            "hooks/a\\b",
            "hooks/a\u{0}b",
            "hooks/a\u{7f}",
            "hooks/a\tb",
            "hooks/a\u{a0}b",
            "hooks/a\u{200b}b",
            "hooks/\u{430}dmin", // Cyrillic a
            "hooks/ａdmin",      // fullwidth a
            "hooks/a*",
            "hooks/a?b",
            "hooks/a#b",
            "hooks/a;b",
            "hooks/a\"b",
            "hooks/a'b",
            "hooks/$x",
        ] {
            let err = bad.parse::<Resource>().unwrap_err();
            assert!(
                !err.chars().any(|c| c.is_control()),
                "{bad}: the message holds a control character: {err}"
            );
        }
        assert!(format!("hooks/{}", "a".repeat(MAX_TARGET))
            .parse::<Resource>()
            .is_ok());
        assert!(format!("hooks/{}", "a".repeat(MAX_TARGET + 1))
            .parse::<Resource>()
            .is_err());
        let err = "hooks/a\u{0}b".parse::<Resource>().unwrap_err();
        assert!(err.contains("U+0000"), "{err}");
    }

    #[test]
    fn resource_text_is_readable_but_not_yet_a_target() {
        assert!(check_resource_text("deploy/*").is_ok());
        assert!(check_resource_text("hooks/../x").is_ok());
        for bad in ["nope", "p/", "/x", "p/x y", "p/x\u{0}", "p/x\u{2028}"] {
            assert!(check_resource_text(bad).is_err(), "{bad:?}");
        }
    }
}
