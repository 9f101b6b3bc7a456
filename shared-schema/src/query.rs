//! The merge of batch and speed rows into the points of one query (CONTRACT §4, §5.2).
//!
//! This is the one place every query passes through, so the split is enforced here and not
//! trusted to the callers: batch rows at or after T and speed rows before T are dropped.

use crate::cutover::Source;
use crate::metrics::{MetricDef, Partial, decode_dims, finish_ratio};
pub use crate::series::SeriesQuery;
use crate::sliding::{self, Clock, MergeBudget, MergeError, points_bound};
use crate::time::Millis;
use std::borrow::Borrow;
use std::collections::BTreeMap;

/// One stored partial: a metric's bucket and group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub bucket_start: Millis,
    pub dims: String,
    pub partial: Partial,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub t: Millis,
    pub partial: Partial,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The value of the `group_by` dimension (`None` when the event lacked it); `None` for the
    /// whole series when the query has no `group_by`.
    pub group: Option<Option<String>>,
    pub points: Vec<Point>,
}

/// Merges the rows of both sides into series. A point appears when at least one bucket of its
/// window holds data.
pub fn assemble(
    _metric: &MetricDef,
    query: &SeriesQuery,
    cutover: Option<Millis>,
    batch: impl IntoIterator<Item = BucketRow>,
    speed: impl IntoIterator<Item = BucketRow>,
) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    // Without limits or a deadline nothing can be refused.
    let _ = for_each_point(
        query,
        cutover,
        batch,
        speed,
        &MergeBudget::default(),
        |group, point| match series.last_mut() {
            Some(last) if &last.group == group => last.points.push(point),
            _ => series.push(Series {
                group: group.clone(),
                points: vec![point],
            }),
        },
    );
    series
}

/// The points of [`assemble`], group by group in order and in time order within a group, handed
/// to `visit` as they are computed (a distinct count's sketches are never all held at once).
/// Refused before any window is computed when the groups or the points they can reach exceed
/// `budget`, and during the walk past its deadline.
pub fn for_each_point(
    query: &SeriesQuery,
    cutover: Option<Millis>,
    batch: impl IntoIterator<Item = BucketRow>,
    speed: impl IntoIterator<Item = BucketRow>,
    budget: &MergeBudget,
    mut visit: impl FnMut(&Group, Point),
) -> Result<(), MergeError> {
    let mut clock = Clock::new(budget.deadline);
    // Per group, one merged partial per bucket (speed rows come one per partition).
    let mut groups: BTreeMap<Group, BTreeMap<Millis, Partial>> = BTreeMap::new();
    for (group, row) in grouped_rows(query, cutover, batch, speed) {
        clock.tick()?;
        if let Some(max) = budget.max_groups
            && groups.len() >= max
            && !groups.contains_key(&group)
        {
            return Err(MergeError::Groups { max });
        }
        groups
            .entry(group)
            .or_default()
            .entry(row.bucket_start)
            .or_default()
            .merge(&row.partial);
    }
    check_points(query, budget, groups.values().map(BTreeMap::len))?;
    for (group, buckets) in groups {
        sliding::walk(buckets, query, &mut clock, |t, partial| {
            // Session starts can be retracted by late events, leaving a bucket at zero.
            if partial.count != 0 || partial.sketch.is_some() {
                let (start, end) = query.window_of(t);
                let source = Source::of_span(start, end, cutover);
                visit(&group, Point { t, partial, source });
            }
        })?;
    }
    Ok(())
}

