//! The one pure decision: given a ticket snapshot, the configuration and
//! the time, what does the ticket warrant? Either exactly one grant, or a
//! denial with a machine-readable reason. No I/O, no clock of its own.
//! The same rules for CI deploy rights are `ci`.

pub mod ci;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, Policy};
use crate::domain::{glob, parse_duration, DenyReason, Resource, Source};
use crate::ticket::{edit_of, Approval, Edit, Request, Snapshot, TicketStatus};

/// A grant the ticket warrants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wanted {
    /// The principal.
    pub subject: String,
    /// The subject's account on the resource's provider.
    pub account: String,
    pub resource: Resource,
    pub starts_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Ties the grant to one approval: a grant is made at most once per
    /// approval, so a revoked grant is not granted again until re-approved.
    pub origin: String,
    pub policy: String,
    pub approver: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Decision {
    Warrant(Wanted),
    Deny { reason: DenyReason, detail: String },
}

impl Decision {
    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Deny { reason, .. } => Some(*reason),
            Decision::Warrant(_) => None,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Decision::Warrant(w) => format!(
                "warrants {} for {} from {} to {} (policy {}, approved by {})",
                w.resource,
                w.subject,
                crate::domain::rfc3339(w.starts_at),
                crate::domain::rfc3339(w.expires_at),
                w.policy,
                w.approver
            ),
            Decision::Deny { detail, .. } => detail.clone(),
        }
    }
}

fn deny(reason: DenyReason, detail: impl Into<String>) -> Decision {
    let (reason, detail) = denial(reason, detail);
    Decision::Deny { reason, detail }
}

/// A denial's detail quotes what a ticket says (a status name, an approver),
/// so control characters are written out: a NUL byte, which PostgreSQL's
/// text refuses, must not keep a denial from being recorded.
fn denial(reason: DenyReason, detail: impl Into<String>) -> (DenyReason, String) {
    (reason, crate::domain::printable(&detail.into()))
}

/// Does `policy` apply to a ticket from `source` (with its project)?
fn source_allowed(policy: &Policy, source: &str, project: &str) -> bool {
    policy.sources.iter().any(|s| {
        s == "*"
            || s == source
            || s.split_once(':').is_some_and(|(src, scope)| {
                src == source && (scope == project || glob::path(scope, project))
            })
    })
}

/// The policies that could allow `resource` for `subject` from `source`.
pub fn matching_policies<'a>(
    config: &'a Config,
    source: &str,
    project: &str,
    subject: &str,
    resource: &Resource,
) -> Vec<&'a Policy> {
    let resource = resource.to_string();
    config
        .policies
        .iter()
        .filter(|p| p.resources.iter().any(|r| glob::path(r, &resource)))
        .filter(|p| source_allowed(p, source, project))
        .filter(|p| p.subjects.iter().any(|s| glob::name(s, subject)))
        .collect()
}

/// What an approved, unchanged request brings to the rest of a decision.
#[derive(Debug)]
pub struct Approved<'s, 'c> {
    pub request: &'s Request,
    pub approval: &'s Approval,
    pub duration: Option<Duration>,
    /// The approvers that are known principals.
    pub approvers: Vec<&'c str>,
}

