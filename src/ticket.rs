//! The normalized ticket snapshot every source is turned into, and the one
//! place where a new event is folded into what warrant already knew of a
//! ticket (approval memory: who approved, when, and what they approved).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::cmp::Ordering;

use crate::domain::{parse_duration, Source, TicketKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    Open,
    Closed,
    /// Deleted or moved away (a GitHub transfer): gone for warrant.
    Deleted,
}

/// What a ticket asks for, as the source wrote it. Accounts are the
/// source's own (a GitHub login, a Jira accountId, a ServiceNow user_name);
/// they become principals only through `[[identities]]`, in the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub subject: String,
    /// `PROVIDER/TARGET` as written; validated by the decision.
    pub resource: String,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// As written, e.g. `2h`; validated by the decision.
    pub duration: Option<String>,
    pub justification: String,
}

impl Request {
    /// What an approval covers: everything that shapes the access. The
    /// justification (the title) is left out so a typo fix does not revoke.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!({
            "subject": self.subject,
            "resource": self.resource,
            "start": self.start.map(|t| t.timestamp_micros()),
            "end": self.end.map(|t| t.timestamp_micros()),
            "duration": self.duration,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Source accounts of the approvers; any one allowed approver suffices.
    pub approvers: Vec<String>,
    pub at: DateTime<Utc>,
    /// `Request::fingerprint` of the request as it was approved, or of the
    /// error text when the request was unreadable.
    pub fingerprint: String,
    /// The request as it was approved, so a later edit can be told apart:
    /// a narrowing needs no new approval, an extension waits for one.
    /// (Absent in snapshots stored before it was kept.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
}

/// How an edited request differs from the approved one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Same subject and resource, a window inside the approved one.
    Narrowed,
    /// Same subject, resource and start, a later end.
    Extended,
    /// Anything else.
    Other,
}

/// Compares an edited request with the approved one. Ends are compared as
/// written (an end date against an end date, a duration against a
/// duration); a change from one form to the other is `Other`.
pub fn edit_of(approved: &Request, now: &Request) -> Edit {
    if approved.subject != now.subject || approved.resource != now.resource {
        return Edit::Other;
    }
    let start = match (approved.start, now.start) {
        (None, None) => Ordering::Equal,
        (Some(a), Some(b)) => b.cmp(&a),
        _ => return Edit::Other,
    };
    let end = match (
        (approved.end, approved.duration.as_deref()),
        (now.end, now.duration.as_deref()),
    ) {
        ((Some(a), _), (Some(b), _)) => b.cmp(&a),
        // A duration runs from the start, so a moved start moves its end.
        ((None, Some(a)), (None, Some(b))) if start == Ordering::Equal => {
            match (parse_duration(a), parse_duration(b)) {
                (Ok(a), Ok(b)) => b.cmp(&a),
                _ => return Edit::Other,
            }
        }
        ((None, None), (None, None)) => Ordering::Equal,
        _ => return Edit::Other,
    };
    match (start, end) {
        (Ordering::Equal | Ordering::Greater, Ordering::Equal | Ordering::Less) => Edit::Narrowed,
        (Ordering::Equal, Ordering::Greater) => Edit::Extended,
        _ => Edit::Other,
    }
}

/// Everything warrant knows of a ticket at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub key: TicketKey,
    pub source: Source,
    /// GitHub `OWNER/REPO`, Jira project key, ServiceNow table.
    pub project: String,
    pub status: TicketStatus,
    /// The status as the source names it (`open`, `In Progress`, `Scheduled`).
    pub source_status: String,
    pub title: String,
    /// The source's own updated-at: orders snapshots.
    pub updated_at: DateTime<Utc>,
    pub request: Option<Request>,
    /// Why the request could not be read, when it could not.
    pub request_error: Option<String>,
    /// Approved by the source's own rules right now.
    pub approved: bool,
    /// Who approved what, when warrant saw it happen.
    pub approval: Option<Approval>,
}

impl Snapshot {
    pub fn request_fingerprint(&self) -> String {
        match (&self.request, &self.request_error) {
            (Some(r), _) => r.fingerprint(),
            (None, e) => hex::encode(Sha256::digest(e.as_deref().unwrap_or("").as_bytes())),
        }
    }
}

/// What one event says about approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalSignal {
    /// This event is the approval (the label added, the transition into an
    /// approved status), made by these accounts at this time.
    Given { by: Vec<String>, at: DateTime<Utc> },
    /// The record itself says it is approved and by whom (ServiceNow's
    /// `approved_by`); the approval is new only if the approvers changed.
    Stated { by: Vec<String>, at: DateTime<Utc> },
    /// This event does not touch approval; `still` says whether the source
    /// still shows the ticket as approved (label present, status approved).
    Carried { still: bool },
    /// The approval was taken away.
    Withdrawn,
}

/// One source event, parsed and normalized but not yet merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketEvent {
    pub key: TicketKey,
    pub source: Source,
    pub project: String,
    pub status: TicketStatus,
    pub source_status: String,
    pub title: String,
    pub updated_at: DateTime<Utc>,
    pub request: Result<Request, String>,
    pub approval: ApprovalSignal,
}

