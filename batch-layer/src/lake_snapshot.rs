//! What a run reads of the metadata before any work, in one repeatable-read snapshot: the lake's
//! files, the lander's progress, what the speed layer counted, and the promoted view whose rows
//! an incremental run reuses.

use crate::BatchError;
use crate::incremental::{self, HourDigests, Scope};
use chrono::{DateTime, Utc};
use shared_io::coverage;
use shared_io::storage::Lake;
use shared_io::view::{ViewRow, read_lake_view};
use shared_io::view_segments::{self, SegmentRef};
use shared_schema::cutover::LandedPartition;
use shared_schema::time::{Millis, format_rfc3339};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// One file of the lake, as the manifest lists it.
pub(crate) struct LakeFile {
    pub path: String,
    pub hour: Millis,
    pub rows: i64,
}

/// What one snapshot of the metadata says about the lake and the promoted view.
pub(crate) struct LakeSnapshot {
    pub files: Vec<LakeFile>,
    /// The profile changelog's files, for the temporal join.
    pub changelog: Vec<LakeFile>,
    pub rows: i64,
    pub landed: Vec<LandedPartition>,
    /// The lander's next offset per partition: the lake the view is computed from holds every
    /// message before it.
    pub landed_offsets: BTreeMap<i32, i64>,
    /// What the speed layer counted at or after T (`shared_io::coverage`).
    pub counted: Vec<coverage::CountedRange>,
    pub current_cutover: Option<Millis>,
    /// The promoted view, its lake digests and its catalogue digest, if it recorded them.
    pub promoted: Option<PromotedView>,
}

pub(crate) struct PromotedView {
    pub view_path: String,
    /// The fingerprint of the definitions it was computed with: a view of other definitions
    /// has no rows to reuse.
    pub definitions: Option<String>,
    /// The digest of the changelog files it was joined with.
    pub changelog: Option<String>,
    pub previous: incremental::Previous,
}

impl LakeSnapshot {
    /// Leaves out the lake's hours before the retention `horizon`: the run neither reads nor
    /// keeps them (`lake_retention`).
    pub fn drop_hours_before(&mut self, horizon: Millis) {
        self.files.retain(|f| f.hour >= horizon);
        self.rows = self.files.iter().map(|f| f.rows).sum();
    }

    pub fn hour_digests(&self) -> HourDigests {
        incremental::hour_digests(self.files.iter().map(|f| (f.hour, f.path.as_str(), f.rows)))
    }

    pub fn changelog_digest(&self) -> String {
        incremental::digest_files(self.changelog.iter().map(|f| (f.path.as_str(), f.rows)))
    }

    /// `cutover` checked against what the speed layer counted and this lake lacks: an operator's
    /// (`requested`) is refused past it, an automatic one lowered to it.
    pub fn within_counted(
        &self,
        cutover: Millis,
        requested: bool,
        alignment: Millis,
    ) -> Result<Millis, BatchError> {
        let current = self.current_cutover;
        if requested {
            coverage::check(
                cutover,
                current,
                &self.counted,
                &self.landed_offsets,
                alignment,
            )?;
            return Ok(cutover);
        }
        let limited = coverage::limit(
            cutover,
            current,
            &self.counted,
            &self.landed_offsets,
            alignment,
        );
        if limited < cutover {
            tracing::info!(complete = %format_rfc3339(cutover), cutover = %format_rfc3339(limited),
                "the speed layer counted events the lake has not landed yet; T stops before them");
        }
        Ok(limited)
    }
}

/// Reads the snapshot of events topic `topic` and profile changelog `changelog_topic`.
pub(crate) async fn read_snapshot(
    pool: &PgPool,
    topic: &str,
    changelog_topic: &str,
) -> Result<LakeSnapshot, BatchError> {
    read(pool, topic, changelog_topic)
        .await
        .map_err(BatchError::ReadSnapshot)
}