/// The checks every decision shares, whoever the subject: the ticket is
/// open and approved, warrant saw the approval, the request is what was
/// approved and readable, and the approvers are known principals.
pub fn approved_request<'s, 'c>(
    snap: &'s Snapshot,
    config: &'c Config,
) -> Result<Approved<'s, 'c>, (DenyReason, String)> {
    match snap.status {
        TicketStatus::Open => {}
        TicketStatus::Closed => {
            return Err(denial(
                DenyReason::TicketClosed,
                format!("the ticket is closed ({})", snap.source_status),
            ))
        }
        TicketStatus::Deleted => {
            return Err(denial(
                DenyReason::TicketClosed,
                "the ticket was deleted or moved",
            ))
        }
    }
    if let Some(why) = unwatched(snap, config) {
        return Err(denial(DenyReason::TicketClosed, why));
    }
    // While the source shows the approval as pending again because of an
    // extension, the approved request still stands (see `ticket::merge`).
    let pending_extension = match (&snap.approval, &snap.request) {
        (
            Some(Approval {
                request: Some(a), ..
            }),
            Some(r),
        ) => edit_of(a, r) == Edit::Extended,
        _ => false,
    };
    if !snap.approved && !pending_extension {
        return Err(denial(
            DenyReason::NotApproved,
            format!("the ticket is not approved (status {})", snap.source_status),
        ));
    }
    let Some(request) = &snap.request else {
        let why = snap.request_error.clone();
        return Err(denial(
            DenyReason::InvalidRequest,
            why.unwrap_or_else(|| "the ticket asks for nothing".into()),
        ));
    };
    let Some(approval) = &snap.approval else {
        return Err(denial(
            DenyReason::ApproverUnknown,
            "the ticket shows as approved, but warrant did not see who approved it; approve it again",
        ));
    };
    // An edit after the approval: a narrowing stands without a new
    // approval; an extension keeps the approved window until one comes;
    // anything else must be approved again.
    let request = if approval.fingerprint == snap.request_fingerprint() {
        request
    } else {
        match approval.request.as_ref().map(|a| (a, edit_of(a, request))) {
            Some((_, Edit::Narrowed)) => request,
            Some((approved, Edit::Extended)) => approved,
            _ => {
                return Err(denial(
                    DenyReason::RequestChanged,
                    "the request changed after it was approved; approve it again",
                ))
            }
        }
    };
    let duration = request
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| denial(DenyReason::InvalidRequest, e))?;
    let approvers: Vec<&str> = approval
        .approvers
        .iter()
        .filter_map(|a| config.principal_for(snap.source, a))
        .map(|i| i.principal.as_str())
        .collect();
    if approvers.is_empty() {
        return Err(denial(
            DenyReason::ApproverUnknown,
            format!(
                "approver {} is not in [[identities]]",
                approval.approvers.join(", ")
            ),
        ));
    }
    Ok(Approved {
        request,
        approval,
        duration,
        approvers,
    })
}

/// Why warrant no longer watches the ticket's source or project, if it does
/// not: the source was removed from `[sources]`, or the repository or Jira
/// project from its list. Such a ticket is closed for warrant, under the key
/// it had, so `reconcile` revokes what it warranted.
fn unwatched(snap: &Snapshot, config: &Config) -> Option<String> {
    let configured = match snap.source {
        Source::Github => config.sources.github.is_some(),
        Source::Jira => config.sources.jira.is_some(),
        Source::Servicenow => config.sources.servicenow.is_some(),
    };
    if !configured {
        Some(format!(
            "no longer watched: the {} source is not configured",
            snap.source
        ))
    } else if !config.watches(snap.source, &snap.project) {
        Some(format!(
            "no longer watched: {} is not listed in the configuration",
            scope(snap.source, &snap.project)
        ))
    } else {
        None
    }
}

/// What the snapshot warrants at `now`.
pub fn decide(snap: &Snapshot, config: &Config, now: DateTime<Utc>) -> Decision {
    let Approved {
        request,
        approval,
        duration,
        approvers,
    } = match approved_request(snap, config) {
        Ok(a) => a,
        Err((reason, detail)) => return Decision::Deny { reason, detail },
    };
    let resource: Resource = match request.resource.parse() {
        Ok(r) => r,
        Err(e) => return deny(DenyReason::InvalidRequest, e),
    };
    let Some(subject) = config.principal_for(snap.source, &request.subject) else {
        return deny(
            DenyReason::UnknownSubject,
            format!(
                "{} account `{}` is not in [[identities]]",
                snap.source, request.subject
            ),
        );
    };
    let subject = subject.principal.as_str();
    if !config.providers.contains_key(resource.provider()) {
        return deny(
            DenyReason::UnknownResource,
            format!("no provider `{}` is configured", resource.provider()),
        );
    }
    if let Err(why) = config.check_resource(&resource) {
        return deny(DenyReason::InvalidRequest, why);
    }
    let policies = matching_policies(
        config,
        snap.source.as_str(),
        &snap.project,
        subject,
        &resource,
    );
    if policies.is_empty() {
        return deny(
            DenyReason::NoPolicy,
            format!(
                "no policy allows {resource} from {} for {subject}",
                scope(snap.source, &snap.project)
            ),
        );
    }
    let mut first_denial = None;
    for policy in policies {
        match window_under(
            policy,
            subject,
            &approvers,
            request.start,
            request.end,
            duration,
            approval.at,
            now,
        ) {
            Ok((starts_at, expires_at, approver)) => {
                let origin = origin_of(&approval.approvers, approval.at, &approval.fingerprint);
                return Decision::Warrant(Wanted {
                    subject: subject.to_string(),
                    account: config.account_on(subject, resource.provider()),
                    resource,
                    starts_at,
                    expires_at,
                    origin,
                    policy: policy.name.clone(),
                    approver: approver.to_string(),
                });
            }
            Err((reason, detail)) => {
                first_denial.get_or_insert(Decision::Deny { reason, detail });
            }
        }
    }
    first_denial.unwrap_or_else(|| deny(DenyReason::NoPolicy, "no policy allows this request"))
}

