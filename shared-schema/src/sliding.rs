//! Sliding windows over one group's buckets in time linear in buckets plus points.
//!
//! Every point of a query aggregates the buckets of its window `[t + step - window, t + step)`
//! (CONTRACT §4). Walking each bucket into every window that holds it costs `window / step`
//! merges per bucket: 44 640 per row for `step=1m&window=31d`. Here the windows slide over the
//! buckets sorted by time instead: each bucket enters and leaves the window once, and a point
//! costs one merge. Because min, max and sketches cannot be subtracted, the window is a
//! two-stack queue (each stack keeps running merges), which needs only an associative merge:
//! O(1) amortised merges per bucket and per point, for every kind of partial alike. A dense
//! sketch merge is a pass over its 65 536 registers (a sparse one, over its values), so a
//! distinct count costs that per bucket and per point, still independent of `window / step`.
//!
//! Stretches of points whose windows hold no bucket are skipped, not walked, so the cost is
//! bounded by the buckets plus the points that have data.

use crate::metrics::Partial;
use crate::series::SeriesQuery;
use crate::time::Millis;
use std::time::Instant;

/// What a merge may spend before it is refused: checked before the windows are computed
/// (groups, points) and while they are (the deadline).
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeBudget {
    /// Most groups; `None`: any number.
    pub max_groups: Option<usize>,
    /// Most points over all series, as bounded from the buckets before any window is computed.
    pub max_points: Option<u64>,
    /// When the merge gives up.
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("the answer holds more than {max} groups")]
    Groups { max: usize },
    #[error("the answer may hold {points} points over all series; at most {max} are allowed")]
    Points { points: u64, max: u64 },
    #[error("the merge ran past its deadline")]
    Deadline,
}

/// Checks the deadline every so many steps, so reading the clock costs next to nothing.
#[derive(Debug)]
pub struct Clock {
    deadline: Option<Instant>,
    steps: u32,
}

impl Clock {
    pub fn new(deadline: Option<Instant>) -> Self {
        Clock { deadline, steps: 0 }
    }

    pub fn tick(&mut self) -> Result<(), MergeError> {
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(1024)
            && let Some(deadline) = self.deadline
            && Instant::now() >= deadline
        {
            return Err(MergeError::Deadline);
        }
        Ok(())
    }
}

/// The most points `buckets` distinct buckets of one group can reach under `query`: each bucket
/// lies in at most `ceil(window / step)` windows, and a series has at most `point_count` points.
pub fn points_bound(query: &SeriesQuery, buckets: usize) -> u64 {
    let per_bucket = (query.window + query.step - 1) / query.step;
    (buckets as u64)
        .saturating_mul(per_bucket.max(1) as u64)
        .min(query.point_count().max(0) as u64)
}

/// A FIFO of buckets whose merge is known at any time, with only `merge` (no subtraction).
#[derive(Debug, Default)]
pub struct SlidingWindow {
    /// Oldest last; each entry holds the merge of itself and every newer entry of `front`.
    front: Vec<(Millis, Partial)>,
    /// Oldest first, as pushed; `back_total` is their merge.
    back: Vec<(Millis, Partial)>,
    back_total: Partial,
}

impl SlidingWindow {
    pub fn push(&mut self, bucket: Millis, partial: Partial) {
        self.back_total.merge(&partial);
        self.back.push((bucket, partial));
    }

    pub fn is_empty(&self) -> bool {
        self.front.is_empty() && self.back.is_empty()
    }

    fn oldest(&self) -> Option<Millis> {
        self.front.last().or(self.back.first()).map(|(b, _)| *b)
    }

    /// Drops the buckets before `start`.
    pub fn evict_before(&mut self, start: Millis) {
        while self.oldest().is_some_and(|b| b < start) {
            if self.front.is_empty() {
                self.flip();
            }
            self.front.pop();
        }
    }

    /// Moves `back` into the empty `front`, computing its running merges newest to oldest.
    fn flip(&mut self) {
        debug_assert!(self.front.is_empty());
        self.front = std::mem::take(&mut self.back);
        self.front.reverse();
        for i in 1..self.front.len() {
            let (newer, rest) = self.front.split_at_mut(i);
            rest[0].1.merge(&newer[i - 1].1);
        }
        self.back_total = Partial::default();
    }

    /// The merge of every bucket in the window.
    pub fn total(&self) -> Partial {
        let mut total = self
            .front
            .last()
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        total.merge(&self.back_total);
        total
    }
}

