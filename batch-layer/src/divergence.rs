//! Divergence: after each promotion by `run`, every metric of the new view is compared with
//! what the speed layer held for the buckets the promotion newly covered, `[previous T, T)`.
//! Those buckets were served by the speed layer until the promotion and by the batch view from
//! it on, so a difference is what the answers changed by when T moved. The speed state is still
//! in Postgres at that moment: retention waits `speed.retention_grace` after a promotion
//! (CONTRACT §5.4), and the rows it may already have removed are known from `speed_coverage`.
//!
//! Per metric, over the compared buckets:
//! * the batch and the speed total: the metric finished over the whole range, as a query whose
//!   window is the range would finish it (counts and sums add up, a distinct count merges its
//!   sketches, a ratio divides its summed parts);
//! * `difference` = speed total − batch total (a missing total counts as 0), and
//!   `ratio` = |difference| / max(|batch total|, |speed total|), 0 when both are 0: symmetric,
//!   bounded by 1, and defined for every metric;
//! * `buckets` holding a value on either side, and `differing_buckets` whose finished values
//!   differ (or that only one side has), which catches what cancels out in the totals.
//!
//! Both sides are finished by `shared_schema::query::finish_points`, the serving layer's own
//! code, from rows read as the serving layer reads them (`shared_io::speed_state`, the view
//! file), so the check sees what clients were served and what they are served now.
//!
//! Buckets the speed layer did not cover are not divergence and are left out: those before its
//! coverage (`speed_coverage.covered_from`: retention removed them, e.g. after a rollback, or it
//! never started), and those past what it had read, judged by the lake's own completeness rule
//! applied to the speed layer's positions. What is left is one interval, `compared`; when it is
//! empty, nothing is compared and the totals and ratio are NULL.
//!
//! Results go to the `divergence` table (the newest `batch.keep_versions` per metric), a ratio
//! above `batch.divergence_alert_ratio` is logged at warn; the serving layer serves them
//! (`GET /v1/divergence`, `GET /metrics`) and raises the alert. The check never fails a run that
//! already promoted.

mod compare;

pub use compare::{Comparison, compare, compared_range, relative_difference, speed_complete_until};

