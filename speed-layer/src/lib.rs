//! The speed layer: events from Kafka to per-bucket partial aggregates in Postgres, seconds
//! behind reality, exactly once.
//!
//! Each poll yields a batch. Decoding, deduplication, session starts and aggregation happen in
//! memory, against the ids and session times every instance holds (`state`); Postgres then
//! sees one checkpoint per batch: the changed cells packed into a row per bucket (`speed_cells`),
//! one packed row of the batch's new ids in the id log, the offsets and the bad messages, in one
//! transaction. No Postgres row is written per event. A crash at any moment rolls the checkpoint back, and the
//! restart loads the log and resumes from the stored offsets, so nothing is lost and nothing is
//! counted twice. Every instance reads every log row, which is what makes deduplication hold
//! across partitions and instances.
//!
//! Where each part lives: `consume` (the loop of `run` and `replay`), `commit` (the
//! checkpoint), `guarded_commit` (retries and quarantine around it), `state` (ids and session
//! times, and the log), `ownership` (partition epochs), `event_clock` (watermarks),
//! `late_events`, `sessions` and `cells` (what the checkpoint writes),
//! `retention` (deleting what a promoted view covers), `profiles` (the temporal join),
//! `liveness` (the watchdog), `replay` and `quarantine_admin` (the other subcommands).

use shared_io::kafka::SourceError;
use shared_io::registry::DefinitionsDiffer;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use shared_schema::profiles::ProfileHistory;
use sqlx::PgPool;
use std::sync::{Arc, RwLock};

mod cells;
mod commit;
mod consume;
mod event_clock;
mod guarded_commit;
mod late_events;
mod leases;
pub mod liveness;
mod ownership;
mod plan;
mod profiles;
pub mod quarantine_admin;
pub mod replay;
pub mod replay_start;
mod retention;
mod sessions;
mod state;

pub use cells::{Cells, CellsWritten, MAX_ROWS_PER_BUCKET, write_cells};
pub use commit::{CheckpointError, CommitBatchError, Committed};
pub use plan::{Folding, fold_without_postgres};
pub use retention::{Removed, RetentionError};
pub use state::store::LoadStateError;

/// Name under which this layer records quarantined messages.
const CONSUMER_NAME: &str = "speed-layer";
/// Name under which this layer registers its instances (`service_instances`).
pub const SERVICE: &str = "speed-layer run";

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("registering the speed coverage of {topic}: {source}")]
    RegisterCoverage { topic: String, source: sqlx::Error },
    #[error("loading the speed layer's positions on {topic}: {source}")]
    LoadPositions { topic: String, source: sqlx::Error },
    #[error("connecting to {topic}: {source}")]
    ConnectSource { topic: String, source: SourceError },
    #[error("reading a batch of {topic}: {source}")]
    ReadBatch { topic: String, source: SourceError },
    #[error("loading the profile changelog: {0}")]
    LoadProfiles(#[source] sqlx::Error),
    /// A view computed with other definitions was promoted: what this instance folds would
    /// mean something else.
    #[error(transparent)]
    DefinitionsDiffer(#[from] DefinitionsDiffer),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
}

pub struct SpeedLayer {
    pool: PgPool,
    config: PlatformConfig,
    catalog: MetricCatalog,
    /// The profile changelog, for the temporal join (see `profiles`).
    profiles: Arc<RwLock<ProfileHistory>>,
    /// What `/readyz` reports, kept by the liveness watchdog of `run`.
    readiness: liveness::SharedReadiness,
    /// Ids and session times of every partition, loaded from the id log at the first
    /// checkpoint; one checkpoint at a time uses it.
    state: tokio::sync::Mutex<Option<state::SpeedState>>,
    /// The partitions this instance may checkpoint, under which epochs.
    ownership: std::sync::Mutex<ownership::Ownership>,
    /// Who claims partitions, as `speed_partition_epochs.owner` shows it.
    instance: String,
}

impl SpeedLayer {
    pub fn new(pool: PgPool, config: PlatformConfig, catalog: MetricCatalog) -> Self {
        SpeedLayer {
            pool,
            config,
            catalog,
            profiles: Arc::default(),
            readiness: Arc::new(std::sync::Mutex::new(liveness::Readiness {
                unknown: true,
                ..liveness::Readiness::default()
            })),
            state: tokio::sync::Mutex::new(None),
            ownership: std::sync::Mutex::default(),
            instance: format!(
                "{}:{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
                std::process::id()
            ),
        }
    }

    /// What `/readyz` reads: the partitions owned and the stalled ones.
    pub fn readiness(&self) -> liveness::SharedReadiness {
        self.readiness.clone()
    }
}
