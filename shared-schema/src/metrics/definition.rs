//! What a metric is: which events count, what is aggregated, along which dimensions and in
//! which bucket, and the stored form of its groups.

use crate::event::Event;
use crate::profiles::UNKNOWN;
use crate::time::{HumanDuration, Millis, bucket_start};
use serde::Deserialize;

/// An event attribute a metric can be grouped, filtered or distinct-counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    EventType,
    UserId,
    ProductId,
    City,
    Country,
    /// The buyer's tier from the profile valid at event time (`unknown` without one).
    Tier,
    /// The buyer's signup country from the profile valid at event time (`unknown` without one).
    SignupCountry,
}

impl Dimension {
    pub const ALL: [Dimension; 7] = [
        Dimension::EventType,
        Dimension::UserId,
        Dimension::ProductId,
        Dimension::City,
        Dimension::Country,
        Dimension::Tier,
        Dimension::SignupCountry,
    ];

    /// The name in definitions and the HTTP API, and the column name in the lake.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::EventType => "event_type",
            Dimension::UserId => "user_id",
            Dimension::ProductId => "product_id",
            Dimension::City => "city",
            Dimension::Country => "country",
            Dimension::Tier => "tier",
            Dimension::SignupCountry => "signup_country",
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
            Dimension::Tier => Some(event.profile.as_ref().map_or(UNKNOWN, |p| p.tier.as_str())),
            Dimension::SignupCountry => match &event.profile {
                Some(profile) => profile.signup_country.as_deref(),
                None => Some(UNKNOWN),
            },
        }
    }

    /// Whether the value comes from the joined profile rather than the event.
    pub fn is_enriched(self) -> bool {
        matches!(self, Dimension::Tier | Dimension::SignupCountry)
    }
}

/// A numeric event field a metric can aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueField {
    Amount,
}

impl ValueField {
    pub fn name(self) -> &'static str {
        match self {
            ValueField::Amount => "amount",
        }
    }

    pub fn from_name(name: &str) -> Option<ValueField> {
        (name == "amount").then_some(ValueField::Amount)
    }

    /// The value in micro-units.
    pub fn value(self, event: &Event) -> Option<i64> {
        match self {
            ValueField::Amount => event.amount_micros,
        }
    }
}

/// How a metric's events fold into one value per bucket and group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Aggregation {
    Count,
    Sum(ValueField),
    Min(ValueField),
    Max(ValueField),
    /// Kept as sum and count, divided last.
    Avg(ValueField),
    /// Distinct values of a dimension, as a HyperLogLog sketch.
    Distinct(Dimension),
    /// One stored metric divided by another, each merged on its own first.
    Ratio {
        numerator: String,
        denominator: String,
    },
    /// Sessions of each `key` value split by inactivity `gap`, counted in the bucket of their
    /// first event (see `sessions`).
    Sessions {
        key: Dimension,
        gap: HumanDuration,
    },
}

impl Aggregation {
    /// The name in definitions and in `GET /v1/metrics`.
    pub fn name(&self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum(_) => "sum",
            Aggregation::Min(_) => "min",
            Aggregation::Max(_) => "max",
            Aggregation::Avg(_) => "avg",
            Aggregation::Distinct(_) => "distinct",
            Aggregation::Ratio { .. } => "ratio",
            Aggregation::Sessions { .. } => "sessions",
        }
    }

    pub fn value_field(&self) -> Option<ValueField> {
        match self {
            Aggregation::Sum(f)
            | Aggregation::Min(f)
            | Aggregation::Max(f)
            | Aggregation::Avg(f) => Some(*f),
            _ => None,
        }
    }
}

/// What the speed layer does with an event that arrives after its bucket closed. Under every
/// policy the event still lands in the lake, so the next batch run counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Correct the speed bucket in place.
    Update,
    /// Record the event for reconciliation, and do not apply it.
    SideOutput,
    /// Do not apply it.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    pub late_policy: LatePolicy,
}

impl MetricDef {
    /// Whether the layers store partials for this metric (a ratio is derived from two others).
    pub fn is_stored(&self) -> bool {
        !matches!(self.aggregation, Aggregation::Ratio { .. })
    }

    /// The event counts for this metric: its type matches, and it carries the aggregated field.
    pub fn matches(&self, event: &Event) -> bool {
        let type_matches = self
            .event_type
            .as_deref()
            .is_none_or(|wanted| wanted == event.event_type);
        let has_field = match &self.aggregation {
            Aggregation::Distinct(d) | Aggregation::Sessions { key: d, .. } => {
                d.value(event).is_some()
            }
            other => other.value_field().is_none_or(|f| f.value(event).is_some()),
        };
        type_matches && has_field
    }

    /// Whether each event contributes on its own (everything but sessions, whose starts depend
    /// on the key's other events).
    pub fn folds_per_event(&self) -> bool {
        self.is_stored() && !matches!(self.aggregation, Aggregation::Sessions { .. })
    }

    pub fn bucket_of(&self, event: &Event) -> Millis {
        bucket_start(event.event_time, self.bucket.millis())
    }

    /// The canonical dims key of an event for this metric (see [`encode_dims`]).
    pub fn dims_key(&self, event: &Event) -> String {
        let mut key = Vec::new();
        self.write_dims_key(event, &mut key);
        String::from_utf8(key).unwrap_or_else(|_| "[]".to_string())
    }

    /// [`Self::dims_key`] written into `out` (see [`write_dims`]), so that a fold can look a
    /// cell up without allocating a key.
    pub fn write_dims_key(&self, event: &Event, out: &mut Vec<u8>) {
        write_dims(self.dimensions.iter().map(|d| d.value(event)), out);
    }

    /// Whether the metric reads the joined profile: it groups by, or counts, an enriched field.
    pub fn needs_profile(&self) -> bool {
        let counted = match &self.aggregation {
            Aggregation::Distinct(d) | Aggregation::Sessions { key: d, .. } => Some(*d),
            _ => None,
        };
        self.dimensions
            .iter()
            .chain(&counted)
            .any(|d| d.is_enriched())
    }

    /// Position of `dimension` in this metric's dims key.
    pub fn dimension_index(&self, dimension: Dimension) -> Option<usize> {
        self.dimensions.iter().position(|d| *d == dimension)
    }
}

/// The stored form of a group: a JSON array of the dimension values, `null` where the event
/// lacks the field. Both layers write this exact text, so keys compare byte for byte.
pub fn encode_dims(values: &[Option<&str>]) -> String {
    let mut key = Vec::new();
    write_dims(values.iter().copied(), &mut key);
    String::from_utf8(key).unwrap_or_else(|_| "[]".to_string())
}

/// [`encode_dims`] into `out`, cleared first: what `serde_json` writes for the array of
/// values, with no allocation once `out` has grown.
pub fn write_dims<'a>(values: impl IntoIterator<Item = Option<&'a str>>, out: &mut Vec<u8>) {
    out.clear();
    out.push(b'[');
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match value {
            // Writing JSON into a Vec cannot fail.
            Some(value) => serde_json::to_writer(&mut *out, value).unwrap_or_default(),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b']');
}

pub fn decode_dims(key: &str) -> Vec<Option<String>> {
    serde_json::from_str(key).unwrap_or_default()
}
