//! What `batch-layer schedule` reports.

use super::families::*;
use super::{RUN_BUCKETS, histogram, int_gauge};
use prometheus::{HistogramVec, IntGaugeVec, Registry};

/// What `batch-layer schedule` reports.
pub struct BatchMetrics {
    run_duration: HistogramVec,
    run_rows: IntGaugeVec,
}

/// The rows of one promoted run, for [`BatchMetrics::promoted`].
#[derive(Debug, Clone, Copy)]
pub struct RunRows {
    pub view: i64,
    pub reused: i64,
    pub lake: i64,
}

impl BatchMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = BatchMetrics {
            run_duration: histogram(registry, &BATCH_RUN_DURATION, RUN_BUCKETS)?,
            run_rows: int_gauge(registry, &BATCH_RUN_ROWS)?,
        };
        // Both outcomes show from the start, so a dashboard sees failures as a rate from 0.
        for outcome in ["promoted", "failed"] {
            metrics.run_duration.with_label_values(&[outcome]);
        }
        Ok(metrics)
    }

    pub fn promoted(&self, seconds: f64, rows: RunRows) {
        self.run_duration
            .with_label_values(&["promoted"])
            .observe(seconds);
        for (kind, value) in [
            ("view", rows.view),
            ("reused", rows.reused),
            ("lake", rows.lake),
        ] {
            self.run_rows.with_label_values(&[kind]).set(value);
        }
    }

    pub fn failed(&self, seconds: f64) {
        self.run_duration
            .with_label_values(&["failed"])
            .observe(seconds);
    }
}