/// Folds an event into the previous snapshot. The caller has already
/// checked that the event is not older than `prev`.
pub fn merge(prev: Option<&Snapshot>, ev: TicketEvent) -> Snapshot {
    let (request, request_error) = match ev.request {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    let mut snap = Snapshot {
        key: ev.key,
        source: ev.source,
        project: ev.project,
        status: ev.status,
        source_status: ev.source_status,
        title: ev.title,
        updated_at: ev.updated_at,
        request,
        request_error,
        approved: false,
        approval: None,
    };
    let prev_approval = prev.and_then(|p| p.approval.clone());
    // A record that showed as not approved (ServiceNow's approval back to
    // `requested`) and is approved again carries a new approval, even by the
    // same approvers: that is how an extension is approved.
    let was_approved = prev.is_some_and(|p| p.approved);
    match ev.approval {
        ApprovalSignal::Given { by, at } => {
            snap.approved = true;
            snap.approval = Some(Approval {
                approvers: by,
                at,
                fingerprint: snap.request_fingerprint(),
                request: snap.request.clone(),
            });
        }
        ApprovalSignal::Stated { by, at } => {
            snap.approved = true;
            // More approvers on an unchanged request is not a new approval:
            // the one warrant saw first still covers it, so its window stays.
            let grown = |a: &Approval| {
                a.fingerprint == snap.request_fingerprint()
                    && a.approvers.iter().all(|x| by.contains(x))
            };
            snap.approval = match prev_approval {
                Some(a) if was_approved && (same_set(&a.approvers, &by) || grown(&a)) => Some(a),
                _ => Some(Approval {
                    approvers: by,
                    at,
                    fingerprint: snap.request_fingerprint(),
                    request: snap.request.clone(),
                }),
            };
        }
        ApprovalSignal::Carried { still: true } => {
            snap.approved = true;
            snap.approval = prev_approval;
        }
        // Pending again (not rejected) after an edit that only extends the
        // end: the approval of the shorter window is kept, so the grant
        // keeps its approved end until the new one is approved.
        ApprovalSignal::Carried { still: false } => {
            snap.approval = prev_approval.filter(|a| {
                matches!((&a.request, &snap.request), (Some(old), Some(new)) if edit_of(old, new) == Edit::Extended)
            });
        }
        ApprovalSignal::Withdrawn => {}
    }
    snap
}

fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn event(approval: ApprovalSignal, resource: &str) -> TicketEvent {
        TicketEvent {
            key: TicketKey::jira("OPS-1"),
            source: Source::Jira,
            project: "OPS".into(),
            status: TicketStatus::Open,
            source_status: "Approved".into(),
            title: "db access".into(),
            updated_at: Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap(),
            request: Ok(Request {
                subject: "acct-1".into(),
                resource: resource.into(),
                start: None,
                end: None,
                duration: Some("2h".into()),
                justification: "db access".into(),
            }),
            approval,
        }
    }

    #[test]
    fn approval_is_remembered_and_pins_the_request() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap();
        let s1 = merge(
            None,
            event(
                ApprovalSignal::Given {
                    by: vec!["alice".into()],
                    at,
                },
                "prod-db/readonly",
            ),
        );
        assert!(s1.approved);
        let s2 = merge(
            Some(&s1),
            event(ApprovalSignal::Carried { still: true }, "prod-db/admin"),
        );
        assert!(s2.approved);
        let a = s2.approval.clone().unwrap();
        assert_eq!(a.approvers, vec!["alice".to_string()]);
        assert_ne!(
            a.fingerprint,
            s2.request_fingerprint(),
            "the edit is visible"
        );
        let s3 = merge(Some(&s2), event(ApprovalSignal::Withdrawn, "prod-db/admin"));
        assert!(!s3.approved && s3.approval.is_none());
        let s4 = merge(
            Some(&s3),
            event(ApprovalSignal::Carried { still: true }, "prod-db/admin"),
        );
        assert!(
            s4.approved && s4.approval.is_none(),
            "an approval warrant never saw is unknown"
        );
    }

    #[test]
    fn stated_approval_keeps_its_time_while_approvers_stay() {
        let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap();
        let t2 = Utc.with_ymd_and_hms(2026, 1, 1, 9, 30, 0).unwrap();
        let s1 = merge(
            None,
            event(
                ApprovalSignal::Stated {
                    by: vec!["bob".into()],
                    at: t1,
                },
                "x/y",
            ),
        );
        let s2 = merge(
            Some(&s1),
            event(
                ApprovalSignal::Stated {
                    by: vec!["bob".into()],
                    at: t2,
                },
                "x/z",
            ),
        );
        assert_eq!(s2.approval.as_ref().unwrap().at, t1);
        assert_ne!(
            s2.approval.unwrap().fingerprint,
            s2.request.unwrap().fingerprint()
        );
    }
}
