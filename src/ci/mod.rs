//! CI deploy rights: a pipeline presents its OIDC token (`oidc`), a
//! `[[ci.trust]]` rule names it as a CI principal, and its ticket must
//! warrant the asked resource for that principal now (the pure rules are
//! `policy::ci`; this module is the service around them). The grant
//! is then made like any other, through `grants::create`, in one
//! transaction with its audit events, so its job applies it at the provider.
//!
//! One pipeline run gets one grant per resource: the run's identity is in
//! the grant's `origin` (`ci:<issuer>:<run>:<resource>`), which the grants
//! table keeps unique per ticket, subject and resource.

pub mod oidc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::audit::{self, NewEvent};
use crate::config::{CiIssuer, Config};
use crate::db::{Db, StoreError};
use crate::domain::{
    format_duration, from_micros, rfc3339, to_micros, GrantState, Resource, RevokeReason, TicketKey,
};
use crate::grants::{GrantRow, Revocation};
use crate::policy::ci::{self as decide, claim_text, Ask, CiDenial, CiReason};
use crate::ticket::Snapshot;

/// The claims that name a run when the issuer's `run_claims` is not set:
/// GitHub Actions' run and its attempt, GitLab's pipeline and job.
const GITHUB_RUN: [&str; 2] = ["run_id", "run_attempt"];
const GITLAB_RUN: [&str; 2] = ["pipeline_id", "job_id"];

/// The pipeline run a token speaks for, e.g. `4242/1` (GitHub run 4242,
/// attempt 1) or `1234/5678` (GitLab pipeline 1234, job 5678).
pub fn run_of(issuer: &CiIssuer, claims: &Map<String, Value>) -> Result<String, String> {
    let names: Vec<&str> = if !issuer.run_claims.is_empty() {
        issuer.run_claims.iter().map(String::as_str).collect()
    } else if claims.contains_key(GITHUB_RUN[0]) {
        GITHUB_RUN.to_vec()
    } else if claims.contains_key(GITLAB_RUN[0]) {
        GITLAB_RUN.to_vec()
    } else {
        return Err(format!(
            "the token names no pipeline run (run_id/run_attempt or pipeline_id/job_id); \
             set run_claims on issuer {}",
            issuer.name
        ));
    };
    let mut parts = Vec::with_capacity(names.len());
    for name in names {
        let value = claims
            .get(name)
            .and_then(claim_text)
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 128
                    && v.chars()
                        .all(|c| c.is_ascii_graphic() && c != '/' && c != ':')
            })
            .ok_or_else(|| format!("the token's `{name}` claim does not name a run"))?;
        parts.push(value);
    }
    Ok(parts.join("/"))
}

/// A CI grant's `origin`: its issuer, run and resource.
pub fn origin(issuer: &str, run: &str, resource: &Resource) -> String {
    format!("ci:{issuer}:{run}:{resource}")
}

/// A trusted pipeline's request, after its token and trust rule checked out.
#[derive(Debug, Clone)]
pub struct CiRequest {
    /// The `[[ci.issuers]]` name.
    pub issuer: String,
    pub run: String,
    pub principal: String,
    /// The `[[ci.trust]]` rule's position, and the claims it matched.
    pub trust_rule: usize,
    pub matched: Map<String, Value>,
    pub sub: Option<String>,
    pub ticket: TicketKey,
    pub resource: Resource,
    pub duration: Option<Duration>,
    /// The trust rule's `max_duration`.
    pub max_duration: Duration,
    /// The SHA-256 fingerprint of the public key an `ssh` credential is
    /// asked for, kept in the audit trail (a revocation list can name it).
    pub public_key: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Created(GrantRow),
    /// The same run asked before and its grant is still live.
    Existing(GrantRow),
    Denied(CiDenial),
    UnknownTicket,
}

/// Decides a pipeline's request and, if the ticket warrants it, creates the
/// grant (or finds the run's existing one), all in one transaction with the
/// `ci.request` audit event.
pub fn request(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
    req: &CiRequest,
) -> Result<Outcome, StoreError> {
    match request_once(db, config, now, req) {
        // Two requests of one run raced to insert on PostgreSQL: the loser
        // finds the winner's grant.
        Err(StoreError::Database(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ))) => request_once(db, config, now, req),
        other => other,
    }
}

