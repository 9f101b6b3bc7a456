//! Metric definitions, written once and executed by both layers.
//!
//! A definition (see `config/metrics.toml`) says which events count, what is aggregated, along
//! which dimensions and in which bucket. The speed layer folds events into [`Partial`]s with
//! [`MetricCatalog::fold`]; the batch layer turns the same definition into a DataFusion plan
//! that produces the same partials. Both store rows keyed by `(metric, bucket start, dims)`
//! that merge with [`Partial::merge`], and the serving layer finishes them with
//! [`Partial::finish`]. Nothing about a metric's meaning lives anywhere else.

use crate::event::{Event, micros_to_f64};
use crate::hll::Hll;
use crate::profiles::UNKNOWN;
use crate::time::{HumanDuration, MINUTE_MS, Millis, bucket_start};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The default catalogue: the e-commerce dashboard of CONTRACT §6.
pub const DEFAULT_METRICS: &str = include_str!("../../config/metrics.toml");

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
        let values: Vec<Option<&str>> = self.dimensions.iter().map(|d| d.value(event)).collect();
        encode_dims(&values)
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
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_string())
}

pub fn decode_dims(key: &str) -> Vec<Option<String>> {
    serde_json::from_str(key).unwrap_or_default()
}

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("metric definitions: {0}")]
    File(String),
    #[error("metric `{metric}`, field `{field}`: {message}")]
    Field {
        metric: String,
        field: &'static str,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: String,
    #[serde(default)]
    description: String,
    event_type: Option<String>,
    aggregation: String,
    field: Option<String>,
    numerator: Option<String>,
    denominator: Option<String>,
    #[serde(default)]
    dimensions: Vec<String>,
    bucket: Option<String>,
    allowed_lateness: Option<String>,
    late_policy: Option<LatePolicy>,
    gap: Option<String>,
}

/// The metrics a deployment serves.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricCatalog {
    pub metrics: Vec<MetricDef>,
    pub alerts: Vec<crate::alerts::AlertRule>,
}

impl Default for MetricCatalog {
    fn default() -> Self {
        // The compiled-in file is checked by a unit test, so this cannot fail at run time.
        MetricCatalog::from_toml(DEFAULT_METRICS).expect("config/metrics.toml is valid")
    }
}

