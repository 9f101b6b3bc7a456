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

/// One part's finished points: (group, t) -> (value, source).
type FinishedPoints = BTreeMap<(Group, Millis), (Option<f64>, Source)>;

/// One stored partial: a metric's bucket and group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub bucket_start: Millis,
    pub dims: String,
    pub partial: Partial,
}

impl BucketRow {
    /// The memory it holds, roughly: what the serving layer's caches weigh it by.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<BucketRow>()
            + self.dims.len()
            + self
                .partial
                .sketch
                .as_ref()
                .map_or(0, crate::hll::Hll::heap_bytes)
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
    let mut finished: Vec<FinishedPoints> = Vec::new();
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
#[path = "query_tests.rs"]
mod tests;
