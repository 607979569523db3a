//! Queries shared by the API, the engine and the job runner.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::db::schema::{grants, jobs};
use crate::db::{Db, StoreError};
use crate::dispatch;
use crate::domain::{to_micros, GrantState};
use crate::metrics::{Metrics, StateLabels};

/// Sets the gauges that describe the whole database.
pub fn refresh_gauges(db: &Db, metrics: &Metrics, now: DateTime<Utc>) -> Result<(), StoreError> {
    let now = to_micros(now);
    db.read(|conn| {
        let by_state: Vec<(String, i64)> = dispatch!(conn, c => grants::table
            .group_by(grants::state)
            .select((grants::state, diesel::dsl::count_star()))
            .load(c))?;
        for s in GrantState::ALL {
            let n = by_state
                .iter()
                .find(|(st, _)| st == s.as_str())
                .map_or(0, |(_, n)| *n);
            metrics
                .grants
                .get_or_create(&StateLabels {
                    state: s.as_str().into(),
                })
                .set(n);
        }
        let live: Vec<&str> = vec!["pending", "granting", "active", "revoking"];
        let overdue: i64 = dispatch!(conn, c => grants::table
            .filter(grants::state.eq_any(&live))
            .filter(grants::expires_at.le(now))
            .count()
            .get_result(c))?;
        metrics.overdue_revocations.set(overdue);
        let due: i64 =
            dispatch!(conn, c => jobs::table.filter(jobs::run_at.le(now)).count().get_result(c))?;
        metrics.jobs_due.set(due);
        Ok(())
    })
}
