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

use crate::BatchError;
use chrono::{DateTime, Utc};
use shared_io::speed_state;
use shared_io::storage::Lake;
use shared_io::view::read_lake_view;
use shared_schema::config::PlatformConfig;
use shared_schema::cutover::{LandedPartition, lake_complete_until};
use shared_schema::query::{BucketRow, Group, MergedPoint, SeriesQuery, finish_points, rows_in};
use shared_schema::time::{Millis, bucket_ceil, bucket_start, format_rfc3339, to_datetime};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{MetricDef, Partial, finish_ratio},
};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use tracing::Instrument;

/// One metric compared over the compared range.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub batch_total: Option<f64>,
    pub speed_total: Option<f64>,
    pub difference: f64,
    pub ratio: f64,
    pub buckets: i64,
    pub differing_buckets: i64,
}

/// `(speed − batch, |speed − batch| / max(|batch|, |speed|))`, a missing value counting as 0.
pub fn relative_difference(batch: Option<f64>, speed: Option<f64>) -> (f64, f64) {
    let (batch, speed) = (batch.unwrap_or(0.0), speed.unwrap_or(0.0));
    let difference = speed - batch;
    let scale = batch.abs().max(speed.abs());
    let ratio = if scale == 0.0 {
        0.0
    } else {
        difference.abs() / scale
    };
    (difference, ratio)
}

/// Whether two finished values are the same number. Both sides finish identical partials
/// identically (sums are exact integers in micro-units), so this only absorbs float noise.
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Compares `metric` over `[from, to)` (bucket boundaries of the metric). `parts` are the stored
/// metrics it is computed from (`MetricCatalog::parts`); `batch` and `speed` hold each side's
/// rows per stored metric; rows outside the range are ignored.
pub fn compare(
    metric: &MetricDef,
    parts: &[&MetricDef],
    (from, to): (Millis, Millis),
    batch: &HashMap<String, Vec<BucketRow>>,
    speed: &HashMap<String, Vec<BucketRow>>,
) -> Comparison {
    let bucket = metric.bucket.millis();
    let no_rows: &[BucketRow] = &[];
    // Each side alone, through the serving layer's merge: batch rows lie before a cutover at the
    // range's end, speed rows after one at its start, so `assemble` keeps all of them.
    let finish =
        |query: &SeriesQuery, from_batch: bool| -> BTreeMap<(Group, Millis), MergedPoint> {
            let inputs = parts
                .iter()
                .map(|part| {
                    let side = if from_batch { batch } else { speed };
                    let rows = side.get(&part.name).map_or(no_rows, Vec::as_slice);
                    let (b, s) = if from_batch {
                        (rows, no_rows)
                    } else {
                        (no_rows, rows)
                    };
                    (*part, b.iter().cloned(), s.iter().cloned())
                })
                .collect();
            finish_points(query, Some(if from_batch { to } else { from }), inputs)
        };
    // The total: each part's rows in the range merged into one partial and finished, as the
    // point of a query whose window is the whole range would be. Merged directly, not through
    // such a query, so the cost is one step per row whatever the range spans (an event dated
    // 1970 makes the first promotion's range 56 years of buckets).
    let total = |from_batch: bool| {
        let side = if from_batch { batch } else { speed };
        let finished: Vec<Option<f64>> = parts
            .iter()
            .map(|part| {
                let rows = side.get(&part.name).map_or(no_rows, Vec::as_slice);
                whole_range_total(part, rows, (from, to))
            })
            .collect();
        match finished.as_slice() {
            [single] => *single,
            [numerator, denominator] => denominator.and_then(|d| finish_ratio(*numerator, Some(d))),
            _ => None,
        }
    };
    let (batch_total, speed_total) = (total(true), total(false));
    let per_bucket = SeriesQuery {
        from,
        to,
        step: bucket,
        window: bucket,
        group_by: None,
        filter: None,
    };
    let (batch_points, speed_points) = (finish(&per_bucket, true), finish(&per_bucket, false));
    let keys: BTreeSet<&(Group, Millis)> = batch_points.keys().chain(speed_points.keys()).collect();
    let differing = keys
        .iter()
        .filter(|k| match (batch_points.get(*k), speed_points.get(*k)) {
            (Some(b), Some(s)) => !same(b.value, s.value),
            _ => true,
        })
        .count();
    let (difference, ratio) = relative_difference(batch_total, speed_total);
    Comparison {
        batch_total,
        speed_total,
        difference,
        ratio,
        buckets: keys.len() as i64,
        differing_buckets: differing as i64,
    }
}

