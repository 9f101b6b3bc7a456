//! The mergeable state of a metric in one bucket and group, and its merge arithmetic.

use super::{Aggregation, MetricDef};
use crate::event::{Event, micros_to_f64};
use crate::hll::Hll;
use crate::time::Millis;

/// The mergeable state of one metric in one bucket and group.
///
/// Every stored metric keeps the same fields, whatever its aggregation: the event count, and
/// the sum, minimum and maximum of `amount` (micro-units) over its events; a distinct metric
/// also keeps its sketch. Merging is commutative and associative with `Partial::default()` as
/// identity, so partials combine in any order: across speed partitions, across the buckets of
/// a window, and across the cutover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partial {
    pub count: i64,
    pub sum_micros: i128,
    pub min_micros: Option<i64>,
    pub max_micros: Option<i64>,
    pub sketch: Option<Hll>,
}

impl Partial {
    /// One event's contribution to `metric` (which it must match).
    pub fn of_event(metric: &MetricDef, event: &Event) -> Partial {
        let amount = event.amount_micros;
        let sketch = match &metric.aggregation {
            Aggregation::Distinct(dimension) => dimension.value(event).map(|value| {
                let mut sketch = Hll::default();
                sketch.insert(value);
                sketch
            }),
            _ => None,
        };
        Partial {
            count: 1,
            sum_micros: amount.unwrap_or(0) as i128,
            min_micros: amount,
            max_micros: amount,
            sketch,
        }
    }

    /// Adds one event to this partial in place: `merge(&Partial::of_event(..))` without the
    /// sketch per event a distinct metric's `of_event` builds.
    pub fn add_event(&mut self, metric: &MetricDef, event: &Event) {
        let amount = event.amount_micros;
        self.count += 1;
        self.sum_micros += amount.unwrap_or(0) as i128;
        self.min_micros = min_option(self.min_micros, amount);
        self.max_micros = max_option(self.max_micros, amount);
        if let Aggregation::Distinct(dimension) = &metric.aggregation
            && let Some(value) = dimension.value(event)
        {
            self.sketch.get_or_insert_with(Hll::default).insert(value);
        }
    }

    pub fn merge(&mut self, other: &Partial) {
        self.count += other.count;
        self.sum_micros += other.sum_micros;
        self.min_micros = min_option(self.min_micros, other.min_micros);
        self.max_micros = max_option(self.max_micros, other.max_micros);
        match (&mut self.sketch, &other.sketch) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, Some(theirs)) => *mine = Some(theirs.clone()),
            _ => {}
        }
    }

    /// The value of a stored metric; `None` where it has none (no events, or a ratio, which
    /// [`finish_ratio`] finishes).
    pub fn finish(&self, aggregation: &Aggregation) -> Option<f64> {
        match aggregation {
            Aggregation::Count => Some(self.count as f64),
            Aggregation::Sum(_) => Some(micros_to_f64(self.sum_micros)),
            Aggregation::Min(_) => self.min_micros.map(|m| micros_to_f64(m as i128)),
            Aggregation::Max(_) => self.max_micros.map(|m| micros_to_f64(m as i128)),
            Aggregation::Avg(_) => {
                (self.count > 0).then(|| micros_to_f64(self.sum_micros) / self.count as f64)
            }
            Aggregation::Distinct(_) => {
                Some(self.sketch.as_ref().map_or(0.0, |s| s.estimate().round()))
            }
            Aggregation::Sessions { .. } => Some(self.count as f64),
            Aggregation::Ratio { .. } => None,
        }
    }
}

/// A ratio of two finished parts; no value where the denominator is zero or absent.
pub fn finish_ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match denominator {
        Some(d) if d != 0.0 => Some(numerator.unwrap_or(0.0) / d),
        _ => None,
    }
}

fn min_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Where one partial belongs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartialKey {
    pub metric: usize,
    pub bucket_start: Millis,
    pub dims: String,
}
