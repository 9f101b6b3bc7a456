//! A view version as a manifest of time segments (issue 18).
//!
//! A segment is an immutable Parquet file of the view's rows whose buckets start in one lake
//! hour: `views/<writer>/segments/<YYYYMMDDTHH>.parquet`, written by the run `<writer>`. A
//! version is its manifest, `views/<version>/manifest.json`, listing its segments in hour order;
//! an incremental run lists the previous version's segments for the hours it did not recompute
//! (copy-on-write: no byte is copied) and writes segments only for the hours it did.
//!
//! Why an hour: it is the lake's partition and the unit `incremental::Scope` recomputes, so a
//! segment is reused or rewritten whole, never read to be merged; a query of a day reads 24
//! small files, and a year of history is 8 760 entries in a manifest (under 1 MB of JSON). A
//! bucket wider than an hour lives in the segment of the hour it starts in.
//!
//! Publishing: every segment is published (atomically, on disk and on S3) before the manifest,
//! and the manifest before the promotion transaction names it, so a version Postgres lists is
//! always whole. Garbage collection (`batch-layer`'s `view_gc`) removes a segment only when no
//! kept version's manifest lists it.

use crate::storage::Lake;
use crate::view::{VIEWS_DIR, ViewError, ViewRow, ViewRows, write_view_to};
use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};
use shared_schema::time::{HOUR_MS, Millis};
use std::collections::BTreeMap;

/// The file of a version that lists its segments; `batch_versions.view_path` names it.
pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_FORMAT: u32 = 1;

/// One segment a version lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// The hour its buckets start in (epoch milliseconds).
    pub hour: Millis,
    /// Relative to `LAKE_DIR`.
    pub path: String,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: String,
    /// In hour order, one per hour at most.
    pub segments: Vec<SegmentRef>,
}

impl Manifest {
    /// The segments holding buckets that start in `[from, to)`.
    pub fn overlapping(&self, from: Millis, to: Millis) -> &[SegmentRef] {
        let lo = self.segments.partition_point(|s| s.hour + HOUR_MS <= from);
        let hi = self.segments.partition_point(|s| s.hour < to);
        &self.segments[lo..hi.max(lo)]
    }

    pub fn rows(&self) -> u64 {
        self.segments.iter().map(|s| s.rows).sum()
    }
}

/// The hour a bucket's row is stored in.
pub fn segment_hour(bucket_start: Millis) -> Millis {
    bucket_start.div_euclid(HOUR_MS) * HOUR_MS
}

pub fn is_manifest(view_path: &str) -> bool {
    view_path.ends_with(MANIFEST_FILE)
}

pub fn manifest_path(version: &str) -> String {
    format!("{VIEWS_DIR}/{version}/{MANIFEST_FILE}")
}

/// Where the run `writer` puts its segment of `hour`.
pub fn segment_path(writer: &str, hour: Millis) -> String {
    let name = Utc
        .timestamp_millis_opt(hour)
        .single()
        .map(|t| t.format("%Y%m%dT%H").to_string())
        .unwrap_or_else(|| hour.to_string());
    format!("{VIEWS_DIR}/{writer}/segments/{name}.parquet")
}

/// The version directory a segment was written in (its writer's).
pub fn writer_dir(segment: &str) -> Option<&str> {
    let rest = segment.strip_prefix(VIEWS_DIR)?.strip_prefix('/')?;
    rest.split('/').next()
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading view manifest {path}: {source}")]
    Read {
        path: String,
        source: crate::storage::StorageError,
    },
    #[error("view manifest {path} is not a manifest of format {MANIFEST_FORMAT}: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

pub async fn read_manifest(lake: &Lake, path: &str) -> Result<Manifest, ManifestError> {
    let bytes = lake
        .read(path)
        .await
        .map_err(|source| ManifestError::Read {
            path: path.to_string(),
            source,
        })?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Decode {
            path: path.to_string(),
            source,
        })?;
    Ok(manifest)
}

