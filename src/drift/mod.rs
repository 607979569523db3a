//! Drift checks: comparing what providers hold with what grants warrant.
//! For every provider that can list holders (`Provider::holders`) and
//! whose mode is not `off`, a check lists the holders of every target a
//! policy, a CI trust rule, a live grant or an open finding names, once
//! per target, and compares them with the provider's grants, loaded in one
//! query. Access held that no grant in `granting`, `active` or `revoking`
//! covers, by an account not in `exempt_accounts`, is a finding: recorded
//! once (`drift_findings`, audit `drift.found`), resolved when it goes
//! (`drift.resolved`), and in `revoke` mode removed at the provider and
//! read back (`drift.removed`). An `active` grant whose access the
//! provider lacks is applied again (`drift.repaired`).
//!
//! The schedule, the lock that keeps one replica at a time checking, and
//! the loop are `schedule`. Writes go through the commit lanes, so events
//! join the audit chain like every other change.

pub mod schedule;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::audit::NewEvent;
use crate::config::{Config, DriftMode};
use crate::context::Context;
use crate::db::drift::{self as store, FindingRow, HeldBy, HOLDING};
use crate::db::{Db, StoreError};
use crate::domain::to_micros;
use crate::metrics::{Metrics, ProviderLabels};
use crate::providers::Action;
use crate::queue::blocking;

pub use schedule::{run_forever, run_if_due, spawn, Due};

/// Findings written per transaction: a first check on a large role may
/// find many, and one transaction for all would hold the audit chain's
/// head for its whole length.
const WRITE_CHUNK: usize = 1000;

/// Chunks of new findings queued for the commit lane at once: enough to
/// keep its writer busy, few enough that one transaction (the lane takes
/// what is queued) stays short beside the webhooks it serves.
const IN_FLIGHT: usize = 4;

/// Removal rounds per check: remove, read the holders back, remove what
/// is still there. What outlasts them stays open for the next check.
const REMOVE_ROUNDS: usize = 3;

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another process is running a drift check now; try again when it is done")]
    Busy,
    #[error("no provider `{0}` is configured")]
    Unknown(String),
}

/// What happened to one access in a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Held without a grant, seen for the first time (`drift.found`).
    Found,
    /// Held without a grant, already recorded by an earlier check.
    Open,
    /// Held without a grant, and removed at the provider (`drift.removed`).
    Removed,
    /// Held without a grant; removing it failed or it is still held.
    RemoveFailed,
    /// An earlier finding that is no longer drift (`drift.resolved`).
    Resolved,
    /// A live grant's access was missing and is applied again
    /// (`drift.repaired`).
    Repaired,
    /// A live grant's access is missing and applying it again failed.
    RepairFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Found => "found",
            Outcome::Open => "open",
            Outcome::Removed => "removed",
            Outcome::RemoveFailed => "remove_failed",
            Outcome::Resolved => "resolved",
            Outcome::Repaired => "repaired",
            Outcome::RepairFailed => "repair_failed",
        }
    }

    /// Whether this is drift (anything but a finding that went away).
    pub fn is_drift(self) -> bool {
        self != Outcome::Resolved
    }
}

/// One access a check reported on.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub provider: String,
    pub account: String,
    pub target: String,
    pub outcome: Outcome,
    /// The provider's drift mode.
    pub mode: DriftMode,
    /// The finding, for access held without a grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
    /// The grant, for a repair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Why a removal or repair failed (scrubbed of secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one check found and did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The providers whose holders were listed.
    pub providers: Vec<String>,
    pub items: Vec<Item>,
    /// Targets whose holders could not be listed (scrubbed of secrets).
    pub errors: Vec<String>,
}

impl Report {
    /// Whether the check saw drift: access held without a grant, or a
    /// grant's access missing at its provider.
    pub fn found_drift(&self) -> bool {
        self.items.iter().any(|i| i.outcome.is_drift())
    }
}

/// A provider error as it may be logged and audited.
fn scrub(e: &impl std::fmt::Display) -> String {
    crate::redact::redact(&e.to_string(), &[])
}

