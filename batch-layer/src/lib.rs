//! The batch layer: lands every event into a Parquet lake (`land`), and recomputes every metric
//! from the whole lake with DataFusion into an immutable view version that is promoted together
//! with its cutover in one Postgres transaction (`run`, `schedule`). Its output is the source of
//! truth for every bucket before the cutover.

pub mod changelog_batch;
pub mod cluster;
pub mod crontab;
pub mod cutover_clock;
pub mod definitions;
pub mod divergence;
pub mod engine;
pub mod enrich;
pub mod incremental;
pub mod lake;
pub mod land;
pub mod land_changelog;
pub mod land_guard;
pub mod lander_lock;
pub mod recompute;
pub mod run_lock;
pub mod schedule;
pub mod sketch_udaf;
pub mod versions;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Config(#[from] shared_schema::config::ConfigError),
    #[error(transparent)]
    Db(#[from] shared_io::db::DbError),
    #[error("Postgres: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Metrics(#[from] shared_schema::metrics::MetricError),
    #[error(transparent)]
    SpeedState(#[from] shared_io::speed_state::SpeedStateError),
    #[error(transparent)]
    Source(#[from] shared_io::kafka::SourceError),
    #[error("lake I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("DataFusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// `batch.engine` (`BATCH_ENGINE`) names no engine.
    #[error("batch engine {0}")]
    Engine(String),
    /// A run's plans failed on the Ballista cluster, or could not reach it.
    #[error("on the Ballista cluster at {engine}: {cause}")]
    Distributed {
        engine: String,
        cause: Box<BatchError>,
    },
    #[error("Ballista: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
    #[error(transparent)]
    View(#[from] shared_io::view::ViewError),
    #[error(transparent)]
    Storage(#[from] shared_io::storage::StorageError),
    #[error("cannot promote: {0}")]
    Cutover(#[from] shared_schema::cutover::CutoverError),
    #[error("cannot promote: {0}")]
    Coverage(#[from] shared_io::coverage::CoverageError),
    #[error("lake: {0}")]
    Lake(String),
    #[error("{0}")]
    Versions(String),
    #[error(transparent)]
    Registry(#[from] shared_io::registry::RegistryError),
    #[error("cron expression `{expr}`: {message}")]
    Cron { expr: String, message: String },
    /// The session holding the batch run lock ended, so this run, pin or rollback may no
    /// longer be the only one: it must not promote.
    #[error("lost the batch run lock ({0}); not promoting, the served view and T are unchanged")]
    RunLockLost(String),
    /// Another lander was given the topic's lake since this one took it.
    #[error("lost the lake lander lock of topic {topic}: {reason}")]
    LanderFenced { topic: String, reason: String },
    /// The cutover would pass the wall clock minus the allowed lateness.
    #[error("cannot promote: {0}")]
    Clock(#[from] crate::cutover_clock::ClockError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}
