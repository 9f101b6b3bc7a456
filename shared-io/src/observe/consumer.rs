//! What the Kafka consumers (the speed layer, the lander) report.

use super::families::*;
use super::{counter, gauge, int_gauge};
use crate::kafka::Batch;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Registry};
use shared_schema::time::{Millis, now_millis};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// What a Kafka consumer (the speed layer, the lander) reports.
pub struct ConsumerMetrics {
    events: IntCounterVec,
    quarantined: IntCounterVec,
    offsets_missing: IntCounterVec,
    quarantine_dropped: IntCounterVec,
    commit_failures: IntCounterVec,
    commit_failing: IntGaugeVec,
    lag: IntGaugeVec,
    /// The partitions each consumer has a lag series for, to drop those it no longer owns.
    lagging: Mutex<HashMap<String, BTreeSet<i32>>>,
}

impl ConsumerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(ConsumerMetrics {
            events: counter(registry, &CONSUMER_EVENTS)?,
            quarantined: counter(registry, &CONSUMER_QUARANTINED)?,
            offsets_missing: counter(registry, &CONSUMER_OFFSETS_MISSING)?,
            quarantine_dropped: counter(registry, &QUARANTINE_DROPPED)?,
            commit_failures: counter(registry, &CONSUMER_COMMIT_FAILURES)?,
            commit_failing: int_gauge(registry, &CONSUMER_COMMIT_FAILING)?,
            lag: int_gauge(registry, &CONSUMER_LAG)?,
            lagging: Mutex::new(HashMap::new()),
        })
    }

    /// Shows the consumer's counters at 0 before its first message.
    pub fn start(&self, consumer: &str) {
        self.quarantined.with_label_values(&[consumer]);
        self.offsets_missing.with_label_values(&[consumer]);
        for cause in ["data", "infrastructure"] {
            self.commit_failures.with_label_values(&[consumer, cause]);
        }
        self.commit_failing.with_label_values(&[consumer]).set(0);
    }

    /// Messages found bad only at commit time (see `commit_guard`), quarantined there.
    pub fn count_quarantined(&self, consumer: &str, messages: u64) {
        self.quarantined
            .with_label_values(&[consumer])
            .inc_by(messages);
    }

    /// A failed commit; `cause` is `data` or `infrastructure`. Only an infrastructure cause
    /// marks the consumer as failing: a data cause is resolved by quarantine at once.
    pub fn commit_failed(&self, consumer: &str, cause: &str) {
        self.commit_failures
            .with_label_values(&[consumer, cause])
            .inc();
        if cause == "infrastructure" {
            self.commit_failing.with_label_values(&[consumer]).set(1);
        }
    }

    /// The consumer's batch committed.
    pub fn commit_succeeded(&self, consumer: &str) {
        self.commit_failing.with_label_values(&[consumer]).set(0);
    }

    /// Counts the quarantined messages one retention pass deleted (see `quarantine`).
    pub fn quarantine_dropped(&self, by_age: u64, by_size: u64) {
        for (cause, deleted) in [("age", by_age), ("size", by_size)] {
            self.quarantine_dropped
                .with_label_values(&[cause])
                .inc_by(deleted);
        }
    }

    /// Counts what `batch` read, and sets the lag of every partition the consumer owns now.
    pub fn record_batch(&self, consumer: &str, batch: &Batch, lag: &BTreeMap<i32, i64>) {
        let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
        for sourced in &batch.events {
            *per_partition.entry(sourced.partition).or_default() += 1;
        }
        for (partition, events) in per_partition {
            self.events
                .with_label_values(&[consumer, &partition.to_string()])
                .inc_by(events);
        }
        if batch.missing_offsets > 0 {
            self.offsets_missing
                .with_label_values(&[consumer])
                .inc_by(batch.missing_offsets);
        }
        if !batch.bad.is_empty() {
            self.quarantined
                .with_label_values(&[consumer])
                .inc_by(batch.bad.len() as u64);
        }
        self.set_lag(consumer, lag);
    }

    fn set_lag(&self, consumer: &str, lag: &BTreeMap<i32, i64>) {
        for (partition, messages) in lag {
            self.lag
                .with_label_values(&[consumer, &partition.to_string()])
                .set(*messages);
        }
        let Ok(mut lagging) = self.lagging.lock() else {
            return;
        };
        let owned: BTreeSet<i32> = lag.keys().copied().collect();
        let before = lagging.insert(consumer.to_string(), owned.clone());
        for gone in before.unwrap_or_default().difference(&owned) {
            let _ = self.lag.remove_label_values(&[consumer, &gone.to_string()]);
        }
    }
}

/// What the speed layer reports besides its consumer metrics.
pub struct SpeedMetrics {
    watermark_delay: GaugeVec,
    late: IntCounterVec,
    state_bytes: GaugeVec,
    state_ids: GaugeVec,
}

impl SpeedMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(SpeedMetrics {
            watermark_delay: gauge(registry, &WATERMARK_DELAY)?,
            late: counter(registry, &LATE_EVENTS)?,
            state_bytes: gauge(registry, &SPEED_STATE_BYTES)?,
            state_ids: gauge(registry, &SPEED_STATE_IDS)?,
        })
    }

    /// No series before the first watermark, since there is no delay to tell.
    pub fn set_watermark(&self, topic: &str, watermark: Option<Millis>) {
        if let Some(watermark) = watermark {
            let delay = (now_millis() - watermark) as f64 / 1000.0;
            self.watermark_delay.with_label_values(&[topic]).set(delay);
        }
    }

    /// The size of the dedupe and session state after a checkpoint or a retention pass.
    pub fn set_state(&self, topic: &str, ids: usize, bytes: usize) {
        self.state_ids.with_label_values(&[topic]).set(ids as f64);
        self.state_bytes
            .with_label_values(&[topic])
            .set(bytes as f64);
    }

    pub fn count_late(&self, metric: &str, events: u64) {
        self.late.with_label_values(&[metric]).inc_by(events);
    }
}
