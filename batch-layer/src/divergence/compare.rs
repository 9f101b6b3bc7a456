//! Comparing one metric of a batch view with the speed layer's rows over a range, and which
//! part of a range the speed layer covered: pure functions, tested without Postgres.

use shared_schema::cutover::{LandedPartition, lake_complete_until};
use shared_schema::metrics::{MetricDef, Partial, finish_ratio};
use shared_schema::query::{BucketRow, Group, MergedPoint, SeriesQuery, finish_points};
use shared_schema::time::{Millis, bucket_ceil, bucket_start};
use std::collections::{BTreeMap, BTreeSet, HashMap};

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

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
