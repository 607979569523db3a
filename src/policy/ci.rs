//! The pure decisions for CI deploy rights. Given the verified claims of a
//! pipeline's OIDC token, the stored ticket snapshot, the configuration and
//! the time: which `[[ci.trust]]` rule names the pipeline, and does the
//! ticket warrant the asked resource for that CI principal now? No I/O, no
//! clock of its own.
//!
//! The ticket checks are `policy::decide`'s (open, approved, approver rules,
//! request unchanged since approval, window, the policy's `max_duration`),
//! applied with the CI principal as subject and the asked resource; a
//! policy must list the CI principal (or `*`) in `subjects` and `ci` (or
//! the ticket's source) in `sources`.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::config::{CiTrust, Config, Policy};
use crate::domain::{glob, DenyReason, Resource, RevokeReason};
use crate::policy::{approved_request, matching_policies, window_under, Approved};
use crate::ticket::Snapshot;

/// Why a CI request is refused: one of the ticket's denial reasons, or one
/// that only CI requests have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiReason {
    /// No `[[ci.trust]]` rule of the token's issuer matches its claims.
    Untrusted,
    /// A rule names the pipeline, but none lets it take this resource.
    ResourceNotTrusted,
    /// The ticket asks for another resource than the pipeline does.
    ResourceNotRequested,
    /// The ticket's window has not begun.
    WindowNotStarted,
    /// This run's grant for the resource already ended; a new run (or run
    /// attempt) gets a new one.
    GrantEnded,
    Ticket(DenyReason),
}

impl CiReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CiReason::Untrusted => "untrusted",
            CiReason::ResourceNotTrusted => "resource_not_trusted",
            CiReason::ResourceNotRequested => "resource_not_requested",
            CiReason::WindowNotStarted => "window_not_started",
            CiReason::GrantEnded => "grant_ended",
            CiReason::Ticket(r) => r.as_str(),
        }
    }

    /// True when the ticket is not (yet, or any more) in a state that
    /// warrants access: the pipeline may succeed once the ticket changes
    /// (HTTP 409). False when the request is not allowed at all (HTTP 403).
    pub fn is_ticket_state(self) -> bool {
        match self {
            CiReason::WindowNotStarted | CiReason::GrantEnded => true,
            CiReason::Untrusted | CiReason::ResourceNotTrusted | CiReason::ResourceNotRequested => {
                false
            }
            CiReason::Ticket(r) => matches!(
                r,
                DenyReason::TicketClosed
                    | DenyReason::NotApproved
                    | DenyReason::RequestChanged
                    | DenyReason::InvalidRequest
                    | DenyReason::ApproverUnknown
                    | DenyReason::ApproverNotAllowed
                    | DenyReason::SelfApproval
                    | DenyReason::WindowOver
            ),
        }
    }

    /// The reason a live CI grant is revoked with when this denial comes up.
    pub fn revoke_reason(self) -> RevokeReason {
        match self {
            CiReason::Ticket(r) => r.revoke_reason(),
            CiReason::ResourceNotRequested | CiReason::WindowNotStarted => {
                RevokeReason::RequestChanged
            }
            CiReason::Untrusted | CiReason::ResourceNotTrusted | CiReason::GrantEnded => {
                RevokeReason::ApprovalWithdrawn
            }
        }
    }
}

impl fmt::Display for CiReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CiReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A refusal with its machine-readable reason and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CiDenial {
    pub reason: CiReason,
    pub detail: String,
}

fn deny<T>(reason: CiReason, detail: impl Into<String>) -> Result<T, CiDenial> {
    Err(CiDenial {
        reason,
        detail: detail.into(),
    })
}

fn ticket_deny<T>(reason: DenyReason, detail: impl Into<String>) -> Result<T, CiDenial> {
    deny(CiReason::Ticket(reason), detail)
}

/// A claim's value as text: strings as they are, numbers and booleans
/// written out; arrays, objects and null are not matched.
pub fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The rule's claims, each equal to the token's (or matching its glob), and
/// the values that matched. `None` if any claim is missing or differs.
pub fn rule_matches(rule: &CiTrust, claims: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut matched = Map::new();
    for (name, pattern) in &rule.claims {
        let value = claims.get(name).and_then(claim_text)?;
        if !glob::name(pattern, &value) {
            return None;
        }
        matched.insert(name.clone(), Value::String(value));
    }
    Some(matched)
}

