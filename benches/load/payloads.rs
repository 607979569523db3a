//! Realistic, signed webhook deliveries: Jira Cloud issue events, GitHub
//! `issues` events and change_request records from the ServiceNow business
//! rule, 5–20 KB each (the issue body or the change's description and plans
//! padded with plausible text), walked through one ticket's life:
//!
//! | step | GitHub            | Jira                         | ServiceNow                |
//! |------|-------------------|------------------------------|---------------------------|
//! | 0    | opened            | issue_created (Open)         | New, not yet requested    |
//! | 1    | edited            | Open → In Review             | Authorize, requested      |
//! | 2    | assigned          | description edited           | Authorize, plans edited   |
//! | 3    | labeled (approve) | In Review → Approved         | Scheduled, approved       |
//! | 4    | edited (still ok) | labels edited while Approved | Implement, approved       |
//!
//! Every step is `accepted`; step 3 creates one grant, whose provider call
//! the receiver records.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use warrant::crypto::signature::{sign_hub, sign_standard};

pub const GH_SECRET: &str = "bench-github-secret-3f9a1c";
pub const JIRA_SECRET: &str = "bench-jira-secret-77be02";
pub const SN_SECRET: &str = "whsec_YmVuY2gtc2VydmljZW5vdy1zZWNyZXQta2V5IQ==";
pub const HOOKS_SECRET: &str = "whsec_YmVuY2gtaG9va3Mtc2VjcmV0LWtleS0xMjM0NQ==";
pub const ADMIN_TOKEN: &str = "bench-admin-token";

pub const STEPS: u64 = 5;
pub const APPROVE_STEP: u64 = 3;
/// People who ask for access; `[[identities]]` lists them all.
pub const SUBJECTS: u64 = 200;
pub const SERVICES: u64 = 20;

pub fn github_login(i: u64) -> String {
    format!("user{i}-gh")
}
pub fn jira_account(i: u64) -> String {
    format!("5b10ac8d82e05b22cc7d{i:04x}")
}
pub fn sn_user(i: u64) -> String {
    format!("user{i}.sn")
}
/// Approvers are principals `alice` (1000) and `bob` (1001).
pub const APPROVERS: [(&str, u64); 2] = [("alice", 1000), ("bob", 1001)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Src {
    Github,
    Jira,
    Servicenow,
}

impl Src {
    pub fn name(self) -> &'static str {
        match self {
            Src::Github => "github",
            Src::Jira => "jira",
            Src::Servicenow => "servicenow",
        }
    }
}

/// Filler text for descriptions: plausible ticket prose, ASCII, no line
/// that starts a `### ` section.
pub struct Corpus(String);

impl Corpus {
    pub fn new() -> Corpus {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let who = [
            "the on-call engineer",
            "the payments team",
            "our SRE rotation",
            "the data platform group",
            "the incident commander",
            "a database administrator",
        ];
        let why = [
            "investigate elevated error rates on the checkout path",
            "replay the failed settlement batch from last night",
            "rotate the credentials that leaked into a CI log",
            "verify the schema migration before the release train leaves",
            "read the orders table to reconcile refunds with the ledger",
            "inspect slow queries flagged by the latency SLO alert",
            "restore the feature flag table from the nightly snapshot",
            "compare replica lag across the three availability zones",
        ];
        let how = [
            "Access is read-only and limited to the window below.",
            "All queries will be logged and attached to the incident timeline.",
            "No customer data leaves the production network during this work.",
            "A second engineer will review every statement before it runs.",
            "The change was rehearsed against staging on Tuesday without findings.",
            "Rollback is a single revert of the config commit referenced above.",
        ];
        let mut s = String::with_capacity(64 * 1024);
        while s.len() < 60 * 1024 {
            for _ in 0..rng.gen_range(3..7) {
                s.push_str(&format!(
                    "{} needs this to {}. {} ",
                    capitalize(who[rng.gen_range(0..who.len())]),
                    why[rng.gen_range(0..why.len())],
                    how[rng.gen_range(0..how.len())],
                ));
            }
            match rng.gen_range(0..4) {
                0 => s.push_str(&format!(
                    "\n\n```sql\nSELECT id, status, amount FROM orders WHERE updated_at > now() - interval '{} hours' LIMIT 100;\n```\n\n",
                    rng.gen_range(1..48)
                )),
                1 => s.push_str(&format!(
                    "\n\n- runbook: https://wiki.example.com/runbooks/{}\n- dashboard: https://grafana.example.com/d/{:x}\n\n",
                    rng.gen_range(100..999),
                    rng.gen::<u32>()
                )),
                _ => s.push_str("\n\n"),
            }
        }
        Corpus(s)
    }

