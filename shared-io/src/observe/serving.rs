//! What the serving layer reports.

use super::families::*;
use super::{HTTP_BUCKETS, NO_LABELS, counter, gauge, histogram, int_gauge};
use prometheus::{GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use shared_schema::time::Millis;

/// The served batch view version, as the serving layer reads it at each scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedVersion {
    pub version: String,
    pub cutover: Millis,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub rows: i64,
}

/// What the serving layer reports.
pub struct ServingMetrics {
    http: HistogramVec,
    divergence: GaugeVec,
    promoted_info: GaugeVec,
    promoted_at: GaugeVec,
    promoted_rows: GaugeVec,
    promoted_run: GaugeVec,
    cutover_at: GaugeVec,
    cache_lookups: IntCounterVec,
    deliveries: IntCounterVec,
    deliveries_pending: IntGaugeVec,
}

impl ServingMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(ServingMetrics {
            http: histogram(registry, &HTTP_DURATION, HTTP_BUCKETS)?,
            divergence: gauge(registry, &DIVERGENCE_RATIO)?,
            promoted_info: gauge(registry, &PROMOTED_INFO)?,
            promoted_at: gauge(registry, &PROMOTED_AT)?,
            promoted_rows: gauge(registry, &PROMOTED_ROWS)?,
            promoted_run: gauge(registry, &PROMOTED_RUN_SECONDS)?,
            cutover_at: gauge(registry, &CUTOVER_AT)?,
            cache_lookups: {
                let lookups = counter(registry, &CACHE_LOOKUPS)?;
                // Exported from the start, so a hit ratio is defined before the first query.
                for cache in ["snapshot", "body", "answer"] {
                    for outcome in ["hit", "miss"] {
                        lookups.with_label_values(&[cache, outcome]);
                    }
                }
                lookups
            },
            deliveries: {
                let deliveries = counter(registry, &ALERT_DELIVERIES)?;
                for outcome in ["delivered", "failed"] {
                    deliveries.with_label_values(&[outcome]);
                }
                deliveries
            },
            deliveries_pending: {
                let pending = int_gauge(registry, &ALERT_DELIVERIES_PENDING)?;
                // Exported from the start: 0 until a webhook has something queued.
                pending.with_label_values(NO_LABELS);
                pending
            },
        })
    }

    /// One attempt to deliver an alert transition to the webhook.
    pub fn alert_delivery(&self, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.deliveries.with_label_values(&[outcome]).inc();
    }

    /// Transitions queued and not yet delivered.
    pub fn set_alert_deliveries_pending(&self, pending: i64) {
        self.deliveries_pending
            .with_label_values(NO_LABELS)
            .set(pending);
    }

    /// `cache` is `snapshot`, `body` or `answer`.
    pub fn cache_lookup(&self, cache: &str, hit: bool) {
        self.cache_lookups
            .with_label_values(&[cache, if hit { "hit" } else { "miss" }])
            .inc();
    }

    /// `route` is the route template (`/v1/metrics/{name}`), never the raw path, so that the
    /// series stay few.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http
            .with_label_values(&[method, route, &status.to_string()])
            .observe(seconds);
    }

    /// Replaces the divergence gauges: one per metric whose latest comparison compared something.
    pub fn set_divergence<'a>(&self, ratios: impl IntoIterator<Item = (&'a str, f64)>) {
        self.divergence.reset();
        for (metric, ratio) in ratios {
            self.divergence.with_label_values(&[metric]).set(ratio);
        }
    }

    /// Replaces the served version's gauges; `None` (before the first promotion, or when
    /// Postgres could not tell) leaves none rather than stale ones.
    pub fn set_served(&self, served: Option<&ServedVersion>) {
        let gauges = [
            &self.promoted_info,
            &self.promoted_at,
            &self.promoted_rows,
            &self.promoted_run,
            &self.cutover_at,
        ];
        for gauge in gauges {
            gauge.reset();
        }
        let Some(served) = served else { return };
        let seconds = |millis: Millis| millis as f64 / 1000.0;
        self.promoted_info
            .with_label_values(&[served.version.as_str()])
            .set(1.0);
        self.promoted_at
            .with_label_values(NO_LABELS)
            .set(seconds(served.finished_at));
        self.promoted_rows
            .with_label_values(NO_LABELS)
            .set(served.rows as f64);
        self.promoted_run
            .with_label_values(NO_LABELS)
            .set(seconds(served.finished_at - served.started_at));
        self.cutover_at
            .with_label_values(NO_LABELS)
            .set(seconds(served.cutover));
    }
}
