//! Platform configuration, layered: built-in defaults, then an optional TOML file (path in
//! `PLATFORM_CONFIG`), then the environment.
//!
//! The variables of CONTRACT §2 (`DATABASE_URL`, `KAFKA_BROKERS`, `EVENTS_TOPIC`, `LAKE_DIR`,
//! `LISTEN_ADDR`) set the top-level keys of the same name. Every other key is set from the
//! environment as `PLATFORM_<SECTION>__<KEY>`, e.g. `PLATFORM_SPEED__BATCH_MAX_EVENTS=5000`.
//!
//! Every key is declared once below, with its doc and its default: the defaults are readable in
//! this one place, and `docs/CONFIG.md` is generated from it (see `config_reference`).

use crate::config_reference::config_section;
use crate::time::{DAY_MS, HumanDuration, MINUTE_MS, SECOND_MS};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

config_section! {
    /// The whole configuration: the contract's top-level keys and one section per component.
    pub struct PlatformConfig {
        /// Postgres holding all metadata and speed-layer state. Required.
        pub database_url: Option<String> = None,
        /// Kafka bootstrap servers, comma separated.
        pub kafka_brokers: String = "127.0.0.1:9092".into(),
        /// The raw event topic.
        pub events_topic: String = "events".into(),
        /// Root of the raw Parquet lake (`events/`) and the batch views (`views/`): a directory, or
        /// `s3://bucket/prefix` with credentials, region and endpoint from the standard `AWS_*`
        /// variables (see `storage::Lake`).
        pub lake_dir: PathBuf = PathBuf::from("./data/lake"),
        /// The serving layer's HTTP address.
        pub listen_addr: String = "127.0.0.1:8080".into(),
        /// Events whose time is further than this ahead of the wall clock are bad input.
        pub max_event_skew: HumanDuration = HumanDuration::from_millis(10 * MINUTE_MS),
        /// Connections each service keeps to Postgres.
        pub database_max_connections: u32 = 8,
        /// How often the consumers of the event topic look for partitions added to it: the speed
        /// layer's group then rebalances, and the lander assigns the new ones from their beginning.
        /// Env `PLATFORM_KAFKA_METADATA_REFRESH`.
        pub kafka_metadata_refresh: HumanDuration = HumanDuration::from_millis(30 * SECOND_MS),
        /// The metric definitions (TOML, see config/metrics.toml); absent: the compiled-in default.
        pub metrics_file: Option<PathBuf> = None,
        /// Log lines on stderr: `text` for people, `json` (one object a line, with the fields of
        /// the enclosing spans, e.g. the serving layer's `request_id`) for log shippers. Also set by
        /// `LOG_FORMAT`. The level comes from `RUST_LOG` (default info).
        pub log_format: LogFormat = LogFormat::Text,
        pub speed: SpeedConfig = SpeedConfig::default(),
        pub lander: LanderConfig = LanderConfig::default(),
        pub lake: LakeConfig = LakeConfig::default(),
        pub batch: BatchConfig = BatchConfig::default(),
        pub serving: ServingConfig = ServingConfig::default(),
        pub cdc: CdcConfig = CdcConfig::default(),
        pub quarantine: QuarantineConfig = QuarantineConfig::default(),
        pub kafka: KafkaConfig = KafkaConfig::default(),
    }
}

