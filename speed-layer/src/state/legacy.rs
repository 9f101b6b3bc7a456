//! Upgrading in place: state that an earlier version kept as rows (`speed_dedupe`,
//! `speed_session_events`) moves into the id log once, at the first start of this version, so
//! that duplicates of events counted before the upgrade still count once.

use super::log::{LogEntry, encode, id_hash, key_hash};
use super::store;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;

/// Moves the rows of the old tables into one log row; returns how many ids moved.
pub(crate) async fn import(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Cheap when there is nothing: the common case after the first start.
    let any: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM speed_dedupe) OR EXISTS (SELECT 1 FROM speed_session_events)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !any {
        return Ok(0);
    }
    let (seq, _) = store::lock_head(&mut tx).await?;
    let claims: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT event_id, bucket_start FROM speed_dedupe")
            .fetch_all(&mut *tx)
            .await?;
    let sessions: Vec<(String, String, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT metric, session_key, event_time, event_id FROM speed_session_events",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut entries: HashMap<String, LogEntry> = HashMap::new();
    for (id, bucket) in claims {
        entries.insert(
            id.clone(),
            LogEntry {
                id: id_hash(&id),
                event_time: bucket.timestamp_millis(),
                sessions: Vec::new(),
            },
        );
    }
    for (metric, key, time, id) in sessions {
        let entry = entries.entry(id.clone()).or_insert_with(|| LogEntry {
            id: id_hash(&id),
            event_time: time.timestamp_millis(),
            sessions: Vec::new(),
        });
        // The session time is the event's own; the claim held only its bucket.
        entry.event_time = time.timestamp_millis();
        entry.sessions.push((key_hash(&metric), key_hash(&key)));
    }
    let entries: Vec<LogEntry> = entries.into_values().collect();
    store::append(&mut tx, seq, &entries).await?;
    sqlx::query("DELETE FROM speed_dedupe")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM speed_session_events")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        ids = entries.len(),
        bytes = encode(&entries).len(),
        "moved the speed state of an earlier version into the id log"
    );
    Ok(entries.len())
}