impl MetricCatalog {
    /// The catalogue in `path`, or the compiled-in default.
    pub fn load(path: Option<&Path>) -> Result<MetricCatalog, MetricError> {
        match path {
            None => MetricCatalog::from_toml(DEFAULT_METRICS),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    MetricError::File(format!("cannot read {}: {e}", path.display()))
                })?;
                MetricCatalog::from_toml(&text)
            }
        }
    }

    /// Parses and checks a catalogue; a broken definition is refused with the metric and field
    /// it concerns.
    pub fn from_toml(text: &str) -> Result<MetricCatalog, MetricError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| MetricError::File(e.to_string()))?;
        if let Some(key) = table.keys().find(|k| *k != "metric" && *k != "alert") {
            return Err(MetricError::File(format!(
                "unknown top-level key `{key}` (expected [[metric]] and [[alert]] tables)"
            )));
        }
        let entries = match table.get("metric") {
            None => Vec::new(),
            Some(toml::Value::Array(entries)) => entries.clone(),
            Some(_) => {
                return Err(MetricError::File(
                    "`metric` must be an array of tables ([[metric]])".into(),
                ));
            }
        };
        let mut metrics = Vec::with_capacity(entries.len());
        for (position, entry) in entries.into_iter().enumerate() {
            let label = entry
                .get("name")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{}", position + 1), str::to_string);
            let raw = RawMetric::deserialize(entry)
                .map_err(|e| MetricError::File(format!("metric `{label}`: {e}")))?;
            metrics.push(build(raw)?);
        }
        let alerts = match table.get("alert") {
            None => Vec::new(),
            Some(toml::Value::Array(entries)) => entries
                .iter()
                .map(|entry| crate::alerts::parse_alert(entry.clone(), &metrics))
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(MetricError::File(
                    "`alert` must be an array of tables ([[alert]])".into(),
                ));
            }
        };
        let catalog = MetricCatalog { metrics, alerts };
        catalog.check_references()?;
        Ok(catalog)
    }

    fn check_references(&self) -> Result<(), MetricError> {
        for (i, metric) in self.metrics.iter().enumerate() {
            if self.metrics[..i].iter().any(|m| m.name == metric.name) {
                return Err(field_error(metric, "name", "is defined twice"));
            }
            if let Aggregation::Ratio {
                numerator,
                denominator,
            } = &metric.aggregation
            {
                for (field, part) in [("numerator", numerator), ("denominator", denominator)] {
                    let Some((_, part_def)) = self.get(part) else {
                        return Err(field_error(
                            metric,
                            field,
                            format!("no metric named `{part}`"),
                        ));
                    };
                    if !part_def.is_stored() {
                        return Err(field_error(
                            metric,
                            field,
                            format!("`{part}` is itself a ratio"),
                        ));
                    }
                    if part_def.dimensions != metric.dimensions || part_def.bucket != metric.bucket
                    {
                        return Err(field_error(
                            metric,
                            field,
                            format!("`{part}` must have the same dimensions and bucket"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<(usize, &MetricDef)> {
        self.metrics
            .iter()
            .enumerate()
            .find(|(_, m)| m.name == name)
    }

    /// The stored metrics `metric` is computed from: a ratio's numerator and denominator, in
    /// that order, or the metric itself.
    pub fn parts<'a>(&'a self, metric: &'a MetricDef) -> Result<Vec<&'a MetricDef>, MetricError> {
        match &metric.aggregation {
            Aggregation::Ratio {
                numerator,
                denominator,
            } => [("numerator", numerator), ("denominator", denominator)]
                .into_iter()
                .map(|(field, name)| {
                    self.get(name).map(|(_, m)| m).ok_or_else(|| {
                        field_error(metric, field, format!("no metric named `{name}`"))
                    })
                })
                .collect(),
            _ => Ok(vec![metric]),
        }
    }

    /// The metrics whose partials the layers store.
    pub fn stored(&self) -> impl Iterator<Item = (usize, &MetricDef)> {
        self.metrics
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_stored())
    }

    /// Folds one (already deduplicated) event into `table`, once per metric it counts for on
    /// its own (session starts are applied with `sessions::start_changes`).
    pub fn fold(&self, event: &Event, table: &mut HashMap<PartialKey, Partial>) {
        for (index, metric) in self.stored() {
            if metric.folds_per_event() && metric.matches(event) {
                MetricCatalog::fold_one(index, metric, event, table);
            }
        }
    }

    /// Folds one event into one metric (at position `index`), which it must match.
    pub fn fold_one(
        index: usize,
        metric: &MetricDef,
        event: &Event,
        table: &mut HashMap<PartialKey, Partial>,
    ) {
        let key = PartialKey {
            metric: index,
            bucket_start: metric.bucket_of(event),
            dims: metric.dims_key(event),
        };
        table
            .entry(key)
            .or_default()
            .merge(&Partial::of_event(metric, event));
    }

    /// Whether any metric reads the joined profile.
    pub fn needs_profiles(&self) -> bool {
        self.metrics.iter().any(MetricDef::needs_profile)
    }

    /// The widest bucket; the cutover is aligned to it so it is a boundary for every metric.
    pub fn cutover_alignment(&self) -> Millis {
        self.metrics
            .iter()
            .map(|m| m.bucket.millis())
            .max()
            .unwrap_or(MINUTE_MS)
    }

    /// The longest session gap of any sessions metric.
    pub fn max_session_gap(&self) -> Millis {
        self.metrics
            .iter()
            .filter_map(|m| match &m.aggregation {
                Aggregation::Sessions { gap, .. } => Some(gap.millis()),
                _ => None,
            })
            .max()
            .unwrap_or(0)
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

fn field_error(metric: &MetricDef, field: &'static str, message: impl Into<String>) -> MetricError {
    MetricError::Field {
        metric: metric.name.clone(),
        field,
        message: message.into(),
    }
}

fn build(raw: RawMetric) -> Result<MetricDef, MetricError> {
    let err = |field: &'static str, message: String| MetricError::Field {
        metric: raw.name.clone(),
        field,
        message,
    };
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(err(
            "name",
            "must be non-empty letters, digits and underscores".into(),
        ));
    }
    let duration =
        |field: &'static str, text: &Option<String>| -> Result<HumanDuration, MetricError> {
            match text {
                None => Ok(HumanDuration::from_millis(MINUTE_MS)),
                Some(text) => HumanDuration::parse(text).map_err(|e| err(field, e.to_string())),
            }
        };
    let bucket = duration("bucket", &raw.bucket)?;
    let allowed_lateness = duration("allowed_lateness", &raw.allowed_lateness)?;
    let dimensions = raw
        .dimensions
        .iter()
        .map(|name| {
            Dimension::from_name(name)
                .ok_or_else(|| err("dimensions", format!("unknown dimension `{name}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let value_field = || -> Result<ValueField, MetricError> {
        let name = raw.field.as_deref().ok_or_else(|| {
            err(
                "field",
                format!("`{}` needs a value field", raw.aggregation),
            )
        })?;
        ValueField::from_name(name).ok_or_else(|| {
            err(
                "field",
                format!("unknown value field `{name}` (expected amount)"),
            )
        })
    };
    let aggregation = match raw.aggregation.as_str() {
        "count" => Aggregation::Count,
        "sum" => Aggregation::Sum(value_field()?),
        "min" => Aggregation::Min(value_field()?),
        "max" => Aggregation::Max(value_field()?),
        "avg" => Aggregation::Avg(value_field()?),
        "distinct" => {
            let name = raw
                .field
                .as_deref()
                .ok_or_else(|| err("field", "`distinct` needs the dimension to count".into()))?;
            Aggregation::Distinct(
                Dimension::from_name(name)
                    .ok_or_else(|| err("field", format!("unknown dimension `{name}`")))?,
            )
        }
        "sessions" => {
            let name = raw.field.as_deref().ok_or_else(|| {
                err(
                    "field",
                    "`sessions` needs the key dimension (user_id)".into(),
                )
            })?;
            let key = Dimension::from_name(name)
                .ok_or_else(|| err("field", format!("unknown dimension `{name}`")))?;
            let gap = match &raw.gap {
                Some(text) => HumanDuration::parse(text).map_err(|e| err("gap", e.to_string()))?,
                None => {
                    return Err(err(
                        "gap",
                        "`sessions` needs the inactivity gap, e.g. \"30m\"".into(),
                    ));
                }
            };
            if !dimensions.is_empty() {
                return Err(err("dimensions", "`sessions` has no dimensions".into()));
            }
            Aggregation::Sessions { key, gap }
        }
        "ratio" => match (&raw.numerator, &raw.denominator) {
            (Some(numerator), Some(denominator)) => Aggregation::Ratio {
                numerator: numerator.clone(),
                denominator: denominator.clone(),
            },
            (None, _) => return Err(err("numerator", "a ratio needs a numerator metric".into())),
            (_, None) => {
                return Err(err(
                    "denominator",
                    "a ratio needs a denominator metric".into(),
                ));
            }
        },
        other => {
            return Err(err(
                "aggregation",
                format!(
                    "unknown aggregation `{other}` (expected count, sum, min, max, avg, distinct, ratio or sessions)"
                ),
            ));
        }
    };
    Ok(MetricDef {
        description: raw.description.clone(),
        event_type: raw.event_type.clone(),
        aggregation,
        dimensions,
        bucket,
        allowed_lateness,
        late_policy: raw.late_policy.unwrap_or(LatePolicy::Update),
        name: raw.name,
    })
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
            user_id: Some(format!("user-{id}")),
            product_id: None,
            amount_micros: Some(micros),
            city: None,
            country: country.map(str::to_string),
            profile: None,
        }
    }

    #[test]
    fn the_default_catalogue_is_the_contract_dashboard() {
        let catalog = MetricCatalog::default();
        let names: Vec<&str> = catalog.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "purchases",
                "revenue",
                "page_views",
                "errors",
                "error_rate",
                "active_users",
                "failed_logins",
                "sessions",
                "revenue_by_tier"
            ]
        );
        assert!(
            catalog
                .metrics
                .iter()
                .all(|m| m.bucket.millis() == MINUTE_MS)
        );
        let (_, rate) = catalog.get("error_rate").unwrap();
        assert!(!rate.is_stored());
    }

    #[test]
    fn fold_counts_only_matching_events_per_bucket_and_group() {
        let catalog = MetricCatalog::default();
        let mut table = HashMap::new();
        catalog.fold(&purchase("a", 60_000, Some("DE"), 1_500_000), &mut table);
        catalog.fold(&purchase("b", 119_999, Some("DE"), 500_000), &mut table);
        catalog.fold(&purchase("c", 120_000, None, 1), &mut table);

        let (revenue, def) = catalog.get("revenue").unwrap();
        let de = PartialKey {
            metric: revenue,
            bucket_start: 60_000,
            dims: r#"["DE"]"#.into(),
        };
        assert_eq!((table[&de].count, table[&de].sum_micros), (2, 2_000_000));
        assert_eq!(table[&de].finish(&def.aggregation), Some(2.0));
        assert_eq!(table[&de].min_micros, Some(500_000));
        let (users, users_def) = catalog.get("active_users").unwrap();
        let all = PartialKey {
            metric: users,
            bucket_start: 60_000,
            dims: "[]".into(),
        };
        assert_eq!(table[&all].finish(&users_def.aggregation), Some(2.0));
        let (page_views, _) = catalog.get("page_views").unwrap();
        assert!(
            table.keys().all(|k| k.metric != page_views),
            "a purchase is no page view"
        );
    }

    #[test]
    fn value_metrics_see_only_events_with_the_value() {
        let catalog = MetricCatalog::from_toml(
            "[[metric]]\nname = \"avg_amount\"\naggregation = \"avg\"\nfield = \"amount\"\n\
             [[metric]]\nname = \"most\"\naggregation = \"max\"\nfield = \"amount\"\n",
        )
        .unwrap();
        let mut table = HashMap::new();
        catalog.fold(&purchase("a", 0, None, 2_000_000), &mut table);
        catalog.fold(&purchase("b", 0, None, 4_000_000), &mut table);
        let mut no_amount = purchase("c", 0, None, 0);
        no_amount.amount_micros = None;
        catalog.fold(&no_amount, &mut table);
        let key = |metric| PartialKey {
            metric,
            bucket_start: 0,
            dims: "[]".into(),
        };
        assert_eq!(
            table[&key(0)].finish(&catalog.metrics[0].aggregation),
            Some(3.0)
        );
        assert_eq!(
            table[&key(1)].finish(&catalog.metrics[1].aggregation),
            Some(4.0)
        );
    }

    #[test]
    fn broken_definitions_name_the_metric_and_field() {
        let cases = [
            (
                "[[metric]]\nname = \"x\"\naggregation = \"summ\"\n",
                "metric `x`, field `aggregation`",
            ),
            (
                "[[metric]]\nname = \"x\"\naggregation = \"sum\"\n",
                "metric `x`, field `field`",
            ),
            (
                "[[metric]]\nname = \"x\"\naggregation = \"count\"\ndimensions = [\"colour\"]\n",
                "metric `x`, field `dimensions`",
            ),
            (
                "[[metric]]\nname = \"x\"\naggregation = \"count\"\nbucket = \"1 minute\"\n",
                "metric `x`, field `bucket`",
            ),
            (
                "[[metric]]\nname = \"x\"\naggregation = \"count\"\nbukket = \"1m\"\n",
                "metric `x`: unknown field `bukket`",
            ),
            (
                "[[metric]]\nname = \"x\"\naggregation = \"ratio\"\nnumerator = \"y\"\ndenominator = \"x\"\n",
                "metric `x`, field `numerator`",
            ),
            (
                "[[metric]]\nname = \"x\"\naggregation = \"count\"\n[[metric]]\nname = \"x\"\naggregation = \"count\"\n",
                "metric `x`, field `name`",
            ),
            (
                "[[metric]]\nname = \"x\"\naggregation = \"count\"\nlate_policy = \"ignore\"\n",
                "metric `x`",
            ),
        ];
        for (text, expected) in cases {
            let message = MetricCatalog::from_toml(text).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
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

    #[test]
    fn ratios_are_divided_last() {
        assert_eq!(finish_ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(finish_ratio(None, Some(4.0)), Some(0.0));
        assert_eq!(finish_ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(finish_ratio(Some(1.0), None), None);
    }

    fn partial() -> impl Strategy<Value = Partial> {
        (
            0i64..1_000_000,
            0i128..1_000_000_000_000,
            proptest::option::of(0i64..1000),
            proptest::option::of(0i64..1000),
            proptest::option::of(proptest::collection::vec(0u32..100, 0..5)),
        )
            .prop_map(
                |(count, sum_micros, min_micros, max_micros, users)| Partial {
                    count,
                    sum_micros,
                    min_micros,
                    max_micros,
                    sketch: users.map(|users| {
                        let mut sketch = Hll::default();
                        users.iter().for_each(|u| sketch.insert(&u.to_string()));
                        sketch
                    }),
                },
            )
    }

    proptest! {
        #[test]
        fn merge_is_commutative_and_associative(a in partial(), b in partial(), c in partial()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut with_identity = a.clone(); with_identity.merge(&Partial::default());
            prop_assert_eq!(with_identity, a);
        }
    }
}
