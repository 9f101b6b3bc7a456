//! The canonical form and fingerprint of a metric catalogue, and the differences between two.
//!
//! The fingerprint hashes what the definitions *mean*, not how the file is written: it is taken
//! over a canonical serialisation of the parsed [`MetricCatalog`], so comments, key order,
//! metric order, defaults written out or left implicit, and equal durations written differently
//! (`60s`, `1m`) give the same fingerprint, and any change to what a stored value means gives
//! another. The canonical form is what the registry stores (as JSONB), so a disagreement can be
//! told metric by metric and field by field, not only as two hashes.
//!
//! Covered, per metric: `name`, `event_type`, `aggregation`, `field`, `numerator`,
//! `denominator`, `gap`, `dimensions` (in order: it is the order of the stored group key),
//! `bucket`, `allowed_lateness`, `late_policy`. Not covered: `description` (free text, changes
//! no value) and the `[[alert]]` rules (evaluated by the serving layer over the merged answer,
//! they change no stored partial).

use crate::{
    catalog::MetricCatalog,
    metrics::{Aggregation, LatePolicy, MetricDef},
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bumped whenever the canonical form changes shape, so old and new fingerprints never collide.
pub const CANONICAL_FORMAT: u32 = 1;

/// The canonical form of a catalogue: its stored metrics' meaning, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalCatalog {
    pub format: u32,
    pub metrics: Vec<CanonicalMetric>,
}

/// One metric in the vocabulary of `config/metrics.toml`, every default written out, durations
/// in their one canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalMetric {
    pub name: String,
    pub event_type: Option<String>,
    pub aggregation: String,
    /// The value field (sum, min, max, avg) or the dimension (distinct, sessions).
    pub field: Option<String>,
    pub numerator: Option<String>,
    pub denominator: Option<String>,
    pub gap: Option<String>,
    pub dimensions: Vec<String>,
    pub bucket: String,
    pub allowed_lateness: String,
    pub late_policy: String,
}

impl CanonicalMetric {
    fn of(metric: &MetricDef) -> CanonicalMetric {
        let mut field = metric
            .aggregation
            .value_field()
            .map(|f| f.name().to_string());
        let (mut numerator, mut denominator, mut gap) = (None, None, None);
        match &metric.aggregation {
            Aggregation::Distinct(d) => field = Some(d.name().to_string()),
            Aggregation::Sessions { key, gap: g } => {
                field = Some(key.name().to_string());
                gap = Some(g.to_string());
            }
            Aggregation::Ratio {
                numerator: n,
                denominator: d,
            } => {
                numerator = Some(n.clone());
                denominator = Some(d.clone());
            }
            Aggregation::Count
            | Aggregation::Sum(_)
            | Aggregation::Min(_)
            | Aggregation::Max(_)
            | Aggregation::Avg(_) => {}
        }
        CanonicalMetric {
            name: metric.name.clone(),
            event_type: metric.event_type.clone(),
            aggregation: metric.aggregation.name().to_string(),
            field,
            numerator,
            denominator,
            gap,
            dimensions: metric
                .dimensions
                .iter()
                .map(|d| d.name().to_string())
                .collect(),
            // HumanDuration displays in the largest exact unit, one spelling per value.
            bucket: metric.bucket.to_string(),
            allowed_lateness: metric.allowed_lateness.to_string(),
            late_policy: match metric.late_policy {
                LatePolicy::Update => "update",
                LatePolicy::SideOutput => "side_output",
                LatePolicy::Drop => "drop",
            }
            .to_string(),
        }
    }

    /// The fields in the order a difference is reported, with their values as JSON.
    fn fields(&self) -> [(&'static str, serde_json::Value); 10] {
        use serde_json::json;
        [
            ("event_type", json!(self.event_type)),
            ("aggregation", json!(self.aggregation)),
            ("field", json!(self.field)),
            ("numerator", json!(self.numerator)),
            ("denominator", json!(self.denominator)),
            ("gap", json!(self.gap)),
            ("dimensions", json!(self.dimensions)),
            ("bucket", json!(self.bucket)),
            ("allowed_lateness", json!(self.allowed_lateness)),
            ("late_policy", json!(self.late_policy)),
        ]
    }
}

impl CanonicalCatalog {
    /// The exact text the fingerprint is taken over: compact JSON, fields in declaration order.
    pub fn to_json(&self) -> String {
        // Strings, options and vectors of strings only: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<CanonicalCatalog, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// 128-bit xxh3 of the canonical JSON, as 32 hex digits. xxh3 is a fixed, portable
    /// algorithm, so the same definitions give the same fingerprint on every machine and build;
    /// it detects change, it does not authenticate.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:032x}",
            xxhash_rust::xxh3::xxh3_128(self.to_json().as_bytes())
        )
    }

    /// What changes from `self` (e.g. the promoted view's definitions) to `other` (a service's).
    pub fn diff(&self, other: &CanonicalCatalog) -> Vec<Difference> {
        let mut out = Vec::new();
        if self.format != other.format {
            out.push(Difference::Format {
                old: self.format,
                new: other.format,
            });
        }
        for old in &self.metrics {
            match other.metrics.iter().find(|m| m.name == old.name) {
                None => out.push(Difference::Removed {
                    metric: old.name.clone(),
                }),
                Some(new) => {
                    for ((field, old_value), (_, new_value)) in
                        old.fields().into_iter().zip(new.fields())
                    {
                        if old_value != new_value {
                            out.push(Difference::Changed {
                                metric: old.name.clone(),
                                field,
                                old: old_value.to_string(),
                                new: new_value.to_string(),
                            });
                        }
                    }
                }
            }
        }
        for new in &other.metrics {
            if !self.metrics.iter().any(|m| m.name == new.name) {
                out.push(Difference::Added {
                    metric: new.name.clone(),
                });
            }
        }
        out
    }
}

/// One way two catalogues differ; `old` is the reference side (the promoted view), `new` the
/// side being checked (a starting service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Changed {
        metric: String,
        field: &'static str,
        /// The value as JSON (`"purchase"`, `null`, `["country"]`).
        old: String,
        new: String,
    },
    /// Only in the reference.
    Removed {
        metric: String,
    },
    /// Only in the checked side.
    Added {
        metric: String,
    },
    Format {
        old: u32,
        new: u32,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Changed {
                metric,
                field,
                old,
                new,
            } => write!(
                f,
                "metric `{metric}`, field `{field}`: {old} in the promoted view, {new} here"
            ),
            Difference::Removed { metric } => {
                write!(f, "metric `{metric}`: in the promoted view, missing here")
            }
            Difference::Added { metric } => {
                write!(f, "metric `{metric}`: not in the promoted view")
            }
            Difference::Format { old, new } => write!(
                f,
                "definitions format {old} in the promoted view, {new} here"
            ),
        }
    }
}

impl MetricCatalog {
    /// The canonical form of these definitions (see the module documentation).
    pub fn canonical(&self) -> CanonicalCatalog {
        let mut metrics: Vec<CanonicalMetric> =
            self.metrics.iter().map(CanonicalMetric::of).collect();
        // Rows are stored by metric name, never by position, so the order is no meaning.
        metrics.sort_by(|a, b| a.name.cmp(&b.name));
        CanonicalCatalog {
            format: CANONICAL_FORMAT,
            metrics,
        }
    }

    /// A stable hash of what these definitions mean (see the module documentation).
    pub fn fingerprint(&self) -> String {
        self.canonical().fingerprint()
    }
}

#[cfg(test)]
#[path = "fingerprint_tests.rs"]
mod tests;