/// The rows a query reads, with their group: each side's rows on its side of T, within the
/// buckets the points need, passing the filter.
fn grouped_rows<R: Borrow<BucketRow>>(
    query: &SeriesQuery,
    cutover: Option<Millis>,
    batch: impl IntoIterator<Item = R>,
    speed: impl IntoIterator<Item = R>,
) -> impl Iterator<Item = (Group, R)> {
    let on_batch_side = move |b: Millis| cutover.is_some_and(|t| b < t);
    let (range_start, range_end) = query.bucket_range();
    let (filter, group_by) = (query.filter.clone(), query.group_by);
    batch
        .into_iter()
        .filter(move |r| on_batch_side(r.borrow().bucket_start))
        .chain(
            speed
                .into_iter()
                .filter(move |r| !on_batch_side(r.borrow().bucket_start)),
        )
        .filter(move |r| {
            let b = r.borrow().bucket_start;
            b >= range_start && b < range_end
        })
        .filter_map(move |row| {
            let dims = decode_dims(&row.borrow().dims);
            if let Some((index, wanted)) = &filter
                && dims.get(*index).and_then(|v| v.as_deref()) != Some(wanted.as_str())
            {
                return None;
            }
            let group = group_by.map(|index| dims.get(index).cloned().flatten());
            Some((group, row))
        })
}

/// The points bound of groups holding these numbers of distinct buckets, against the budget.
fn check_points(
    query: &SeriesQuery,
    budget: &MergeBudget,
    buckets_per_group: impl Iterator<Item = usize>,
) -> Result<(), MergeError> {
    if let Some(max) = budget.max_points {
        let points = buckets_per_group
            .map(|buckets| points_bound(query, buckets))
            .fold(0u64, u64::saturating_add);
        if points > max {
            return Err(MergeError::Points { points, max });
        }
    }
    Ok(())
}

/// Whether a merge of these rows under `query` stays within `budget`'s groups and points,
/// found by counting buckets per group without merging anything. An answer made of several
/// merges (cached chunks, fresh points) checks its whole range once with this.
pub fn check_budget<'a>(
    query: &SeriesQuery,
    cutover: Option<Millis>,
    batch: impl IntoIterator<Item = &'a BucketRow>,
    speed: impl IntoIterator<Item = &'a BucketRow>,
    budget: &MergeBudget,
) -> Result<(), MergeError> {
    let mut clock = Clock::new(budget.deadline);
    let mut groups: BTreeMap<Group, std::collections::BTreeSet<Millis>> = BTreeMap::new();
    for (group, row) in grouped_rows(query, cutover, batch, speed) {
        clock.tick()?;
        if let Some(max) = budget.max_groups
            && groups.len() >= max
            && !groups.contains_key(&group)
        {
            return Err(MergeError::Groups { max });
        }
        groups.entry(group).or_default().insert(row.bucket_start);
    }
    check_points(
        query,
        budget,
        groups.values().map(std::collections::BTreeSet::len),
    )
}

/// A group's value (`None` without `group_by`; `Some(None)` for events lacking the field).
pub type Group = Option<Option<String>>;

/// One finished point of a merged query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergedPoint {
    pub value: f64,
    pub source: Source,
    /// For a ratio, the finished denominator.
    pub denominator: Option<f64>,
}

/// The finished points of a metric under `query`. `parts` are the stored metrics it is computed
/// from (see `MetricCatalog::parts`: the metric itself, or a ratio's numerator and denominator),
/// each with its batch and speed rows. Each part is merged by [`assemble`] and finished on its
/// own; a ratio is divided last. Both the serving layer's answers and the batch layer's
/// divergence check go through here, so they cannot finish a metric differently.
pub fn finish_points<B, S>(
    query: &SeriesQuery,
    cutover: Option<Millis>,
    parts: Vec<(&MetricDef, B, S)>,
) -> BTreeMap<(Group, Millis), MergedPoint>
where
    B: IntoIterator<Item = BucketRow>,
    S: IntoIterator<Item = BucketRow>,
{
    // Without limits or a deadline nothing can be refused.
    finish_points_within(query, cutover, parts, &MergeBudget::default()).unwrap_or_default()
}