config_section! {
    /// `speed-layer run`: consuming the event topic into the speed state in Postgres.
    pub struct SpeedConfig {
        /// Kafka consumer group of the speed layer: its instances share the partitions. Offsets are
        /// kept in Postgres and read when a partition is assigned.
        pub group_id: String = "speed-layer".into(),
        /// An instance silent for this long loses its partitions to the others.
        pub session_timeout: HumanDuration = HumanDuration::from_millis(10 * SECOND_MS),
        /// Who decides which instance reads which partition. `group`: the broker's group
        /// coordinator (Kafka's consumer protocol, with the stall watchdog below). `leases`: the
        /// instances themselves, through leases in Postgres (`speed_leases`) renewed every third
        /// of `session_timeout`, with partitions assigned by hand: no coordinator is involved, so
        /// a coordinator that leaves partitions unassigned cannot stall the speed layer. Either
        /// way a partition's epoch fences the checkpoints of an instance that lost it.
        pub assignment: Assignment = Assignment::Group,
        /// A batch is committed when it holds this many messages...
        pub batch_max_events: usize = 20_000,
        /// ...or when it has been read for this long, whichever comes first: most of an event's
        /// way to an answer, as a checkpoint takes milliseconds. At 50 ms, p99 from produce to
        /// answer is under 300 ms at 20 000 events/s (BENCHMARKS.md); each checkpoint holds the
        /// log head a few milliseconds, so 20 a second per instance bound how many instances one
        /// log serves (docs/SCALING.md)...
        pub batch_max_wait: HumanDuration = HumanDuration::from_millis(50),
        /// ...or when its messages (keys and values) hold this many bytes: with messages of up to
        /// 1 MiB, a count alone lets one batch hold gigabytes. A batch holds at least one message.
        pub batch_max_bytes: usize = 32 * 1024 * 1024,
        /// Memory the dedupe and session state may hold, in MiB: about 60 bytes per event id
        /// inside the horizon (BENCHMARKS.md), every partition's, in every instance. Past it the
        /// instance stops reading (its lag grows) until retention, after the next promotion,
        /// frees memory: a bound and a metric (`lambda_speed_state_bytes`), never an OOM kill.
        pub state_max_mb: u64 = 4096,
        /// Speed state for a bucket is deleted once a promoted batch view has covered it for this long.
        pub retention_grace: HumanDuration = HumanDuration::from_millis(10 * MINUTE_MS),
        /// How far behind the newest event time of a partition its events may still arrive in
        /// order: the watermark is the newest event time minus this.
        pub out_of_orderness: HumanDuration = HumanDuration::from_millis(5 * SECOND_MS),
        /// A partition read to its end with no message for this long stops holding the watermark
        /// back.
        pub idle_timeout: HumanDuration = HumanDuration::from_millis(30 * SECOND_MS),
        /// Where `speed-layer run` serves Prometheus `GET /metrics` (consumer lag, events read,
        /// quarantined and late events, watermark delay). Empty: no listener. Each instance on one
        /// host needs its own address. `speed-layer replay` serves none. `speed-layer run` also
        /// serves `GET /readyz` there: 503 while it owns no partition and some partition has no
        /// live consumer, with the partitions it owns and the stalled ones.
        pub metrics_addr: String = "127.0.0.1:9101".into(),
        /// A partition whose stored speed position has stood still this long while the broker (or
        /// the lake) holds newer messages has no live consumer: every `speed-layer run` instance
        /// that does not own it leaves the group and joins again as a new member (backing off while
        /// the stall lasts), and answers report the buckets it may be missing as a gap. Read by
        /// the speed layer and the serving layer.
        pub stall_timeout: HumanDuration = HumanDuration::from_millis(30 * SECOND_MS),
        /// How often each `speed-layer run` instance asks the broker for the end offsets of every
        /// partition and records them beside the stored positions (`speed_partition_liveness`).
        pub liveness_interval: HumanDuration = HumanDuration::from_millis(5 * SECOND_MS),
    }
}

config_section! {
    /// `batch-layer land`: writing every event into the Parquet lake.
    pub struct LanderConfig {
        /// Kafka consumer group id of `batch-layer land` (offsets are kept in Postgres).
        pub group_id: String = "batch-lander".into(),
        /// Files are published when the buffer holds this many events...
        pub flush_max_events: usize = 200_000,
        /// ...or when its oldest event has waited this long...
        pub flush_interval: HumanDuration = HumanDuration::from_millis(5 * SECOND_MS),
        /// ...or when its messages (keys and values) hold this many bytes. A batch holds at least
        /// one message.
        pub flush_max_bytes: usize = 128 * 1024 * 1024,
        /// Where `batch-layer land` serves Prometheus `GET /metrics` (consumer lag, events read,
        /// quarantined events). Empty: no listener.
        pub metrics_addr: String = "127.0.0.1:9102".into(),
    }
}

config_section! {
    /// The lake's lifecycle, applied by `batch-layer run` after each promotion.
    pub struct LakeConfig {
        /// How much history the platform keeps. Lake hours that ended more than this before the
        /// run (rounded down to the widest bucket) are deleted from the lake, and later view
        /// versions leave their buckets out: a view is a function of the lake, so it keeps what
        /// the lake keeps (as a Druid drop rule drops a datasource's old segments). Never deleted:
        /// any hour at or after the cutover of a kept version (`batch.keep_versions`, the served
        /// one included), which a rollback and the speed side still need. Absent: keep
        /// everything. Example: `90d`.
        pub retention: Option<HumanDuration> = None,
    }
}

