//! Lake retention (`lake.retention`, issue 18): history older than the horizon leaves the lake
//! and, from the next version on, the views.
//!
//! A run computes the horizon before planning and plans without the hours before it, so the new
//! version lists none of their buckets (the promoted version's hours missing from the lake count
//! as changed, recompute to nothing, and none of their segments is listed again). After the
//! promotion, still under the run lock, the hours' files are delisted from `lake_files` in one
//! transaction and then deleted. A late event the lander writes into such an hour afterwards is
//! ignored by every run and deleted by the next one.
//!
//! The horizon never passes the cutover of a kept version: rolling back to one must find every
//! event after its T in the lake, for the next run to recompute them, while the speed side only
//! holds the buckets after T for its retention grace. Nothing else reads the lake: the speed
//! layer consumes the topic, and the profile changelog (`cdc.topic`) is the dimension's whole
//! history, which any retained event may join with, so it is not subject to retention.
//!
//! At the horizon, a session whose earlier events were deleted starts again at the first hour
//! kept: a sessions metric may count one more start there than before.

use shared_io::storage::Lake;
use shared_schema::time::{HOUR_MS, HumanDuration, Millis};
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("finding the cutover of the oldest kept version: {0}")]
    KeptCutover(#[source] sqlx::Error),
    #[error("delisting the lake files before the retention horizon: {0}")]
    Delist(#[source] sqlx::Error),
}

/// The first hour kept: `now - retention` rounded down to `alignment` (the widest bucket, so no
/// bucket loses part of its hours), and never past `protected` (the earliest cutover a kept
/// version or this run has). `None`: no retention, everything is kept.
pub fn horizon_at(
    now: Millis,
    retention: Option<HumanDuration>,
    alignment: Millis,
    protected: Millis,
) -> Option<Millis> {
    let retention = retention?;
    let align = alignment.max(HOUR_MS);
    let horizon = (now - retention.millis()).div_euclid(align) * align;
    Some(horizon.min(protected.div_euclid(HOUR_MS) * HOUR_MS))
}

/// The horizon for a run choosing `cutover`, with the kept versions read from Postgres.
pub(crate) async fn horizon(
    pool: &PgPool,
    retention: Option<HumanDuration>,
    keep_versions: usize,
    alignment: Millis,
    (now, cutover): (Millis, Millis),
) -> Result<Option<Millis>, RetentionError> {
    if retention.is_none() {
        return Ok(None);
    }
    // The newest `keep_versions` and the served one: a superset of what `view_gc` keeps.
    let kept: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT min(cutover) FROM (
             (SELECT cutover FROM batch_versions ORDER BY promoted_at DESC NULLS LAST LIMIT $1)
             UNION ALL
             (SELECT cutover FROM serving_state WHERE id = 1 AND cutover IS NOT NULL)) kept",
    )
    .bind(keep_versions.max(1) as i64)
    .fetch_one(pool)
    .await
    .map_err(RetentionError::KeptCutover)?;
    let protected = kept.map_or(cutover, |t| t.timestamp_millis().min(cutover));
    Ok(horizon_at(now, retention, alignment, protected))
}

/// Delists and deletes the lake files of `topic` in hours before `horizon`; returns how many.
/// Files that cannot be deleted are logged: delisted, no run reads them again.
pub(crate) async fn remove_before(
    pool: &PgPool,
    lake: &Lake,
    topic: &str,
    horizon: Millis,
) -> Result<usize, RetentionError> {
    let paths: Vec<String> = sqlx::query_scalar(
        "DELETE FROM lake_files
         WHERE topic = $1
           AND (EXTRACT(EPOCH FROM dt::timestamp)::bigint + hour::bigint * 3600) * 1000 < $2
         RETURNING path",
    )
    .bind(topic)
    .bind(horizon)
    .fetch_all(pool)
    .await
    .map_err(RetentionError::Delist)?;
    for path in &paths {
        if let Err(e) = lake.remove_file(path).await {
            tracing::warn!(path, error = %e, "could not delete a lake file past retention");
        }
    }
    Ok(paths.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::time::DAY_MS;

    const NOW: Millis = 100 * DAY_MS + 5 * HOUR_MS + 1234;

    #[test]
    fn no_retention_keeps_everything() {
        assert_eq!(horizon_at(NOW, None, HOUR_MS, NOW), None);
    }

    #[test]
    fn the_horizon_is_rounded_down_to_the_widest_bucket() {
        let days = |d| Some(HumanDuration::from_millis(d * DAY_MS));
        assert_eq!(
            horizon_at(NOW, days(10), HOUR_MS, NOW),
            Some(90 * DAY_MS + 5 * HOUR_MS)
        );
        assert_eq!(horizon_at(NOW, days(10), DAY_MS, NOW), Some(90 * DAY_MS));
        // Minute buckets still delete whole hours only.
        assert_eq!(
            horizon_at(NOW, days(10), 60_000, NOW),
            Some(90 * DAY_MS + 5 * HOUR_MS)
        );
    }

    #[test]
    fn the_horizon_never_passes_a_kept_cutover() {
        let hour = Some(HumanDuration::from_millis(HOUR_MS));
        let kept = NOW - 3 * DAY_MS + 30 * 60_000;
        assert_eq!(
            horizon_at(NOW, hour, HOUR_MS, kept),
            Some(kept.div_euclid(HOUR_MS) * HOUR_MS)
        );
    }
}
