//! `batch-layer schedule [--cron "<expr>"]`: the batch run on a cron schedule and on request
//! (`POST /v1/admin/runs`, see `requested`), as a service.

use crate::BatchError;
use crate::crontab::CronSchedule;
use crate::recompute::{RunOptions, RunOutcome, describe, log_progress, run_once};
use crate::requested::{RequestedRun, run_next};
use chrono::Utc;
use shared_io::observe::{self, BatchMetrics, RunRows};
use shared_io::registry::RegistryError;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

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

/// How often `schedule` looks for runs requested over HTTP. A poll rather than LISTEN/NOTIFY:
/// one indexed query a second costs nothing, and needs no listening session to keep alive and
/// re-listen on after a reconnect, or a catch-up query for notifications missed meanwhile.
pub const REQUEST_POLL: Duration = Duration::from_secs(1);

/// Runs `batch-layer run` at every tick of `schedule` (if given) and every run requested over
/// HTTP, until `shutdown`. A failed run is logged (a requested one reports its failure) and
/// the next tick tries again; the previous view stays served meanwhile. A run refused because
/// the promoted view was computed with other definitions ends the schedule with that error.
pub async fn run_on_schedule(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
    schedule: Option<&CronSchedule>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BatchError> {
    tokio::pin!(shutdown);
    // The families show on /metrics before the first tick.
    let metrics = observe::batch();
    let mut poll = tokio::time::interval(REQUEST_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = match schedule.map(|s| s.next_after(Utc::now())) {
            Some(None) => {
                tracing::info!("the cron schedule has no further ticks");
                return Ok(());
            }
            Some(Some(next)) => Some(next),
            None => None,
        };
        // Without a cron, only requests: a tick that never comes.
        let wait = next.map_or(Duration::MAX, |next| {
            (next - Utc::now()).to_std().unwrap_or_default()
        });
        let tick = tokio::time::sleep(wait.min(Duration::from_secs(365 * 86_400)));
        tokio::pin!(tick);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = &mut tick => {
                let started = std::time::Instant::now();
                let result = run_once(pool, config, catalog, &RunOptions::default(), &log_progress).await;
                observe_run(metrics, started, &result);
                match result {
                    Ok(outcome) => tracing::info!("{}", describe(&outcome)),
                    Err(e) => stop_on_other_definitions(e)?,
                }
            }
            _ = poll.tick() => {
                let started = std::time::Instant::now();
                match run_next(pool, config, catalog).await {
                    Ok(None) => {}
                    Ok(Some(RequestedRun { id, result })) => {
                        observe_run(metrics, started, &result);
                        match result {
                            Ok(outcome) => tracing::info!(id, "{}", describe(&outcome)),
                            Err(e) => stop_on_other_definitions(e)?,
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not look for requested batch runs"),
                }
            }
        }
    }
}

fn observe_run(
    metrics: &BatchMetrics,
    started: std::time::Instant,
    result: &Result<RunOutcome, BatchError>,
) {
    let seconds = started.elapsed().as_secs_f64();
    match result {
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
}

/// Logs a failed run, or ends the schedule when another view became the reference: no later
/// run can succeed with these definitions, so the schedule stops rather than fail every tick.
fn stop_on_other_definitions(e: BatchError) -> Result<(), BatchError> {
    match e {
        e @ BatchError::Registry(RegistryError::DefinitionsDiffer(_)) => Err(e),
        e => {
            tracing::error!(error = %e, "batch run failed; the previous view stays served");
            Ok(())
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
