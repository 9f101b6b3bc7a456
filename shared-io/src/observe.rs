//! The platform's Prometheus metrics, declared once: every family's name, help, labels and the
//! services exporting it ([`FAMILIES`], which the Grafana dashboard is checked against), the
//! typed handles the services record into, the process-wide registry, the text exposition, and
//! the `/metrics` listener of the services without an HTTP API of their own.
//!
//! A group of families is registered the first time its service asks for it ([`consumer`],
//! [`speed`], [`batch`], [`serving`]), so each process exposes only its own.

use crate::kafka::Batch;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use shared_schema::time::{Millis, now_millis};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family as the services export it.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    /// The processes exporting it, named as the services of docker-compose.yml.
    pub exported_by: &'static [&'static str],
}

const CONSUMERS: &[&str] = &["speed-layer", "lander"];

pub const CONSUMER_EVENTS: Family = Family {
    name: "lambda_consumer_events_total",
    help: "Events read from the topic and handed to the consumer (duplicates included, bad messages not); rate() is events/s.",
    kind: Kind::Counter,
    labels: &["consumer", "partition"],
    exported_by: CONSUMERS,
};
pub const CONSUMER_QUARANTINED: Family = Family {
    name: "lambda_consumer_quarantined_total",
    help: "Messages the consumer kept in quarantine as bad input.",
    kind: Kind::Counter,
    labels: &["consumer"],
    exported_by: CONSUMERS,
};
pub const CONSUMER_OFFSETS_MISSING: Family = Family {
    name: "lambda_consumer_offsets_missing_total",
    help: "Offsets the consumer passed over because the broker, asked for them twice, returned later ones.",
    kind: Kind::Counter,
    labels: &["consumer"],
    exported_by: CONSUMERS,
};
pub const QUARANTINE_DROPPED: Family = Family {
    name: "lambda_quarantine_dropped_total",
    help: "Quarantined messages deleted by retention: `age` (older than quarantine.max_age), `size` (past quarantine.max_mb, oldest first).",
    kind: Kind::Counter,
    labels: &["cause"],
    exported_by: CONSUMERS,
};
pub const CONSUMER_COMMIT_FAILURES: Family = Family {
    name: "lambda_consumer_commit_failures_total",
    help: "Failed commits of a consumer's batch, by cause: `data` (the batch's content was refused; the offending messages are then quarantined) or `infrastructure` (Postgres, the lake or the broker away; retried with backoff).",
    kind: Kind::Counter,
    labels: &["consumer", "cause"],
    exported_by: CONSUMERS,
};
pub const CONSUMER_COMMIT_FAILING: Family = Family {
    name: "lambda_consumer_commit_failing",
    help: "1 while the consumer's latest batch commit failed for an infrastructure cause and is being retried, 0 once it committed.",
    kind: Kind::Gauge,
    labels: &["consumer"],
    exported_by: CONSUMERS,
};
pub const CONSUMER_LAG: Family = Family {
    name: "lambda_consumer_lag_messages",
    help: "Messages in the partition not yet read by the consumer: high watermark minus next offset.",
    kind: Kind::Gauge,
    labels: &["consumer", "partition"],
    exported_by: CONSUMERS,
};
pub const WATERMARK_DELAY: Family = Family {
    name: "lambda_speed_watermark_delay_seconds",
    help: "Wall clock minus the speed layer's event-time watermark.",
    kind: Kind::Gauge,
    labels: &["topic"],
    exported_by: &["speed-layer"],
};
pub const LATE_EVENTS: Family = Family {
    name: "lambda_speed_late_events_total",
    help: "Events the speed layer saw after their bucket of the metric had closed.",
    kind: Kind::Counter,
    labels: &["metric"],
    exported_by: &["speed-layer"],
};
pub const BATCH_RUN_DURATION: Family = Family {
    name: "lambda_batch_run_duration_seconds",
    help: "Duration of the scheduled batch runs, by outcome (promoted or failed).",
    kind: Kind::Histogram,
    labels: &["outcome"],
    exported_by: &["batch-scheduler"],
};
pub const BATCH_RUN_ROWS: Family = Family {
    name: "lambda_batch_run_rows",
    help: "Rows of the latest promoted scheduled run: view (written), reused (copied from the previous view), lake (read).",
    kind: Kind::Gauge,
    labels: &["kind"],
    exported_by: &["batch-scheduler"],
};
pub const PROMOTED_AGE: Family = Family {
    name: "lambda_promoted_version_age_seconds",
    help: "Seconds since the served batch view version finished computing.",
    kind: Kind::Gauge,
    labels: &["version"],
    exported_by: &["serving-layer"],
};
pub const PROMOTED_ROWS: Family = Family {
    name: "lambda_promoted_version_rows",
    help: "Rows of the served batch view version.",
    kind: Kind::Gauge,
    labels: &["version"],
    exported_by: &["serving-layer"],
};
pub const PROMOTED_RUN_SECONDS: Family = Family {
    name: "lambda_promoted_version_run_seconds",
    help: "How long the batch run that computed the served version took (scheduled or from cron).",
    kind: Kind::Gauge,
    labels: &["version"],
    exported_by: &["serving-layer"],
};
pub const CUTOVER_AGE: Family = Family {
    name: "lambda_cutover_age_seconds",
    help: "Wall clock minus the cutover T: how far the batch side lags.",
    kind: Kind::Gauge,
    labels: &["version"],
    exported_by: &["serving-layer"],
};
pub const DIVERGENCE_RATIO: Family = Family {
    name: "lambda_divergence_ratio",
    help: "|speed - batch| / max(|batch|, |speed|) over the buckets the latest promotion newly covered.",
    kind: Kind::Gauge,
    labels: &["metric"],
    exported_by: &["serving-layer"],
};
pub const HTTP_DURATION: Family = Family {
    name: "lambda_http_request_duration_seconds",
    help: "Serving-layer HTTP requests by route template, method and status.",
    kind: Kind::Histogram,
    labels: &["method", "route", "status"],
    exported_by: &["serving-layer"],
};

