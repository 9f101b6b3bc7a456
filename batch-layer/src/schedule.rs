//! `batch-layer schedule --cron "<expr>"`: the batch run on a cron schedule, as a service.

use crate::BatchError;
use crate::crontab::CronSchedule;
use crate::recompute::{RunOptions, describe, run_once};
use chrono::Utc;
use shared_io::observe::{self, RunRows};
use shared_io::registry::RegistryError;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use sqlx::PgPool;
use std::future::Future;

/// Parses a crontab(5) expression (see `crontab`), read in `batch.cron_timezone`.
pub fn parse_cron(expr: &str, config: &PlatformConfig) -> Result<CronSchedule, BatchError> {
    let refused = |message: String| BatchError::Cron {
        expr: expr.to_string(),
        message,
    };
    let zone: chrono_tz::Tz = config.batch.cron_timezone.parse().map_err(|_| {
        refused(format!(
            "batch.cron_timezone `{}` is not an IANA time zone name (e.g. UTC, Europe/Berlin)",
            config.batch.cron_timezone
        ))
    })?;
    CronSchedule::parse(expr, zone).map_err(|e| refused(e.problem))
}

/// Runs `batch-layer run` at every tick until `shutdown`. A failed run is logged and the next
/// tick tries again; the previous view stays served meanwhile. A run refused because the
/// promoted view was computed with other definitions ends the schedule with that error.
pub async fn run_on_schedule(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
    schedule: &CronSchedule,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BatchError> {
    tokio::pin!(shutdown);
    // The families show on /metrics before the first tick.
    let metrics = observe::batch();
    loop {
        let Some(next) = schedule.next_after(Utc::now()) else {
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
    fn five_and_six_field_expressions_in_the_configured_zone() {
        let mut config = PlatformConfig::default();
        assert!(parse_cron("*/5 * * * *", &config).is_ok());
        assert!(parse_cron("30 */5 * * * *", &config).is_ok());
        let err = parse_cron("every minute", &config).unwrap_err().to_string();
        assert!(err.contains("every minute"), "{err}");
        config.batch.cron_timezone = "Europe/Berlin".into();
        assert!(parse_cron("0 2 * * 1-5", &config).is_ok());
        config.batch.cron_timezone = "Mars/Olympus".into();
        let err = parse_cron("0 2 * * *", &config).unwrap_err().to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }
}