/// Runs one check now, under the check lock, over every provider or only
/// `only`; a check of every provider counts as the scheduled one.
pub async fn check_now(ctx: &Arc<Context>, only: Option<&str>) -> Result<Report, DriftError> {
    if let Some(p) = only {
        if !ctx.config.providers.contains_key(p) {
            return Err(DriftError::Unknown(p.to_string()));
        }
    }
    let lock = blocking(ctx, |db| db.try_drift_lock()).await?;
    let Some(lock) = lock else {
        return Err(DriftError::Busy);
    };
    let now = ctx.clock.now();
    let ran = async {
        let report = check(ctx, only, now).await?;
        if only.is_none() {
            let at = to_micros(now);
            blocking(ctx, move |db| db.write(|c| store::set_last_check(c, at))).await?;
        }
        Ok(report)
    }
    .await;
    schedule::release(lock).await;
    ran
}

/// One check (the caller holds the check lock): every provider, or only
/// `only`, whose mode is not `off`; then the gauge.
pub async fn check(
    ctx: &Arc<Context>,
    only: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for name in ctx.config.providers.keys() {
        if only.is_some_and(|p| p != name) {
            continue;
        }
        let mode = ctx.config.drift_mode(name);
        if mode == DriftMode::Off {
            continue;
        }
        check_provider(ctx, name, mode, now, &mut report).await?;
    }
    let st = ctx.clone();
    blocking(ctx, move |db| refresh_gauge(db, &st.metrics, &st.config)).await?;
    // A finding still open was logged when found; a large role would
    // otherwise repeat every one of them at every check.
    for i in report.items.iter().filter(|i| i.outcome != Outcome::Open) {
        tracing::info!(
            provider = %i.provider,
            account = %i.account,
            target = %i.target,
            outcome = i.outcome.as_str(),
            "drift"
        );
    }
    Ok(report)
}

/// Sets `warrant_drift_findings` from the open findings, for every
/// configured provider (and only those, so labels come from a fixed set).
pub fn refresh_gauge(db: &Db, metrics: &Metrics, config: &Config) -> Result<(), StoreError> {
    let counts: HashMap<String, i64> = db.read(store::open_counts)?.into_iter().collect();
    for name in config.providers.keys() {
        metrics
            .drift_findings
            .get_or_create(&ProviderLabels {
                provider: name.clone(),
            })
            .set(counts.get(name).copied().unwrap_or(0));
    }
    Ok(())
}

/// The targets of `provider` a check lists: those a policy or CI trust
/// rule names exactly (a glob names no target to list), that the
/// provider's rule accepts.
fn configured_targets(config: &Config, provider: &str) -> BTreeSet<String> {
    let Some(section) = config.providers.get(provider) else {
        return BTreeSet::new();
    };
    config
        .policies
        .iter()
        .flat_map(|p| p.resources.iter())
        .chain(config.ci.trust.iter().flat_map(|t| t.resources.iter()))
        .filter_map(|r| r.split_once('/'))
        .filter(|(p, t)| *p == provider && !t.contains('*'))
        .filter(|(_, t)| section.check_target(provider, t).is_ok())
        .map(|(_, t)| t.to_string())
        .collect()
}

/// The (account, target) pairs the grants cover.
fn covered_by<'a>(
    grants: impl Iterator<Item = &'a HeldBy>,
    prefix: &str,
) -> HashSet<(&'a str, &'a str)> {
    grants
        .filter_map(|g| {
            g.resource
                .strip_prefix(prefix)
                .map(|t| (g.account.as_str(), t))
        })
        .collect()
}

