//! The batch layer: lands every event into a Parquet lake (`land`), and recomputes every metric
//! from the whole lake with DataFusion into an immutable view version that is promoted together
//! with its cutover in one Postgres transaction (`run`, `schedule`). Its output is the source of
//! truth for every bucket before the cutover.

mod aggregate_input;
pub mod allocator;
pub mod changelog_batch;
pub mod cluster;
pub mod crontab;
pub mod cutover_clock;
pub mod definitions;
pub mod divergence;
pub mod engine;
pub mod enrich;
pub mod id_hash;
pub mod incremental;
pub mod lake;
pub mod lake_compaction;
pub mod lake_retention;
pub mod lake_snapshot;
pub mod land;
pub mod land_changelog;
pub mod land_guard;
pub mod lander_lock;
pub mod plan_rows;
pub mod publish;
pub mod recompute;
pub mod requested;
pub mod schedule;
pub mod session_udaf;
pub mod sketch_udaf;
pub mod view_gc;
pub mod view_plan;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Config(#[from] shared_schema::config::ConfigError),
    #[error(transparent)]
    Db(#[from] shared_io::db::DbError),
    #[error(transparent)]
    Metrics(#[from] shared_schema::metrics::MetricError),
    #[error(transparent)]
    SpeedState(#[from] shared_io::speed_state::SpeedStateError),
    #[error(transparent)]
    Source(#[from] shared_io::kafka::SourceError),
    #[error(transparent)]
    Retention(#[from] lake_retention::RetentionError),
    /// Events the lake's Arrow schema cannot hold (see `land_guard`).
    #[error("could not arrange {events} events as lake columns: {source}")]
    EncodeEvents {
        events: usize,
        source: arrow::error::ArrowError,
    },
    #[error("could not arrange {versions} profile versions as changelog columns: {source}")]
    EncodeProfileVersions {
        versions: usize,
        source: arrow::error::ArrowError,
    },
    /// Encoding a lake file as Parquet, or writing its bytes to `path`.
    #[error("could not write the lake file {path} as Parquet: {source}")]
    WriteLakeFile {
        path: String,
        source: parquet::errors::ParquetError,
    },
    /// The session a run plans in (runtime, memory pool, the lake's object store, functions).
    #[error("could not build the DataFusion session: {source}")]
    BuildSession {
        source: datafusion::error::DataFusionError,
    },
    #[error("could not connect to the Ballista scheduler at {scheduler}: {source}")]
    ConnectCluster {
        scheduler: String,
        source: datafusion::error::DataFusionError,
    },
    /// Reading the lake's listed Parquet files and keeping one copy of each event.
    #[error("could not read the {files} listed lake files: {source}")]
    ReadLake {
        files: usize,
        source: datafusion::error::DataFusionError,
    },
    /// The temporal join of the events with the buyers' profile changelog.
    #[error("could not join the {files} profile changelog files: {source}")]
    JoinProfiles {
        files: usize,
        source: datafusion::error::DataFusionError,
    },
    #[error("could not plan or execute metric {metric}: {source}")]
    PlanMetric {
        metric: String,
        source: datafusion::error::DataFusionError,
    },
    /// `batch.engine` (`BATCH_ENGINE`) names no engine.
    #[error("batch engine {0}")]
    Engine(String),
    /// A run's plans failed on the Ballista cluster, or could not reach it.
    #[error("on the Ballista cluster at {engine}: {cause}")]
    Distributed {
        engine: String,
        cause: Box<BatchError>,
    },
    #[error("the Ballista scheduler on {bind} failed: {source}")]
    RunScheduler {
        bind: std::net::SocketAddr,
        source: ballista_core::error::BallistaError,
    },
    #[error("the Ballista executor failed: {source}")]
    RunExecutor {
        source: ballista_core::error::BallistaError,
    },
    #[error(transparent)]
    View(#[from] shared_io::view::ViewError),
    #[error(transparent)]
    Storage(#[from] shared_io::storage::StorageError),
    #[error("cannot promote: {0}")]
    Cutover(#[from] shared_schema::cutover::CutoverError),
    #[error("cannot promote: {0}")]
    Coverage(#[from] shared_io::coverage::CoverageError),
    /// The metadata snapshot a run starts from (manifest, lander progress, promoted view).
    #[error("could not read the lake's manifest and the promoted state: {0}")]
    ReadSnapshot(#[source] sqlx::Error),
    #[error("could not read the promoted view {path} to reuse its rows: {source}")]
    ReadPromotedView {
        path: String,
        source: shared_io::view::ViewError,
    },
    #[error("could not read the stored offsets of topic {topic} in the lake: {source}")]
    ReadLakePositions { topic: String, source: sqlx::Error },
    /// Recording this run's metric definitions and reading the promoted view's.
    #[error("could not record and compare the metric definitions: {source}")]
    CheckDefinitions { source: sqlx::Error },
    #[error("the plan of metric {metric} produced no column {column}")]
    PlanOutput { metric: String, column: String },
    #[error("could not decode the plan output of metric {metric}: {source}")]
    DecodePlanOutput {
        metric: String,
        source: arrow::error::ArrowError,
    },
    #[error("a distinct sketch of metric {metric} is malformed: {reason}")]
    DecodeSketch { metric: String, reason: String },
    #[error("could not publish the view of version {version}: {source}")]
    PublishView {
        version: String,
        source: shared_io::view::ViewError,
    },
    #[error("could not record view version {version}: {source}")]
    RecordVersion {
        version: String,
        source: sqlx::Error,
    },
    #[error(transparent)]
    Promotion(#[from] shared_io::promotion::PromotionError),
    #[error(transparent)]
    RunRequest(#[from] shared_io::run_requests::RunRequestError),
    #[error(transparent)]
    Registry(#[from] shared_io::registry::RegistryError),
    #[error("cron expression `{expr}`: {message}")]
    Cron { expr: String, message: String },
    /// Taking the batch run lock, or losing it before promoting.
    #[error(transparent)]
    RunLock(#[from] shared_io::run_lock::RunLockError),
    #[error("could not take the lake lander lock of topic {topic}: {source}")]
    TakeLanderLock { topic: String, source: sqlx::Error },
    #[error("could not release the lake lander lock of topic {topic}: {source}")]
    ReleaseLanderLock { topic: String, source: sqlx::Error },
    /// Another lander was given the topic's lake since this one took it.
    #[error("lost the lake lander lock of topic {topic}: {reason}")]
    LanderFenced { topic: String, reason: String },
    /// The cutover would pass the wall clock minus the allowed lateness.
    #[error("cannot promote: {0}")]
    Clock(#[from] crate::cutover_clock::ClockError),
    #[error("the run panicked: {0}")]
    Panicked(String),
    #[error("the run's task was cancelled before it finished: {0}")]
    RunCancelled(#[source] tokio::task::JoinError),
}