fn scope(source: Source, project: &str) -> String {
    match source {
        Source::Servicenow => source.to_string(),
        _ => format!("{source}:{project}"),
    }
}

/// The window a policy allows: start, end, and the approver it accepted.
pub type Window<'a> = (DateTime<Utc>, DateTime<Utc>, &'a str);

/// Checks approvers and the window against one policy. Public so the CI
/// decision (`policy::ci`) applies the very same rules.
#[allow(clippy::too_many_arguments)]
pub fn window_under<'a>(
    policy: &Policy,
    subject: &str,
    approvers: &[&'a str],
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    duration: Option<Duration>,
    approved_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Window<'a>, (DenyReason, String)> {
    let allowed = |a: &str| policy.approvers.iter().any(|p| glob::name(p, a));
    let approver = match approvers.iter().find(|a| **a != subject && allowed(a)) {
        Some(a) => *a,
        None if approvers.contains(&subject) => {
            return Err(denial(
                DenyReason::SelfApproval,
                format!("{subject} approved their own request"),
            ))
        }
        None => {
            return Err(denial(
                DenyReason::ApproverNotAllowed,
                format!(
                    "{} may not approve under policy {}",
                    approvers.join(", "),
                    policy.name
                ),
            ))
        }
    };
    // Without a start the window opens at the approval, so re-deciding later
    // yields the same window instead of sliding it forward. A source clock
    // running ahead of ours must not push the start into the future.
    let start = start.unwrap_or(approved_at.min(now));
    // Sources read only years 1970 through 9999, but a stored snapshot or a
    // configured duration is not proof against overflow: out of chrono's
    // range is a denial, never a panic.
    let end = match end {
        Some(end) => end,
        None => {
            let length = duration.unwrap_or_else(|| {
                policy
                    .default_duration
                    .map_or(policy.max_duration.0.min(Duration::hours(1)), |d| d.0)
            });
            start.checked_add_signed(length).ok_or_else(|| {
                denial(
                    DenyReason::InvalidRequest,
                    "the window's end is out of range",
                )
            })?
        }
    };
    if end <= start {
        return Err(denial(
            DenyReason::InvalidRequest,
            "the window ends before it starts",
        ));
    }
    if crate::sources::in_range(end).is_none() {
        return Err(denial(
            DenyReason::InvalidRequest,
            format!(
                "the window would end at {}, outside the years 1970 through 9999",
                crate::domain::rfc3339(end)
            ),
        ));
    }
    if now >= end {
        return Err(denial(
            DenyReason::WindowOver,
            format!("the window ended at {}", crate::domain::rfc3339(end)),
        ));
    }
    // Two times in chrono's range are never further apart than a TimeDelta holds.
    let span = end.signed_duration_since(start.max(now));
    if span > policy.max_duration.0 {
        return Err(denial(
            DenyReason::DurationExceedsPolicy,
            format!(
                "{} asked, policy {} allows at most {}",
                crate::domain::format_duration(span),
                policy.name,
                crate::domain::format_duration(policy.max_duration.0)
            ),
        ));
    }
    Ok((start.max(now), end, approver))
}

