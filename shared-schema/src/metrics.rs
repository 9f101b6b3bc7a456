//! Metric definitions, written once and executed by both layers.
//!
//! A definition says which events count, what is aggregated, along which dimensions and in
//! which bucket. The speed layer folds events into [`Partial`]s with [`MetricCatalog::fold`];
//! the batch layer turns the same definition into a DataFusion plan. Both produce rows keyed by
//! `(metric, bucket start, dims)` whose partials merge with [`Partial::merge`], and the serving
//! layer finishes them with [`Partial::finish`]. Nothing about a metric's meaning lives anywhere
//! else.

use crate::event::{Event, micros_to_f64};
use crate::time::{HumanDuration, MINUTE_MS, Millis, bucket_start};
use serde::Serialize;
use std::collections::HashMap;

/// An event attribute a metric can be grouped or filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    EventType,
    UserId,
    ProductId,
    City,
    Country,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::EventType,
        Dimension::UserId,
        Dimension::ProductId,
        Dimension::City,
        Dimension::Country,
    ];

    /// The name in the HTTP API, and the column name in the lake.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::EventType => "event_type",
            Dimension::UserId => "user_id",
            Dimension::ProductId => "product_id",
            Dimension::City => "city",
            Dimension::Country => "country",
        }
    }

    pub fn from_name(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn value(self, event: &Event) -> Option<&str> {
        match self {
            Dimension::EventType => Some(&event.event_type),
            Dimension::UserId => event.user_id.as_deref(),
            Dimension::ProductId => event.product_id.as_deref(),
            Dimension::City => event.city.as_deref(),
            Dimension::Country => event.country.as_deref(),
        }
    }
}

/// How a metric's events fold into one value per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of distinct events.
    Count,
    /// Sum of `amount`; events without an amount add nothing.
    SumAmount,
}

impl Aggregation {
    /// The name in `GET /v1/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::SumAmount => "sum",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDef {
    pub name: String,
    pub description: String,
    /// Only events of this type count; `None` means every event.
    pub event_type: Option<String>,
    pub aggregation: Aggregation,
    /// The dimensions a query may group or filter by, in the order of the stored dims key.
    pub dimensions: Vec<Dimension>,
    pub bucket: HumanDuration,
    /// How long after a bucket's end its events may still arrive before they count as late.
    pub allowed_lateness: HumanDuration,
}

impl MetricDef {
    pub fn matches(&self, event: &Event) -> bool {
        self.event_type
            .as_deref()
            .is_none_or(|wanted| wanted == event.event_type)
    }

    pub fn bucket_of(&self, event: &Event) -> Millis {
        bucket_start(event.event_time, self.bucket.millis())
    }

    /// The canonical dims key of an event for this metric (see [`encode_dims`]).
    pub fn dims_key(&self, event: &Event) -> String {
        let values: Vec<Option<&str>> = self.dimensions.iter().map(|d| d.value(event)).collect();
        encode_dims(&values)
    }

    /// Position of `dimension` in this metric's dims key.
    pub fn dimension_index(&self, dimension: Dimension) -> Option<usize> {
        self.dimensions.iter().position(|d| *d == dimension)
    }
}

/// The stored form of a group: a JSON array of the dimension values, `null` where the event
/// lacks the field. Both layers write this exact text, so keys compare byte for byte.
pub fn encode_dims(values: &[Option<&str>]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_string())
}

pub fn decode_dims(key: &str) -> Vec<Option<String>> {
    serde_json::from_str(key).unwrap_or_default()
}

/// The mergeable state of one aggregation in one bucket and group.
///
/// Merging is commutative and associative with `Partial::default()` as identity, so partials
/// may be combined in any order: across speed-layer partitions, across buckets of a window, and
/// across the cutover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Partial {
    pub count: i64,
    pub sum_micros: i128,
}

impl Partial {
    pub fn of_event(event: &Event) -> Partial {
        Partial {
            count: 1,
            sum_micros: event.amount_micros.unwrap_or(0) as i128,
        }
    }

    pub fn merge(&mut self, other: &Partial) {
        self.count += other.count;
        self.sum_micros += other.sum_micros;
    }

    pub fn finish(&self, aggregation: Aggregation) -> f64 {
        match aggregation {
            Aggregation::Count => self.count as f64,
            Aggregation::SumAmount => micros_to_f64(self.sum_micros),
        }
    }
}

/// Where one partial belongs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartialKey {
    pub metric: usize,
    pub bucket_start: Millis,
    pub dims: String,
}

/// The metrics a deployment serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricCatalog {
    pub metrics: Vec<MetricDef>,
}

