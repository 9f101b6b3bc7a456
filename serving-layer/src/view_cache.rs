//! The promoted batch view as one query sees it: the segments of the hours its range touches
//! (`shared_io::view_segments`), read through a cache bounded in bytes (`serving.view_cache_mb`),
//! least recently used out. Serving memory therefore follows the queries, not the history.
//!
//! Segments and manifests are immutable, so an entry never goes stale. Requests that need a
//! segment being read wait for that one read (after a promotion, every request at once). A
//! version written as one file (before segments) is read as one segment of every hour.

use crate::snapshot::SnapshotError;
use shared_io::storage::Lake;
use shared_io::view::{ViewError, ViewRows, read_view_file};
use shared_io::view_segments::{self, Manifest};
use shared_schema::query::{BucketRow, rows_in};
use shared_schema::time::Millis;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// The batch rows a query may read: segments in hour order, disjoint.
#[derive(Debug, Clone, Default)]
pub struct BatchView {
    segments: Vec<Arc<ViewRows>>,
}

impl BatchView {
    /// A view of one piece holding every row (tests, and versions written as one file).
    pub fn whole(rows: ViewRows) -> Self {
        BatchView {
            segments: vec![Arc::new(rows)],
        }
    }

    /// `metric`'s rows with a bucket in `[start, end)`, in bucket order.
    pub fn rows<'a>(
        &'a self,
        metric: &'a str,
        start: Millis,
        end: Millis,
    ) -> impl Iterator<Item = &'a BucketRow> + Clone + 'a {
        self.segments
            .iter()
            .filter_map(move |segment| segment.get(metric))
            .flat_map(move |rows| rows_in(rows, start, end))
    }

    pub fn count(&self, metric: &str, start: Millis, end: Millis) -> usize {
        self.segments
            .iter()
            .filter_map(|segment| segment.get(metric))
            .map(|rows| rows_in(rows, start, end).len())
            .sum()
    }
}

/// The memory a segment holds, roughly.
fn weigh(rows: &ViewRows) -> usize {
    rows.iter()
        .map(|(metric, rows)| metric.len() + rows.iter().map(BucketRow::bytes).sum::<usize>())
        .sum()
}

type Loading<T> = Arc<OnceCell<Arc<T>>>;

struct Entry {
    cell: Loading<ViewRows>,
    /// Counted in `used` once read.
    bytes: usize,
    last_used: u64,
}

#[derive(Default)]
struct Entries {
    by_path: HashMap<String, Entry>,
    used: usize,
    clock: u64,
}

/// Manifests of the most recently asked versions, by path, most recent last: small, and a
/// version's never changes.
type Manifests = Vec<(String, Loading<Manifest>)>;
const CACHED_MANIFESTS: usize = 4;

#[derive(Clone)]
pub struct ViewCache {
    lake_dir: PathBuf,
    /// Opened at the first read and kept: on S3 opening builds a client.
    lake: Arc<Mutex<Option<Lake>>>,
    budget: usize,
    segments: Arc<Mutex<Entries>>,
    manifests: Arc<Mutex<Manifests>>,
}

impl ViewCache {
    pub fn new(lake_dir: &Path, budget_bytes: usize) -> Self {
        ViewCache {
            lake_dir: lake_dir.to_path_buf(),
            lake: Arc::default(),
            budget: budget_bytes,
            segments: Arc::default(),
            manifests: Arc::default(),
        }
    }

