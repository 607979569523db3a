//! Queries shared by the API, the engine and the job runner, and the task
//! that keeps the database-wide gauges fresh.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::context::Context;
use crate::db::schema::{grants, jobs};
use crate::db::{Db, StoreError};
use crate::dispatch;
use crate::domain::{to_micros, GrantState};
use crate::metrics::{Metrics, StateLabels};

/// Keeps the gauges fresh: once now, then every `every`, so `/metrics`
/// only renders and a scrape costs no query however often it comes. A
/// failed refresh (database down, a panic in the query) is logged and the
/// gauges keep their last values; the loop never returns.
pub async fn refresh_gauges_forever(ctx: Arc<Context>) {
    let every = ctx.config.server.metrics_refresh.std();
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
    // A slow refresh delays the next one instead of running them back to back.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (c, now) = (ctx.clone(), ctx.clock.now());
        let refresh = move || {
            refresh_gauges(&c.db, &c.metrics, now)?;
            crate::drift::refresh_gauge(&c.db, &c.metrics, &c.config)
        };
        match tokio::task::spawn_blocking(refresh).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot refresh the metrics gauges"),
            Err(e) => tracing::error!(error = %e, "the metrics gauge refresh failed"),
        }
    }
}

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