impl Default for MetricCatalog {
    /// The e-commerce dashboard of CONTRACT §6 (the metrics implemented so far).
    fn default() -> Self {
        let minute = HumanDuration::from_millis(MINUTE_MS);
        let lateness = HumanDuration::from_millis(MINUTE_MS);
        let def =
            |name: &str, description: &str, event_type: &str, aggregation, dimensions| MetricDef {
                name: name.to_string(),
                description: description.to_string(),
                event_type: Some(event_type.to_string()),
                aggregation,
                dimensions,
                bucket: minute,
                allowed_lateness: lateness,
            };
        MetricCatalog {
            metrics: vec![
                def(
                    "purchases",
                    "Number of purchase events",
                    "purchase",
                    Aggregation::Count,
                    vec![Dimension::Country],
                ),
                def(
                    "revenue",
                    "Sum of amount over purchase events",
                    "purchase",
                    Aggregation::SumAmount,
                    vec![Dimension::Country],
                ),
            ],
        }
    }
}

impl MetricCatalog {
    pub fn get(&self, name: &str) -> Option<(usize, &MetricDef)> {
        self.metrics
            .iter()
            .enumerate()
            .find(|(_, m)| m.name == name)
    }

    /// Folds one (already deduplicated) event into `table`, once per metric it counts for.
    pub fn fold(&self, event: &Event, table: &mut HashMap<PartialKey, Partial>) {
        let contribution = Partial::of_event(event);
        for (index, metric) in self.metrics.iter().enumerate() {
            if metric.matches(event) {
                let key = PartialKey {
                    metric: index,
                    bucket_start: metric.bucket_of(event),
                    dims: metric.dims_key(event),
                };
                table.entry(key).or_default().merge(&contribution);
            }
        }
    }

    /// The widest bucket; the cutover is aligned to it so it is a boundary for every metric.
    pub fn cutover_alignment(&self) -> Millis {
        self.metrics
            .iter()
            .map(|m| m.bucket.millis())
            .max()
            .unwrap_or(MINUTE_MS)
    }

    /// The largest allowed lateness over all metrics; the lake must be complete this far past T.
    pub fn max_allowed_lateness(&self) -> Millis {
        self.metrics
            .iter()
            .map(|m| m.allowed_lateness.millis())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn purchase(id: &str, t: Millis, country: Option<&str>, micros: i64) -> Event {
        Event {
            event_id: id.into(),
            event_type: "purchase".into(),
            event_time: t,
            schema_version: 2,
            user_id: None,
            product_id: None,
            amount_micros: Some(micros),
            city: None,
            country: country.map(str::to_string),
        }
    }

    #[test]
    fn fold_counts_only_matching_events_per_bucket_and_group() {
        let catalog = MetricCatalog::default();
        let mut table = HashMap::new();
        catalog.fold(&purchase("a", 60_000, Some("DE"), 1_500_000), &mut table);
        catalog.fold(&purchase("b", 119_999, Some("DE"), 500_000), &mut table);
        catalog.fold(&purchase("c", 120_000, None, 1), &mut table);
        let mut click = purchase("d", 60_000, Some("DE"), 7);
        click.event_type = "click".into();
        catalog.fold(&click, &mut table);

        let (revenue, def) = catalog.get("revenue").unwrap();
        assert_eq!(def.aggregation, Aggregation::SumAmount);
        let de = PartialKey {
            metric: revenue,
            bucket_start: 60_000,
            dims: r#"["DE"]"#.into(),
        };
        assert_eq!(
            table[&de],
            Partial {
                count: 2,
                sum_micros: 2_000_000
            }
        );
        assert_eq!(table[&de].finish(Aggregation::SumAmount), 2.0);
        let none = PartialKey {
            metric: revenue,
            bucket_start: 120_000,
            dims: "[null]".into(),
        };
        assert_eq!(table[&none].count, 1);
        assert_eq!(
            table.len(),
            4,
            "two metrics x two groups, the click counts nowhere"
        );
    }

    #[test]
    fn dims_round_trip() {
        let key = encode_dims(&[Some("DE"), None, Some("a\"b")]);
        assert_eq!(key, r#"["DE",null,"a\"b"]"#);
        assert_eq!(
            decode_dims(&key),
            vec![Some("DE".into()), None, Some("a\"b".into())]
        );
    }

    fn partial() -> impl Strategy<Value = Partial> {
        (0i64..1_000_000, 0i128..1_000_000_000_000)
            .prop_map(|(count, sum_micros)| Partial { count, sum_micros })
    }

    proptest! {
        #[test]
        fn merge_is_commutative_and_associative(a in partial(), b in partial(), c in partial()) {
            let mut ab = a; ab.merge(&b);
            let mut ba = b; ba.merge(&a);
            prop_assert_eq!(ab, ba);
            let mut ab_c = ab; ab_c.merge(&c);
            let mut bc = b; bc.merge(&c);
            let mut a_bc = a; a_bc.merge(&bc);
            prop_assert_eq!(ab_c, a_bc);
            let mut with_identity = a; with_identity.merge(&Partial::default());
            prop_assert_eq!(with_identity, a);
        }
    }
}