/// One stored metric's rows in `[from, to)` merged and finished; `None` when nothing is there
/// (or only retracted session starts), as `query::assemble` leaves such a point out.
fn whole_range_total(
    part: &MetricDef,
    rows: &[BucketRow],
    (from, to): (Millis, Millis),
) -> Option<f64> {
    let mut merged = Partial::default();
    for row in rows
        .iter()
        .filter(|r| r.bucket_start >= from && r.bucket_start < to)
    {
        merged.merge(&row.partial);
    }
    if merged.count == 0 && merged.sketch.is_none() {
        return None;
    }
    merged.finish(&part.aggregation)
}

/// The part of `[from, to)` the speed layer covered: from its coverage start
/// (`speed_state::read_covered_from`) to where it is complete (`speed_complete_until`), rounded
/// inwards to `alignment` so no bucket is cut. `None` when nothing is left.
pub fn compared_range(
    (from, to): (Millis, Millis),
    covered_from: Option<Millis>,
    complete_until: Option<Millis>,
    alignment: Millis,
) -> Option<(Millis, Millis)> {
    let complete_until = complete_until?;
    let start = match covered_from {
        Some(covered) => from.max(bucket_ceil(covered.min(to), alignment)),
        None => from,
    };
    let end = to.min(bucket_start(complete_until, alignment));
    (start < end).then_some((start, end))
}