config_section! {
    /// `batch-layer run|schedule`: recomputing the views from the lake and promoting them.
    pub struct BatchConfig {
        /// Promoted view versions kept on disk; older ones are deleted after a promotion. The
        /// divergence history keeps as many comparisons per metric.
        pub keep_versions: usize = 5,
        /// Memory a recompute's DataFusion plans may hold, in MiB; past it sorts and aggregations
        /// spill to disk. Absent: no limit.
        pub memory_limit_mb: Option<u64> = None,
        /// Where spilled data goes. Absent: the system's temporary directory.
        pub spill_dir: Option<PathBuf> = None,
        /// A run recomputes at most this many lake hours at a time (more only when one bucket is
        /// wider), which bounds its memory by the events of that many hours.
        pub chunk_hours: usize = 24,
        /// After each promotion by `run`, every metric of the new view is compared with what the
        /// speed layer held for the newly covered buckets. A relative difference
        /// `|speed - batch| / max(|batch|, |speed|)` strictly above this is logged at warn and
        /// raises the alert `divergence:<metric>` (`GET /v1/alerts`), which resolves when a later
        /// comparison is at or below it. Read by the batch layer (warning) and the serving layer
        /// (alert).
        pub divergence_alert_ratio: f64 = 0.01,
        /// Where `batch-layer schedule` serves Prometheus `GET /metrics` (run durations by outcome,
        /// rows of the latest promoted run). Empty: no listener. A one-shot `batch-layer run` (from
        /// cron) serves and pushes nothing: what it promoted is in Postgres, and the serving layer's
        /// `/metrics` exports the served version's age, rows and run time from there.
        pub metrics_addr: String = "127.0.0.1:9103".into(),
        /// Where a run's DataFusion plans execute: `local` (in the run's process), or
        /// `ballista://host:port`, an Apache DataFusion Ballista scheduler (started with
        /// `batch-layer ballista-scheduler`, its executors with `batch-layer ballista-executor`,
        /// which share the lake's filesystem). The rows come back to the run, which writes and
        /// promotes the view either way. Also set by `BATCH_ENGINE`.
        pub engine: String = "local".into(),
        /// The time zone `batch-layer schedule --cron` reads its expression in: an IANA name such
        /// as `UTC` or `Europe/Berlin`.
        pub cron_timezone: String = "UTC".into(),
    }
}