    /// About `len` bytes of text, starting somewhere chosen by `seed`.
    pub fn text(&self, seed: u64, len: usize) -> &str {
        let len = len.min(self.0.len() / 2);
        let start = (seed.wrapping_mul(2654435761) as usize) % (self.0.len() - len);
        &self.0[start..start + len]
    }
}

impl Default for Corpus {
    fn default() -> Self {
        Corpus::new()
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// One ticket walked through `STEPS` deliveries.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub n: u64,
    pub src: Src,
    pub subject: u64,
    pub approver: u64,
    pub resource: String,
    /// Bytes of filler text in every delivery of this ticket.
    pub pad: usize,
    /// The source's updated-at of step 0; each step one second later.
    pub base: DateTime<Utc>,
}

impl Ticket {
    /// Ticket `n`; `epoch` is the source's updated-at of its first event
    /// (fixed per run, so every delivery of one ticket agrees on it).
    pub fn new(n: u64, epoch: DateTime<Utc>) -> Ticket {
        let mut rng = rand::rngs::StdRng::seed_from_u64(n);
        let src = match n % 3 {
            0 => Src::Jira,
            1 => Src::Github,
            _ => Src::Servicenow,
        };
        let mut t = Ticket {
            n,
            src,
            subject: n % SUBJECTS,
            approver: APPROVERS[(n % 2) as usize].1,
            resource: format!("hooks/svc-{}", n % SERVICES),
            pad: 0,
            base: epoch,
        };
        // The whole delivery, envelope and text, lands at 5–20 KB (the
        // margin leaves room for the JSON escapes of the text's newlines).
        let envelope = t.with_pad(APPROVE_STEP, "").len();
        t.pad = rng.gen_range(5_900..=20_000usize).saturating_sub(envelope);
        t
    }

    pub fn key(&self) -> String {
        match self.src {
            Src::Github => format!("github:acme/access-requests#{}", self.n),
            Src::Jira => format!("jira:OPS-{}", self.n),
            Src::Servicenow => format!("servicenow:CHG{:07}", self.n),
        }
    }

    fn at(&self, step: u64) -> DateTime<Utc> {
        self.base + Duration::seconds(step as i64)
    }

    pub fn body(&self, step: u64, corpus: &Corpus) -> Vec<u8> {
        self.with_pad(step, corpus.text(self.n * 7 + step, self.pad))
    }

