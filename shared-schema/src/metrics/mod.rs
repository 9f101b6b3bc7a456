//! Metric definitions, written once and executed by both layers.
//!
//! A definition (see `config/metrics.toml`) says which events count, what is aggregated, along
//! which dimensions and in which bucket. The speed layer folds events into [`Partial`]s with
//! `MetricCatalog::fold`; the batch layer turns the same definition into a DataFusion plan
//! that produces the same partials. Both store rows keyed by `(metric, bucket start, dims)`
//! that merge with [`Partial::merge`], and the serving layer finishes them with
//! [`Partial::finish`]. Nothing about a metric's meaning lives anywhere else.
//! The catalogue that holds them, with the alert rules, is the `catalog` module.

pub mod cells;
mod definition;
mod parse;
mod partial;

pub use definition::{
    Aggregation, Dimension, LatePolicy, MetricDef, ValueField, decode_dims, encode_dims,
};
pub(crate) use parse::parse_metric;
pub use partial::{Partial, PartialKey, finish_ratio};

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