async fn check_provider(
    ctx: &Arc<Context>,
    name: &str,
    mode: DriftMode,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let prefix = format!("{name}/");
    // The grants before the holders are listed and again after: access a
    // grant applied or removed while the list was read is covered by one
    // read or the other, so a grant moving along is never taken for drift.
    let p = name.to_string();
    let (before, open) = blocking(ctx, move |db| {
        db.read(|c| {
            Ok((
                store::grants_in(c, &p, &HOLDING)?,
                store::open(c, Some(&p), None, i64::MAX)?,
            ))
        })
    })
    .await?;
    let mut targets = configured_targets(&ctx.config, name);
    targets.extend(
        before
            .iter()
            .filter_map(|g| g.resource.strip_prefix(&prefix).map(str::to_string)),
    );
    targets.extend(open.iter().map(|f| f.target.clone()));

    let mut listed: HashMap<String, HashSet<String>> = HashMap::with_capacity(targets.len());
    for target in &targets {
        match ctx.providers.holders(name, target).await {
            Ok(Some(holders)) => {
                listed.insert(target.clone(), holders.into_iter().collect());
            }
            // This kind cannot say who holds what: nothing to check.
            Ok(None) => return Ok(()),
            Err(e) => {
                let why = scrub(&e);
                tracing::warn!(provider = name, target = %target, error = %why, "cannot list holders");
                report.errors.push(format!("{name}/{target}: {why}"));
            }
        }
    }
    if targets.is_empty() {
        return Ok(());
    }
    report.providers.push(name.to_string());

    let p = name.to_string();
    let after = blocking(ctx, move |db| {
        db.read(|c| store::grants_in(c, &p, &HOLDING))
    })
    .await?;
    let covered = covered_by(before.iter().chain(after.iter()), &prefix);
    let exempt = &ctx.config.drift;

    // Held now without a grant, by an account not exempt, as (account,
    // target); borrowed from the lists, since a large role has many.
    let held: HashSet<(&str, &str)> = listed
        .iter()
        .flat_map(|(target, holders)| holders.iter().map(|a| (a.as_str(), target.as_str())))
        .filter(|key| !covered.contains(key) && !exempt.is_exempt(key.0))
        .collect();
    let known: HashMap<(&str, &str), &FindingRow> = open
        .iter()
        .map(|f| ((f.account.as_str(), f.target.as_str()), f))
        .collect();
    let item = |f: &FindingRow, outcome: Outcome| Item {
        provider: name.to_string(),
        account: f.account.clone(),
        target: f.target.clone(),
        outcome,
        mode,
        finding: Some(f.id.clone()),
        grant: None,
        error: None,
    };

    // New findings, recorded once each, in a stable order.
    let at = to_micros(now);
    let mut fresh: Vec<(&str, &str)> = held
        .iter()
        .filter(|key| !known.contains_key(*key))
        .copied()
        .collect();
    fresh.sort_unstable_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
    let fresh: Vec<FindingRow> = fresh
        .into_iter()
        .map(|(account, target)| FindingRow {
            id: uuid::Uuid::now_v7().to_string(),
            provider: name.to_string(),
            account: account.to_string(),
            target: target.to_string(),
            found_at: at,
            resolved_at: None,
            state: store::OPEN.to_string(),
        })
        .collect();
    let written = record_found(ctx, name, mode, &fresh, now).await?;
    let mut drifted: Vec<FindingRow> = Vec::new();
    for f in fresh.into_iter().filter(|f| written.contains(&f.id)) {
        report.items.push(item(&f, Outcome::Found));
        if mode == DriftMode::Revoke {
            drifted.push(f);
        }
    }
    for f in open
        .iter()
        .filter(|f| held.contains(&(f.account.as_str(), f.target.as_str())))
    {
        report.items.push(item(f, Outcome::Open));
        if mode == DriftMode::Revoke {
            drifted.push(f.clone());
        }
    }

    // Earlier findings that are gone (or now warranted, or exempt), where
    // the holders could be read.
    let gone: Vec<String> = open
        .iter()
        .filter(|f| {
            listed.contains_key(&f.target)
                && !held.contains(&(f.account.as_str(), f.target.as_str()))
        })
        .map(|f| f.id.clone())
        .collect();
    for chunk in gone.chunks(WRITE_CHUNK) {
        for f in close(ctx, name, chunk.to_vec(), store::RESOLVED, now).await? {
            report.items.push(item(&f, Outcome::Resolved));
        }
    }

    if !drifted.is_empty() {
        remove(ctx, name, drifted, now, report).await?;
    }
    repair(ctx, name, &before, &after, &listed, now, report).await
}

