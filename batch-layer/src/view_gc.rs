//! Removing view files no one will serve: what killed runs left unpublished, and promoted
//! versions beyond `batch.keep_versions`. Best effort: a failure is logged, never fails a run.

use shared_io::storage::Lake;
use shared_io::view::VIEWS_DIR;
use sqlx::PgPool;

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

/// Deletes the files of promoted versions beyond the newest `keep_versions`; the served one is
/// always kept.
pub(crate) async fn remove_old_versions(pool: &PgPool, keep_versions: usize, lake: &Lake) {
    let old: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
        "SELECT version FROM batch_versions
         WHERE version NOT IN (SELECT version FROM serving_state WHERE version IS NOT NULL)
         ORDER BY promoted_at DESC NULLS LAST OFFSET $1",
    )
    .bind(keep_versions.saturating_sub(1) as i64)
    .fetch_all(pool)
    .await;
    match old {
        Ok(old) => {
            for version in old {
                if let Err(e) = lake.remove_dir(&format!("{VIEWS_DIR}/{version}")).await {
                    tracing::warn!(version, error = %e, "could not remove an old view version");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list old view versions"),
    }
}
