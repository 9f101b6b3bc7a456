//! `batch-layer schedule --cron "<expr>"`: the batch run on a cron schedule, as a service.

use crate::BatchError;
use crate::recompute::{RunOptions, describe, run_once};
use chrono::Utc;
use cron::Schedule;
use shared_schema::config::PlatformConfig;
use shared_schema::metrics::MetricCatalog;
use shared_schema::observe::{self, RunRows};
use shared_schema::registry::RegistryError;
use sqlx::PgPool;
use std::future::Future;
use std::str::FromStr;

/// Parses a crontab expression. The classic five fields (`*/5 * * * *`) are accepted and run
/// at second 0; six or seven fields give seconds (and years) explicitly.
pub fn parse_cron(expr: &str) -> Result<Schedule, BatchError> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    Schedule::from_str(&full).map_err(|e| BatchError::Cron {
        expr: expr.to_string(),
        message: e.to_string(),
    })
}

/// Runs `batch-layer run` at every tick until `shutdown`. A failed run is logged and the next
/// tick tries again; the previous view stays served meanwhile. A run refused because the
/// promoted view was computed with other definitions ends the schedule with that error.
pub async fn run_on_schedule(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
    schedule: &Schedule,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BatchError> {
    tokio::pin!(shutdown);
    // The families show on /metrics before the first tick.
    let metrics = observe::batch();
    loop {
        let Some(next) = schedule.upcoming(Utc).next() else {
            tracing::info!("the cron schedule has no further ticks");
            return Ok(());
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(next = %next.to_rfc3339(), "next batch run");
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        let started = std::time::Instant::now();
        let result = run_once(pool, config, catalog, &RunOptions::default()).await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(outcome) => metrics.promoted(
                seconds,
                RunRows {
                    view: outcome.view_rows as i64,
                    reused: outcome.reused_rows as i64,
                    lake: outcome.lake_rows,
                },
            ),
            Err(_) => metrics.failed(seconds),
        }
        match result {
            Ok(outcome) => tracing::info!("{}", describe(&outcome)),
            // Another view became the reference: no later tick can succeed with these
            // definitions, so the schedule stops rather than fail every tick.
            Err(e @ BatchError::Registry(RegistryError::DefinitionsDiffer(_))) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "batch run failed; the previous view stays served")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("30 */5 * * * *").is_ok());
        let err = parse_cron("every minute").unwrap_err().to_string();
        assert!(err.contains("every minute"), "{err}");
    }
}