/// Records new findings with their `drift.found` events, a chunk per
/// transaction, a few chunks in flight so the lane never waits for the
/// next; answers the ids written.
async fn record_found(
    ctx: &Arc<Context>,
    provider: &str,
    mode: DriftMode,
    rows: &[FindingRow],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, StoreError> {
    let lane = format!("drift:{provider}");
    let mode = mode.as_str();
    let mut written = HashSet::with_capacity(rows.len());
    let mut in_flight = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for (n, chunk) in rows.chunks(WRITE_CHUNK).enumerate() {
        if in_flight.len() == IN_FLIGHT {
            written.extend(settled(in_flight.pop_front()).await?);
        }
        let chunk = chunk.to_vec();
        // Chunks are independent, so they may take different lanes (on
        // PostgreSQL, several writers) and overlap up to the audit append.
        let (commit, lane) = (ctx.commit.clone(), format!("{lane}:{n}"));
        // A task of its own: the write owns what it needs, so it may run
        // while the next chunk is made.
        in_flight.push_back(tokio::spawn(async move {
            commit
                .submit(&lane, now, move |conn, events| {
                    let written: HashSet<String> =
                        store::insert(conn, &chunk)?.into_iter().collect();
                    for f in chunk.iter().filter(|f| written.contains(&f.id)) {
                        events.push(NewEvent::new(
                            "drift.found",
                            "warrant",
                            json!({
                                "finding": f.id,
                                "provider": f.provider,
                                "account": f.account,
                                "target": f.target,
                                "mode": mode,
                            }),
                        ));
                    }
                    Ok(written)
                })
                .await
        }));
    }
    while let Some(task) = in_flight.pop_front() {
        written.extend(settled(Some(task)).await?);
    }
    Ok(written)
}

/// What a write task answered; a task that panicked or was cancelled wrote
/// nothing (its transaction rolled back).
async fn settled(
    task: Option<tokio::task::JoinHandle<Result<HashSet<String>, StoreError>>>,
) -> Result<HashSet<String>, StoreError> {
    match task {
        Some(t) => t
            .await
            .map_err(|e| StoreError::Unavailable(format!("a drift write stopped: {e}")))?,
        None => Ok(HashSet::new()),
    }
}

/// Closes findings that are still open, with `drift.resolved` or
/// `drift.removed` events; answers the rows closed.
async fn close(
    ctx: &Arc<Context>,
    provider: &str,
    ids: Vec<String>,
    state: &'static str,
    now: DateTime<Utc>,
) -> Result<Vec<FindingRow>, StoreError> {
    let kind = if state == store::REMOVED {
        "drift.removed"
    } else {
        "drift.resolved"
    };
    let at = to_micros(now);
    ctx.commit
        .submit(&format!("drift:{provider}"), now, move |conn, events| {
            let closed = store::close(conn, &ids, state, at)?;
            for f in &closed {
                events.push(NewEvent::new(
                    kind,
                    "warrant",
                    json!({
                        "finding": f.id,
                        "provider": f.provider,
                        "account": f.account,
                        "target": f.target,
                    }),
                ));
            }
            Ok(closed)
        })
        .await
}

/// `revoke` mode: removes each finding's access at the provider, then
/// reads the target's holders back; what is still held is removed again,
/// up to `REMOVE_ROUNDS` times. Access a grant has come to cover since
/// the check began is left alone.
async fn remove(
    ctx: &Arc<Context>,
    name: &str,
    drifted: Vec<FindingRow>,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let p = name.to_string();
    let latest = blocking(ctx, move |db| {
        db.read(|c| store::grants_in(c, &p, &HOLDING))
    })
    .await?;
    let covered = covered_by(latest.iter(), &format!("{name}/"));
    let mut by_target: HashMap<String, Vec<FindingRow>> = HashMap::new();
    for f in drifted {
        if !covered.contains(&(f.account.as_str(), f.target.as_str())) {
            by_target.entry(f.target.clone()).or_default().push(f);
        }
    }
    let mut removed: Vec<String> = Vec::new();
    for (target, mut left) in by_target {
        let mut errors: HashMap<String, String> = HashMap::new();
        for _ in 0..REMOVE_ROUNDS {
            for f in &left {
                if let Err(e) = ctx
                    .providers
                    .remove_access(name, &f.account, &f.target, &f.id, now)
                    .await
                {
                    errors.insert(f.id.clone(), scrub(&e));
                }
            }
            let holders: HashSet<String> = match ctx.providers.holders(name, &target).await {
                Ok(Some(h)) => h.into_iter().collect(),
                Ok(None) => HashSet::new(),
                Err(e) => {
                    let why = scrub(&e);
                    for f in &left {
                        errors.entry(f.id.clone()).or_insert_with(|| why.clone());
                    }
                    break;
                }
            };
            let (gone, still): (Vec<FindingRow>, Vec<FindingRow>) = left
                .into_iter()
                .partition(|f| !holders.contains(&f.account));
            removed.extend(gone.into_iter().map(|f| f.id));
            left = still;
            if left.is_empty() {
                break;
            }
        }
        for f in left {
            let why = errors
                .remove(&f.id)
                .unwrap_or_else(|| "still held after removal".to_string());
            tracing::warn!(provider = name, target = %f.target, error = %why, "drift removal failed");
            report.items.push(Item {
                provider: name.to_string(),
                account: f.account,
                target: f.target,
                outcome: Outcome::RemoveFailed,
                mode: DriftMode::Revoke,
                finding: Some(f.id),
                grant: None,
                error: Some(why),
            });
        }
    }
    // The removed findings' earlier items say `found`/`open`; they now
    // say what became of them.
    for chunk in removed.chunks(WRITE_CHUNK) {
        let closed: HashSet<String> = close(ctx, name, chunk.to_vec(), store::REMOVED, now)
            .await?
            .into_iter()
            .map(|f| f.id)
            .collect();
        for i in report.items.iter_mut() {
            if i.finding.as_ref().is_some_and(|id| closed.contains(id)) {
                i.outcome = Outcome::Removed;
            }
        }
    }
    Ok(())
}

/// Applies again the access of `active` grants the provider lacks. Only
/// grants active before the holders were listed and still active after
/// count: one that became active meanwhile may have been applied after
/// its target was read. The grant is read again just before the call, and
/// once more after it: if it left `active` meanwhile, its revocation may
/// have run before the repair landed, so the repair is taken back.
async fn repair(
    ctx: &Arc<Context>,
    name: &str,
    before: &[HeldBy],
    after: &[HeldBy],
    listed: &HashMap<String, HashSet<String>>,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let prefix = format!("{name}/");
    let was_active: HashSet<&str> = before
        .iter()
        .filter(|g| g.state == "active")
        .map(|g| g.id.as_str())
        .collect();
    let lacking: Vec<&HeldBy> = after
        .iter()
        .filter(|g| g.state == "active" && was_active.contains(g.id.as_str()))
        .filter(|g| {
            g.resource
                .strip_prefix(&prefix)
                .and_then(|t| listed.get(t))
                .is_some_and(|holders| !holders.contains(&g.account))
        })
        .collect();
    for held in lacking {
        let id = held.id.clone();
        let Some(g) = blocking(ctx, move |db| db.read(|c| crate::db::grants::get(c, &id))).await?
        else {
            continue;
        };
        if g.state != "active" {
            continue;
        }
        let mut answer = ctx.providers.call(&g, Action::Grant).await;
        if answer.is_ok() {
            let id = g.id.clone();
            let now_state = blocking(ctx, move |db| db.read(|c| crate::db::grants::get(c, &id)))
                .await?
                .map(|g| g.state);
            if now_state.as_deref() != Some("active") {
                answer = ctx.providers.call(&g, Action::Revoke).await;
                if answer.is_ok() {
                    continue;
                }
            }
        }
        let target = g.resource.strip_prefix(&prefix).unwrap_or_default();
        let (kind, outcome, error) = match &answer {
            Ok(()) => ("drift.repaired", Outcome::Repaired, None),
            Err(e) => ("drift.repair_failed", Outcome::RepairFailed, Some(scrub(e))),
        };
        let data = json!({
            "provider": name,
            "account": g.account,
            "target": target,
            "resource": g.resource,
            "error": error,
        });
        let (ticket, gid) = (g.ticket.clone(), g.id.clone());
        ctx.commit
            .submit(&g.ticket, now, move |_conn, events| {
                events.push(
                    NewEvent::new(kind, "warrant", data.clone())
                        .ticket(&ticket)
                        .grant(&gid),
                );
                Ok(())
            })
            .await?;
        report.items.push(Item {
            provider: name.to_string(),
            account: g.account.clone(),
            target: target.to_string(),
            outcome,
            mode: ctx.config.drift_mode(name),
            finding: None,
            grant: Some(g.id.clone()),
            error,
        });
    }
    Ok(())
}
