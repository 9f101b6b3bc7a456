//! Reading one consistent snapshot for a query.
//!
//! T, the promoted version and the speed rows are read in one REPEATABLE READ transaction, so a
//! promotion committing meanwhile is either wholly seen or not at all. The view a version names
//! is immutable, so reading its file after the transaction cannot see anything newer.

use crate::generation_cache::GenerationCache;
use chrono::{DateTime, Utc};
use shared_io::liveness;
use shared_io::speed_state::{self, SpeedStateError};
use shared_io::storage::Lake;
use shared_io::view::{ViewError, read_lake_view};
use shared_schema::hll::Hll;
use shared_schema::query::BucketRow;
use shared_schema::time::{Millis, to_datetime};
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("opening or closing the snapshot's transaction: {source}")]
    Transaction { source: sqlx::Error },
    #[error("reading the served version and its cutover: {source}")]
    ReadServed { source: sqlx::Error },
    #[error("reading the speed rows of {metrics:?}: {source}")]
    ReadSpeedRows {
        metrics: Vec<String>,
        source: SpeedStateError,
    },
    #[error("reading the speed layer's progress on topic {topic} ({what}): {source}")]
    ReadSpeedProgress {
        topic: String,
        what: &'static str,
        source: sqlx::Error,
    },
    #[error("reading batch view {path}: {source}")]
    ReadView { path: String, source: ViewError },
}

impl SnapshotError {
    /// What an answer that failed with this says is unavailable.
    pub fn dependency(&self) -> &'static str {
        match self {
            SnapshotError::ReadView { .. } => "the batch view",
            SnapshotError::ReadSpeedRows {
                source: SpeedStateError::DecodeSketch { .. } | SpeedStateError::DecodeCells { .. },
                ..
            } => "the speed layer's state",
            _ => "Postgres",
        }
    }
}

/// What one query sees.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cutover: Option<Millis>,
    pub batch_version: Option<String>,
    pub view_path: Option<String>,
    /// Speed cells per metric at or after T within the range, possibly several per bucket and
    /// dimensions (summed when merged).
    pub speed_rows: HashMap<String, Vec<BucketRow>>,
    pub speed_watermark: Option<Millis>,
    /// Events the speed layer saw after their bucket closed, over the range (all policies).
    pub late_events: i64,
    /// Events the speed layer counted for the metric over the range, late or not.
    pub seen_events: i64,
    /// `None`: the speed layer covers the topic from its start; `Some(t)`: only from `t` on.
    pub speed_covered_from: Option<Millis>,
    /// Some partition has had no live speed consumer for the stall timeout: from here on the
    /// speed side may be missing its events (`shared_io::liveness`).
    pub speed_stalled_from: Option<Millis>,
}

/// Reads T, the promoted version, and the speed rows of `metrics` (per partition; the merge sums
/// them) in `[max(T, range start), range end)`; a partition stalled for `stall_after` marks
/// where the speed side may be missing events.
pub async fn read_snapshot(
    pool: &PgPool,
    topic: &str,
    metrics: &[&str],
    range: (Millis, Millis),
    stall_after: Millis,
) -> Result<Snapshot, SnapshotError> {
    let transaction = |source| SnapshotError::Transaction { source };
    let progress = |what| {
        move |source| SnapshotError::ReadSpeedProgress {
            topic: topic.to_string(),
            what,
            source,
        }
    };
    let mut tx = pool.begin().await.map_err(transaction)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(transaction)?;
    let (version, cutover, view_path): (Option<String>, Option<DateTime<Utc>>, Option<String>) =
        sqlx::query_as(
            "SELECT s.version, s.cutover, v.view_path
         FROM serving_state s LEFT JOIN batch_versions v ON v.version = s.version
         WHERE s.id = 1",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|source| SnapshotError::ReadServed { source })?;
    let cutover = cutover.map(|t| t.timestamp_millis());
    let speed_from = cutover.map_or(range.0, |t| t.max(range.0));
    let speed_rows = speed_state::read_rows(&mut tx, metrics, speed_from, range.1)
        .await
        .map_err(|source| SnapshotError::ReadSpeedRows {
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            source,
        })?;
    let watermark: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(watermark) FROM speed_offsets WHERE topic = $1")
            .bind(topic)
            .fetch_one(&mut *tx)
            .await
            .map_err(progress("watermark"))?;
    let (late_events, seen_events): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(late), 0)::bigint, coalesce(sum(seen), 0)::bigint FROM (
             SELECT u.late, u.seen
             FROM speed_cells c, UNNEST(c.metrics, c.seen, c.late) AS u(metric, seen, late)
             WHERE c.bucket_start >= $2 AND c.bucket_start < $3 AND u.metric = ANY($1)
             UNION ALL
             SELECT late_count, seen_count FROM speed_late_counts
             WHERE metric = ANY($1) AND bucket_start >= $2 AND bucket_start < $3
         ) AS counted",
    )
    .bind(metrics)
    .bind(to_datetime(range.0))
    .bind(to_datetime(range.1))
    .fetch_one(&mut *tx)
    .await
    .map_err(progress("late events"))?;
    let speed_covered_from = speed_state::read_covered_from(&mut tx, topic)
        .await
        .map_err(progress("coverage"))?;
    let (evidence, now) = liveness::read_evidence(&mut tx, topic)
        .await
        .map_err(progress("liveness"))?;
    let speed_stalled_from = liveness::stalled_from(&evidence, now, stall_after);
    tx.commit().await.map_err(transaction)?;
    Ok(Snapshot {
        cutover,
        batch_version: version,
        view_path,
        speed_rows,
        speed_watermark: watermark.map(|t| t.timestamp_millis()),
        late_events,
        seen_events,
        speed_covered_from,
        speed_stalled_from,
    })
}