/// Publishes `version`: a segment per hour of `rows`, then the manifest listing them with
/// `reused` (segments of earlier versions for hours `rows` has none of). Returns the manifest
/// and its path.
pub async fn publish_version(
    lake: &Lake,
    version: &str,
    rows: Vec<ViewRow>,
    reused: Vec<SegmentRef>,
) -> Result<(Manifest, String), ViewError> {
    let mut by_hour: BTreeMap<Millis, Vec<ViewRow>> = BTreeMap::new();
    for row in rows {
        by_hour
            .entry(segment_hour(row.row.bucket_start))
            .or_default()
            .push(row);
    }
    let mut segments: BTreeMap<Millis, SegmentRef> =
        reused.into_iter().map(|s| (s.hour, s)).collect();
    for (hour, rows) in by_hour {
        segments.insert(hour, publish_segment(lake, version, hour, rows).await?);
    }
    publish_manifest(lake, version, segments.into_values().collect()).await
}

/// Publishes the segment of `hour` written by the run `writer`: `rows`, whose buckets all start
/// in that hour.
pub async fn publish_segment(
    lake: &Lake,
    writer: &str,
    hour: Millis,
    rows: Vec<ViewRow>,
) -> Result<SegmentRef, ViewError> {
    let path = segment_path(writer, hour);
    let count = rows.len() as u64;
    lake.publish(&path, move |out| write_view_to(out, &rows))
        .await?;
    Ok(SegmentRef {
        hour,
        path,
        rows: count,
    })
}

/// Publishes `version`'s manifest, listing `segments` (in hour order, one per hour).
pub async fn publish_manifest(
    lake: &Lake,
    version: &str,
    segments: Vec<SegmentRef>,
) -> Result<(Manifest, String), ViewError> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        version: version.to_string(),
        segments,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ViewError::Encode(e.into()))?;
    let path = manifest_path(version);
    lake.publish(&path, move |out| {
        out.write_all(&bytes)
            .map_err(|e| ViewError::Encode(e.into()))
    })
    .await?;
    Ok((manifest, path))
}

/// Every row of `manifest`'s segments, grouped by metric and sorted by bucket.
pub async fn read_all_segments(lake: &Lake, manifest: &Manifest) -> Result<ViewRows, ViewError> {
    let mut all = ViewRows::new();
    for segment in &manifest.segments {
        for (metric, mut rows) in crate::view::read_view_file(lake, &segment.path).await? {
            // Segments come in hour order and hold disjoint hours: appending keeps the order.
            all.entry(metric).or_default().append(&mut rows);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(hour: Millis) -> SegmentRef {
        SegmentRef {
            hour,
            path: segment_path("v1", hour),
            rows: 1,
        }
    }

    #[test]
    fn a_range_touches_the_segments_of_the_hours_it_overlaps() {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            version: "v1".into(),
            segments: [0, 1, 3, 4].iter().map(|h| segment(h * HOUR_MS)).collect(),
        };
        let hours = |from, to| -> Vec<Millis> {
            manifest
                .overlapping(from, to)
                .iter()
                .map(|s| s.hour / HOUR_MS)
                .collect()
        };
        assert_eq!(hours(0, 5 * HOUR_MS), [0, 1, 3, 4]);
        assert_eq!(hours(HOUR_MS + 1, 3 * HOUR_MS), [1]);
        assert_eq!(hours(2 * HOUR_MS, 3 * HOUR_MS), Vec::<Millis>::new());
        assert_eq!(hours(3 * HOUR_MS - 1, 3 * HOUR_MS + 1), [3]);
        assert_eq!(hours(9 * HOUR_MS, 10 * HOUR_MS), Vec::<Millis>::new());
        assert_eq!(segment_hour(-1), -HOUR_MS);
    }

    #[test]
    fn segments_are_named_by_writer_and_hour() {
        let path = segment_path("20261203T070000Z-ab12cd34", 1_764_745_200_000);
        assert_eq!(
            path,
            "views/20261203T070000Z-ab12cd34/segments/20251203T07.parquet"
        );
        assert_eq!(writer_dir(&path), Some("20261203T070000Z-ab12cd34"));
        assert!(is_manifest(&manifest_path("v")));
        assert!(!is_manifest("views/v/view.parquet"));
    }
}