/// Calls `visit(t, merge of t's window)` for every point of `query` whose window holds at least
/// one of `buckets` (sorted by start, one entry per bucket), in time order.
pub fn walk(
    buckets: impl IntoIterator<Item = (Millis, Partial)>,
    query: &SeriesQuery,
    clock: &mut Clock,
    mut visit: impl FnMut(Millis, Partial),
) -> Result<(), MergeError> {
    let points = query.point_count();
    let mut window = SlidingWindow::default();
    let mut pending = buckets.into_iter().peekable();
    let mut k: i64 = 0;
    while k < points {
        clock.tick()?;
        let t = query.from + k * query.step;
        let (start, end) = query.window_of(t);
        while let Some((bucket, _)) = pending.peek()
            && *bucket < end
        {
            clock.tick()?;
            if let Some((bucket, partial)) = pending.next() {
                window.push(bucket, partial);
            }
        }
        window.evict_before(start);
        if window.is_empty() {
            // Jump to the first point whose window ends after the next bucket; the points
            // between hold nothing. That point is after `k`, since the bucket is at or after
            // `end`.
            let Some((bucket, _)) = pending.peek() else {
                break;
            };
            k = (bucket - query.from).div_euclid(query.step).max(k + 1);
            continue;
        }
        visit(t, window.total());
        k += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hll::Hll;
    use crate::time::MINUTE_MS;
    use proptest::prelude::*;

    const M: Millis = MINUTE_MS;

    fn query(from: i64, to: i64, step: i64, window_steps: i64) -> SeriesQuery {
        SeriesQuery {
            from: from * M,
            to: to * M,
            step: step * M,
            window: window_steps * step * M,
            group_by: None,
            filter: None,
        }
    }

    /// Every bucket merged into every window holding it: the definition.
    fn naive(buckets: &[(Millis, Partial)], query: &SeriesQuery) -> Vec<(Millis, Partial)> {
        query
            .point_times()
            .filter_map(|t| {
                let (start, end) = query.window_of(t);
                let inside: Vec<&Partial> = buckets
                    .iter()
                    .filter(|(b, _)| *b >= start && *b < end)
                    .map(|(_, p)| p)
                    .collect();
                (!inside.is_empty()).then(|| {
                    let mut total = Partial::default();
                    for p in inside {
                        total.merge(p);
                    }
                    (t, total)
                })
            })
            .collect()
    }

    fn linear(buckets: &[(Millis, Partial)], query: &SeriesQuery) -> Vec<(Millis, Partial)> {
        let mut out = Vec::new();
        walk(
            buckets.iter().cloned(),
            query,
            &mut Clock::new(None),
            |t, p| out.push((t, p)),
        )
        .unwrap();
        out
    }

    fn partial() -> impl Strategy<Value = Partial> {
        (
            -3i64..6,
            proptest::option::of(-50i64..50),
            proptest::option::of(0u8..6),
        )
            .prop_map(|(count, amount, user)| Partial {
                count,
                sum_micros: count as i128 * 1000,
                min_micros: amount,
                max_micros: amount.map(|a| a + 7),
                sketch: user.map(|u| {
                    let mut sketch = Hll::default();
                    sketch.insert(&format!("user-{u}"));
                    sketch
                }),
            })
    }

    proptest! {
        /// The two-stack walk equals merging every window from scratch, for counts, sums,
        /// minima, maxima and sketches, at any phase, step, window and range.
        #[test]
        fn linear_walk_equals_the_naive_merge(
            raw in proptest::collection::btree_map(-30i64..60, partial(), 0..25),
            from in -20i64..40,
            length in 1i64..60,
            step in 1i64..5,
            window_steps in 1i64..6,
        ) {
            let buckets: Vec<(Millis, Partial)> =
                raw.into_iter().map(|(b, p)| (b * M, p)).collect();
            let q = query(from, from + length, step, window_steps);
            prop_assert_eq!(linear(&buckets, &q), naive(&buckets, &q));
        }
    }

    #[test]
    fn a_month_long_window_costs_one_merge_per_point() {
        // One bucket per minute over a day, step 1m, window 31d: the old walk did 44 640
        // merges per bucket; here the window sees each bucket once.
        let buckets: Vec<(Millis, Partial)> = (0..1440)
            .map(|b| {
                (
                    b * M,
                    Partial {
                        count: 1,
                        ..Partial::default()
                    },
                )
            })
            .collect();
        let q = query(0, 2880, 1, 31 * 1440);
        let points = linear(&buckets, &q);
        assert_eq!(points.len(), 2880);
        assert_eq!(points[0].1.count, 1);
        assert_eq!(points[1439].1.count, 1440);
        assert_eq!(points[2879].1.count, 1440);
    }

    #[test]
    fn empty_stretches_are_skipped_and_the_deadline_stops_a_walk() {
        let one = |b: i64| {
            (
                b * M,
                Partial {
                    count: 1,
                    ..Partial::default()
                },
            )
        };
        let q = query(0, 1_000_000, 1, 1);
        let points = linear(&[one(5), one(900_000)], &q);
        assert_eq!(
            points.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [5 * M, 900_000 * M]
        );
        let buckets: Vec<(Millis, Partial)> = (0..100_000).map(one).collect();
        let past = Instant::now() - std::time::Duration::from_secs(1);
        let stopped = walk(buckets, &q, &mut Clock::new(Some(past)), |_, _| {});
        assert_eq!(stopped, Err(MergeError::Deadline));
    }

    #[test]
    fn the_points_bound_counts_windows_per_bucket_and_points() {
        let q = query(0, 60, 1, 10);
        assert_eq!(points_bound(&q, 3), 30);
        assert_eq!(points_bound(&q, 100), 60);
        let q = query(0, 60, 2, 1);
        assert_eq!(points_bound(&q, 3), 3);
    }
}