pub const CACHE_LOOKUPS: Family = Family {
    name: "lambda_serving_cache_lookups_total",
    help: "Serving-layer cache lookups: `snapshot` (a query's snapshot) and `body` (a whole answer), both reused until Postgres notifies a change, and `answer` (a chunk of rendered batch points); `miss`: this request computed the value, `hit`: it was there, or being computed for another request.",
    kind: Kind::Counter,
    labels: &["cache", "outcome"],
    exported_by: &["serving-layer"],
};

/// Every family of the platform.
pub const FAMILIES: &[Family] = &[
    CONSUMER_EVENTS,
    CONSUMER_QUARANTINED,
    CONSUMER_OFFSETS_MISSING,
    QUARANTINE_DROPPED,
    CONSUMER_COMMIT_FAILURES,
    CONSUMER_COMMIT_FAILING,
    CONSUMER_LAG,
    WATERMARK_DELAY,
    LATE_EVENTS,
    BATCH_RUN_DURATION,
    BATCH_RUN_ROWS,
    PROMOTED_AGE,
    PROMOTED_ROWS,
    PROMOTED_RUN_SECONDS,
    CUTOVER_AGE,
    DIVERGENCE_RATIO,
    HTTP_DURATION,
    CACHE_LOOKUPS,
];

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
}

impl SpeedMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(SpeedMetrics {
            watermark_delay: gauge(registry, &WATERMARK_DELAY)?,
            late: counter(registry, &LATE_EVENTS)?,
        })
    }

    /// No series before the first watermark, since there is no delay to tell.
    pub fn set_watermark(&self, topic: &str, watermark: Option<Millis>) {
        if let Some(watermark) = watermark {
            let delay = (now_millis() - watermark) as f64 / 1000.0;
            self.watermark_delay.with_label_values(&[topic]).set(delay);
        }
    }

    pub fn count_late(&self, metric: &str, events: u64) {
        self.late.with_label_values(&[metric]).inc_by(events);
    }
}

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
    promoted_age: GaugeVec,
    promoted_rows: GaugeVec,
    promoted_run: GaugeVec,
    cutover_age: GaugeVec,
    cache_lookups: IntCounterVec,
}

impl ServingMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(ServingMetrics {
            http: histogram(registry, &HTTP_DURATION, HTTP_BUCKETS)?,
            divergence: gauge(registry, &DIVERGENCE_RATIO)?,
            promoted_age: gauge(registry, &PROMOTED_AGE)?,
            promoted_rows: gauge(registry, &PROMOTED_ROWS)?,
            promoted_run: gauge(registry, &PROMOTED_RUN_SECONDS)?,
            cutover_age: gauge(registry, &CUTOVER_AGE)?,
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
        })
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
            &self.promoted_age,
            &self.promoted_rows,
            &self.promoted_run,
            &self.cutover_age,
        ];
        for gauge in gauges {
            gauge.reset();
        }
        let Some(served) = served else { return };
        let now = now_millis();
        let seconds = |millis: Millis| millis as f64 / 1000.0;
        let label = [served.version.as_str()];
        self.promoted_age
            .with_label_values(&label)
            .set(seconds(now - served.finished_at));
        self.promoted_rows
            .with_label_values(&label)
            .set(served.rows as f64);
        self.promoted_run
            .with_label_values(&label)
            .set(seconds(served.finished_at - served.started_at));
        self.cutover_age
            .with_label_values(&label)
            .set(seconds(now - served.cutover));
    }
}

