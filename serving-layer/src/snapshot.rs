//! Reading one consistent snapshot for a query.
//!
//! T, the promoted version and the speed rows are read in one REPEATABLE READ transaction, so a
//! promotion committing meanwhile is either wholly seen or not at all. The view a version names
//! is immutable, so reading its segments after the transaction (`view_cache`) cannot see
//! anything newer.

use crate::generation_cache::GenerationCache;
use chrono::{DateTime, Utc};
use shared_io::liveness;
use shared_io::speed_state::{self, SpeedStateError};
use shared_io::view::ViewError;
use shared_schema::query::BucketRow;
use shared_schema::time::{Millis, to_datetime};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;

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
        self.speed_rows
            .iter()
            .map(|(metric, rows)| metric.len() + rows.iter().map(BucketRow::bytes).sum::<usize>())
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