config_section! {
    /// `serving-layer`: the HTTP API, its limits, caches, tokens and alerts.
    pub struct ServingConfig {
        /// A query taking longer than this answers 503 instead of hanging the client.
        pub query_timeout: HumanDuration = HumanDuration::from_millis(5 * SECOND_MS),
        /// Requests asking for more points than this per series answer 400.
        pub max_points: i64 = 100_000,
        /// How often the alert rules are evaluated.
        pub alert_interval: HumanDuration = HumanDuration::from_millis(10 * SECOND_MS),
        /// Called with a JSON POST on every alert transition (fired, resolved). Transitions are
        /// queued in Postgres with the alert's state and retried (backoff up to five minutes) until
        /// delivered, in order, across restarts; `lambda_alert_deliveries_total` counts attempts.
        pub webhook_url: Option<String> = None,
        /// The body POSTed to `webhook_url`. `platform`: one transition as `GET /v1/alerts` shows
        /// it. `alertmanager`: Alertmanager's API (`webhook_url` is then e.g.
        /// `http://alertmanager:9093/api/v2/alerts`), a list of alerts with `labels` (`alertname`
        /// the rule, `metric`, the group's dimension) and `annotations`, as Prometheus sends them,
        /// so Alertmanager's routing (PagerDuty, Slack, ...) works unchanged; firing alerts are sent
        /// again every minute with `endsAt` four minutes ahead, as Prometheus does.
        pub webhook_format: WebhookFormat = WebhookFormat::Platform,
        /// The Postgres URL every HTTP request reads through. Migration 0011 creates the role
        /// `lambda_reader` for it (LOGIN, SELECT only, no password: set one with `ALTER ROLE`, or
        /// rely on the server's host rules). Absent: `DATABASE_URL`. Sessions on it are read-only
        /// either way. The serving layer's own writes (migrations, alert state, admin endpoints)
        /// use `DATABASE_URL`.
        pub database_url: Option<String> = None,
        /// Bearer token the admin endpoints (`/v1/admin/...`) require. Absent: they are disabled
        /// and answer 403, so an unconfigured server cannot be promoted or rolled back over HTTP.
        pub admin_token: Option<String> = None,
        /// Bearer token the read endpoints under `/v1/` require (the admin token is accepted too).
        /// Absent: they are open. `/healthz`, `/readyz`, `/metrics` and `/openapi.json` stay open.
        pub read_token: Option<String> = None,
        /// Longest `[from, to)` a metric query may ask for; longer answers 400.
        pub max_range: HumanDuration = HumanDuration::from_millis(31 * DAY_MS),
        /// Most series (groups) one answer may hold; more answers 400.
        pub max_groups: usize = 1_000,
        /// Origins a browser may call the API from (CORS), e.g. `["https://dash.example.com"]`;
        /// `["*"]` allows any. Empty: no CORS headers, so browsers allow only same-origin calls.
        pub cors_allowed_origins: Vec<String> = Vec::new(),
        /// Longest a cached query snapshot (T, version, speed rows) is reused. Changes are pushed
        /// by Postgres notifications, which drop the cache at once; this bounds the staleness only
        /// if the notification connection fails without the serving layer noticing. `0s`: no cache.
        pub snapshot_cache_max_age: HumanDuration = HumanDuration::from_millis(5 * SECOND_MS),
        /// Memory for the batch side of answers, already rendered as JSON, per promoted version
        /// (least recently used evicted first). `0`: render every answer afresh.
        pub answer_cache_mb: usize = 256,
        /// Memory for cached query snapshots (T, version, speed rows) of the current state; beyond
        /// it the cache starts over, and a larger snapshot is not kept.
        pub snapshot_cache_mb: usize = 128,
        /// Memory for the batch view's segments read for answers (each a lake hour of every
        /// metric's rows), least recently used first out: a query reads only the segments of the
        /// hours it touches, so memory is bounded by this, not by the view's history. A segment
        /// larger than this alone is read for its query and not kept.
        pub view_cache_mb: usize = 512,
        /// Memory for whole cached answers (JSON, and their gzip form) of the current state; beyond
        /// it the cache starts over, and a larger answer is not kept.
        pub body_cache_mb: usize = 128,
        /// Most points one answer may hold over all its series, bounded before any window is
        /// computed (per group: its buckets times `ceil(window / step)`, at most the points of a
        /// series); more answers 400 `limit_exceeded`.
        pub max_answer_points: u64 = 2_000_000,
        /// Most stored rows (batch view and speed layer, both parts of a ratio) a query may read
        /// over its points' windows; more answers 400 `limit_exceeded` before anything is merged.
        pub max_rows: usize = 5_000_000,
    }
}

config_section! {
    /// Change data capture of the `user_profiles` dimension (see `profiles`).
    pub struct CdcConfig {
        /// The changelog topic: `cdc-publisher run` writes the table's changes to it, the speed
        /// layer and the lander read them. Created by the publisher (one partition) if missing.
        pub topic: String = "user_profiles.cdc".into(),
        /// The publisher's logical replication slot (wal2json) in the database of `DATABASE_URL`.
        /// Slot names are unique per Postgres cluster: two platforms sharing a cluster need two.
        pub slot: String = "platform_cdc".into(),
        /// How often the publisher reads the slot when the last read found nothing.
        pub poll_interval: HumanDuration = HumanDuration::from_millis(200),
        /// The publisher reads whole transactions until at least this many changes are in hand.
        pub batch_max_changes: usize = 1000,
        /// Consumer group id under which the speed layer and the lander read the changelog (every
        /// instance reads every partition; positions are kept in Postgres).
        pub group_id: String = "profile-changelog".into(),
        /// Where `cdc-publisher run` serves Prometheus `GET /metrics` (changes published, the
        /// slot's lag in bytes), `/healthz` and `/readyz`; empty: not served.
        pub metrics_addr: String = "127.0.0.1:9104".into(),
    }
}

config_section! {
    /// How long bad input is kept (CONTRACT §1): the consumers (`speed-layer run`, `batch-layer
    /// land`) delete what is past either bound, oldest first, and count what they deleted
    /// (`lambda_quarantine_dropped_total`). `speed-layer quarantine list|replay` reads what is kept.
    pub struct QuarantineConfig {
        /// Quarantined messages older than this are deleted.
        pub max_age: HumanDuration = HumanDuration::from_millis(7 * DAY_MS),
        /// The quarantine's payloads and reasons together are kept under this many MiB; past it
        /// the oldest messages are deleted first. `0`: no size bound.
        pub max_mb: u64 = 1024,
        /// How often each consumer applies the two bounds.
        pub retention_interval: HumanDuration = HumanDuration::from_millis(MINUTE_MS),
    }
}

