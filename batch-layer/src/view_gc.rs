//! Removing view files no one will serve: what killed runs left unpublished, and promoted
//! versions beyond `batch.keep_versions`, whose segments go once no kept version lists them.
//! Best effort: a failure is logged, never fails a run.

use shared_io::storage::{Lake, StorageError};
use shared_io::view::VIEWS_DIR;
use shared_io::view_segments;
use sqlx::PgPool;
use std::collections::HashSet;

/// Removes what killed runs left: staging directories, and view versions Postgres never listed
/// (on S3 a run writes its view under its final name, unlisted until it promotes). Only called
/// under the run lock, so no run is writing one.
pub(crate) async fn remove_unpublished(pool: &PgPool, lake: &Lake) {
    let listed: Result<Vec<String>, sqlx::Error> =
        sqlx::query_scalar("SELECT version FROM batch_versions")
            .fetch_all(pool)
            .await;
    let dirs = lake.list_dirs(VIEWS_DIR).await;
    let (listed, dirs) = match (listed, dirs) {
        (Ok(listed), Ok(dirs)) => (listed, dirs),
        (Err(e), _) => return tracing::warn!(error = %e, "could not list view versions"),
        (_, Err(e)) => return tracing::warn!(error = %e, "could not list the views directory"),
    };
    for dir in dirs.into_iter().filter(|d| !listed.contains(d)) {
        let path = format!("{VIEWS_DIR}/{dir}");
        match lake.remove_dir(&path).await {
            Ok(()) => tracing::info!(path, "removed a killed run's unpublished view"),
            Err(e) => tracing::warn!(path, error = %e, "could not remove an unpublished view"),
        }
    }
}

/// Deletes promoted versions beyond the newest `keep_versions` (the served one is always kept):
/// first the manifest (or single view file), so the version can no longer be served, then each
/// segment it wrote that no kept version lists; its directory goes once it holds none.
pub(crate) async fn remove_old_versions(pool: &PgPool, keep_versions: usize, lake: &Lake) {
    let versions: Result<Vec<(String, String, bool)>, sqlx::Error> = sqlx::query_as(
        "SELECT version, view_path,
                version IN (SELECT version FROM serving_state WHERE version IS NOT NULL)
         FROM batch_versions ORDER BY promoted_at DESC NULLS LAST",
    )
    .fetch_all(pool)
    .await;
    let versions = match versions {
        Ok(versions) => versions,
        Err(e) => return tracing::warn!(error = %e, "could not list old view versions"),
    };
    let (kept, old) = split_kept(versions, keep_versions);
    // Every segment a kept version lists; without all of them nothing is safe to delete.
    let mut listed = HashSet::new();
    for (version, path) in &kept {
        if !view_segments::is_manifest(path) {
            continue;
        }
        match view_segments::read_manifest(lake, path).await {
            Ok(manifest) => listed.extend(manifest.segments.into_iter().map(|s| s.path)),
            Err(e) => {
                return tracing::warn!(version, error = %e, "could not read a kept version's manifest; removing no old version");
            }
        }
    }
    for (version, path) in old {
        if let Err(e) = remove_version(lake, &version, &path, &listed).await {
            tracing::warn!(version, error = %e, "could not remove an old view version");
        }
    }
}

/// Of `versions` (newest first, with whether each is served): the served one and the newest
/// `keep_versions - 1` others are kept, the rest old.
#[allow(clippy::type_complexity)]
fn split_kept(
    versions: Vec<(String, String, bool)>,
    keep_versions: usize,
) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let mut others_kept = 0;
    let (mut kept, mut old) = (Vec::new(), Vec::new());
    for (version, path, served) in versions {
        if served || others_kept < keep_versions.saturating_sub(1) {
            others_kept += usize::from(!served);
            kept.push((version, path));
        } else {
            old.push((version, path));
        }
    }
    (kept, old)
}

async fn remove_version(
    lake: &Lake,
    version: &str,
    view_path: &str,
    listed: &HashSet<String>,
) -> Result<(), StorageError> {
    lake.remove_file(view_path).await?;
    let dir = format!("{VIEWS_DIR}/{version}");
    let segments = format!("{dir}/segments");
    let mut left = 0;
    for file in lake.list_files(&segments).await? {
        if listed.contains(&file) {
            left += 1;
        } else {
            lake.remove_file(&file).await?;
        }
    }
    if left == 0 {
        lake.remove_dir(&dir).await?;
    } else {
        tracing::debug!(version, left, "kept the segments newer versions list");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_version_and_the_newest_others_are_kept() {
        let versions = |served: usize| {
            (0..5)
                .map(|i| (format!("v{i}"), format!("p{i}"), i == served))
                .collect::<Vec<_>>()
        };
        let names =
            |list: Vec<(String, String)>| list.into_iter().map(|(v, _)| v).collect::<Vec<_>>();
        let (kept, old) = split_kept(versions(0), 2);
        assert_eq!(
            (names(kept), names(old)),
            (
                vec!["v0".into(), "v1".into()],
                vec!["v2".into(), "v3".into(), "v4".into()]
            )
        );
        // A rollback serves an older one: it is kept beside the newest other.
        let (kept, old) = split_kept(versions(3), 2);
        assert_eq!(
            (names(kept), names(old)),
            (
                vec!["v0".into(), "v3".into()],
                vec!["v1".into(), "v2".into(), "v4".into()]
            )
        );
        let (kept, old) = split_kept(versions(9), 1);
        assert!(kept.is_empty() && old.len() == 5);
    }
}