fn request_once(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
    req: &CiRequest,
) -> Result<Outcome, StoreError> {
    let key = req.ticket.as_str();
    let resource = req.resource.to_string();
    let origin = origin(&req.issuer, &req.run, &req.resource);
    let event = |outcome: &str, extra: Value| {
        let mut data = json!({
            "issuer": req.issuer,
            "run": req.run,
            "sub": req.sub,
            "claims": req.matched,
            "trust_rule": req.trust_rule,
            "resource": resource,
            "duration": req.duration.map(format_duration),
            "outcome": outcome,
        });
        if let (Some(d), Some(key)) = (data.as_object_mut(), &req.public_key) {
            d.insert("public_key".into(), json!(key));
        }
        if let (Some(d), Value::Object(extra)) = (data.as_object_mut(), extra) {
            d.extend(extra);
        }
        NewEvent::new("ci.request", req.principal.clone(), data).ticket(key)
    };
    db.write(|conn| {
        // The same lock as intake's, so a close folded by another replica
        // cannot slip between this decision and its grant.
        crate::db::tickets::lock(conn, &[key.to_string()])?;
        let Some(row) = crate::db::tickets::load(conn, key)? else {
            audit::append(conn, now, vec![event("unknown_ticket", json!({}))])?;
            return Ok(Outcome::UnknownTicket);
        };
        let snap: Snapshot =
            serde_json::from_str(&row.snapshot).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ask = Ask {
            principal: &req.principal,
            resource: &req.resource,
            duration: req.duration,
            max_duration: req.max_duration,
        };
        let wanted = match decide::decide(&snap, config, now, &ask) {
            Ok(w) => w,
            Err(d) => {
                let e = event("denied", json!({ "reason": d.reason, "detail": d.detail }));
                audit::append(conn, now, vec![e])?;
                return Ok(Outcome::Denied(d));
            }
        };
        let existing = crate::grants::of_ticket(conn, key)?
            .into_iter()
            .find(|g| g.origin == origin && g.subject == req.principal && g.resource == resource);
        if let Some(g) = existing {
            if g.state().is_live() && from_micros(g.expires_at) > now {
                let e = event("existing", json!({})).grant(&g.id);
                audit::append(conn, now, vec![e])?;
                return Ok(Outcome::Existing(g));
            }
            let d = CiDenial {
                reason: CiReason::GrantEnded,
                detail: if g.state().is_live() {
                    format!(
                        "this run's grant {} expired at {}; a new run attempt gets a new grant",
                        g.id,
                        rfc3339(from_micros(g.expires_at))
                    )
                } else {
                    format!(
                        "this run's grant {} is {}{}; a new run attempt gets a new grant",
                        g.id,
                        g.state,
                        g.revoke_reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    )
                },
            };
            let e = event("denied", json!({ "reason": d.reason, "detail": d.detail })).grant(&g.id);
            audit::append(conn, now, vec![e])?;
            return Ok(Outcome::Denied(d));
        }
        let row = GrantRow {
            id: uuid::Uuid::now_v7().to_string(),
            ticket: key.to_string(),
            subject: wanted.subject.clone(),
            account: wanted.account.clone(),
            resource: resource.clone(),
            state: GrantState::Granting.to_string(),
            origin: origin.clone(),
            starts_at: to_micros(wanted.starts_at),
            expires_at: to_micros(wanted.expires_at),
            activated_at: None,
            revoked_at: None,
            revoke_reason: None,
            failure: None,
            created_at: to_micros(now),
            updated_at: to_micros(now),
        };
        let mut events = vec![event(
            "granted",
            json!({
                "policy": wanted.policy,
                "approver": wanted.approver,
                "expires_at": rfc3339(wanted.expires_at),
            }),
        )
        .grant(&row.id)];
        crate::grants::create(
            conn,
            &row,
            &mut events,
            json!({
                "policy": wanted.policy,
                "approver": wanted.approver,
                "ci": { "issuer": req.issuer, "run": req.run, "principal": req.principal },
            }),
        )?;
        audit::append(conn, now, events)?;
        Ok(Outcome::Created(row))
    })
}

#[derive(Debug, Clone)]
pub enum Released {
    NotFound,
    /// The grant is not a CI grant of this issuer and principal.
    NotYours,
    /// Revoked now, or already over: the grant as it is after the call.
    Done(Box<GrantRow>),
}