/// The trust rule that lets a pipeline take a resource.
#[derive(Debug, Clone)]
pub struct Trusted<'a> {
    pub rule: &'a CiTrust,
    /// The rule's position in `[[ci.trust]]`, for the audit trail.
    pub index: usize,
    /// The claims the rule required, with the token's values.
    pub matched: Map<String, Value>,
}

/// The first `[[ci.trust]]` rule of `issuer` (the `[[ci.issuers]]` name)
/// whose claims match the token's and whose resources include `resource`.
pub fn trust<'a>(
    config: &'a Config,
    issuer: &str,
    claims: &Map<String, Value>,
    resource: &Resource,
) -> Result<Trusted<'a>, CiDenial> {
    let wanted = resource.to_string();
    let mut named = Vec::new();
    for (index, rule) in config.ci.trust.iter().enumerate() {
        if rule.issuer != issuer {
            continue;
        }
        let Some(matched) = rule_matches(rule, claims) else {
            continue;
        };
        if rule.resources.iter().any(|r| glob::path(r, &wanted)) {
            return Ok(Trusted {
                rule,
                index,
                matched,
            });
        }
        named.push(rule.principal.as_str());
    }
    if named.is_empty() {
        deny(
            CiReason::Untrusted,
            format!("no [[ci.trust]] rule of issuer {issuer} matches this token's claims"),
        )
    } else {
        named.dedup();
        deny(
            CiReason::ResourceNotTrusted,
            format!(
                "{} may not take {wanted} ([[ci.trust]] resources)",
                named.join(", ")
            ),
        )
    }
}

/// Every CI principal whose rule of `issuer` matches the claims.
pub fn principals<'a>(
    config: &'a Config,
    issuer: &str,
    claims: &Map<String, Value>,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = config
        .ci
        .trust
        .iter()
        .filter(|r| r.issuer == issuer && rule_matches(r, claims).is_some())
        .map(|r| r.principal.as_str())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What a trusted pipeline asks for.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub principal: &'a str,
    pub resource: &'a Resource,
    /// As asked; `None` takes `max_duration`.
    pub duration: Option<Duration>,
    /// The trust rule's `max_duration`.
    pub max_duration: Duration,
}

/// The grant a ticket warrants a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CiGrant {
    pub subject: String,
    /// The CI principal's account on the resource's provider.
    pub account: String,
    pub resource: Resource,
    pub starts_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub policy: String,
    pub approver: String,
}

/// What the ticket allows the principal on the resource: the window (from
/// now) and the policy and approver that allowed it.
struct Allowed<'a> {
    end: DateTime<Utc>,
    policy: &'a Policy,
    approver: String,
}