impl crate::generation_cache::Weigh for Arc<Snapshot> {
    /// Its speed rows: each row, its dimension key and its sketch, if any.
    fn bytes(&self) -> usize {
        let row = |r: &BucketRow| {
            std::mem::size_of::<BucketRow>()
                + r.dims.len()
                + r.partial.sketch.as_ref().map_or(0, Hll::heap_bytes)
        };
        self.speed_rows
            .iter()
            .map(|(metric, rows)| metric.len() + rows.iter().map(row).sum::<usize>())
            .sum::<usize>()
            + std::mem::size_of::<Snapshot>()
    }
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
    stall_after: Millis,
) -> Result<Arc<Snapshot>, SnapshotError> {
    let key = SnapshotKey {
        metrics: metrics.iter().map(|m| m.to_string()).collect(),
        range,
    };
    cache
        .get_or_compute(generation, &key, || async {
            Ok(Arc::new(
                read_snapshot(pool, topic, metrics, range, stall_after).await?,
            ))
        })
        .await
}

/// A batch view read whole: its rows per metric, in bucket order.
pub type View = Arc<HashMap<String, Vec<BucketRow>>>;

/// A version and its view, loaded once by whichever request asks first.
type LoadingView = (String, Arc<OnceCell<View>>);

/// Batch views by version. Versions are immutable, so an entry never goes stale; only the most
/// recent few are kept. Requests arriving while a version is read (after a promotion, every
/// request at once) wait for that one read.
#[derive(Clone, Default)]
pub struct ViewCache {
    lake_dir: PathBuf,
    entries: Arc<Mutex<Vec<LoadingView>>>,
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
        let slot = self.slot(version);
        let view = slot
            .get_or_try_init(|| async {
                let read = async {
                    let lake = Lake::open(&self.lake_dir).map_err(ViewError::from)?;
                    read_lake_view(&lake, relative_path).await
                };
                read.await
                    .map(Arc::new)
                    .map_err(|source| SnapshotError::ReadView {
                        path: relative_path.to_string(),
                        source,
                    })
            })
            .await?;
        Ok(view.clone())
    }

    /// `version`'s entry, made the most recent one.
    fn slot(&self, version: &str) -> Arc<OnceCell<View>> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = match entries.iter().position(|(v, _)| v == version) {
            Some(i) => entries.remove(i).1,
            None => Arc::default(),
        };
        entries.push((version.to_string(), slot.clone()));
        if entries.len() > CACHED_VERSIONS {
            entries.remove(0);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_io::view::{ViewRow, write_view};
    use shared_schema::metrics::Partial;

    fn rows(count: i64) -> Vec<ViewRow> {
        (0..count)
            .map(|i| ViewRow {
                metric: "purchases".into(),
                row: BucketRow {
                    bucket_start: i * 60_000,
                    dims: String::new(),
                    partial: Partial {
                        count: 1,
                        ..Partial::default()
                    },
                },
            })
            .collect()
    }

    /// Views of `rows_each` rows each; enough rows that reading one takes a while make
    /// concurrent requests overlap the read.
    fn lake_with_versions(versions: &[&str], rows_each: i64) -> PathBuf {
        let lake = std::env::temp_dir().join(format!(
            "view-cache-{}-{}",
            std::process::id(),
            versions.join("-")
        ));
        for version in versions {
            let dir = lake.join(version);
            std::fs::create_dir_all(&dir).unwrap();
            write_view(&dir.join("view.parquet"), &rows(rows_each)).unwrap();
        }
        lake
    }

    fn path(version: &str) -> String {
        format!("{version}/view.parquet")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_for_a_new_version_share_one_read() {
        let cache = ViewCache::new(&lake_with_versions(&["shared"], 200_000));
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let cache = cache.clone();
            requests.spawn(async move { cache.get("shared", &path("shared")).await.unwrap() });
        }
        let views = requests.join_all().await;
        assert_eq!(views[0]["purchases"].len(), 200_000);
        let _ = std::fs::remove_dir_all(&cache.lake_dir);
        assert!(
            views.iter().all(|v| Arc::ptr_eq(v, &views[0])),
            "read more than once"
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_retried_and_the_least_recently_used_version_goes() {
        let lake = lake_with_versions(&["a", "b", "c"], 10);
        let cache = ViewCache::new(&lake);
        assert!(cache.get("late", &path("late")).await.is_err());
        std::fs::create_dir_all(lake.join("late")).unwrap();
        write_view(&lake.join("late/view.parquet"), &rows(10)).unwrap();
        assert!(cache.get("late", &path("late")).await.is_ok());

        let a = cache.get("a", &path("a")).await.unwrap();
        cache.get("b", &path("b")).await.unwrap();
        // `a` used again, so `b` is the one that goes when `c` comes.
        assert!(Arc::ptr_eq(&a, &cache.get("a", &path("a")).await.unwrap()));
        cache.get("c", &path("c")).await.unwrap();
        assert!(Arc::ptr_eq(&a, &cache.get("a", &path("a")).await.unwrap()));
        let versions: Vec<String> = cache
            .entries
            .lock()
            .unwrap()
            .iter()
            .map(|(v, _)| v.clone())
            .collect();
        assert_eq!(versions, ["c", "a"]);
        let _ = std::fs::remove_dir_all(lake);
    }
}
