//! Retention: speed state that a promoted batch view has covered for longer than
//! `speed.retention_grace` is deleted (CONTRACT §5.4), and `speed_coverage` records from when
//! the speed side is complete, so that a rollback below the horizon shows a gap, not zeros.

use crate::SpeedLayer;
use crate::state::Expired;
use crate::state::store;
use chrono::{DateTime, Utc};
use shared_schema::time::{Millis, to_datetime};

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
    /// `speed_cells` rows (and `speed_aggregates` rows an earlier version wrote).
    pub aggregates: u64,
    /// `speed_log` rows.
    pub log_rows: u64,
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
        let aggregates = delete_before(&mut tx, "speed_cells", "bucket_start", horizon).await?
            + delete_before(&mut tx, "speed_aggregates", "bucket_start", horizon).await?;
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
        // Late counts (on the cell rows, or an earlier version's) and side output follow their
        // buckets; the lake keeps the events.
        delete_before(&mut tx, "speed_late_counts", "bucket_start", horizon).await?;
        delete_before(&mut tx, "speed_late_events", "event_time", horizon).await?;
        // Session starts at or after the horizon still need the events one gap before them:
        // a log row goes once all of its events lie before that.
        let horizons = self.horizons(Some(cutover));
        let session_horizon = to_datetime(horizons.sessions);
        let log_rows = store::delete_before(&mut tx, session_horizon)
            .await
            .map_err(|source| RetentionError::Delete {
                table: "speed_log",
                horizon: session_horizon,
                source,
            })?;
        tx.commit().await.map_err(RetentionError::Commit)?;
        // The memory of this instance follows; every other instance does the same on its own
        // pass, and an id kept a little longer is harmless.
        let expired = match self.state.lock().await.as_mut() {
            Some(state) => state.expire(horizons.ids, horizons.sessions),
            None => Expired::default(),
        };
        if aggregates + log_rows > 0 || expired.ids > 0 {
            tracing::info!(%horizon, aggregates, log_rows, ids = expired.ids, session_times = expired.session_times, "retention removed state covered by the batch view");
        }
        Ok(Some(Removed {
            horizon: horizon.timestamp_millis(),
            aggregates,
            log_rows,
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
