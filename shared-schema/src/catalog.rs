//! The metric catalogue: the definitions file (`config/metrics.toml` by default), its
//! `[[metric]]` and `[[alert]]` tables parsed and checked against each other.

use crate::alerts::{AlertRule, parse_alert};
use crate::event::Event;
use crate::metrics::{Aggregation, MetricDef, MetricError, Partial, PartialKey, parse_metric};
use crate::time::{MINUTE_MS, Millis};
use std::collections::HashMap;
use std::path::Path;

/// The default catalogue: the e-commerce dashboard of CONTRACT §6.
pub const DEFAULT_METRICS: &str = include_str!("../../config/metrics.toml");

/// The metrics a deployment serves.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricCatalog {
    pub metrics: Vec<MetricDef>,
    pub alerts: Vec<AlertRule>,
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
            metrics.push(parse_metric(entry, &label)?);
        }
        let alerts = match table.get("alert") {
            None => Vec::new(),
            Some(toml::Value::Array(entries)) => entries
                .iter()
                .map(|entry| parse_alert(entry.clone(), &metrics))
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
        table.entry(key).or_default().add_event(metric, event);
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

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
