//! What `cdc-publisher run` reports.

use super::families::*;
use super::{NO_LABELS, counter, gauge};
use prometheus::{GaugeVec, IntCounterVec, Registry};

/// What `cdc-publisher run` reports.
pub struct CdcMetrics {
    published: IntCounterVec,
    slot_lag: GaugeVec,
}

impl CdcMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = CdcMetrics {
            published: counter(registry, &CDC_PUBLISHED)?,
            slot_lag: gauge(registry, &CDC_SLOT_LAG)?,
        };
        // From the start, so a rate is defined before the first change.
        metrics.published.with_label_values(NO_LABELS);
        Ok(metrics)
    }

    /// `changes` were published and confirmed.
    pub fn published(&self, changes: usize) {
        self.published
            .with_label_values(NO_LABELS)
            .inc_by(changes as u64);
    }

    /// The WAL bytes the slot holds back, as Postgres measured them.
    pub fn set_slot_lag(&self, bytes: i64) {
        self.slot_lag.with_label_values(NO_LABELS).set(bytes as f64);
    }
}