use shared_io::positions::{PositionTable, load_positions};
use shared_io::speed_state::{self, SpeedStateError};
use shared_io::storage::{Lake, StorageError};
use shared_io::view::{ViewError, read_lake_view, read_lake_view_between};
use shared_schema::config::PlatformConfig;
use shared_schema::query::{BucketRow, rows_in};
use shared_schema::time::{Millis, bucket_start, format_rfc3339, to_datetime};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{MetricDef, MetricError},
};
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::Path;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum DivergenceError {
    #[error("opening the lake: {0}")]
    OpenLake(#[from] StorageError),
    #[error("reading the new view {path}: {source}")]
    ReadView { path: String, source: ViewError },
    #[error("reading the speed layer's state: {0}")]
    ReadSpeedState(#[from] SpeedStateError),
    #[error("reading the speed layer's extent and the lake's progress: {0}")]
    ReadProgress(#[source] sqlx::Error),
    #[error("the parts of metric {metric}: {source}")]
    MetricParts { metric: String, source: MetricError },
    #[error("storing the comparisons of version {version}: {source}")]
    Store {
        version: String,
        source: sqlx::Error,
    },
}

/// Compares and records every metric after the promotion of `version`, which moved T from
/// `previous` to `cutover`. Best effort: a failure is logged and never fails the run.
pub async fn after_promotion(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
    version: &str,
    previous: Option<Millis>,
    cutover: Millis,
    view_path: &Path,
) {
    let span = tracing::info_span!("divergence", version);
    let checked = check(pool, config, catalog, version, previous, cutover, view_path)
        .instrument(span)
        .await;
    if let Err(e) = checked {
        tracing::warn!(version, error = %e, "could not compare the new view with the speed layer");
    }
}

async fn check(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
    version: &str,
    previous: Option<Millis>,
    cutover: Millis,
    view_path: &Path,
) -> Result<(), DivergenceError> {
    if previous.is_some_and(|p| p >= cutover) {
        tracing::debug!("T did not move: no newly covered buckets to compare");
        return Ok(());
    }
    let lake = Lake::open(&config.lake_dir)?;
    let path = view_path.to_string_lossy();
    // Only the newly covered buckets are compared: of a segmented view, only their segments.
    let view = match previous {
        Some(previous) => read_lake_view_between(&lake, &path, (previous, cutover)).await,
        None => read_lake_view(&lake, &path).await,
    }
    .map_err(|source| DivergenceError::ReadView {
        path: path.to_string(),
        source,
    })?;
    let alignment = catalog.cutover_alignment();
    let stored: Vec<&str> = catalog.stored().map(|(_, m)| m.name.as_str()).collect();

    // One snapshot of the speed state: its rows, coverage and positions agree with each other
    // (retention removes rows and raises the coverage in one transaction).
    let topic = &config.events_topic;
    let mut tx = pool.begin().await.map_err(DivergenceError::ReadProgress)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(DivergenceError::ReadProgress)?;
    // The first promotion newly covers everything before T: it starts at the first bucket
    // either side holds.
    let first_bucket_before = previous.is_none().then_some(cutover);
    let extent = speed_state::read_extent(&mut tx, topic, first_bucket_before)
        .await
        .map_err(DivergenceError::ReadProgress)?;
    let from = match previous {
        Some(previous) => previous,
        None => {
            let batch_first = view
                .values()
                .filter_map(|rows| rows.first())
                .map(|r| r.bucket_start);
            let first = batch_first
                .chain(extent.first_bucket)
                .min()
                .unwrap_or(cutover);
            bucket_start(first, alignment).min(cutover)
        }
    };
    let lake_positions: Vec<(i32, Option<Millis>)> =
        load_positions(&mut *tx, PositionTable::Lake, topic)
            .await
            .map_err(DivergenceError::ReadProgress)?
            .into_iter()
            .map(|(p, position)| (p, position.max_event_time))
            .collect();
    let complete_until = speed_complete_until(
        &extent.partitions,
        &lake_positions,
        catalog.max_allowed_lateness(),
    );
    let compared = compared_range(
        (from, cutover),
        extent.covered_from,
        complete_until,
        alignment,
    );
    let speed = match compared {
        Some((start, end)) => speed_state::read_rows(&mut tx, &stored, start, end).await?,
        None => HashMap::new(),
    };
    tx.commit().await.map_err(DivergenceError::ReadProgress)?;

    let results: Vec<(&MetricDef, Option<Comparison>)> = catalog
        .metrics
        .iter()
        .map(|metric| {
            let comparison = match compared {
                Some((start, end)) => {
                    let parts =
                        catalog
                            .parts(metric)
                            .map_err(|source| DivergenceError::MetricParts {
                                metric: metric.name.clone(),
                                source,
                            })?;
                    let batch: HashMap<String, Vec<BucketRow>> = parts
                        .iter()
                        .map(|p| {
                            let rows = view
                                .get(&p.name)
                                .map_or(&[][..], |r| rows_in(r, start, end));
                            (p.name.clone(), rows.to_vec())
                        })
                        .collect();
                    Some(compare(metric, &parts, (start, end), &batch, &speed))
                }
                None => None,
            };
            Ok((metric, comparison))
        })
        .collect::<Result<_, DivergenceError>>()?;

    let threshold = config.batch.divergence_alert_ratio;
    match compared {
        None => tracing::info!(
            range = %format!("[{}, {})", format_rfc3339(from), format_rfc3339(cutover)),
            "the speed layer covered none of the newly covered buckets: nothing to compare"
        ),
        Some((start, end)) => {
            for (metric, comparison) in &results {
                let Some(c) = comparison else { continue };
                let compared = format!("[{}, {})", format_rfc3339(start), format_rfc3339(end));
                if c.ratio > threshold {
                    tracing::warn!(metric = %metric.name, %compared, batch = ?c.batch_total, speed = ?c.speed_total,
                        ratio = c.ratio, differing_buckets = c.differing_buckets, threshold,
                        "the speed layer diverged from the new batch view");
                } else {
                    tracing::info!(metric = %metric.name, %compared, ratio = c.ratio,
                        differing_buckets = c.differing_buckets, "compared with the speed layer");
                }
            }
        }
    }
    store(pool, config, version, (from, cutover), compared, &results).await
}

/// Inserts the comparisons of `version` and keeps the newest `batch.keep_versions` per metric.
async fn store(
    pool: &PgPool,
    config: &PlatformConfig,
    version: &str,
    (from, to): (Millis, Millis),
    compared: Option<(Millis, Millis)>,
    results: &[(&MetricDef, Option<Comparison>)],
) -> Result<(), DivergenceError> {
    let failed = |source| DivergenceError::Store {
        version: version.to_string(),
        source,
    };
    let mut tx = pool.begin().await.map_err(failed)?;
    for (metric, comparison) in results {
        sqlx::query(
            "INSERT INTO divergence (version, metric, range_start, range_end, compared_start, compared_end,
                 batch_total, speed_total, difference, ratio, buckets, differing_buckets)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (version, metric) DO NOTHING",
        )
        .bind(version)
        .bind(&metric.name)
        .bind(to_datetime(from))
        .bind(to_datetime(to))
        .bind(compared.map(|(start, _)| to_datetime(start)))
        .bind(compared.map(|(_, end)| to_datetime(end)))
        .bind(comparison.as_ref().and_then(|c| c.batch_total))
        .bind(comparison.as_ref().and_then(|c| c.speed_total))
        .bind(comparison.as_ref().map(|c| c.difference))
        .bind(comparison.as_ref().map(|c| c.ratio))
        .bind(comparison.as_ref().map_or(0, |c| c.buckets))
        .bind(comparison.as_ref().map_or(0, |c| c.differing_buckets))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    }
    sqlx::query(
        "DELETE FROM divergence d USING (
             SELECT version, metric,
                    row_number() OVER (PARTITION BY metric ORDER BY computed_at DESC, version DESC) AS n
             FROM divergence) ranked
         WHERE d.version = ranked.version AND d.metric = ranked.metric AND ranked.n > $1",
    )
    .bind(config.batch.keep_versions.max(1) as i64)
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(())
}
