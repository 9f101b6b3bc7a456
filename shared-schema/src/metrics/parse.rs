//! One `[[metric]]` table of the definitions file, parsed and checked on its own (references
//! between metrics are checked by the catalogue).

use super::{Aggregation, Dimension, LatePolicy, MetricDef, MetricError, ValueField};
use crate::time::{HumanDuration, MINUTE_MS};
use serde::Deserialize;

/// Parses one `[[metric]]` table; `label` names it in errors (its name, or its position).
pub(crate) fn parse_metric(entry: toml::Value, label: &str) -> Result<MetricDef, MetricError> {
    let raw = RawMetric::deserialize(entry)
        .map_err(|e| MetricError::File(format!("metric `{label}`: {e}")))?;
    build(raw)
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