/// `DELETE /v1/ci/grants/{id}`: the pipeline is done with its grant. Only
/// the identity that holds it (same issuer, a principal the token's claims
/// match) may release it; it is revoked with `ci_done`.
pub fn release(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
    id: &str,
    issuer: &str,
    principals: &[String],
) -> Result<Released, StoreError> {
    db.write(|conn| {
        let Some(g) = crate::grants::get(conn, id)? else {
            return Ok(Released::NotFound);
        };
        if !g.origin.starts_with(&format!("ci:{issuer}:")) || !principals.contains(&g.subject) {
            return Ok(Released::NotYours);
        }
        let mut events = vec![NewEvent::new(
            "ci.release",
            g.subject.clone(),
            json!({ "issuer": issuer, "state": g.state }),
        )
        .ticket(&g.ticket)
        .grant(&g.id)];
        if g.state().is_live() {
            let why = Revocation {
                reason: RevokeReason::CiDone,
                actor: &g.subject,
                note: None,
            };
            crate::grants::revoke(conn, config, &g, why, now, &mut events)?;
        }
        audit::append(conn, now, events)?;
        Ok(Released::Done(Box::new(
            crate::grants::get(conn, id)?.unwrap_or(g),
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn issuer(run_claims: &[&str]) -> CiIssuer {
        CiIssuer {
            name: "gh".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "warrant".into(),
            jwks_file: None,
            jwks_url: None,
            run_claims: run_claims.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn runs_of_github_gitlab_and_configured_claims() {
        let gh = claims(json!({ "run_id": "4242", "run_attempt": "2", "pipeline_id": "x" }));
        assert_eq!(run_of(&issuer(&[]), &gh).unwrap(), "4242/2");
        let gl = claims(json!({ "pipeline_id": "1234", "job_id": 5678 }));
        assert_eq!(run_of(&issuer(&[]), &gl).unwrap(), "1234/5678");
        let other = claims(json!({ "build": "77" }));
        assert!(run_of(&issuer(&[]), &other)
            .unwrap_err()
            .contains("run_claims"));
        assert_eq!(run_of(&issuer(&["build"]), &other).unwrap(), "77");
        let bad = claims(json!({ "run_id": "1:2", "run_attempt": "1" }));
        assert!(run_of(&issuer(&[]), &bad).is_err());
        let missing = claims(json!({ "run_id": "1" }));
        assert!(run_of(&issuer(&[]), &missing)
            .unwrap_err()
            .contains("run_attempt"));
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let issuer = "[[ci.issuers]]\nname = \"gh\"\nissuer = \"https://x\"\naudience = \"warrant\"\njwks_file = \"/dev/null\"\n";
        let cases = [
            (
                "[[ci.issuers]]\nname = \"g:h\"\nissuer = \"https://x\"\naudience = \"w\"\njwks_file = \"/x\"".to_string(),
                "ci.issuers[0].name",
            ),
            (
                format!("{issuer}{}", issuer.replace("/dev/null", "/dev/zero")),
                "ci.issuers[1].name",
            ),
            (
                "[[ci.issuers]]\nname = \"gh\"\nissuer = \"https://x\"\naudience = \"w\"\njwks_url = \"ftp://x\"".to_string(),
                "ci.issuers[0].jwks_url",
            ),
            (
                format!("{issuer}[[ci.trust]]\nissuer = \"gh\"\nprincipal = \"ci:a\"\nresources = [\"d/p\"]\nmax_duration = \"5m\""),
                "ci.trust[0].claims",
            ),
            (
                "[providers.deploy]\nkind = \"token\"\nkey_file = \"/nonexistent/key.pem\"".to_string(),
                "providers.deploy.key_file",
            ),
            (
                "[providers.deploy]\nkind = \"token\"\nkey_file = \"/etc/hostname\"".to_string(),
                "providers.deploy.key_file",
            ),
            (
                "[providers.deploy]\nkind = \"token\"\nissuer = \"\"".to_string(),
                "providers.deploy.issuer",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(&text, &|_| None).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn a_key_file_is_read_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pem) = crate::crypto::keys::SigningKey::generate().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, &pem).unwrap();
        let text = format!(
            "[providers.deploy]\nkind = \"token\"\nkey_file = \"{}\"\nprevious_key_files = [\"{}\"]",
            path.display(),
            path.display()
        );
        let c = Config::from_toml(&text, &|_| None).unwrap();
        let crate::config::ProviderConfig::Token(t) = &c.providers["deploy"] else {
            panic!("not a token provider")
        };
        assert_eq!(
            t.key.as_ref().map(|k| k.expose_secret()),
            Some(pem.as_str())
        );
        assert_eq!(t.previous_keys.len(), 1);
        assert_eq!(t.issuer, None, "the default follows server.public_url");
        assert!(
            !format!("{c:?}").contains(&pem[40..70]),
            "the key never prints"
        );
    }

    #[test]
    fn origins_name_issuer_run_and_resource() {
        let r: Resource = "deploy/production".parse().unwrap();
        assert_eq!(
            origin("github-actions", "4242/1", &r),
            "ci:github-actions:4242/1:deploy/production"
        );
    }
}