/// `policy::decide`'s checks with `principal` as subject and `resource` as
/// the resource, which the ticket itself must ask for.
fn warranted<'a>(
    snap: &Snapshot,
    config: &'a Config,
    now: DateTime<Utc>,
    principal: &str,
    resource: &Resource,
) -> Result<Allowed<'a>, CiDenial> {
    let Approved {
        request,
        approval,
        duration,
        approvers,
    } = approved_request(snap, config).map_err(|(reason, detail)| CiDenial {
        reason: CiReason::Ticket(reason),
        detail,
    })?;
    let asked = resource.to_string();
    let requested = request.resource.trim();
    if requested != asked && !glob::path(requested, &asked) {
        return deny(
            CiReason::ResourceNotRequested,
            format!(
                "the ticket asks for {}, not {asked}",
                crate::domain::truncate(requested, 80)
            ),
        );
    }
    if !config.providers.contains_key(resource.provider()) {
        return ticket_deny(
            DenyReason::UnknownResource,
            format!("no provider `{}` is configured", resource.provider()),
        );
    }
    if let Err(why) = config.check_resource(resource) {
        return ticket_deny(DenyReason::InvalidRequest, why);
    }
    // The person who asked through the ticket may not approve it for their
    // pipeline either.
    let requester = config
        .principal_for(snap.source, &request.subject)
        .map(|i| i.principal.as_str());
    let others: Vec<&str> = approvers
        .iter()
        .copied()
        .filter(|a| Some(*a) != requester)
        .collect();
    if others.is_empty() {
        return ticket_deny(
            DenyReason::SelfApproval,
            format!(
                "{} approved their own request",
                requester.unwrap_or_default()
            ),
        );
    }
    let mut policies = matching_policies(config, "ci", "", principal, resource);
    for p in matching_policies(
        config,
        snap.source.as_str(),
        &snap.project,
        principal,
        resource,
    ) {
        if !policies.iter().any(|q| std::ptr::eq(*q, p)) {
            policies.push(p);
        }
    }
    if policies.is_empty() {
        return ticket_deny(
            DenyReason::NoPolicy,
            format!(
                "no policy allows {resource} from ci or {} for {principal}",
                snap.source
            ),
        );
    }
    let mut first_denial = None;
    for policy in policies {
        match window_under(
            policy,
            principal,
            &others,
            request.start,
            request.end,
            duration,
            approval.at,
            now,
        ) {
            Ok((start, end, approver)) => {
                if start > now {
                    return deny(
                        CiReason::WindowNotStarted,
                        format!(
                            "the ticket's window opens at {}",
                            crate::domain::rfc3339(start)
                        ),
                    );
                }
                return Ok(Allowed {
                    end,
                    policy,
                    approver: approver.to_string(),
                });
            }
            Err((reason, detail)) => {
                first_denial.get_or_insert(CiDenial {
                    reason: CiReason::Ticket(reason),
                    detail,
                });
            }
        }
    }
    Err(first_denial.unwrap_or_else(|| CiDenial {
        reason: CiReason::Ticket(DenyReason::NoPolicy),
        detail: "no policy allows this request".into(),
    }))
}

/// What the snapshot warrants the trusted pipeline at `now`. The grant
/// starts now and ends at the earliest of the asked duration, the trust
/// rule's `max_duration` and the end of the ticket's window.
pub fn decide(
    snap: &Snapshot,
    config: &Config,
    now: DateTime<Utc>,
    ask: &Ask<'_>,
) -> Result<CiGrant, CiDenial> {
    let allowed = warranted(snap, config, now, ask.principal, ask.resource)?;
    let span = ask
        .duration
        .unwrap_or(ask.max_duration)
        .min(ask.max_duration);
    // A sum past chrono's range is later than any window's end.
    let expires_at = now
        .checked_add_signed(span)
        .map_or(allowed.end, |t| t.min(allowed.end));
    Ok(CiGrant {
        subject: ask.principal.to_string(),
        account: config.account_on(ask.principal, ask.resource.provider()),
        resource: ask.resource.clone(),
        starts_at: now,
        expires_at,
        policy: allowed.policy.name.clone(),
        approver: allowed.approver,
    })
}

/// Whether the snapshot still warrants a live CI grant of `principal` on
/// `resource` (the trust rule was checked when the grant was made). The
/// engine's reconciler can ask this for `ci:` grants instead of following
/// the ticket's own decision, which is about the ticket's human subject.
pub fn still_warranted(
    snap: &Snapshot,
    config: &Config,
    now: DateTime<Utc>,
    principal: &str,
    resource: &str,
) -> Result<(), CiDenial> {
    let resource: Resource = match resource.parse() {
        Ok(r) => r,
        Err(e) => return ticket_deny(DenyReason::InvalidRequest, e),
    };
    warranted(snap, config, now, principal, &resource).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Source, TicketKey};
    use crate::ticket::{merge, ApprovalSignal, Request, TicketEvent, TicketStatus};
    use chrono::TimeZone;
    use serde_json::json;

    const CONFIG: &str = r#"