/// How far the speed layer has read, by the rule that decides how far the lake is complete
/// (`cutover::lake_complete_until`), applied to its positions. A partition the lander has
/// events from but the speed layer has no position for holds it back entirely.
pub fn speed_complete_until(
    speed: &[(i32, Option<Millis>, bool)],
    lake: &[(i32, Option<Millis>)],
    allowed_lateness: Millis,
) -> Option<Millis> {
    let mut partitions: Vec<LandedPartition> = speed
        .iter()
        .map(|(partition, max_event_time, caught_up)| LandedPartition {
            partition: *partition,
            max_event_time: *max_event_time,
            caught_up: *caught_up,
        })
        .collect();
    for (partition, lake_max) in lake {
        if !speed.iter().any(|(p, _, _)| p == partition) {
            partitions.push(LandedPartition {
                partition: *partition,
                max_event_time: None,
                caught_up: lake_max.is_none(),
            });
        }
    }
    lake_complete_until(&partitions, allowed_lateness)
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
) -> Result<(), BatchError> {
    if previous.is_some_and(|p| p >= cutover) {
        tracing::debug!("T did not move: no newly covered buckets to compare");
        return Ok(());
    }
    let lake = Lake::open(&config.lake_dir)?;
    let view = read_lake_view(&lake, &view_path.to_string_lossy()).await?;
    let alignment = catalog.cutover_alignment();
    let stored: Vec<&str> = catalog.stored().map(|(_, m)| m.name.as_str()).collect();

    // One snapshot of the speed state: its rows, coverage and positions agree with each other
    // (retention removes rows and raises the coverage in one transaction).
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let from = match previous {
        Some(previous) => previous,
        // The first promotion newly covers everything before T: start at the first bucket
        // either side holds.
        None => {
            let speed_first: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT min(bucket_start) FROM speed_aggregates WHERE bucket_start < $1",
            )
            .bind(to_datetime(cutover))
            .fetch_one(&mut *tx)
            .await?;
            let batch_first = view
                .values()
                .filter_map(|rows| rows.first())
                .map(|r| r.bucket_start);
            let first = batch_first
                .chain(speed_first.map(|t| t.timestamp_millis()))
                .min()
                .unwrap_or(cutover);
            bucket_start(first, alignment).min(cutover)
        }
    };
    let covered_from = speed_state::read_covered_from(&mut tx, &config.events_topic).await?;
    let speed_positions: Vec<(i32, Option<DateTime<Utc>>, bool)> = sqlx::query_as(
        "SELECT partition, max_event_time, caught_up FROM speed_offsets WHERE topic = $1",
    )
    .bind(&config.events_topic)
    .fetch_all(&mut *tx)
    .await?;
    let lake_positions: Vec<(i32, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT partition, max_event_time FROM lake_progress WHERE topic = $1")
            .bind(&config.events_topic)
            .fetch_all(&mut *tx)
            .await?;
    let millis = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    let complete_until = speed_complete_until(
        &speed_positions
            .iter()
            .map(|(p, max, caught_up)| (*p, millis(*max), *caught_up))
            .collect::<Vec<_>>(),
        &lake_positions
            .iter()
            .map(|(p, max)| (*p, millis(*max)))
            .collect::<Vec<_>>(),
        catalog.max_allowed_lateness(),
    );
    let compared = compared_range((from, cutover), covered_from, complete_until, alignment);
    let speed = match compared {
        Some((start, end)) => speed_state::read_rows(&mut tx, &stored, start, end).await?,
        None => HashMap::new(),
    };
    tx.commit().await?;

    let results: Vec<(&MetricDef, Option<Comparison>)> = catalog
        .metrics
        .iter()
        .map(|metric| {
            let comparison = match compared {
                Some((start, end)) => {
                    let parts = catalog.parts(metric)?;
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
        .collect::<Result<_, BatchError>>()?;

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
) -> Result<(), BatchError> {
    let mut tx = pool.begin().await?;
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
        .await?;
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
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::hll::Hll;
    use shared_schema::metrics::{Partial, encode_dims};
    use shared_schema::time::MINUTE_MS;

    const M: Millis = MINUTE_MS;

    fn catalog() -> MetricCatalog {
        MetricCatalog::default()
    }

    fn row(bucket: Millis, country: &str, count: i64, sum_micros: i128) -> BucketRow {
        BucketRow {
            bucket_start: bucket,
            dims: encode_dims(&[Some(country)]),
            partial: Partial {
                count,
                sum_micros,
                ..Partial::default()
            },
        }
    }

    fn rows(metric: &str, rows: Vec<BucketRow>) -> HashMap<String, Vec<BucketRow>> {
        HashMap::from([(metric.to_string(), rows)])
    }

    fn compare_named(
        name: &str,
        range: (Millis, Millis),
        batch: &HashMap<String, Vec<BucketRow>>,
        speed: &HashMap<String, Vec<BucketRow>>,
    ) -> Comparison {
        let catalog = catalog();
        let (_, metric) = catalog.get(name).unwrap();
        let parts = catalog.parts(metric).unwrap();
        compare(metric, &parts, range, batch, speed)
    }

    #[test]
    fn the_same_rows_do_not_diverge() {
        // The speed layer keeps one row per Kafka partition; the view one per bucket and group.
        let batch = rows("purchases", vec![row(0, "DE", 3, 0), row(M, "FR", 2, 0)]);
        let speed = rows(
            "purchases",
            vec![row(0, "DE", 1, 0), row(0, "DE", 2, 0), row(M, "FR", 2, 0)],
        );
        let c = compare_named("purchases", (0, 2 * M), &batch, &speed);
        assert_eq!(
            c,
            Comparison {
                batch_total: Some(5.0),
                speed_total: Some(5.0),
                difference: 0.0,
                ratio: 0.0,
                buckets: 2,
                differing_buckets: 0,
            }
        );
    }

    #[test]
    fn an_extra_speed_count_is_a_difference_in_one_bucket() {
        let batch = rows("purchases", vec![row(0, "DE", 3, 0), row(M, "FR", 1, 0)]);
        let speed = rows(
            "purchases",
            vec![row(0, "DE", 3, 0), row(M, "FR", 1, 0), row(M, "DE", 4, 0)],
        );
        let c = compare_named("purchases", (0, 2 * M), &batch, &speed);
        assert_eq!((c.batch_total, c.speed_total), (Some(4.0), Some(8.0)));
        assert_eq!((c.difference, c.ratio), (4.0, 0.5));
        assert_eq!((c.buckets, c.differing_buckets), (2, 1));
        // Missing speed rows diverge the other way, by the same measure.
        let c = compare_named("purchases", (0, 2 * M), &speed, &batch);
        assert_eq!((c.difference, c.ratio), (-4.0, 0.5));
    }

    #[test]
    fn a_shift_between_buckets_keeps_the_total_and_counts_both_buckets() {
        let batch = rows("purchases", vec![row(0, "DE", 2, 0), row(M, "DE", 1, 0)]);
        let speed = rows("purchases", vec![row(0, "DE", 1, 0), row(M, "DE", 2, 0)]);
        let c = compare_named("purchases", (0, 2 * M), &batch, &speed);
        assert_eq!((c.ratio, c.buckets, c.differing_buckets), (0.0, 2, 2));
        // A bucket only one side has differs too.
        let speed = rows(
            "purchases",
            vec![row(0, "DE", 2, 0), row(2 * M, "DE", 1, 0)],
        );
        let c = compare_named("purchases", (0, 3 * M), &batch, &speed);
        assert_eq!((c.buckets, c.differing_buckets), (3, 2));
    }

    #[test]
    fn rows_outside_the_range_are_not_compared() {
        let batch = rows(
            "revenue",
            vec![row(-M, "DE", 1, 5_000_000), row(0, "DE", 1, 2_500_000)],
        );
        let speed = rows(
            "revenue",
            vec![row(0, "DE", 1, 2_500_000), row(M, "DE", 9, 9_000_000)],
        );
        let c = compare_named("revenue", (0, M), &batch, &speed);
        assert_eq!(
            (c.batch_total, c.speed_total, c.ratio),
            (Some(2.5), Some(2.5), 0.0)
        );
        assert_eq!(c.buckets, 1);
    }

    #[test]
    fn a_ratio_is_compared_as_its_summed_parts() {
        let both = |errors: Vec<BucketRow>, views: Vec<BucketRow>| {
            HashMap::from([
                ("errors".to_string(), errors),
                ("page_views".to_string(), views),
            ])
        };
        // Batch: 1 error in 10 views, then 3 in 10: 4/20 = 0.2 (not the mean of 0.1 and 0.3).
        let batch = both(
            vec![row(0, "p", 1, 0), row(M, "p", 3, 0)],
            vec![row(0, "p", 10, 0), row(M, "p", 10, 0)],
        );
        // Speed lost 10 views of the second minute: 4/10.
        let speed = both(
            vec![row(0, "p", 1, 0), row(M, "p", 3, 0)],
            vec![row(0, "p", 10, 0)],
        );
        let c = compare_named("error_rate", (0, 2 * M), &batch, &speed);
        assert_eq!(c.batch_total, Some(0.2));
        assert_eq!(c.speed_total, Some(0.4));
        assert!((c.ratio - 0.5).abs() < 1e-12, "{c:?}");
        // The second minute has no rate on the speed side at all (3 errors, no views).
        assert_eq!((c.buckets, c.differing_buckets), (2, 1));
    }

    #[test]
    fn a_distinct_count_merges_its_sketches_over_the_range() {
        let users = |bucket: Millis, names: &[&str]| {
            let mut sketch = Hll::default();
            names.iter().for_each(|n| sketch.insert(n));
            BucketRow {
                bucket_start: bucket,
                dims: encode_dims(&[]),
                partial: Partial {
                    count: names.len() as i64,
                    sketch: Some(sketch),
                    ..Partial::default()
                },
            }
        };
        // The same user in both minutes is one active user over the range, not two.
        let batch = rows(
            "active_users",
            vec![users(0, &["a", "b"]), users(M, &["a"])],
        );
        let speed = rows(
            "active_users",
            vec![users(0, &["a", "b"]), users(M, &["a"])],
        );
        let c = compare_named("active_users", (0, 2 * M), &batch, &speed);
        assert_eq!(
            (c.batch_total, c.speed_total, c.ratio),
            (Some(2.0), Some(2.0), 0.0)
        );
        let speed = rows(
            "active_users",
            vec![users(0, &["a", "b"]), users(M, &["c"])],
        );
        let c = compare_named("active_users", (0, 2 * M), &batch, &speed);
        assert_eq!((c.speed_total, c.differing_buckets), (Some(3.0), 0));
        assert!((c.ratio - 1.0 / 3.0).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn nothing_on_either_side_is_no_divergence() {
        let empty = HashMap::new();
        let c = compare_named("purchases", (0, 5 * M), &empty, &empty);
        assert_eq!(
            (c.batch_total, c.speed_total, c.ratio, c.buckets),
            (None, None, 0.0, 0)
        );
        assert_eq!(relative_difference(Some(0.0), None), (0.0, 0.0));
        assert_eq!(relative_difference(None, Some(2.0)), (2.0, 1.0));
        assert_eq!(relative_difference(Some(100.0), Some(99.0)), (-1.0, 0.01));
    }

    #[test]
    fn a_range_of_decades_is_compared_in_steps_of_rows_not_of_buckets() {
        // The first promotion after an event dated 1970: its range spans 56 years of minutes.
        let to = 29_500_000 * M;
        let batch = rows(
            "purchases",
            vec![row(M, "DE", 1, 0), row(to - M, "DE", 2, 0)],
        );
        let speed = rows("purchases", vec![row(to - M, "DE", 2, 0)]);
        let started = std::time::Instant::now();
        let c = compare_named("purchases", (0, to), &batch, &speed);
        assert_eq!((c.batch_total, c.speed_total), (Some(3.0), Some(2.0)));
        assert_eq!((c.buckets, c.differing_buckets), (2, 1));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn only_what_the_speed_layer_covered_is_compared() {
        let range = (10 * M, 20 * M);
        assert_eq!(compared_range(range, None, Some(30 * M), M), Some(range));
        // Retention removed the speed state before 12m30s: its bucket is not compared either.
        assert_eq!(
            compared_range(range, Some(12 * M + 30_000), Some(30 * M), M),
            Some((13 * M, 20 * M))
        );
        // The speed layer had read up to 15m30s only.
        assert_eq!(
            compared_range(range, None, Some(15 * M + 30_000), M),
            Some((10 * M, 15 * M))
        );
        // It never started, has read nothing, or its coverage starts after the range.
        assert_eq!(
            compared_range(range, Some(Millis::MAX), Some(30 * M), M),
            None
        );
        assert_eq!(compared_range(range, None, None, M), None);
        assert_eq!(compared_range(range, Some(25 * M), Some(30 * M), M), None);
        assert_eq!(compared_range(range, None, Some(10 * M), M), None);
        // Buckets wider than a minute are kept whole.
        let hour = 60 * M;
        assert_eq!(
            compared_range((0, 5 * hour), Some(hour + M), Some(4 * hour - M), hour),
            Some((2 * hour, 3 * hour))
        );
    }

    #[test]
    fn the_speed_layer_is_complete_where_every_partition_has_read_past() {
        let lateness = M;
        let speed = [(0, Some(10 * M), true), (1, Some(8 * M), false)];
        let lake = [(0, Some(10 * M)), (1, Some(10 * M))];
        assert_eq!(speed_complete_until(&speed, &lake, lateness), Some(7 * M));
        // A partition the lander has events from and the speed layer never read holds it back.
        let lake = [(0, Some(10 * M)), (1, Some(10 * M)), (2, Some(M))];
        assert_eq!(speed_complete_until(&speed, &lake, lateness), None);
        // One that carried no event does not.
        let lake = [(0, Some(10 * M)), (1, Some(10 * M)), (2, None)];
        assert_eq!(speed_complete_until(&speed, &lake, lateness), Some(7 * M));
    }
}