config_section! {
    /// How every Kafka client of the platform (the speed layer's and the lander's consumers, the
    /// profile changelog's readers, the CDC publisher's and the quarantine replay's producers)
    /// reaches the cluster beyond `kafka_brokers`: security and tuning, passed to librdkafka as
    /// they are written. For a SASL/SSL cluster (MSK, Confluent Cloud, Strimzi):
    ///
    /// ```toml
    /// [kafka.properties]
    /// "security.protocol" = "SASL_SSL"
    /// "sasl.mechanism" = "SCRAM-SHA-512"
    /// "sasl.username" = "lambda"
    /// "sasl.password" = "..."
    /// "ssl.ca.location" = "/etc/ssl/certs/ca-certificates.crt"
    /// ```
    ///
    /// or in the environment `PLATFORM_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL`, an
    /// underscore standing for each dot. Properties the platform sets itself (`group.id`,
    /// `bootstrap.servers`, `session.timeout.ms`, `enable.auto.commit`, ...) are refused at start.
    pub struct KafkaConfig {
        /// librdkafka client properties for every consumer, producer and admin client, applied
        /// after the platform's own tuning (so `fetch.wait.max.ms` and the like may be changed).
        /// Values that look like secrets are never logged.
        pub properties: crate::kafka_access::ClientProperties = Default::default(),
    }
}

/// The webhook's body, see [`ServingConfig::webhook_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Platform,
    Alertmanager,
}

/// Who assigns the speed layer's partitions, see [`SpeedConfig::assignment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assignment {
    Group,
    Leases,
}

/// The format of log lines, see [`PlatformConfig::log_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("configuration: DATABASE_URL is required")]
    MissingDatabaseUrl,
    #[error("configuration: {0}")]
    KafkaProperty(#[from] crate::kafka_access::ReservedProperty),
}

/// The contract's variable names, which map onto top-level keys.
const CONTRACT_VARIABLES: [&str; 5] = [
    "DATABASE_URL",
    "KAFKA_BROKERS",
    "EVENTS_TOPIC",
    "LAKE_DIR",
    "LISTEN_ADDR",
];

