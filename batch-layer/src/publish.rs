//! Publishing a computed view and promoting it: its segments and manifest under version-unique
//! names, then one transaction that records the version and moves T.

use crate::BatchError;
use crate::definitions::RunDefinitions;
use crate::incremental::HourDigests;
use crate::lake_snapshot::LakeSnapshot;
use chrono::{DateTime, Utc};
use shared_io::coverage;
use shared_io::promotion::{self, Reason};
use shared_io::run_lock::RunLock;
use shared_io::storage::Lake;
use shared_io::view::ViewRow;
use shared_io::view_segments::{self, SegmentRef};
use shared_schema::time::{Millis, format_rfc3339, to_datetime};
use std::path::{Path, PathBuf};

/// Publishes the view as a manifest of time segments (`shared_io::view_segments`): a segment
/// per hour of `rows`, and the reused segments of the promoted version. Returns the manifest's
/// path, relative to `LAKE_DIR`, and the view's rows.
pub(crate) async fn publish_view(
    lake: &Lake,
    version: &str,
    rows: Vec<ViewRow>,
    reused: Vec<SegmentRef>,
) -> Result<(PathBuf, usize), BatchError> {
    let (manifest, path) = view_segments::publish_version(lake, version, rows, reused)
        .await
        .map_err(|source| BatchError::PublishView {
            version: version.to_string(),
            source,
        })?;
    tracing::info!(
        segments = manifest.segments.len(),
        path,
        "published the view's segments"
    );
    Ok((PathBuf::from(path), manifest.rows() as usize))
}

/// What `promote` records of a finished view.
pub(crate) struct VersionRecord<'a> {
    pub version: &'a str,
    pub cutover: Millis,
    pub view_path: &'a Path,
    pub view_rows: usize,
    pub started_at: DateTime<Utc>,
    pub definitions: &'a RunDefinitions,
    pub digests: &'a HourDigests,
    pub changelog_digest: &'a str,
    pub recomputed_hours: Option<usize>,
}

/// One transaction: record the version and move T, unless another run already moved T past it.
/// It runs on the run lock's session, so it commits only while this run holds the lock.
pub(crate) async fn promote(
    lock: &mut RunLock,
    record: &VersionRecord<'_>,
    snapshot: &LakeSnapshot,
    (topic, alignment): (&str, Millis),
) -> Result<(), BatchError> {
    let (version, cutover) = (record.version, record.cutover);
    let mut tx = lock.begin().await?;
    let current = promotion::lock_serving_state(&mut tx).await?;
    // What the speed layer counted when T moves, with its commits held back until this
    // transaction ends, against the lake the view was computed from.
    coverage::check_in_promotion(
        &mut tx,
        topic,
        cutover,
        current.map(|c| c.timestamp_millis()),
        &snapshot.landed_offsets,
        alignment,
    )
    .await?;
    if let Some(current) = current
        .map(|c| c.timestamp_millis())
        .filter(|c| *c > cutover)
    {
        return Err(shared_schema::cutover::CutoverError::Backwards {
            requested: format_rfc3339(cutover),
            current: format_rfc3339(current),
        }
        .into());
    }
    let recorded = |source| BatchError::RecordVersion {
        version: version.to_string(),
        source,
    };
    sqlx::query(
        "INSERT INTO batch_versions (version, cutover, view_path, row_count, lake_files, lake_rows, started_at, promoted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())",
    )
    .bind(version)
    .bind(to_datetime(cutover))
    .bind(record.view_path.to_string_lossy().as_ref())
    .bind(record.view_rows as i64)
    .bind(snapshot.files.len() as i64)
    .bind(snapshot.rows)
    .bind(record.started_at)
    .execute(&mut *tx)
    .await
    .map_err(recorded)?;
    let (hours, digests): (Vec<i64>, Vec<&str>) = record
        .digests
        .iter()
        .map(|(hour, digest)| (*hour, digest.as_str()))
        .unzip();
    crate::definitions::record_view(&mut tx, version, record.definitions)
        .await
        .map_err(recorded)?;
    sqlx::query(
        "INSERT INTO batch_version_lake (version, hours, digests, recomputed_hours, changelog_digest)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(version)
    .bind(&hours)
    .bind(&digests)
    .bind(record.recomputed_hours.map(|h| h as i32))
    .bind(record.changelog_digest)
    .execute(&mut *tx)
    .await
    .map_err(recorded)?;
    promotion::record(&mut tx, version, cutover, Reason::Run).await?;
    tx.commit().await.map_err(recorded)?;
    Ok(())
}