/// The registry of this process.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::new)
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

pub fn serving() -> &'static ServingMetrics {
    static METRICS: OnceLock<ServingMetrics> = OnceLock::new();
    METRICS.get_or_init(|| ServingMetrics::register(registry()).expect(REGISTERS))
}

/// `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    TextEncoder::new().encode_to_string(&registry.gather())
}

/// The HTTP answer to `GET /metrics`: this process's registry as text.
pub fn exposition() -> Response {
    match render(registry()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// Serves `GET /metrics` (and `GET /readyz`, see `readiness`) on `addr` in the background, for the services without an HTTP API;
/// an empty `addr` serves nothing. Returns the bound address (`addr` may ask for port 0).
pub async fn serve(addr: &str) -> Result<Option<SocketAddr>, ObserveError> {
    serve_with_readiness(addr, None).await
}

/// A service's answer to `GET /readyz`: ready or not, and a JSON body saying why.
pub type ReadinessCheck = std::sync::Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// [`serve`], and `GET /readyz` from `readiness` (200 when ready, else 503) if given.
pub async fn serve_with_readiness(
    addr: &str,
    readiness: Option<ReadinessCheck>,
) -> Result<Option<SocketAddr>, ObserveError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let bind_error = |source| ObserveError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    // `/readyz`: the problems parts of the process reported (see `readiness`), and the
    // service's own check where it has one; ready only when both are.
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { exposition() }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let check = readiness.clone();
                async move {
                    let (status, mut body) = crate::readiness::readiness().answer();
                    let mut ready = status == StatusCode::OK;
                    if let Some(check) = check {
                        let (own_ready, own) = check();
                        ready &= own_ready;
                        if let (Some(body), Some(own)) = (body.as_object_mut(), own.as_object()) {
                            body.extend(own.clone());
                        }
                    }
                    body["status"] = serde_json::json!(if ready { "ready" } else { "not ready" });
                    body["ready"] = serde_json::json!(ready);
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(body)).into_response()
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(addr = %local, "serving /metrics");
    Ok(Some(local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::BadMessage;
    use crate::kafka::SourcedEvent;
    use shared_schema::event::Event;

    fn all(registry: &Registry) -> (ConsumerMetrics, SpeedMetrics, BatchMetrics, ServingMetrics) {
        (
            ConsumerMetrics::register(registry).unwrap(),
            SpeedMetrics::register(registry).unwrap(),
            BatchMetrics::register(registry).unwrap(),
            ServingMetrics::register(registry).unwrap(),
        )
    }

    fn event(partition: i32, offset: i64) -> SourcedEvent {
        SourcedEvent {
            partition,
            offset,
            event: Event {
                event_id: format!("e{partition}-{offset}"),
                event_type: "purchase".into(),
                event_time: 0,
                schema_version: 2,
                user_id: None,
                product_id: None,
                amount_micros: None,
                city: None,
                country: None,
                profile: None,
            },
        }
    }

    #[test]
    fn families_register_once_each() {
        let registry = Registry::new();
        let _handles = all(&registry);
        let names: BTreeSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
        assert_eq!(
            names.len(),
            FAMILIES.len(),
            "a family name is declared twice"
        );
        assert!(
            ConsumerMetrics::register(&registry).is_err(),
            "a second registration is refused"
        );
        for family in FAMILIES {
            assert!(family.name.starts_with("lambda_"), "{}", family.name);
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                family.name
            );
            assert!(!family.exported_by.is_empty(), "{}", family.name);
        }
    }

    #[test]
    fn a_batch_counts_events_per_partition_and_bad_messages() {
        let registry = Registry::new();
        let (consumer, ..) = all(&registry);
        consumer.start("speed-layer");
        let text = render(&registry).unwrap();
        assert!(
            text.contains("lambda_consumer_quarantined_total{consumer=\"speed-layer\"} 0\n"),
            "{text}"
        );
        let batch = Batch {
            events: vec![event(0, 1), event(0, 2), event(1, 7)],
            bad: vec![BadMessage {
                partition: 1,
                offset: 8,
                raw: None,
                reason: "not JSON".into(),
            }],
            ..Batch::default()
        };
        consumer.record_batch("speed-layer", &batch, &BTreeMap::from([(0, 5), (1, 0)]));
        let passed_over = Batch {
            missing_offsets: 3,
            ..Batch::default()
        };
        consumer.record_batch("speed-layer", &passed_over, &BTreeMap::from([(1, 3)]));
        consumer.record_batch("speed-layer", &batch, &BTreeMap::from([(1, 3)]));
        let text = render(&registry).unwrap();
        for line in [
            "lambda_consumer_offsets_missing_total{consumer=\"speed-layer\"} 3\n",
            "lambda_consumer_events_total{consumer=\"speed-layer\",partition=\"0\"} 4\n",
            "lambda_consumer_events_total{consumer=\"speed-layer\",partition=\"1\"} 2\n",
            "lambda_consumer_quarantined_total{consumer=\"speed-layer\"} 2\n",
            "lambda_consumer_lag_messages{consumer=\"speed-layer\",partition=\"1\"} 3\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text
                .contains("lambda_consumer_lag_messages{consumer=\"speed-layer\",partition=\"0\"}"),
            "a partition no longer owned has no lag series:\n{text}"
        );
    }

    #[test]
    fn served_version_gauges_are_replaced_not_kept() {
        let registry = Registry::new();
        let (.., serving) = all(&registry);
        let now = now_millis();
        let served = ServedVersion {
            version: "v1".into(),
            cutover: now - 600_000,
            started_at: now - 65_000,
            finished_at: now - 60_000,
            rows: 42,
        };
        serving.set_served(Some(&served));
        serving.set_divergence([("purchases", 0.5), ("revenue", 0.0)]);
        let text = render(&registry).unwrap();
        assert!(
            text.contains("lambda_promoted_version_rows{version=\"v1\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("lambda_promoted_version_run_seconds{version=\"v1\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("lambda_divergence_ratio{metric=\"revenue\"} 0\n"));
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}{{version=\"v1\"}} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        assert!((60.0..70.0).contains(&value("lambda_promoted_version_age_seconds")));
        assert!((600.0..610.0).contains(&value("lambda_cutover_age_seconds")));

        serving.set_served(Some(&ServedVersion {
            version: "v2".into(),
            ..served
        }));
        serving.set_divergence([("purchases", 0.25)]);
        let text = render(&registry).unwrap();
        assert!(
            !text.contains("v1"),
            "the previous version's series are gone:\n{text}"
        );
        assert!(!text.contains("metric=\"revenue\""), "{text}");
        serving.set_served(None);
        let text = render(&registry).unwrap();
        assert!(!text.contains("lambda_promoted_version"), "{text}");
    }

    #[test]
    fn batch_runs_and_requests_are_histograms() {
        let registry = Registry::new();
        let (_, speed, batch, serving) = all(&registry);
        let text = render(&registry).unwrap();
        assert!(
            text.contains("lambda_batch_run_duration_seconds_count{outcome=\"failed\"} 0\n"),
            "{text}"
        );
        batch.promoted(
            3.0,
            RunRows {
                view: 10,
                reused: 4,
                lake: 100,
            },
        );
        batch.failed(0.2);
        serving.observe_request("GET", "/v1/metrics/{name}", 200, 0.003);
        speed.count_late("purchases", 2);
        speed.set_watermark("events", Some(now_millis() - 5_000));
        let text = render(&registry).unwrap();
        for line in [
            "lambda_batch_run_duration_seconds_bucket{outcome=\"promoted\",le=\"5\"} 1\n",
            "lambda_batch_run_duration_seconds_bucket{outcome=\"promoted\",le=\"2.5\"} 0\n",
            "lambda_batch_run_duration_seconds_count{outcome=\"failed\"} 1\n",
            "lambda_batch_run_rows{kind=\"view\"} 10\n",
            "lambda_batch_run_rows{kind=\"lake\"} 100\n",
            "lambda_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/metrics/{name}\",status=\"200\"} 1\n",
            "lambda_speed_late_events_total{metric=\"purchases\"} 2\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains("lambda_speed_watermark_delay_seconds{topic=\"events\"} 5"));
    }
}