    fn with_pad(&self, step: u64, pad: &str) -> Vec<u8> {
        let v = match self.src {
            Src::Github => self.github(step, pad),
            Src::Jira => self.jira(step, pad),
            Src::Servicenow => self.servicenow(step, pad),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    fn github(&self, step: u64, pad: &str) -> Value {
        let author = github_login(self.subject);
        let approver = github_login(self.approver);
        let (action, sender, labels, label) = match step {
            0 => ("opened", author.clone(), vec!["access-request"], None),
            1 => ("edited", author.clone(), vec!["access-request"], None),
            2 => (
                "assigned",
                "triage-bot".to_string(),
                vec!["access-request"],
                None,
            ),
            3 => (
                "labeled",
                approver,
                vec!["access-request", "access-approved"],
                Some("access-approved"),
            ),
            _ => (
                "edited",
                author.clone(),
                vec!["access-request", "access-approved"],
                None,
            ),
        };
        let user = |login: &str, id: u64| {
            json!({
                "login": login, "id": id, "node_id": "MDQ6VXNlcjE=",
                "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
                "gravatar_id": "", "url": format!("https://api.github.com/users/{login}"),
                "html_url": format!("https://github.com/{login}"), "type": "User", "site_admin": false
            })
        };
        let label_json = |name: &str| {
            json!({ "id": 208045946, "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=",
                "url": format!("https://api.github.com/repos/acme/access-requests/labels/{name}"),
                "name": name, "description": "", "color": "f29513", "default": false })
        };
        let body = format!(
            "### Resource\n\n{}\n\n### Duration\n\n2h\n\n### Start\n\n_No response_\n\n### Justification\n\n{pad}",
            self.resource
        );
        let mut v = json!({
            "action": action,
            "issue": {
                "url": format!("https://api.github.com/repos/acme/access-requests/issues/{}", self.n),
                "repository_url": "https://api.github.com/repos/acme/access-requests",
                "html_url": format!("https://github.com/acme/access-requests/issues/{}", self.n),
                "id": 2_000_000_000 + self.n, "node_id": "I_kwDOAbCdEf5xYz", "number": self.n,
                "title": format!("Access to {} for incident INC-{}", self.resource, self.n),
                "user": user(&author, 30_000_000 + self.subject),
                "labels": labels.iter().map(|l| label_json(l)).collect::<Vec<_>>(),
                "state": "open", "locked": false,
                "assignee": if step >= 2 { user("triage-bot", 41) } else { Value::Null },
                "assignees": [], "milestone": null, "comments": step,
                "created_at": self.base.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "updated_at": self.at(step).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "closed_at": null, "author_association": "MEMBER", "active_lock_reason": null,
                "body": body,
                "reactions": { "url": "https://api.github.com/repos/acme/access-requests/issues/1/reactions",
                    "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0, "confused": 0, "heart": 0, "rocket": 0, "eyes": 0 },
                "timeline_url": format!("https://api.github.com/repos/acme/access-requests/issues/{}/timeline", self.n),
                "performed_via_github_app": null, "state_reason": null
            },
            "repository": {
                "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": "access-requests",
                "full_name": "acme/access-requests", "private": true, "owner": user("acme", 6811672),
                "html_url": "https://github.com/acme/access-requests", "description": "Access requests",
                "fork": false, "url": "https://api.github.com/repos/acme/access-requests",
                "created_at": "2024-01-10T09:00:00Z", "updated_at": "2026-11-20T09:00:00Z",
                "pushed_at": "2026-11-20T09:00:00Z", "default_branch": "main", "visibility": "private"
            },
            "organization": { "login": "acme", "id": 6811672, "node_id": "MDEyOk9yZ2FuaXphdGlvbjE=",
                "url": "https://api.github.com/orgs/acme", "description": "" },
            "sender": user(&sender, 30_100_000 + self.approver)
        });
        if let Some(l) = label {
            v["label"] = label_json(l);
        }
        v
    }

    fn jira(&self, step: u64, pad: &str) -> Value {
        let reporter = jira_account(self.subject);
        let approver = jira_account(self.approver);
        let (event, status, category, user, change) = match step {
            0 => ("jira:issue_created", "Open", "new", reporter.clone(), None),
            1 => (
                "jira:issue_updated",
                "In Review",
                "indeterminate",
                reporter.clone(),
                Some(("status", "Open", "In Review")),
            ),
            2 => (
                "jira:issue_updated",
                "In Review",
                "indeterminate",
                reporter.clone(),
                Some(("description", "", "")),
            ),
            3 => (
                "jira:issue_updated",
                "Approved",
                "indeterminate",
                approver,
                Some(("status", "In Review", "Approved")),
            ),
            _ => (
                "jira:issue_updated",
                "Approved",
                "indeterminate",
                reporter.clone(),
                Some(("labels", "", "access")),
            ),
        };
        let at = self.at(step);
        let person = |id: &str, name: &str| {
            json!({ "self": format!("https://acme.atlassian.net/rest/api/2/user?accountId={id}"),
                "accountId": id, "displayName": name, "active": true,
                "timeZone": "Europe/Berlin", "accountType": "atlassian",
                "avatarUrls": { "48x48": "https://secure.gravatar.com/avatar/x.png" } })
        };
        let mut v = json!({
            "timestamp": at.timestamp_millis(),
            "webhookEvent": event,
            "issue_event_type_name": if step == 0 { "issue_created" } else { "issue_generic" },
            "user": person(&user, "Someone"),
            "issue": {
                "id": (10_000 + self.n).to_string(),
                "self": format!("https://acme.atlassian.net/rest/api/2/issue/{}", 10_000 + self.n),
                "key": format!("OPS-{}", self.n),
                "fields": {
                    "summary": format!("Access to {} for a migration", self.resource),
                    "issuetype": { "id": "10004", "name": "Access request", "subtask": false },
                    "project": { "id": "10000", "key": "OPS", "name": "Operations", "projectTypeKey": "service_desk" },
                    "priority": { "id": "3", "name": "Medium" },
                    "status": { "name": status, "id": "10001",
                        "statusCategory": { "id": 4, "key": category, "name": "In Progress", "colorName": "yellow" } },
                    "reporter": person(&reporter, "Requester"),
                    "assignee": null,
                    "labels": if step >= 4 { json!(["access"]) } else { json!([]) },
                    "created": self.base.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string(),
                    "updated": at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string(),
                    "description": pad,
                    "customfield_10100": self.resource,
                    "customfield_10101": null,
                    "customfield_10102": null,
                    "customfield_10103": "1h",
                }
            }
        });
        if let Some((field, from, to)) = change {
            v["changelog"] = json!({ "id": (20_000 + self.n * 10 + step).to_string(), "items": [
                { "field": field, "fieldtype": "jira", "fieldId": field, "from": null,
                  "fromString": from, "to": null, "toString": to } ] });
        }
        v
    }

    fn servicenow(&self, step: u64, pad: &str) -> Value {
        let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
        let (state, approval, approved_by) = match step {
            0 => ("-5", "not yet requested", json!([])),
            1 | 2 => ("-3", "requested", json!([])),
            3 => ("-2", "approved", json!([sn_user(self.approver)])),
            _ => ("-1", "approved", json!([sn_user(self.approver)])),
        };
        let quarter = pad.len() / 4;
        let part = |i: usize| {
            // Cut on character boundaries: the corpus is ASCII.
            &pad[i * quarter..((i + 1) * quarter).min(pad.len())]
        };
        json!({
            "table": "change_request",
            "sys_id": format!("{:032x}", 0xc286_d613_47c1_2200_u128 + self.n as u128),
            "number": format!("CHG{:07}", self.n),
            "state": state,
            "approval": approval,
            "approved_by": approved_by,
            "assigned_to": sn_user(self.subject),
            "assignment_group": "Platform Operations",
            "category": "Access",
            "type": "normal",
            "risk": "3",
            "impact": "3",
            "priority": "4",
            "start_date": fmt(self.base),
            "end_date": fmt(self.base + Duration::hours(2)),
            "short_description": format!("Temporary access to {}", self.resource),
            "description": part(0),
            "justification": part(1),
            "implementation_plan": part(2),
            "backout_plan": part(3),
            "test_plan": "Confirm access works, then confirm it is gone after the window.",
            "sys_created_on": fmt(self.base),
            "sys_updated_on": fmt(self.at(step)),
            "sys_updated_by": if step == 3 { sn_user(self.approver) } else { sn_user(self.subject) },
            "u_access_resource": self.resource,
        })
    }

    /// The delivery for `step`, signed as its source signs, with a fresh id.
    pub fn signed(&self, step: u64, corpus: &Corpus, seq: u64) -> Signed {
        let body = self.body(step, corpus);
        let src = self.src;
        let (delivery, headers) = match src {
            Src::Github => {
                let id = uuid::Uuid::new_v4().to_string();
                let sig = sign_hub(GH_SECRET.as_bytes(), &body);
                (
                    id.clone(),
                    vec![
                        ("user-agent", "GitHub-Hookshot/5c1a0b3".to_string()),
                        ("content-type", "application/json".to_string()),
                        ("x-github-event", "issues".to_string()),
                        ("x-github-delivery", id),
                        ("x-github-hook-id", "412987001".to_string()),
                        ("x-hub-signature-256", sig),
                    ],
                )
            }
            Src::Jira => {
                let id = format!("{}", 7_000_000_000_000 + seq);
                let sig = sign_hub(JIRA_SECRET.as_bytes(), &body);
                (
                    id.clone(),
                    vec![
                        ("user-agent", "Atlassian Webhook HTTP Client".to_string()),
                        (
                            "content-type",
                            "application/json; charset=utf-8".to_string(),
                        ),
                        ("x-atlassian-webhook-identifier", id),
                        ("x-hub-signature", sig),
                    ],
                )
            }
            Src::Servicenow => {
                let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                let ts = Utc::now().timestamp();
                let key = warrant::crypto::signature::whsec_key(SN_SECRET).unwrap_or_default();
                let sig = sign_standard(&key, &id, ts, &body);
                (
                    id.clone(),
                    vec![
                        ("user-agent", "ServiceNow/1.0".to_string()),
                        ("content-type", "application/json".to_string()),
                        ("webhook-id", id),
                        ("webhook-timestamp", ts.to_string()),
                        ("webhook-signature", sig),
                    ],
                )
            }
        };
        Signed {
            src,
            path: match src {
                Src::Github => "/webhooks/github",
                Src::Jira => "/webhooks/jira",
                Src::Servicenow => "/webhooks/servicenow",
            },
            delivery,
            headers,
            body,
        }
    }
}

/// A delivery ready to send.
pub struct Signed {
    pub src: Src,
    pub path: &'static str,
    pub delivery: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Signed {
    pub fn request(&self, addr: std::net::SocketAddr) -> Vec<u8> {
        let h: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::http::request("POST", self.path, addr, &h, &self.body)
    }
}
