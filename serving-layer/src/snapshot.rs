//! Reading one consistent snapshot for a query.
//!
//! T, the promoted version and the speed rows are read in one REPEATABLE READ transaction, so a
//! promotion committing meanwhile is either wholly seen or not at all. The view a version names
//! is immutable, so reading its file after the transaction cannot see anything newer.

use crate::generation_cache::GenerationCache;
use chrono::{DateTime, Utc};
use shared_schema::query::BucketRow;
use shared_schema::speed_state::{self, SpeedStateError};
use shared_schema::storage::Lake;
use shared_schema::time::{Millis, to_datetime};
use shared_schema::view::{ViewError, read_lake_view};
use sqlx::PgPool;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("batch view: {0}")]
    View(#[from] ViewError),
    #[error("speed layer sketch: {0}")]
    Sketch(#[from] shared_schema::hll::SketchError),
    #[error("batch view read was interrupted: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<SpeedStateError> for SnapshotError {
    fn from(e: SpeedStateError) -> Self {
        match e {
            SpeedStateError::Db(e) => SnapshotError::Db(e),
            SpeedStateError::Sketch(e) => SnapshotError::Sketch(e),
        }
    }
}

/// What one query sees.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cutover: Option<Millis>,
    pub batch_version: Option<String>,
    pub view_path: Option<String>,
    /// Speed rows per metric, one per partition, at or after T within the range.
    pub speed_rows: HashMap<String, Vec<BucketRow>>,
    pub speed_watermark: Option<Millis>,
    /// Events the speed layer saw after their bucket closed, over the range (all policies).
    pub late_events: i64,
    /// Events the speed layer counted for the metric over the range, late or not.
    pub seen_events: i64,
    /// `None`: the speed layer covers the topic from its start; `Some(t)`: only from `t` on.
    pub speed_covered_from: Option<Millis>,
}

/// Reads T, the promoted version, and the speed rows of `metrics` (per partition; the merge sums
/// them) in `[max(T, range start), range end)`.
pub async fn read_snapshot(
    pool: &PgPool,
    topic: &str,
    metrics: &[&str],
    range: (Millis, Millis),
) -> Result<Snapshot, SnapshotError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (version, cutover, view_path): (Option<String>, Option<DateTime<Utc>>, Option<String>) =
        sqlx::query_as(
            "SELECT s.version, s.cutover, v.view_path
         FROM serving_state s LEFT JOIN batch_versions v ON v.version = s.version
         WHERE s.id = 1",
        )
        .fetch_one(&mut *tx)
        .await?;
    let cutover = cutover.map(|t| t.timestamp_millis());
    let speed_from = cutover.map_or(range.0, |t| t.max(range.0));
    let speed_rows = speed_state::read_rows(&mut tx, metrics, speed_from, range.1).await?;
    let watermark: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(watermark) FROM speed_offsets WHERE topic = $1")
            .bind(topic)
            .fetch_one(&mut *tx)
            .await?;
    let (late_events, seen_events): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(late_count), 0)::bigint, coalesce(sum(seen_count), 0)::bigint
         FROM speed_late_counts
         WHERE metric = ANY($1) AND bucket_start >= $2 AND bucket_start < $3",
    )
    .bind(metrics)
    .bind(to_datetime(range.0))
    .bind(to_datetime(range.1))
    .fetch_one(&mut *tx)
    .await?;
    let speed_covered_from = speed_state::read_covered_from(&mut tx, topic).await?;
    tx.commit().await?;
    Ok(Snapshot {
        cutover,
        batch_version: version,
        view_path,
        speed_rows,
        speed_watermark: watermark.map(|t| t.timestamp_millis()),
        late_events,
        seen_events,
        speed_covered_from,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotKey {
    pub metrics: Vec<String>,
    pub range: (Millis, Millis),
}

/// `read_snapshot` through `cache`.
pub async fn read_snapshot_cached(
    cache: &GenerationCache<SnapshotKey, Arc<Snapshot>>,
    generation: Option<u64>,
    pool: &PgPool,
    topic: &str,
    metrics: &[&str],
    range: (Millis, Millis),
) -> Result<Arc<Snapshot>, SnapshotError> {
    let key = SnapshotKey {
        metrics: metrics.iter().map(|m| m.to_string()).collect(),
        range,
    };
    cache
        .get_or_compute(generation, &key, || async {
            Ok(Arc::new(read_snapshot(pool, topic, metrics, range).await?))
        })
        .await
}

type View = Arc<HashMap<String, Vec<BucketRow>>>;

/// Batch views by version. Versions are immutable, so an entry never goes stale; only the most
/// recent few are kept.
#[derive(Clone, Default)]
pub struct ViewCache {
    lake_dir: PathBuf,
    entries: Arc<Mutex<Vec<(String, View)>>>,
}

const CACHED_VERSIONS: usize = 2;

impl ViewCache {
    pub fn new(lake_dir: &Path) -> Self {
        ViewCache {
            lake_dir: lake_dir.to_path_buf(),
            entries: Arc::default(),
        }
    }

    pub async fn get(&self, version: &str, relative_path: &str) -> Result<View, SnapshotError> {
        if let Some(view) = self.lookup(version) {
            return Ok(view);
        }
        let lake = Lake::open(&self.lake_dir).map_err(ViewError::from)?;
        let view: View = Arc::new(read_lake_view(&lake, relative_path).await?);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|(v, _)| v != version);
        entries.push((version.to_string(), view.clone()));
        if entries.len() > CACHED_VERSIONS {
            entries.remove(0);
        }
        Ok(view)
    }

    fn lookup(&self, version: &str) -> Option<View> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, view)| view.clone())
    }
}