async fn read(
    pool: &PgPool,
    topic: &str,
    changelog_topic: &str,
) -> Result<LakeSnapshot, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let files: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT path, (EXTRACT(EPOCH FROM dt::timestamp)::bigint + hour::bigint * 3600) * 1000,
                row_count
         FROM lake_files WHERE topic = $1 ORDER BY path",
    )
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    let changelog: Vec<(String, i64)> =
        sqlx::query_as("SELECT path, row_count FROM lake_files WHERE topic = $1 ORDER BY path")
            .bind(changelog_topic)
            .fetch_all(&mut *tx)
            .await?;
    let landed: Vec<(i32, Option<DateTime<Utc>>, bool, i64)> = sqlx::query_as(
        "SELECT partition, max_event_time, caught_up, next_offset FROM lake_progress WHERE topic = $1",
    )
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    let counted = coverage::read_counted(&mut tx, topic, None).await?;
    let current_cutover: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT cutover FROM serving_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
    #[allow(clippy::type_complexity)]
    let promoted: Option<(String, DateTime<Utc>, Option<String>, Vec<i64>, Vec<String>, Option<String>)> =
        sqlx::query_as(
            "SELECT v.view_path, v.cutover, v.definitions_fingerprint, l.hours, l.digests, l.changelog_digest
         FROM serving_state s
         JOIN batch_versions v ON v.version = s.version
         JOIN batch_version_lake l ON l.version = s.version
         WHERE s.id = 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(LakeSnapshot {
        rows: files.iter().map(|(_, _, rows)| rows).sum(),
        files: files
            .into_iter()
            .map(|(path, hour, rows)| LakeFile { path, hour, rows })
            .collect(),
        changelog: changelog
            .into_iter()
            .map(|(path, rows)| LakeFile {
                path,
                hour: 0,
                rows,
            })
            .collect(),
        landed_offsets: landed.iter().map(|(p, _, _, next)| (*p, *next)).collect(),
        counted,
        landed: landed
            .into_iter()
            .map(|(partition, max, caught_up, _)| LandedPartition {
                partition,
                max_event_time: max.map(|t| t.timestamp_millis()),
                caught_up,
            })
            .collect(),
        current_cutover: current_cutover.map(|t| t.timestamp_millis()),
        promoted: promoted.map(
            |(view_path, cutover, definitions, hours, digests, changelog)| PromotedView {
                view_path,
                definitions,
                changelog,
                previous: incremental::Previous {
                    cutover: cutover.timestamp_millis(),
                    hours: hours.into_iter().zip(digests).collect(),
                },
            },
        ),
    })
}

/// What a run keeps of the promoted view: its segments of the hours `scope` does not recompute
/// (listed again, not read), or, from a version written as one file, those rows.
pub enum Reused {
    Segments(Vec<SegmentRef>),
    Rows(Vec<ViewRow>),
}

impl Reused {
    pub fn rows(&self) -> usize {
        match self {
            Reused::Segments(segments) => segments.iter().map(|s| s.rows as usize).sum(),
            Reused::Rows(rows) => rows.len(),
        }
    }
}

/// What `scope` keeps of the promoted view at `view_path`: buckets before `cutover` it does not
/// recompute.
pub async fn reuse_promoted(
    lake: &Lake,
    view_path: &str,
    scope: &Scope,
    cutover: Millis,
) -> Result<Reused, BatchError> {
    if !view_segments::is_manifest(view_path) {
        return read_promoted_rows(lake, view_path, scope, cutover)
            .await
            .map(Reused::Rows);
    }
    let manifest = view_segments::read_manifest(lake, view_path)
        .await
        .map_err(|source| BatchError::ReadPromotedView {
            path: view_path.to_string(),
            source: source.into(),
        })?;
    // A segment holds the buckets of one hour, the unit `scope` recomputes: kept or redone whole.
    Ok(Reused::Segments(
        manifest
            .segments
            .into_iter()
            .filter(|s| s.hour < cutover && !scope.recomputes(s.hour))
            .collect(),
    ))
}

/// The promoted view's rows that `scope` keeps: buckets before `cutover` it does not recompute.
async fn read_promoted_rows(
    lake: &Lake,
    view_path: &str,
    scope: &Scope,
    cutover: Millis,
) -> Result<Vec<ViewRow>, BatchError> {
    let by_metric =
        read_lake_view(lake, view_path)
            .await
            .map_err(|source| BatchError::ReadPromotedView {
                path: view_path.to_string(),
                source,
            })?;
    Ok(by_metric
        .into_iter()
        .flat_map(|(metric, rows)| {
            rows.into_iter().map(move |row| ViewRow {
                metric: metric.clone(),
                row,
            })
        })
        .filter(|r| r.row.bucket_start < cutover && !scope.recomputes(r.row.bucket_start))
        .collect())
}
