//! What a query over one metric asks: its grid of points, their step and window, and the
//! buckets they need. Shared by the merge (`query`) and the windowed sums (`sliding`).

use crate::time::Millis;

/// A validated query over one metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesQuery {
    /// The first point: the first bucket boundary at or after the asked `from` (CONTRACT §4).
    /// Points lie at `from`, `from + step`, ... below `to`, so they tile the asked range
    /// whatever its phase against the step; callers round with `bucket_ceil(from, bucket)`.
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
    /// The points' timestamps: `from + k * step` in `[from, to)`.
    pub fn point_times(&self) -> impl Iterator<Item = Millis> + '_ {
        (0..self.point_count()).map(move |i| self.from + i * self.step)
    }

    pub fn point_count(&self) -> i64 {
        if self.from >= self.to {
            0
        } else {
            (self.to - 1 - self.from) / self.step + 1
        }
    }

    /// The latest point time of this query's grid at or before `t` (possibly before `from`).
    pub fn grid_floor(&self, t: Millis) -> Millis {
        self.from + (t - self.from).div_euclid(self.step) * self.step
    }

    /// The buckets `[start, end)` whose rows some point needs; empty without points.
    pub fn bucket_range(&self) -> (Millis, Millis) {
        match self.point_count() {
            0 => (self.from, self.from),
            points => (
                self.from + self.step - self.window,
                self.from + points * self.step,
            ),
        }
    }

    /// The window `[start, end)` aggregated by the point at `t`.
    pub fn window_of(&self, t: Millis) -> (Millis, Millis) {
        (t + self.step - self.window, t + self.step)
    }
}
