//! What is served, and every change of it: a run's promotion, a pin (`promote --version V`,
//! `POST /v1/admin/promote`) and a rollback. Each is one transaction on the batch run lock's
//! own session (`run_lock`), so none interleaves with a run and none commits once its lock is
//! lost. The batch layer's run and the serving layer's admin endpoints both call these.
//!
//! T may move backwards here, in a pin or a rollback, and only here. Speed state that retention
//! already removed below the old T is then missing; the speed layer's coverage records that,
//! and answers report the range as a gap instead of serving zeros.

use crate::run_lock::{RunLock, RunLockError};
use crate::storage::{Lake, StorageError};
use chrono::{DateTime, Utc};
use shared_schema::time::{Millis, to_datetime};
use sqlx::{Postgres, Transaction};
use std::path::Path;

/// The version served, and its cutover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub version: String,
    pub cutover: Millis,
}

/// Why a version became served, as `promotions.reason` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Run,
    Pin,
    Rollback,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Run => "run",
            Reason::Pin => "pin",
            Reason::Rollback => "rollback",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error(transparent)]
    RunLock(#[from] RunLockError),
    #[error("no view version `{version}`")]
    NoSuchVersion { version: String },
    #[error("the view of `{version}` is gone from the lake ({path})")]
    ViewGone { version: String, path: String },
    #[error("there is no earlier promotion to roll back to")]
    NothingToRollBack,
    #[error("could not open the lake: {0}")]
    OpenLake(#[source] StorageError),
    #[error("could not look for the view of `{version}` in the lake: {source}")]
    CheckView {
        version: String,
        source: StorageError,
    },
    #[error("could not lock the served state: {0}")]
    LockServingState(#[source] sqlx::Error),
    #[error("could not read the promotion history: {0}")]
    ReadHistory(#[source] sqlx::Error),
    #[error("could not look up view version `{version}`: {source}")]
    ReadVersion {
        version: String,
        source: sqlx::Error,
    },
    #[error("could not record the promotion of `{version}`: {source}")]
    RecordPromotion {
        version: String,
        source: sqlx::Error,
    },
    #[error("could not mark promotion {id} rolled back: {source}")]
    MarkRolledBack { id: i64, source: sqlx::Error },
    #[error("could not commit the promotion of `{version}`: {source}")]
    Commit {
        version: String,
        source: sqlx::Error,
    },
}

impl PromotionError {
    /// The request was refused (no such version, its view is gone, nothing to roll back), as
    /// opposed to Postgres or the lake failing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PromotionError::NoSuchVersion { .. }
                | PromotionError::ViewGone { .. }
                | PromotionError::NothingToRollBack
        )
    }
}

/// Serves `version` (which must exist and still have its view in the lake at `lake_dir`).
pub async fn pin(
    database_url: &str,
    lake_dir: &Path,
    version: &str,
) -> Result<Served, PromotionError> {
    let mut lock = RunLock::acquire(database_url).await?;
    let mut tx = lock.begin().await?;
    lock_serving_state(&mut tx).await?;
    let served = serve(&mut tx, lake_dir, version, Reason::Pin).await?;
    commit(tx, version).await?;
    lock.release().await?;
    Ok(served)
}

/// Undoes the latest promotion that has not been undone, serving the one before it again.
pub async fn rollback(database_url: &str, lake_dir: &Path) -> Result<Served, PromotionError> {
    let mut lock = RunLock::acquire(database_url).await?;
    let mut tx = lock.begin().await?;
    lock_serving_state(&mut tx).await?;
    let history: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, version FROM promotions WHERE NOT rolled_back ORDER BY id DESC LIMIT 2",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(PromotionError::ReadHistory)?;
    let [(latest, _), (_, previous)] = history.as_slice() else {
        return Err(PromotionError::NothingToRollBack);
    };
    mark_rolled_back(&mut tx, *latest).await?;
    let served = serve(&mut tx, lake_dir, previous, Reason::Rollback).await?;
    // The rollback's own record is not a promotion a later rollback should return to.
    let own: i64 = sqlx::query_scalar("SELECT max(id) FROM promotions")
        .fetch_one(&mut *tx)
        .await
        .map_err(PromotionError::ReadHistory)?;
    mark_rolled_back(&mut tx, own).await?;
    commit(tx, previous).await?;
    lock.release().await?;
    Ok(served)
}

/// Locks the served state's row for the rest of `tx`; returns the served cutover.
pub async fn lock_serving_state(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Option<DateTime<Utc>>, PromotionError> {
    sqlx::query_scalar("SELECT cutover FROM serving_state WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut **tx)
        .await
        .map_err(PromotionError::LockServingState)
}

/// Serves `version` with `cutover` and records why: the served state and the promotion history,
/// which every kind of promotion writes alike. `version` must be in `batch_versions`.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    version: &str,
    cutover: Millis,
    reason: Reason,
) -> Result<(), PromotionError> {
    let failed = |source| PromotionError::RecordPromotion {
        version: version.to_string(),
        source,
    };
    let cutover = to_datetime(cutover);
    sqlx::query(
        "UPDATE serving_state SET version = $1, cutover = $2, promoted_at = now() WHERE id = 1",
    )
    .bind(version)
    .bind(cutover)
    .execute(&mut **tx)
    .await
    .map_err(failed)?;
    sqlx::query("UPDATE batch_versions SET promoted_at = now() WHERE version = $1")
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(failed)?;
    sqlx::query("INSERT INTO promotions (version, cutover, reason) VALUES ($1, $2, $3)")
        .bind(version)
        .bind(cutover)
        .bind(reason.as_str())
        .execute(&mut **tx)
        .await
        .map_err(failed)?;
    Ok(())
}

/// Serves an existing version again, with the cutover it was computed for.
async fn serve(
    tx: &mut Transaction<'_, Postgres>,
    lake_dir: &Path,
    version: &str,
    reason: Reason,
) -> Result<Served, PromotionError> {
    let row: Option<(DateTime<Utc>, String)> =
        sqlx::query_as("SELECT cutover, view_path FROM batch_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|source| PromotionError::ReadVersion {
                version: version.to_string(),
                source,
            })?;
    let Some((cutover, view_path)) = row else {
        return Err(PromotionError::NoSuchVersion {
            version: version.to_string(),
        });
    };
    let lake = Lake::open(lake_dir).map_err(PromotionError::OpenLake)?;
    let exists = lake
        .exists(&view_path)
        .await
        .map_err(|source| PromotionError::CheckView {
            version: version.to_string(),
            source,
        })?;
    if !exists {
        return Err(PromotionError::ViewGone {
            version: version.to_string(),
            path: lake.location(&view_path),
        });
    }
    let cutover = cutover.timestamp_millis();
    record(tx, version, cutover, reason).await?;
    Ok(Served {
        version: version.to_string(),
        cutover,
    })
}

async fn mark_rolled_back(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
) -> Result<(), PromotionError> {
    sqlx::query("UPDATE promotions SET rolled_back = true WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(|source| PromotionError::MarkRolledBack { id, source })
}

async fn commit(tx: Transaction<'_, Postgres>, version: &str) -> Result<(), PromotionError> {
    tx.commit().await.map_err(|source| PromotionError::Commit {
        version: version.to_string(),
        source,
    })
}
