//! The merge of batch and speed rows into the points of one query (CONTRACT §4, §5.2).
//!
//! This is the one place every query passes through, so the split is enforced here and not
//! trusted to the callers: batch rows at or after T and speed rows before T are dropped.

use crate::cutover::Source;
use crate::metrics::{MetricDef, Partial, decode_dims, finish_ratio};
use crate::time::{Millis, bucket_ceil, bucket_start};
use std::collections::BTreeMap;

/// One stored partial: a metric's bucket and group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub bucket_start: Millis,
    pub dims: String,
    pub partial: Partial,
}

/// A validated query over one metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesQuery {
    pub from: Millis,
    pub to: Millis,
    pub step: Millis,
    pub window: Millis,
    /// Index into the metric's dimensions.
    pub group_by: Option<usize>,
    /// Index into the metric's dimensions and the value it must equal.
    pub filter: Option<(usize, String)>,
}

impl SeriesQuery {
    /// The points' timestamps: the step boundaries in `[from, to)`.
    pub fn point_times(&self) -> impl Iterator<Item = Millis> + '_ {
        let first = bucket_ceil(self.from, self.step);
        (0..)
            .map(move |i| first + i * self.step)
            .take_while(move |t| *t < self.to)
    }

    pub fn point_count(&self) -> i64 {
        let first = bucket_ceil(self.from, self.step);
        if first >= self.to {
            0
        } else {
            (self.to - 1 - first) / self.step + 1
        }
    }

    /// The buckets `[start, end)` whose rows some point needs.
    pub fn bucket_range(&self) -> (Millis, Millis) {
        let first = bucket_ceil(self.from, self.step);
        let last = bucket_start(self.to - 1, self.step);
        (first + self.step - self.window, last.max(first) + self.step)
    }

    /// The window `[start, end)` aggregated by the point at `t`.
    pub fn window_of(&self, t: Millis) -> (Millis, Millis) {
        (t + self.step - self.window, t + self.step)
    }
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
    metric: &MetricDef,
    query: &SeriesQuery,
    cutover: Option<Millis>,
    batch: impl IntoIterator<Item = BucketRow>,
    speed: impl IntoIterator<Item = BucketRow>,
) -> Vec<Series> {
    let on_batch_side = |b: Millis| cutover.is_some_and(|t| b < t);
    let rows = batch
        .into_iter()
        .filter(|r| on_batch_side(r.bucket_start))
        .chain(speed.into_iter().filter(|r| !on_batch_side(r.bucket_start)));

    let (range_start, range_end) = query.bucket_range();
    let bucket_width = metric.bucket.millis();
    let mut groups: BTreeMap<Option<Option<String>>, BTreeMap<Millis, Partial>> = BTreeMap::new();
    for row in rows {
        if row.bucket_start < range_start || row.bucket_start >= range_end {
            continue;
        }
        let dims = decode_dims(&row.dims);
        if let Some((index, wanted)) = &query.filter
            && dims.get(*index).and_then(|v| v.as_deref()) != Some(wanted.as_str())
        {
            continue;
        }
        let group = query
            .group_by
            .map(|index| dims.get(index).cloned().flatten());
        let points = groups.entry(group).or_default();
        // Every point whose window [t + step - window, t + step) holds this bucket.
        let mut t = bucket_ceil(row.bucket_start + bucket_width - query.step, query.step);
        while t + query.step - query.window <= row.bucket_start {
            if t >= query.from && t < query.to {
                points.entry(t).or_default().merge(&row.partial);
            }
            t += query.step;
        }
    }

    groups
        .into_iter()
        .map(|(group, points)| Series {
            group,
            points: points
                .into_iter()
                // Session starts can be retracted by late events, leaving a bucket at zero.
                .filter(|(_, partial)| partial.count != 0 || partial.sketch.is_some())
                .map(|(t, partial)| {
                    let (start, end) = query.window_of(t);
                    Point {
                        t,
                        partial,
                        source: Source::of_span(start, end, cutover),
                    }
                })
                .collect(),
        })
        .collect()
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
    // Per part: (group, t) -> (finished value, source).
    let finished: Vec<BTreeMap<(Group, Millis), (Option<f64>, Source)>> = parts
        .into_iter()
        .map(|(part, batch, speed)| {
            assemble(part, query, cutover, batch, speed)
                .into_iter()
                .flat_map(|s| {
                    let group = s.group;
                    s.points.into_iter().map(move |p| {
                        (
                            (group.clone(), p.t),
                            (p.partial.finish(&part.aggregation), p.source),
                        )
                    })
                })
                .collect()
        })
        .collect();
    match finished.as_slice() {
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
    }
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
    use crate::metrics::{MetricCatalog, encode_dims};
    use crate::time::MINUTE_MS;
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
                prop_assert_eq!(p.t % step, 0);
            }
        }
    }
}