    /// The rows of the view at `view_path` whose buckets start in `[from, to)` (and maybe
    /// others of the same segments).
    pub async fn get(
        &self,
        view_path: &str,
        (from, to): (Millis, Millis),
    ) -> Result<BatchView, SnapshotError> {
        let failed = |source: ViewError| SnapshotError::ReadView {
            path: view_path.to_string(),
            source,
        };
        let lake = self.lake().map_err(|e| failed(e.into()))?;
        if !view_segments::is_manifest(view_path) {
            let whole = self.segment(&lake, view_path).await.map_err(failed)?;
            return Ok(BatchView {
                segments: vec![whole],
            });
        }
        let manifest = self.manifest(&lake, view_path).await.map_err(failed)?;
        let reads = manifest
            .overlapping(from, to)
            .iter()
            .map(|s| self.segment(&lake, &s.path));
        let segments = futures::future::try_join_all(reads).await.map_err(failed)?;
        Ok(BatchView { segments })
    }

    fn lake(&self) -> Result<Lake, shared_io::storage::StorageError> {
        let mut lake = self.lake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lake) = lake.as_ref() {
            return Ok(lake.clone());
        }
        let opened = Lake::open(&self.lake_dir)?;
        *lake = Some(opened.clone());
        Ok(opened)
    }

    async fn manifest(&self, lake: &Lake, path: &str) -> Result<Arc<Manifest>, ViewError> {
        let cell = {
            let mut manifests = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
            let cell = match manifests.iter().position(|(p, _)| p == path) {
                Some(i) => manifests.remove(i).1,
                None => Arc::default(),
            };
            manifests.push((path.to_string(), cell.clone()));
            if manifests.len() > CACHED_MANIFESTS {
                manifests.remove(0);
            }
            cell
        };
        let manifest = cell
            .get_or_try_init(|| async {
                Ok::<_, ViewError>(Arc::new(view_segments::read_manifest(lake, path).await?))
            })
            .await?;
        Ok(manifest.clone())
    }

    /// The segment (or single view file) at `path`, read once and kept within the budget.
    async fn segment(&self, lake: &Lake, path: &str) -> Result<Arc<ViewRows>, ViewError> {
        let cell = {
            let mut entries = self.segments.lock().unwrap_or_else(|e| e.into_inner());
            entries.clock += 1;
            let now = entries.clock;
            let entry = entries
                .by_path
                .entry(path.to_string())
                .or_insert_with(|| Entry {
                    cell: Arc::default(),
                    bytes: 0,
                    last_used: now,
                });
            entry.last_used = now;
            entry.cell.clone()
        };
        let mut first_read = false;
        let rows = cell
            .get_or_try_init(|| async {
                first_read = true;
                Ok::<_, ViewError>(Arc::new(read_view_file(lake, path).await?))
            })
            .await;
        let rows = match rows {
            Ok(rows) => rows.clone(),
            Err(e) => {
                // A failed read is not kept: the next request tries again.
                let mut entries = self.segments.lock().unwrap_or_else(|e| e.into_inner());
                if entries.by_path.get(path).is_some_and(|e| e.bytes == 0) {
                    entries.by_path.remove(path);
                }
                return Err(e);
            }
        };
        if first_read {
            self.account(path, weigh(&rows));
        }
        Ok(rows)
    }

    /// Counts a segment just read and evicts the least recently used others past the budget;
    /// a segment larger than the budget alone is not kept.
    fn account(&self, path: &str, bytes: usize) {
        let mut entries = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = bytes.max(1);
        if bytes > self.budget {
            entries.by_path.remove(path);
            return;
        }
        let Some(entry) = entries.by_path.get_mut(path) else {
            return;
        };
        entry.bytes = bytes;
        entries.used += bytes;
        while entries.used > self.budget {
            let victim = entries
                .by_path
                .iter()
                .filter(|(p, e)| e.bytes > 0 && p.as_str() != path)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(p, _)| p.clone());
            let Some(victim) = victim else { break };
            if let Some(gone) = entries.by_path.remove(&victim) {
                entries.used -= gone.bytes;
            }
        }
    }

    /// Bytes of the segments kept.
    pub fn used_bytes(&self) -> usize {
        self.segments.lock().map(|e| e.used).unwrap_or(0)
    }
}

#[cfg(test)]
#[path = "view_cache_tests.rs"]
mod tests;