[sources.github]
secret_env = "GH"
repositories = ["acme/req"]
[[identities]]
principal = "dave"
github = "dave-gh"
[[identities]]
principal = "alice"
github = "alice-gh"
[[identities]]
principal = "mallory"
github = "mallory-gh"
[[policies]]
name = "deploys"
resources = ["deploy/*"]
sources = ["ci"]
subjects = ["ci:acme/app"]
approvers = ["alice", "dave"]
max_duration = "4h"
[[policies]]
name = "people"
resources = ["deploy/staging"]
sources = ["github"]
subjects = ["dave"]
approvers = ["alice"]
max_duration = "4h"
[[policies]]
name = "github-ci"
resources = ["other/*"]
sources = ["github"]
subjects = ["ci:*"]
approvers = ["alice"]
max_duration = "1h"
[providers.deploy]
kind = "token"
[providers.other]
kind = "token"
[providers.spare]
kind = "token"
[[ci.issuers]]
name = "github-actions"
issuer = "https://token.actions.githubusercontent.com"
audience = "warrant"
jwks_file = "/dev/null"
[[ci.issuers]]
name = "gitlab"
issuer = "https://gitlab.example.com"
audience = "warrant"
jwks_file = "/dev/null"
[[ci.trust]]
issuer = "github-actions"
principal = "ci:acme/app"
claims = { repository = "acme/app", environment = "production" }
resources = ["deploy/production", "deploy/staging"]
max_duration = "30m"
[[ci.trust]]
issuer = "github-actions"
principal = "ci:acme/app"
claims = { sub = "repo:acme/app:ref:refs/heads/*" }
resources = ["deploy/staging"]
max_duration = "15m"
[[ci.trust]]
issuer = "gitlab"
principal = "ci:platform/app"
claims = { project_path = "platform/app", ref_protected = "true" }
resources = ["deploy/*"]
max_duration = "20m"
"#;

    fn config() -> Config {
        Config::from_toml(CONFIG, &|k| (k == "GH").then(|| "gh-secret".to_string())).unwrap()
    }

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn res(s: &str) -> Resource {
        s.parse().unwrap()
    }

    #[test]
    fn trust_rules_match_claims_exactly_or_by_glob() {
        let c = config();
        let prod = res("deploy/production");
        let staging = res("deploy/staging");
        let env_token = claims(json!({
            "sub": "repo:acme/app:environment:production",
            "repository": "acme/app", "environment": "production", "run_id": "1"
        }));
        let t = trust(&c, "github-actions", &env_token, &prod).unwrap();
        assert_eq!(t.rule.principal, "ci:acme/app");
        assert_eq!(t.index, 0);
        assert_eq!(
            Value::Object(t.matched),
            json!({"repository": "acme/app", "environment": "production"})
        );

        // GitHub's other `sub` format, matched by a glob.
        let branch_token = claims(json!({
            "sub": "repo:acme/app:ref:refs/heads/main", "repository": "acme/app"
        }));
        assert_eq!(
            trust(&c, "github-actions", &branch_token, &staging)
                .unwrap()
                .index,
            1
        );
        let e = trust(&c, "github-actions", &branch_token, &prod).unwrap_err();
        assert_eq!(e.reason, CiReason::ResourceNotTrusted);

        let fork = claims(json!({
            "repository": "evil/app", "environment": "production",
            "sub": "repo:evil/app:environment:production"
        }));
        let e = trust(&c, "github-actions", &fork, &prod).unwrap_err();
        assert_eq!(e.reason, CiReason::Untrusted);
        assert!(!e.reason.is_ticket_state());

        // Same claims under another issuer's name do not count.
        assert_eq!(
            trust(&c, "gitlab", &env_token, &prod).unwrap_err().reason,
            CiReason::Untrusted
        );
        // Non-string claims are compared as text; a missing claim never matches.
        let gitlab = claims(json!({ "project_path": "platform/app", "ref_protected": true }));
        assert_eq!(
            trust(&c, "gitlab", &gitlab, &prod).unwrap().rule.principal,
            "ci:platform/app"
        );
        let gitlab = claims(json!({ "project_path": "platform/app" }));
        assert!(trust(&c, "gitlab", &gitlab, &prod).is_err());
        let nested = claims(json!({ "project_path": ["platform/app"], "ref_protected": "true" }));
        assert!(trust(&c, "gitlab", &nested, &prod).is_err());

        assert_eq!(
            principals(&c, "github-actions", &env_token),
            vec!["ci:acme/app"]
        );
        assert!(principals(&c, "github-actions", &fork).is_empty());
    }

    struct Case {
        name: &'static str,
        resource: &'static str,
        ask: &'static str,
        principal: &'static str,
        approver: &'static str,
        subject: &'static str,
        start: Option<DateTime<Utc>>,
        duration: Option<&'static str>,
        asked: Option<Duration>,
        now: DateTime<Utc>,
        status: TicketStatus,
        signal: Option<ApprovalSignal>,
        edit_after: Option<&'static str>,
        expect: Result<DateTime<Utc>, CiReason>,
    }

    fn base(name: &'static str) -> Case {
        Case {
            name,
            resource: "deploy/production",
            ask: "deploy/production",
            principal: "ci:acme/app",
            approver: "alice-gh",
            subject: "dave-gh",
            start: None,
            duration: Some("2h"),
            asked: Some(Duration::minutes(15)),
            now: t(10, 0),
            status: TicketStatus::Open,
            signal: None,
            edit_after: None,
            expect: Ok(t(10, 15)),
        }
    }

    fn run(c: &Case) -> Result<CiGrant, CiDenial> {
        let ev = |resource: &str, approval: ApprovalSignal| TicketEvent {
            key: TicketKey::github("acme/req", 1),
            source: Source::Github,
            project: "acme/req".into(),
            status: c.status,
            source_status: "open".into(),
            title: "deploy".into(),
            updated_at: t(10, 0),
            request: Ok(Request {
                subject: c.subject.into(),
                resource: resource.into(),
                start: c.start,
                end: None,
                duration: c.duration.map(Into::into),
                justification: "deploy".into(),
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
        let resource = res(c.ask);
        decide(
            &snap,
            &config(),
            c.now,
            &Ask {
                principal: c.principal,
                resource: &resource,
                duration: c.asked,
                max_duration: Duration::minutes(30),
            },
        )
    }

    #[test]
    fn every_rule_and_reason() {
        use CiReason::*;
        use DenyReason as D;
        let cases = vec![
            base("approved, in window, asked 15m"),
            Case {
                asked: Some(Duration::hours(3)),
                expect: Ok(t(10, 30)),
                ..base("asked longer than the rule allows is shortened")
            },
            Case {
                asked: None,
                expect: Ok(t(10, 30)),
                ..base("no duration takes the rule's max")
            },
            Case {
                now: t(11, 50),
                expect: Ok(t(12, 0)),
                ..base("the ticket's window end caps it")
            },
            Case {
                now: t(12, 0),
                expect: Err(Ticket(D::WindowOver)),
                ..base("window over")
            },
            Case {
                start: Some(t(13, 0)),
                expect: Err(WindowNotStarted),
                ..base("window not begun")
            },
            Case {
                duration: Some("5h"),
                expect: Err(Ticket(D::DurationExceedsPolicy)),
                ..base("ticket window longer than policy")
            },
            Case {
                status: TicketStatus::Closed,
                expect: Err(Ticket(D::TicketClosed)),
                ..base("closed")
            },
            Case {
                signal: Some(ApprovalSignal::Withdrawn),
                expect: Err(Ticket(D::NotApproved)),
                ..base("not approved")
            },
            Case {
                signal: Some(ApprovalSignal::Carried { still: true }),
                expect: Err(Ticket(D::ApproverUnknown)),
                ..base("approved but approver not seen")
            },
            Case {
                approver: "stranger",
                expect: Err(Ticket(D::ApproverUnknown)),
                ..base("approver not in identities")
            },
            Case {
                approver: "mallory-gh",
                expect: Err(Ticket(D::ApproverNotAllowed)),
                ..base("approver not in the policy")
            },
            Case {
                approver: "dave-gh",
                expect: Err(Ticket(D::SelfApproval)),
                ..base("the requester approved their own ticket")
            },
            Case {
                edit_after: Some("deploy/staging"),
                expect: Err(Ticket(D::RequestChanged)),
                ..base("edited after approval")
            },
            Case {
                ask: "deploy/staging",
                expect: Err(ResourceNotRequested),
                ..base("the pipeline asks for what the ticket does not")
            },
            Case {
                resource: "deploy/*",
                ask: "deploy/staging",
                expect: Ok(t(10, 15)),
                ..base("a ticket asking for a pattern covers what matches it")
            },
            Case {
                principal: "ci:acme/other",
                expect: Err(Ticket(D::NoPolicy)),
                ..base("no policy lists this CI principal")
            },
            Case {
                resource: "spare/x",
                ask: "spare/x",
                expect: Err(Ticket(D::NoPolicy)),
                ..base("no policy for the resource")
            },
            Case {
                resource: "nowhere/x",
                ask: "nowhere/x",
                expect: Err(Ticket(D::UnknownResource)),
                ..base("unconfigured provider")
            },
            Case {
                duration: Some("soon"),
                expect: Err(Ticket(D::InvalidRequest)),
                ..base("bad duration in the ticket")
            },
            Case {
                subject: "stranger",
                expect: Ok(t(10, 15)),
                ..base("the ticket's requester need not be a known principal")
            },
        ];
        for c in &cases {
            let got = run(c).map(|g| g.expires_at).map_err(|d| d.reason);
            assert_eq!(got, c.expect, "{}", c.name);
        }
    }

    #[test]
    fn the_grant_names_the_pipeline() {
        let g = run(&base("x")).unwrap();
        assert_eq!(g.subject, "ci:acme/app");
        assert_eq!(g.account, "ci:acme/app");
        assert_eq!(g.resource.to_string(), "deploy/production");
        assert_eq!(g.starts_at, t(10, 0));
        assert_eq!(g.policy, "deploys");
        assert_eq!(g.approver, "alice");
    }

    #[test]
    fn a_policy_for_the_ticket_source_also_counts() {
        // Policy "people" lists only dave; with the CI principal as subject
        // it does not apply, and "deploys" (source ci) does.
        let c = Case {
            resource: "deploy/staging",
            ask: "deploy/staging",
            ..base("staging")
        };
        assert_eq!(run(&c).unwrap().policy, "deploys");
        // "github-ci" names the ticket's source, not ci, and a glob of CI principals.
        let c = Case {
            resource: "other/x",
            ask: "other/x",
            duration: Some("1h"),
            ..base("other")
        };
        assert_eq!(run(&c).unwrap().policy, "github-ci");
        // Its max_duration holds the ticket's window, as for people.
        let c = Case {
            resource: "other/x",
            ask: "other/x",
            ..base("other, 2h")
        };
        assert_eq!(
            run(&c).unwrap_err().reason,
            CiReason::Ticket(DenyReason::DurationExceedsPolicy)
        );
    }

    #[test]
    fn reasons_split_into_403_and_409() {
        assert!(CiReason::Ticket(DenyReason::NotApproved).is_ticket_state());
        assert!(CiReason::Ticket(DenyReason::WindowOver).is_ticket_state());
        assert!(CiReason::WindowNotStarted.is_ticket_state());
        assert!(!CiReason::Ticket(DenyReason::NoPolicy).is_ticket_state());
        assert!(!CiReason::ResourceNotTrusted.is_ticket_state());
        assert_eq!(
            serde_json::to_value(CiReason::Ticket(DenyReason::TicketClosed)).unwrap(),
            json!("ticket_closed")
        );
        assert_eq!(
            CiReason::Ticket(DenyReason::TicketClosed).revoke_reason(),
            RevokeReason::TicketClosed
        );
    }

    #[test]
    fn still_warranted_follows_the_ticket() {
        let c = base("x");
        let ok = run(&c);
        assert!(ok.is_ok());
        let ev = TicketEvent {
            key: TicketKey::github("acme/req", 1),
            source: Source::Github,
            project: "acme/req".into(),
            status: TicketStatus::Closed,
            source_status: "closed".into(),
            title: "deploy".into(),
            updated_at: t(10, 5),
            request: Ok(Request {
                subject: "dave-gh".into(),
                resource: "deploy/production".into(),
                start: None,
                end: None,
                duration: Some("2h".into()),
                justification: "deploy".into(),
            }),
            approval: ApprovalSignal::Carried { still: true },
        };
        let open = merge(
            None,
            TicketEvent {
                status: TicketStatus::Open,
                approval: ApprovalSignal::Given {
                    by: vec!["alice-gh".into()],
                    at: t(10, 0),
                },
                ..ev.clone()
            },
        );
        let cfg = config();
        assert_eq!(
            still_warranted(&open, &cfg, t(10, 5), "ci:acme/app", "deploy/production"),
            Ok(())
        );
        let closed = merge(Some(&open), ev);
        let e = still_warranted(&closed, &cfg, t(10, 5), "ci:acme/app", "deploy/production")
            .unwrap_err();
        assert_eq!(e.reason.revoke_reason(), RevokeReason::TicketClosed);
    }
}
