//! The view versions as operators list them: `batch-layer versions` and `GET /v1/versions`
//! answer from this one query, so the two never disagree.

use chrono::{DateTime, Utc};

/// One view version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct VersionInfo {
    pub version: String,
    pub cutover: DateTime<Utc>,
    /// When its run finished computing it.
    pub created_at: DateTime<Utc>,
    /// When it was last made the served one (by a run, a pin or a rollback).
    pub promoted_at: Option<DateTime<Utc>>,
    /// Rows of the view.
    pub rows: i64,
    /// Lake rows the run read.
    pub lake_rows: i64,
    /// The metric definitions it was computed with (see `registry`).
    pub definitions_fingerprint: Option<String>,
    /// Served now.
    pub served: bool,
    /// What `batch-layer rollback` would serve.
    pub rollback_target: bool,
}

/// Every version, newest first.
pub async fn list<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<VersionInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.version, b.cutover, b.finished_at AS created_at, b.promoted_at,
                b.row_count AS rows, b.lake_rows, b.definitions_fingerprint,
                coalesce(s.version = b.version, false) AS served,
                coalesce(b.version = (SELECT version FROM promotions WHERE NOT rolled_back
                                      ORDER BY id DESC OFFSET 1 LIMIT 1), false) AS rollback_target
         FROM batch_versions b CROSS JOIN serving_state s
         ORDER BY b.finished_at DESC, b.version DESC",
    )
    .fetch_all(executor)
    .await
}