/// A stable name for one approval.
pub fn origin_of(approvers: &[String], at: DateTime<Utc>, fingerprint: &str) -> String {
    let mut h = Sha256::new();
    h.update(approvers.join("\n").as_bytes());
    h.update(at.timestamp_micros().to_be_bytes());
    h.update(fingerprint.as_bytes());
    format!("approval:{}", &hex::encode(h.finalize())[..20])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TicketKey;
    use crate::ticket::{merge, ApprovalSignal, Request, TicketEvent};
    use chrono::TimeZone;

    const CONFIG: &str = r#"
[sources.github]
secret_env = "GH"
repositories = ["acme/req"]
[[identities]]
principal = "dave"
github = "dave-gh"
accounts = { prod-db = "dave_ro" }
[[identities]]
principal = "alice"
github = "alice-gh"
[[identities]]
principal = "mallory"
github = "mallory-gh"
[[policies]]
name = "prod-db"
resources = ["prod-db/readonly", "hooks/*"]
sources = ["github", "jira:OPS"]
subjects = ["*"]
approvers = ["alice", "dave"]
max_duration = "4h"
default_duration = "1h"
[providers.prod-db]
kind = "postgres"
url_env = "DB"
[providers.hooks]
kind = "token"
[providers.other]
kind = "token"
"#;

    fn config() -> Config {
        Config::from_toml(CONFIG, &|k| match k {
            "DB" => Some("postgres://x".to_string()),
            "GH" => Some("gh-secret".to_string()),
            _ => None,
        })
        .unwrap()
    }

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()
    }

    struct Case {
        name: &'static str,
        subject: &'static str,
        approver: &'static str,
        resource: &'static str,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        duration: Option<&'static str>,
        now: DateTime<Utc>,
        status: TicketStatus,
        signal: Option<ApprovalSignal>,
        edit_after: Option<&'static str>,
        expect: Result<(DateTime<Utc>, DateTime<Utc>), DenyReason>,
    }

    fn base(name: &'static str) -> Case {
        Case {
            name,
            subject: "dave-gh",
            approver: "alice-gh",
            resource: "prod-db/readonly",
            start: None,
            end: None,
            duration: Some("2h"),
            now: t(10, 0),
            status: TicketStatus::Open,
            signal: None,
            edit_after: None,
            expect: Ok((t(10, 0), t(12, 0))),
        }
    }

    fn run(c: &Case) -> Decision {
        let ev = |resource: &str, approval: ApprovalSignal| TicketEvent {
            key: TicketKey::github("acme/req", 1),
            source: Source::Github,
            project: "acme/req".into(),
            status: c.status,
            source_status: "open".into(),
            title: "t".into(),
            updated_at: t(10, 0),
            request: Ok(Request {
                subject: c.subject.into(),
                resource: resource.into(),
                start: c.start,
                end: c.end,
                duration: c.duration.map(Into::into),
                justification: "t".into(),
            }),
            approval,
        };
        let signal = c.signal.clone().unwrap_or(ApprovalSignal::Given {
            by: vec![c.approver.into()],
            at: t(10, 0),
        });
        let mut snap = merge(None, ev(c.resource, signal));
        if let Some(r) = c.edit_after {
            snap = merge(Some(&snap), ev(r, ApprovalSignal::Carried { still: true }));
        }
        decide(&snap, &config(), c.now)
    }

    #[test]
    fn every_rule_and_reason() {
        use DenyReason::*;
        let cases = vec![
            base("approved, default window from approval"),
            Case {
                duration: None,
                expect: Ok((t(10, 0), t(11, 0))),
                ..base("no duration gets default_duration")
            },
            Case {
                duration: Some("4h"),
                expect: Ok((t(10, 0), t(14, 0))),
                ..base("exactly max_duration")
            },
            Case {
                duration: Some("4h1m"),
                expect: Err(DurationExceedsPolicy),
                ..base("longer than max is denied, not shortened")
            },
            Case {
                start: Some(t(9, 0)),
                duration: Some("3h"),
                now: t(10, 0),
                expect: Ok((t(10, 0), t(12, 0))),
                ..base("window partly past starts now")
            },
            Case {
                start: Some(t(6, 0)),
                end: Some(t(11, 0)),
                now: t(10, 0),
                expect: Ok((t(10, 0), t(11, 0))),
                ..base("span counts from now, not from start")
            },
            Case {
                start: Some(t(13, 0)),
                duration: Some("1h"),
                expect: Ok((t(13, 0), t(14, 0))),
                ..base("future window is pending")
            },
            Case {
                now: t(12, 0),
                expect: Err(WindowOver),
                ..base("window over at its end, exclusive")
            },
            Case {
                start: Some(t(11, 0)),
                end: Some(t(10, 30)),
                duration: None,
                expect: Err(InvalidRequest),
                ..base("end before start")
            },
            Case {
                duration: Some("soon"),
                expect: Err(InvalidRequest),
                ..base("bad duration")
            },
            Case {
                resource: "no-slash",
                expect: Err(InvalidRequest),
                ..base("bad resource")
            },
            Case {
                resource: "nowhere/x",
                expect: Err(UnknownResource),
                ..base("unconfigured provider")
            },
            Case {
                resource: "other/x",
                expect: Err(NoPolicy),
                ..base("no policy for resource")
            },
            Case {
                subject: "stranger",
                expect: Err(UnknownSubject),
                ..base("unknown subject")
            },
            Case {
                approver: "stranger",
                expect: Err(ApproverUnknown),
                ..base("unknown approver")
            },
            Case {
                approver: "mallory-gh",
                expect: Err(ApproverNotAllowed),
                ..base("approver not in policy")
            },
            Case {
                approver: "dave-gh",
                expect: Err(SelfApproval),
                ..base("self approval")
            },
            Case {
                status: TicketStatus::Closed,
                expect: Err(TicketClosed),
                ..base("closed")
            },
            Case {
                status: TicketStatus::Deleted,
                expect: Err(TicketClosed),
                ..base("deleted")
            },
            Case {
                signal: Some(ApprovalSignal::Withdrawn),
                expect: Err(NotApproved),
                ..base("not approved")
            },
            Case {
                signal: Some(ApprovalSignal::Carried { still: true }),
                expect: Err(ApproverUnknown),
                ..base("label seen, labeler not")
            },
            Case {
                edit_after: Some("hooks/x"),
                expect: Err(RequestChanged),
                ..base("edited after approval")
            },
            Case {
                resource: "hooks/deploy",
                expect: Ok((t(10, 0), t(12, 0))),
                ..base("glob resource")
            },
        ];
        for c in &cases {
            let got = match run(c) {
                Decision::Warrant(w) => Ok((w.starts_at, w.expires_at)),
                Decision::Deny { reason, .. } => Err(reason),
            };
            assert_eq!(got, c.expect, "{}", c.name);
        }
    }

    #[test]
    fn account_and_origin() {
        let Decision::Warrant(w) = run(&base("x")) else {
            panic!("denied")
        };
        assert_eq!(w.account, "dave_ro");
        assert_eq!(w.subject, "dave");
        assert_eq!(w.approver, "alice");
        assert!(w.origin.starts_with("approval:"));
        let again = run(&Case {
            now: t(11, 0),
            ..base("later")
        });
        let Decision::Warrant(w2) = again else {
            panic!("denied")
        };
        assert_eq!(
            w.origin, w2.origin,
            "re-deciding keeps the approval's identity"
        );
        assert_eq!(w.expires_at, w2.expires_at);
    }

    #[test]
    fn window_arithmetic_never_overflows() {
        let last = DateTime::<Utc>::MAX_UTC;
        let c = Case {
            start: Some(last - Duration::minutes(1)),
            duration: Some("2h"),
            now: last - Duration::hours(1),
            ..base("a start at the end of time")
        };
        assert_eq!(run(&c).reason(), Some(DenyReason::InvalidRequest));
        let c = Case {
            start: Some(DateTime::<Utc>::MIN_UTC),
            end: Some(last),
            ..base("the widest window")
        };
        assert_eq!(run(&c).reason(), Some(DenyReason::InvalidRequest));
        let c = Case {
            start: Some(Utc.with_ymd_and_hms(9999, 12, 31, 23, 0, 0).unwrap()),
            duration: Some("2h"),
            ..base("an end past year 9999")
        };
        assert_eq!(run(&c).reason(), Some(DenyReason::InvalidRequest));
        let c = Case {
            start: Some(Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap()),
            end: Some(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()),
            ..base("the widest window in range")
        };
        assert_eq!(run(&c).reason(), Some(DenyReason::DurationExceedsPolicy));
    }

    #[test]
    fn a_ticket_warrant_no_longer_watches_is_closed() {
        let c = base("watched");
        let ev = TicketEvent {
            key: TicketKey::github("acme/gone", 1),
            source: Source::Github,
            project: "acme/gone".into(),
            status: TicketStatus::Open,
            source_status: "open".into(),
            title: "t".into(),
            updated_at: t(10, 0),
            request: Ok(Request {
                subject: c.subject.into(),
                resource: c.resource.into(),
                start: None,
                end: None,
                duration: Some("2h".into()),
                justification: "t".into(),
            }),
            approval: ApprovalSignal::Given {
                by: vec![c.approver.into()],
                at: t(10, 0),
            },
        };
        let snap = merge(None, ev.clone());
        let d = decide(&snap, &config(), t(10, 0));
        assert_eq!(d.reason(), Some(DenyReason::TicketClosed));
        assert!(d.detail().contains("acme/gone"), "{}", d.detail());
        let jira = merge(
            None,
            TicketEvent {
                key: TicketKey::jira("OPS-1"),
                source: Source::Jira,
                project: "OPS".into(),
                ..ev
            },
        );
        let d = decide(&jira, &config(), t(10, 0));
        assert_eq!(d.reason(), Some(DenyReason::TicketClosed));
        assert!(d.detail().contains("jira source"), "{}", d.detail());
    }
}
