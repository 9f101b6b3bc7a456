//! `batch-layer promote --version V` and `batch-layer rollback`: serve another view version,
//! and its cutover with it. Both take the batch run lock, so they never interleave with a run,
//! and both are one transaction on the lock's session, like a run's promotion, so neither
//! commits once its lock is lost.
//!
//! T may move backwards here, and only here. Speed state that retention already removed below
//! the old T is then missing; the speed layer's coverage records that, and answers report the
//! range as a gap instead of serving zeros.

use crate::BatchError;
use crate::run_lock::RunLock;
use chrono::{DateTime, Utc};
use shared_schema::config::PlatformConfig;
use shared_schema::time::Millis;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub version: String,
    pub cutover: Millis,
}

/// Serves `version` (which must exist and still have its view on disk).
pub async fn pin(config: &PlatformConfig, version: &str) -> Result<Served, BatchError> {
    let mut lock = RunLock::acquire(config).await?;
    let mut tx = lock.begin().await?;
    sqlx::query("SELECT 1 FROM serving_state WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let served = serve(&mut tx, config, version, "pin").await?;
    tx.commit().await?;
    lock.release().await?;
    Ok(served)
}

/// Undoes the latest promotion that has not been undone, serving the one before it again.
pub async fn rollback(config: &PlatformConfig) -> Result<Served, BatchError> {
    let mut lock = RunLock::acquire(config).await?;
    let mut tx = lock.begin().await?;
    sqlx::query("SELECT 1 FROM serving_state WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let history: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, version FROM promotions WHERE NOT rolled_back ORDER BY id DESC LIMIT 2",
    )
    .fetch_all(&mut *tx)
    .await?;
    let [(latest, _), (_, previous)] = history.as_slice() else {
        return Err(BatchError::Versions(
            "there is no earlier promotion to roll back to".into(),
        ));
    };
    sqlx::query("UPDATE promotions SET rolled_back = true WHERE id = $1")
        .bind(latest)
        .execute(&mut *tx)
        .await?;
    let served = serve(&mut tx, config, previous, "rollback").await?;
    // The rollback's own record is not a promotion a later rollback should return to.
    sqlx::query(
        "UPDATE promotions SET rolled_back = true WHERE id = (SELECT max(id) FROM promotions)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    lock.release().await?;
    Ok(served)
}

async fn serve(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    config: &PlatformConfig,
    version: &str,
    reason: &str,
) -> Result<Served, BatchError> {
    let row: Option<(DateTime<Utc>, String)> =
        sqlx::query_as("SELECT cutover, view_path FROM batch_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((cutover, view_path)) = row else {
        return Err(BatchError::Versions(format!("no view version `{version}`")));
    };
    let lake = shared_io::storage::Lake::open(&config.lake_dir)?;
    if !lake.exists(&view_path).await? {
        return Err(BatchError::Versions(format!(
            "the view of `{version}` is gone from {}",
            config.lake_dir.display()
        )));
    }
    sqlx::query(
        "UPDATE serving_state SET version = $1, cutover = $2, promoted_at = now() WHERE id = 1",
    )
    .bind(version)
    .bind(cutover)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE batch_versions SET promoted_at = now() WHERE version = $1")
        .bind(version)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO promotions (version, cutover, reason) VALUES ($1, $2, $3)")
        .bind(version)
        .bind(cutover)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    Ok(Served {
        version: version.to_string(),
        cutover: cutover.timestamp_millis(),
    })
}
