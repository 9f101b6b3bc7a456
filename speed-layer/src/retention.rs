//! Retention: speed state that a promoted batch view has covered for longer than
//! `speed.retention_grace` is deleted (CONTRACT §5.4), and `speed_coverage` records from when
//! the speed side is complete, so that a rollback below the horizon shows a gap, not zeros.

use crate::SpeedLayer;
use chrono::{DateTime, Utc};
use shared_schema::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("applying speed retention: reading the cutover T: {0}")]
    ReadCutover(#[source] sqlx::Error),
    #[error("applying speed retention: deleting from {table} before {horizon}: {source}")]
    Delete {
        table: &'static str,
        horizon: DateTime<Utc>,
        source: sqlx::Error,
    },
    #[error("applying speed retention: raising the coverage of {topic} to {horizon}: {source}")]
    RaiseCoverage {
        topic: String,
        horizon: DateTime<Utc>,
        source: sqlx::Error,
    },
    #[error("applying speed retention: committing: {0}")]
    Commit(#[source] sqlx::Error),
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Everything before it is gone: T minus the grace period.
    pub horizon: Millis,
    /// `speed_aggregates` rows.
    pub aggregates: u64,
    /// `speed_dedupe` claims.
    pub ids: u64,
}

impl SpeedLayer {
    /// Deletes speed state that a promoted batch view has covered for longer than the grace
    /// period (CONTRACT §5.4). Buckets at or after T are never touched. `None` while no view
    /// is promoted: nothing is removed then.
    pub async fn apply_retention(&self) -> Result<Option<Removed>, RetentionError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(RetentionError::ReadCutover)?;
        shared_io::failpoint::hit("speed.retention.begun").await;
        // T is read in the deleting transaction, share-locked: a promotion or rollback (which
        // update this row) waits for the deletes, or the deletes wait for it and see its T.
        let cutover: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT cutover FROM serving_state WHERE id = 1 FOR SHARE")
                .fetch_one(&mut *tx)
                .await
                .map_err(RetentionError::ReadCutover)?;
        let Some(cutover) = cutover else {
            return Ok(None);
        };
        let horizon =
            cutover - chrono::Duration::milliseconds(self.config.speed.retention_grace.millis());
        let aggregates =
            delete_before(&mut tx, "speed_aggregates", "bucket_start", horizon).await?;
        let ids = delete_before(&mut tx, "speed_dedupe", "bucket_start", horizon).await?;
        // From here on the speed side holds nothing before the horizon: a rollback below it
        // must show a gap, not zeros.
        let topic = &self.config.events_topic;
        sqlx::query(
            "UPDATE speed_coverage SET covered_from = GREATEST(coalesce(covered_from, '-infinity'), $2)
             WHERE topic = $1",
        )
        .bind(topic)
        .bind(horizon)
        .execute(&mut *tx)
        .await
        .map_err(|source| RetentionError::RaiseCoverage {
            topic: topic.clone(),
            horizon,
            source,
        })?;
        // Late counts and side output follow their buckets; the lake keeps the events.
        delete_before(&mut tx, "speed_late_counts", "bucket_start", horizon).await?;
        delete_before(&mut tx, "speed_late_events", "event_time", horizon).await?;
        // Session starts at or after the horizon still need the events one gap before them.
        let session_horizon =
            horizon - chrono::Duration::milliseconds(self.catalog.max_session_gap());
        delete_before(
            &mut tx,
            "speed_session_events",
            "event_time",
            session_horizon,
        )
        .await?;
        tx.commit().await.map_err(RetentionError::Commit)?;
        if aggregates + ids > 0 {
            tracing::info!(%horizon, aggregates, ids, "retention removed state covered by the batch view");
        }
        Ok(Some(Removed {
            horizon: horizon.timestamp_millis(),
            aggregates,
            ids,
        }))
    }
}

/// Deletes the rows of `table` whose `column` lies before `before`; returns how many.
async fn delete_before(
    tx: &mut sqlx::PgConnection,
    table: &'static str,
    column: &'static str,
    before: DateTime<Utc>,
) -> Result<u64, RetentionError> {
    sqlx::query(&format!("DELETE FROM {table} WHERE {column} < $1"))
        .bind(before)
        .execute(tx)
        .await
        .map(|done| done.rows_affected())
        .map_err(|source| RetentionError::Delete {
            table,
            horizon: before,
            source,
        })
}