/// [`finish_points`] within `budget` (checked per part).
pub fn finish_points_within<B, S>(
    query: &SeriesQuery,
    cutover: Option<Millis>,
    parts: Vec<(&MetricDef, B, S)>,
    budget: &MergeBudget,
) -> Result<BTreeMap<(Group, Millis), MergedPoint>, MergeError>
where
    B: IntoIterator<Item = BucketRow>,
    S: IntoIterator<Item = BucketRow>,
{
    // Per part: (group, t) -> (finished value, source).
    let mut finished: Vec<BTreeMap<(Group, Millis), (Option<f64>, Source)>> = Vec::new();
    for (part, batch, speed) in parts {
        let mut points = BTreeMap::new();
        for_each_point(query, cutover, batch, speed, budget, |group, p| {
            points.insert(
                (group.clone(), p.t),
                (p.partial.finish(&part.aggregation), p.source),
            );
        })?;
        finished.push(points);
    }
    Ok(match finished.as_slice() {
        [single] => single
            .iter()
            .filter_map(|(k, (v, source))| {
                v.map(|value| {
                    (
                        k.clone(),
                        MergedPoint {
                            value,
                            source: *source,
                            denominator: None,
                        },
                    )
                })
            })
            .collect(),
        [numerator, denominator] => denominator
            .iter()
            .filter_map(|(k, (den, source))| {
                let num = numerator.get(k).and_then(|(v, _)| *v);
                finish_ratio(num, *den).map(|value| {
                    (
                        k.clone(),
                        MergedPoint {
                            value,
                            source: *source,
                            denominator: *den,
                        },
                    )
                })
            })
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// The rows of a slice sorted by bucket that fall in `[start, end)`.
pub fn rows_in(rows: &[BucketRow], start: Millis, end: Millis) -> &[BucketRow] {
    let lo = rows.partition_point(|r| r.bucket_start < start);
    let hi = rows.partition_point(|r| r.bucket_start < end);
    &rows[lo..hi.max(lo)]
}

/// The parts of `[from, to)` that neither side covers. The batch view covers everything before
/// T; the speed layer covers everything from `speed_covered_from` on (`None`: from the start of
/// the topic).
pub fn gaps(
    from: Millis,
    to: Millis,
    cutover: Option<Millis>,
    speed_covered_from: Option<Millis>,
) -> Vec<(Millis, Millis)> {
    let Some(speed_start) = speed_covered_from else {
        return Vec::new();
    };
    let uncovered_start = cutover.unwrap_or(Millis::MIN).max(from);
    let uncovered_end = speed_start.min(to);
    if uncovered_start < uncovered_end {
        vec![(uncovered_start, uncovered_end)]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MINUTE_MS;
    use crate::{catalog::MetricCatalog, metrics::encode_dims};
    use proptest::prelude::*;

    const M: Millis = MINUTE_MS;

    fn row(bucket: Millis, country: Option<&str>, count: i64) -> BucketRow {
        BucketRow {
            bucket_start: bucket,
            dims: encode_dims(&[country]),
            partial: Partial {
                count,
                sum_micros: count as i128 * 1_000_000,
                ..Partial::default()
            },
        }
    }

    fn minute_query(from: Millis, to: Millis) -> SeriesQuery {
        SeriesQuery {
            from,
            to,
            step: M,
            window: M,
            group_by: None,
            filter: None,
        }
    }

    fn purchases() -> MetricDef {
        MetricCatalog::default().get("purchases").unwrap().1.clone()
    }

    #[test]
    fn split_is_enforced_at_t() {
        let t = Some(2 * M);
        // Both sides hold rows for every bucket; only the right side of each may count.
        let batch = (0..4).map(|b| row(b * M, Some("DE"), 10));
        let speed = (0..4).map(|b| row(b * M, Some("DE"), 1));
        let series = assemble(&purchases(), &minute_query(0, 4 * M), t, batch, speed);
        let counts: Vec<(i64, Source)> = series[0]
            .points
            .iter()
            .map(|p| (p.partial.count, p.source))
            .collect();
        assert_eq!(
            counts,
            vec![
                (10, Source::Batch),
                (10, Source::Batch),
                (1, Source::Speed),
                (1, Source::Speed)
            ]
        );
    }

    #[test]
    fn sliding_window_and_group_by_and_filter() {
        let speed = vec![
            row(0, Some("DE"), 1),
            row(M, Some("FR"), 2),
            row(2 * M, Some("DE"), 4),
            row(2 * M, None, 8),
        ];
        let mut q = SeriesQuery {
            from: 0,
            to: 3 * M,
            step: M,
            window: 2 * M,
            group_by: Some(0),
            filter: None,
        };
        let series = assemble(
            &purchases(),
            &q,
            Some(M),
            vec![row(0, Some("DE"), 1)],
            speed.clone(),
        );
        let by_group: Vec<(Option<Option<String>>, Vec<(Millis, i64, Source)>)> = series
            .iter()
            .map(|s| {
                (
                    s.group.clone(),
                    s.points
                        .iter()
                        .map(|p| (p.t, p.partial.count, p.source))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            by_group,
            vec![
                // The point at t covers the buckets t - 1m and t; T = 1m.
                (Some(None), vec![(2 * M, 8, Source::Speed)]),
                (
                    Some(Some("DE".into())),
                    vec![
                        (0, 1, Source::Batch),
                        (M, 1, Source::Mixed),
                        (2 * M, 4, Source::Speed)
                    ]
                ),
                (
                    Some(Some("FR".into())),
                    vec![(M, 2, Source::Mixed), (2 * M, 2, Source::Speed)]
                ),
            ]
        );
        q.group_by = None;
        q.filter = Some((0, "DE".into()));
        q.window = M;
        q.step = 3 * M;
        let series = assemble(
            &purchases(),
            &q,
            Some(M),
            vec![row(0, Some("DE"), 1)],
            speed,
        );
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].group, None);
        let points: Vec<(Millis, i64)> = series[0]
            .points
            .iter()
            .map(|p| (p.t, p.partial.count))
            .collect();
        assert_eq!(
            points,
            vec![(0, 4)],
            "window 1m at step 3m covers only the third minute"
        );
    }

    #[test]
    fn gaps_are_reported_between_t_and_speed_coverage() {
        assert_eq!(
            gaps(0, 10 * M, Some(2 * M), Some(5 * M)),
            vec![(2 * M, 5 * M)]
        );
        assert_eq!(gaps(0, 10 * M, None, Some(5 * M)), vec![(0, 5 * M)]);
        assert_eq!(gaps(0, 10 * M, Some(6 * M), Some(5 * M)), vec![]);
        assert_eq!(gaps(0, 10 * M, None, None), vec![]);
    }

    #[test]
    fn points_tile_the_asked_range_from_its_first_bucket_boundary() {
        // `from=01:21&to=02:21&step=1h&window=1h`: one point at 01:21 holding the whole hour
        // (points at multiples of the hour left it out: the only one, 02:00, lay after the data).
        let h = 60 * M;
        let rows: Vec<BucketRow> = (81..141).map(|m| row(m * M, Some("DE"), 1)).collect();
        let q = SeriesQuery {
            from: 81 * M,
            to: 141 * M,
            step: h,
            window: h,
            group_by: None,
            filter: None,
        };
        assert_eq!(q.point_count(), 1);
        assert_eq!(q.bucket_range(), (81 * M, 141 * M));
        for (cutover, source) in [
            (Some(200 * M), Source::Batch),
            (Some(100 * M), Source::Mixed),
            (Some(0), Source::Speed),
            (None, Source::Speed),
        ] {
            let series = assemble(&purchases(), &q, cutover, rows.clone(), rows.clone());
            let points: Vec<(Millis, i64, Source)> = series[0]
                .points
                .iter()
                .map(|p| (p.t, p.partial.count, p.source))
                .collect();
            assert_eq!(points, vec![(81 * M, 60, source)], "T = {cutover:?}");
        }
        // A sliding window on the same grid; no point at all when no boundary is in range.
        let sliding = SeriesQuery {
            window: 2 * h,
            to: 81 * M + 3 * h,
            ..q.clone()
        };
        let times: Vec<Millis> = sliding.point_times().collect();
        assert_eq!(times, [81 * M, 141 * M, 201 * M]);
        assert_eq!(sliding.bucket_range(), (21 * M, 261 * M));
        assert_eq!(sliding.grid_floor(200 * M), 141 * M);
        let empty = SeriesQuery {
            from: 82 * M,
            to: 82 * M,
            ..q
        };
        assert_eq!(empty.point_count(), 0);
        assert!(assemble(&purchases(), &empty, None, Vec::new(), rows).is_empty());
    }

    #[test]
    fn limits_refuse_before_the_windows_are_computed() {
        let rows: Vec<BucketRow> = (0..50)
            .map(|i| row(i * M, Some(format!("c{i}").as_str()), 1))
            .collect();
        let mut q = minute_query(0, 50 * M);
        q.group_by = Some(0);
        let groups = MergeBudget {
            max_groups: Some(10),
            ..MergeBudget::default()
        };
        let refused = finish_points_within(
            &q,
            None,
            vec![(&purchases(), Vec::new(), rows.clone())],
            &groups,
        );
        assert_eq!(refused, Err(MergeError::Groups { max: 10 }));
        // 50 groups of one bucket, each in 10 windows of 10 minutes.
        q.window = 10 * M;
        let points = MergeBudget {
            max_points: Some(499),
            ..MergeBudget::default()
        };
        let refused = finish_points_within(
            &q,
            None,
            vec![(&purchases(), Vec::new(), rows.clone())],
            &points,
        );
        assert_eq!(
            refused,
            Err(MergeError::Points {
                points: 500,
                max: 499
            })
        );
        let enough = MergeBudget {
            max_points: Some(500),
            ..MergeBudget::default()
        };
        let answered =
            finish_points_within(&q, None, vec![(&purchases(), Vec::new(), rows)], &enough);
        assert_eq!(answered.map(|p| p.len()), Ok(50 * 10 - 45));
    }

    proptest! {
        /// Whatever the cutover, the merged answer equals the answer of one side holding all
        /// data, when both sides agree on every bucket (the parity the layers guarantee).
        #[test]
        fn merge_equals_single_source(
            counts in proptest::collection::vec(0i64..5, 1..40),
            cut in 0i64..40,
            step_buckets in 1i64..5,
            window_steps in 1i64..4,
            from in 0i64..10,
        ) {
            let rows: Vec<BucketRow> = counts.iter().enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| row(i as Millis * M, Some("DE"), *c)).collect();
            let step = step_buckets * M;
            let q = SeriesQuery { from: from * M, to: 40 * M, step, window: window_steps * step, group_by: None, filter: None };
            let merged = assemble(&purchases(), &q, Some(cut * M), rows.clone(), rows.clone());
            let single = assemble(&purchases(), &q, None, Vec::new(), rows.clone());
            let values = |s: &[Series]| -> Vec<(Millis, i64)> {
                s.iter().flat_map(|s| s.points.iter().map(|p| (p.t, p.partial.count))).collect()
            };
            prop_assert_eq!(values(&merged), values(&single));
            // And each point is the sum over exactly its window.
            for p in merged.iter().flat_map(|s| &s.points) {
                let (start, end) = q.window_of(p.t);
                let expected: i64 = rows.iter().filter(|r| r.bucket_start >= start && r.bucket_start < end).map(|r| r.partial.count).sum();
                prop_assert_eq!(p.partial.count, expected);
                // CONTRACT §4 (issue 15): points lie on `from`'s grid, not on multiples of the
                // step since the epoch (this asserted `p.t % step == 0` before).
                prop_assert_eq!((p.t - q.from) % step, 0);
            }
        }
    }
}