impl PlatformConfig {
    /// Defaults, then the file named by `PLATFORM_CONFIG` (if any), then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let config: PlatformConfig = Self::figment()
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        // A reserved Kafka property is refused at start, not at the first client.
        crate::kafka_access::KafkaAccess::check(&config.kafka.properties)?;
        Ok(config)
    }

    /// The brokers and client properties every Kafka client is created from.
    pub fn kafka_access(&self) -> crate::kafka_access::KafkaAccess {
        crate::kafka_access::KafkaAccess::new(&self.kafka_brokers, &self.kafka.properties)
    }

    pub fn figment() -> Figment {
        let mut figment = Figment::from(Serialized::defaults(PlatformConfig::default()));
        if let Ok(path) = std::env::var("PLATFORM_CONFIG") {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment
            .merge(
                Env::raw()
                    .only(&CONTRACT_VARIABLES)
                    .map(|k| k.as_str().to_lowercase().into()),
            )
            // The name the services read before the key existed.
            .merge(
                Env::raw()
                    .only(&["LOG_FORMAT"])
                    .map(|_| "log_format".into()),
            )
            // The name the issue gave it.
            .merge(
                Env::raw()
                    .only(&["BATCH_ENGINE"])
                    .map(|_| "batch.engine".into()),
            )
            .merge(Env::prefixed("PLATFORM_").ignore(&["CONFIG"]).split("__"))
    }

    pub fn database_url(&self) -> Result<&str, ConfigError> {
        self.database_url
            .as_deref()
            .ok_or(ConfigError::MissingDatabaseUrl)
    }

    /// Where the lander publishes raw event files.
    pub fn events_dir(&self) -> PathBuf {
        self.lake_dir.join("events")
    }

    /// The metric catalogue this deployment computes.
    pub fn metric_catalog(
        &self,
    ) -> Result<crate::catalog::MetricCatalog, crate::metrics::MetricError> {
        crate::catalog::MetricCatalog::load(self.metrics_file.as_deref())
    }

    /// Where the batch layer publishes view versions.
    pub fn views_dir(&self) -> PathBuf {
        self.lake_dir.join("views")
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("platform.toml", "events_topic = \"from-file\"\nkafka_brokers = \"file:1\"\n[speed]\nbatch_max_events = 7\n")?;
            jail.set_env("PLATFORM_CONFIG", "platform.toml");
            jail.set_env("KAFKA_BROKERS", "env:2");
            jail.set_env("DATABASE_URL", "postgres://x");
            jail.set_env("PLATFORM_SPEED__RETENTION_GRACE", "2h");
            jail.set_env("PLATFORM_BATCH__DIVERGENCE_ALERT_RATIO", "0.05");
            jail.set_env(
                "PLATFORM_SERVING__CORS_ALLOWED_ORIGINS",
                r#"["https://a.example", "https://b.example"]"#,
            );
            let config = PlatformConfig::load().map_err(|e| e.to_string())?;
            assert_eq!(config.events_topic, "from-file");
            assert_eq!(config.kafka_brokers, "env:2");
            assert_eq!(config.database_url.as_deref(), Some("postgres://x"));
            assert_eq!(config.speed.batch_max_events, 7);
            assert_eq!(config.speed.retention_grace.millis(), 2 * 3_600_000);
            assert_eq!(config.lake_dir, PathBuf::from("./data/lake"));
            assert_eq!(config.batch.divergence_alert_ratio, 0.05);
            assert_eq!(
                config.serving.cors_allowed_origins,
                ["https://a.example", "https://b.example"]
            );
            assert_eq!(
                config.batch.keep_versions, 5,
                "a default survives the layers"
            );
            Ok(())
        });
    }

    #[test]
    fn batch_engine_is_local_unless_set() {
        assert_eq!(PlatformConfig::default().batch.engine, "local");
        figment::Jail::expect_with(|jail| {
            jail.set_env("BATCH_ENGINE", "ballista://scheduler:50050");
            let config = PlatformConfig::load().map_err(|e| e.to_string())?;
            assert_eq!(config.batch.engine, "ballista://scheduler:50050");
            Ok(())
        });
    }

    #[test]
    fn log_format_and_metrics_addresses() {
        let defaults = PlatformConfig::default();
        let addrs = [
            &defaults.speed.metrics_addr,
            &defaults.lander.metrics_addr,
            &defaults.batch.metrics_addr,
            &defaults.listen_addr,
        ];
        let distinct: std::collections::BTreeSet<_> = addrs.iter().collect();
        assert_eq!(distinct.len(), 4, "defaults collide: {addrs:?}");
        figment::Jail::expect_with(|jail| {
            jail.set_env("LOG_FORMAT", "json");
            jail.set_env("PLATFORM_LANDER__METRICS_ADDR", "");
            let config = PlatformConfig::load().map_err(|e| e.to_string())?;
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.lander.metrics_addr, "");
            jail.set_env("PLATFORM_LOG_FORMAT", "text");
            let config = PlatformConfig::load().map_err(|e| e.to_string())?;
            assert_eq!(config.log_format, LogFormat::Text, "the prefixed key wins");
            jail.set_env("PLATFORM_LOG_FORMAT", "xml");
            assert!(
                PlatformConfig::load().is_err(),
                "an unknown format is refused"
            );
            Ok(())
        });
    }

    #[test]
    fn a_typo_in_the_file_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("platform.toml", "[speed]\nbatch_max_event = 7\n")?;
            jail.set_env("PLATFORM_CONFIG", "platform.toml");
            let err = PlatformConfig::load().unwrap_err().to_string();
            assert!(err.contains("batch_max_event"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn kafka_properties_come_from_the_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "platform.toml",
                "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
            )?;
            jail.set_env("PLATFORM_CONFIG", "platform.toml");
            jail.set_env(
                "PLATFORM_KAFKA__PROPERTIES__SASL_MECHANISM",
                "SCRAM-SHA-512",
            );
            let access = PlatformConfig::load().unwrap().kafka_access();
            assert_eq!(
                access
                    .properties
                    .0
                    .get("security.protocol")
                    .map(String::as_str),
                Some("SASL_SSL")
            );
            assert_eq!(
                access
                    .properties
                    .0
                    .get("sasl.mechanism")
                    .map(String::as_str),
                Some("SCRAM-SHA-512")
            );
            jail.set_env("PLATFORM_KAFKA__PROPERTIES__GROUP_ID", "mine");
            let err = PlatformConfig::load().unwrap_err().to_string();
            assert!(err.contains("group.id"), "{err}");
            Ok(())
        });
    }
}
