//! Every metric family the services export: name, help, labels and exporting services.

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
pub const SPEED_STATE_BYTES: Family = Family {
    name: "lambda_speed_state_bytes",
    help: "Memory the speed layer's dedupe and session state holds; past speed.state_max_mb it stops reading.",
    kind: Kind::Gauge,
    labels: &["topic"],
    exported_by: &["speed-layer"],
};
pub const SPEED_STATE_IDS: Family = Family {
    name: "lambda_speed_state_ids",
    help: "Event ids the speed layer holds for deduplication (every partition, inside the horizon).",
    kind: Kind::Gauge,
    labels: &["topic"],
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
pub const BUILD_INFO: Family = Family {
    name: "lambda_build_info",
    help: "1 for the running binary (label `binary`) and the platform version it was built from (label `version`).",
    kind: Kind::Gauge,
    labels: &["binary", "version"],
    exported_by: &[
        "speed-layer",
        "lander",
        "batch-scheduler",
        "serving-layer",
        "cdc-publisher",
    ],
};

pub const CDC_PUBLISHED: Family = Family {
    name: "lambda_cdc_published_total",
    help: "Profile changes the CDC publisher published to the changelog topic and confirmed in its slot.",
    kind: Kind::Counter,
    labels: &[],
    exported_by: &["cdc-publisher"],
};
pub const CDC_SLOT_LAG: Family = Family {
    name: "lambda_cdc_slot_lag_bytes",
    help: "WAL the publisher's replication slot holds back: the server's current WAL position minus the slot's confirmed one. Postgres keeps this WAL on disk until the slot confirms it.",
    kind: Kind::Gauge,
    labels: &[],
    exported_by: &["cdc-publisher"],
};

// The served version is an info metric beside unlabelled gauges: a `version` label on the
// gauges themselves would start new series at every promotion. Times are timestamps, not ages,
// so that a stalled exporter shows as a constant rather than as a frozen "age".
pub const PROMOTED_INFO: Family = Family {
    name: "lambda_promoted_version_info",
    help: "1 for the batch view version the serving layer serves (label `version`).",
    kind: Kind::Gauge,
    labels: &["version"],
    exported_by: &["serving-layer"],
};
pub const PROMOTED_AT: Family = Family {
    name: "lambda_promoted_timestamp_seconds",
    help: "When the served batch view version finished computing, in Unix seconds; time() minus it is its age.",
    kind: Kind::Gauge,
    labels: &[],
    exported_by: &["serving-layer"],
};
pub const PROMOTED_ROWS: Family = Family {
    name: "lambda_promoted_version_rows",
    help: "Rows of the served batch view version.",
    kind: Kind::Gauge,
    labels: &[],
    exported_by: &["serving-layer"],
};
pub const PROMOTED_RUN_SECONDS: Family = Family {
    name: "lambda_promoted_version_run_seconds",
    help: "How long the batch run that computed the served version took (scheduled or from cron).",
    kind: Kind::Gauge,
    labels: &[],
    exported_by: &["serving-layer"],
};
pub const CUTOVER_AT: Family = Family {
    name: "lambda_cutover_timestamp_seconds",
    help: "The cutover T in Unix seconds: time() minus it is how far the batch side lags.",
    kind: Kind::Gauge,
    labels: &[],
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

pub const ALERT_DELIVERIES: Family = Family {
    name: "lambda_alert_deliveries_total",
    help: "Attempts to POST an alert transition to `serving.webhook_url`: `delivered` (2xx) or `failed` (refused or unreachable; retried until delivered).",
    kind: Kind::Counter,
    labels: &["outcome"],
    exported_by: &["serving-layer"],
};
pub const ALERT_DELIVERIES_PENDING: Family = Family {
    name: "lambda_alert_deliveries_pending",
    help: "Alert transitions queued in Postgres and not yet delivered to the webhook, by every serving instance.",
    kind: Kind::Gauge,
    labels: &[],
    exported_by: &["serving-layer"],
};

/// Every family of the platform.
pub const FAMILIES: &[Family] = &[
    BUILD_INFO,
    CDC_PUBLISHED,
    CDC_SLOT_LAG,
    CONSUMER_EVENTS,
    CONSUMER_QUARANTINED,
    CONSUMER_OFFSETS_MISSING,
    QUARANTINE_DROPPED,
    CONSUMER_COMMIT_FAILURES,
    CONSUMER_COMMIT_FAILING,
    CONSUMER_LAG,
    WATERMARK_DELAY,
    LATE_EVENTS,
    SPEED_STATE_BYTES,
    SPEED_STATE_IDS,
    BATCH_RUN_DURATION,
    BATCH_RUN_ROWS,
    PROMOTED_INFO,
    PROMOTED_AT,
    PROMOTED_ROWS,
    PROMOTED_RUN_SECONDS,
    CUTOVER_AT,
    DIVERGENCE_RATIO,
    HTTP_DURATION,
    CACHE_LOOKUPS,
    ALERT_DELIVERIES,
    ALERT_DELIVERIES_PENDING,
];
