//! The platform's Prometheus metrics, declared once: every family's name, help, labels and the
//! services exporting it ([`FAMILIES`], which the Grafana dashboard is checked against), the
//! typed handles the services record into, the process-wide registry, the text exposition, and
//! the `/metrics` listener of the services without an HTTP API of their own.
//!
//! A group of families is registered the first time its service asks for it ([`consumer`],
//! [`speed`], [`batch`], [`serving`], [`cdc`]), so each process exposes only its own.

mod batch;
mod cdc;
mod consumer;
mod families;
mod http;
mod serving;

pub use batch::{BatchMetrics, RunRows};
pub use cdc::CdcMetrics;
pub use consumer::{ConsumerMetrics, SpeedMetrics};
pub use families::*;
pub use http::{ReadinessCheck, exposition, serve, serve_with_readiness};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
pub use serving::{ServedVersion, ServingMetrics};
use std::sync::OnceLock;

/// Batch runs take seconds to tens of minutes.
const RUN_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// Queries take milliseconds to the query timeout (default 5 s).
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("binding the metrics listener {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// The label values of a family without labels, which is still a vector so that its one series
/// can be removed (`reset`) when there is nothing to report.
const NO_LABELS: &[&str] = &[];

fn opts(family: &Family) -> Opts {
    Opts::new(family.name, family.help)
}

fn counter(registry: &Registry, family: &Family) -> Result<IntCounterVec, prometheus::Error> {
    let vec = IntCounterVec::new(opts(family), family.labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn int_gauge(registry: &Registry, family: &Family) -> Result<IntGaugeVec, prometheus::Error> {
    let vec = IntGaugeVec::new(opts(family), family.labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn gauge(registry: &Registry, family: &Family) -> Result<GaugeVec, prometheus::Error> {
    let vec = GaugeVec::new(opts(family), family.labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn histogram(
    registry: &Registry,
    family: &Family,
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(family.name, family.help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, family.labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

/// The registry of this process: with its `lambda_build_info` and, on Linux, the standard
/// `process_*` families (CPU, resident memory, open file descriptors, start time).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Registry::new();
        let binary = std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        gauge(&registry, &BUILD_INFO)
            .expect(REGISTERS)
            .with_label_values(&[binary.as_str(), env!("CARGO_PKG_VERSION")])
            .set(1.0);
        #[cfg(target_os = "linux")]
        if let Err(e) = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "process metrics are not exported");
        }
        registry
    })
}

// The families are static; `families_register_once_each` proves they register.
const REGISTERS: &str = "the metric families are valid (see the unit tests of observe.rs)";

pub fn consumer() -> &'static ConsumerMetrics {
    static METRICS: OnceLock<ConsumerMetrics> = OnceLock::new();
    METRICS.get_or_init(|| ConsumerMetrics::register(registry()).expect(REGISTERS))
}

pub fn speed() -> &'static SpeedMetrics {
    static METRICS: OnceLock<SpeedMetrics> = OnceLock::new();
    METRICS.get_or_init(|| SpeedMetrics::register(registry()).expect(REGISTERS))
}

pub fn batch() -> &'static BatchMetrics {
    static METRICS: OnceLock<BatchMetrics> = OnceLock::new();
    METRICS.get_or_init(|| BatchMetrics::register(registry()).expect(REGISTERS))
}

pub fn cdc() -> &'static CdcMetrics {
    static METRICS: OnceLock<CdcMetrics> = OnceLock::new();
    METRICS.get_or_init(|| CdcMetrics::register(registry()).expect(REGISTERS))
}

pub fn serving() -> &'static ServingMetrics {
    static METRICS: OnceLock<ServingMetrics> = OnceLock::new();
    METRICS.get_or_init(|| ServingMetrics::register(registry()).expect(REGISTERS))
}

/// `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    TextEncoder::new().encode_to_string(&registry.gather())
}

#[cfg(test)]
mod tests;
