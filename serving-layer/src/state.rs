//! What every handler shares: the pools, the configuration and catalogue, and the caches.

use crate::answer_cache::AnswerCache;
use crate::encoding::CachedBody;
use crate::generation_cache::GenerationCache;
use crate::metric_query::AnswerKey;
use crate::snapshot::{Snapshot, SnapshotKey};
use crate::state_changes::StateGeneration;
use crate::view_cache::ViewCache;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct AppState {
    /// What HTTP requests read through: `serving.database_url`, read-only (see `reader`).
    pub pool: PgPool,
    /// `DATABASE_URL`: the alert evaluator's writes and the admin endpoints.
    pub writer: PgPool,
    pub config: Arc<PlatformConfig>,
    pub catalog: Arc<MetricCatalog>,
    pub views: ViewCache,
    /// Tells when what Postgres holds changed, for the two caches below.
    pub changes: StateGeneration,
    pub snapshots: Arc<GenerationCache<SnapshotKey, Arc<Snapshot>>>,
    /// Whole answers of the latest state generation, by request.
    pub bodies: Arc<GenerationCache<AnswerKey, CachedBody>>,
    pub answers: AnswerCache,
    /// Answers being merged and rendered at once, off the async workers: one per core, so
    /// expensive queries queue (within their timeout) instead of starving `/healthz`.
    pub compute: Arc<Semaphore>,
}

impl AppState {
    pub fn new(
        pool: PgPool,
        writer: PgPool,
        config: PlatformConfig,
        catalog: MetricCatalog,
        changes: StateGeneration,
    ) -> Self {
        let max_age = config.serving.snapshot_cache_max_age.as_std();
        let mb = |n: usize| n.saturating_mul(1 << 20);
        let views = ViewCache::new(&config.lake_dir, mb(config.serving.view_cache_mb));
        let snapshots = Arc::new(GenerationCache::new(
            "snapshot",
            max_age,
            mb(config.serving.snapshot_cache_mb),
        ));
        let bodies = Arc::new(GenerationCache::new(
            "body",
            max_age,
            mb(config.serving.body_cache_mb),
        ));
        let answers = AnswerCache::new(config.serving.answer_cache_mb);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AppState {
            pool,
            writer,
            config: Arc::new(config),
            catalog: Arc::new(catalog),
            views,
            changes,
            snapshots,
            bodies,
            answers,
            compute: Arc::new(Semaphore::new(cores)),
        }
    }
}

/// A state over a pool that never connects, for tests of what answers before any query.
#[cfg(test)]
pub(crate) fn test_state(serving: shared_schema::config::ServingConfig) -> AppState {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("a well-formed URL");
    let config = PlatformConfig {
        serving,
        ..PlatformConfig::default()
    };
    AppState::new(
        pool.clone(),
        pool,
        config,
        MetricCatalog::default(),
        StateGeneration::default(),
    )
}
