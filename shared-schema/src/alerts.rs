//! Alert rules: thresholds on a metric's sliding window, per group, declared as `[[alert]]`
//! tables beside the metric definitions.

use crate::metrics::{Dimension, MetricDef, MetricError};
use crate::time::HumanDuration;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: String,
    pub metric: String,
    /// One alert per value of this dimension; `None`: one alert for the whole metric.
    pub group_by: Option<Dimension>,
    /// The sliding window the value is computed over, ending at the last closed bucket.
    pub window: HumanDuration,
    /// Fires while the window's value is strictly above this.
    pub above: f64,
    /// For a ratio: the window's denominator must be at least this for the rule to fire.
    pub min_denominator: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    name: String,
    metric: String,
    group_by: Option<String>,
    window: String,
    above: f64,
    min_denominator: Option<f64>,
}

/// Parses one `[[alert]]` table and checks it against the metric it watches.
pub fn parse_alert(entry: toml::Value, metrics: &[MetricDef]) -> Result<AlertRule, MetricError> {
    let label = entry
        .get("name")
        .and_then(toml::Value::as_str)
        .unwrap_or("?")
        .to_string();
    let raw = RawAlert::deserialize(entry)
        .map_err(|e| MetricError::File(format!("alert `{label}`: {e}")))?;
    let err = |field: &'static str, message: String| MetricError::Field {
        metric: format!("alert {}", raw.name),
        field,
        message,
    };
    let metric = metrics
        .iter()
        .find(|m| m.name == raw.metric)
        .ok_or_else(|| err("metric", format!("no metric named `{}`", raw.metric)))?;
    let group_by = match &raw.group_by {
        None => None,
        Some(name) => Some(
            Dimension::from_name(name)
                .filter(|d| metric.dimension_index(*d).is_some())
                .ok_or_else(|| {
                    err(
                        "group_by",
                        format!("`{}` has no dimension `{name}`", metric.name),
                    )
                })?,
        ),
    };
    let window = HumanDuration::parse(&raw.window).map_err(|e| err("window", e.to_string()))?;
    if window.millis() % metric.bucket.millis() != 0 {
        return Err(err(
            "window",
            format!("{window} is not a multiple of the bucket {}", metric.bucket),
        ));
    }
    Ok(AlertRule {
        name: raw.name.clone(),
        metric: raw.metric.clone(),
        group_by,
        window,
        above: raw.above,
        min_denominator: raw.min_denominator,
    })
}
