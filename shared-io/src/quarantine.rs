//! The quarantine: bad input kept with where it came from, and why (CONTRACT §1).

use crate::kafka::BadMessage;
use sqlx::{Postgres, Transaction};

/// Records bad messages in the caller's transaction, so they are kept exactly when the offsets
/// that skip them are committed. Several consumers read the same message; it is kept once.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    detected_by: &str,
    bad: &[BadMessage],
) -> Result<(), sqlx::Error> {
    if bad.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = bad.iter().map(|b| b.partition).collect();
    let offsets: Vec<i64> = bad.iter().map(|b| b.offset).collect();
    let raws: Vec<Option<Vec<u8>>> = bad.iter().map(|b| b.raw.clone()).collect();
    // A reason may quote the input; Postgres text cannot hold every character of it.
    let reasons: Vec<String> = bad.iter().map(|b| printable(&b.reason)).collect();
    sqlx::query(
        "INSERT INTO quarantine (topic, partition, kafka_offset, raw, reason, detected_by)
         SELECT $1, p, o, r, why, $6
         FROM UNNEST($2::int[], $3::bigint[], $4::bytea[], $5::text[]) AS u(p, o, r, why)
         ON CONFLICT DO NOTHING",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&raws)
    .bind(&reasons)
    .bind(detected_by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `text` without control characters, which a quarantine reason (Postgres `text`) cannot
/// always hold.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("applying the quarantine's retention: {0}")]
    Retention(#[source] sqlx::Error),
    #[error("listing the quarantine: {0}")]
    List(#[source] sqlx::Error),
    #[error("marking {partition}:{offset} of {topic} replayed: {source}")]
    MarkReplayed {
        topic: String,
        partition: i32,
        offset: i64,
        source: sqlx::Error,
    },
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Older than `quarantine.max_age`.
    pub by_age: u64,
    /// Within the age, but past `quarantine.max_mb` counted from the newest.
    pub by_size: u64,
}

/// Deletes the messages received more than `max_age_ms` ago, then, while the kept bytes
/// (payloads and reasons) exceed `max_bytes`, the oldest ones. `max_bytes` 0: no size bound.
/// Idempotent, so every consumer may run it.
pub async fn apply_retention(
    pool: &sqlx::PgPool,
    max_age_ms: i64,
    max_bytes: u64,
) -> Result<Dropped, QuarantineError> {
    let by_age = sqlx::query(
        "DELETE FROM quarantine WHERE received_at < now() - make_interval(secs => $1::float8 / 1000)",
    )
    .bind(max_age_ms as f64)
    .execute(pool)
    .await
    .map_err(QuarantineError::Retention)?
    .rows_affected();
    let mut dropped = Dropped { by_age, by_size: 0 };
    if max_bytes == 0 {
        return Ok(dropped);
    }
    let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    // The sum alone first: the ordered scan below only runs when the bound is passed.
    let kept: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(kept_bytes), 0)::bigint FROM quarantine")
            .fetch_one(pool)
            .await
            .map_err(QuarantineError::Retention)?;
    if kept > max_bytes {
        dropped.by_size = sqlx::query(
            "DELETE FROM quarantine q USING (
                 SELECT topic, partition, kafka_offset FROM (
                     SELECT topic, partition, kafka_offset,
                            sum(kept_bytes) OVER (ORDER BY received_at DESC, topic, partition, kafka_offset DESC) AS newer
                     FROM quarantine) s
                 WHERE newer > $1) d
             WHERE q.topic = d.topic AND q.partition = d.partition AND q.kafka_offset = d.kafka_offset",
        )
        .bind(max_bytes)
        .execute(pool)
        .await
        .map_err(QuarantineError::Retention)?
        .rows_affected();
    }
    Ok(dropped)
}

/// Applies [`apply_retention`] every `config.retention_interval` until the task is dropped,
/// counting what it deleted. A failed pass is logged and tried again at the next interval.
pub async fn keep_bounded(pool: sqlx::PgPool, config: shared_schema::config::QuarantineConfig) {
    let max_bytes = config.max_mb.saturating_mul(1024 * 1024);
    let mut interval = tokio::time::interval(config.retention_interval.as_std());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    crate::observe::consumer().quarantine_dropped(0, 0);
    loop {
        interval.tick().await;
        match apply_retention(&pool, config.max_age.millis(), max_bytes).await {
            Ok(dropped) => {
                if dropped != Dropped::default() {
                    tracing::info!(
                        by_age = dropped.by_age,
                        by_size = dropped.by_size,
                        "quarantine retention deleted messages"
                    );
                }
                crate::observe::consumer().quarantine_dropped(dropped.by_age, dropped.by_size);
            }
            Err(e) => tracing::warn!(error = %e, "quarantine retention failed; will retry"),
        }
    }
}

/// A kept message, as `speed-layer quarantine list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Kept {
    pub topic: String,
    pub partition: i32,
    pub kafka_offset: i64,
    pub raw: Option<Vec<u8>>,
    pub reason: String,
    pub detected_by: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub replayed_to: Option<String>,
}

/// Which kept messages to list or replay.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub topic: Option<String>,
    pub partition: Option<i32>,
    /// Only those whose reason contains this text.
    pub reason: Option<String>,
    /// Also those replayed before.
    pub include_replayed: bool,
    pub limit: i64,
}

/// The kept messages `selection` names, oldest first.
pub async fn list(
    pool: &sqlx::PgPool,
    selection: &Selection,
) -> Result<Vec<Kept>, QuarantineError> {
    sqlx::query_as(
        "SELECT topic, partition, kafka_offset, raw, reason, detected_by, received_at,
                replayed_at, replayed_to
         FROM quarantine
         WHERE ($1::text IS NULL OR topic = $1)
           AND ($2::int IS NULL OR partition = $2)
           AND ($3::text IS NULL OR strpos(reason, $3) > 0)
           AND ($4 OR replayed_at IS NULL)
         ORDER BY received_at, topic, partition, kafka_offset
         LIMIT $5",
    )
    .bind(&selection.topic)
    .bind(selection.partition)
    .bind(&selection.reason)
    .bind(selection.include_replayed)
    .bind(selection.limit)
    .fetch_all(pool)
    .await
    .map_err(QuarantineError::List)
}

/// Records that `kept` was produced again, as `partition:offset` of its topic.
pub async fn mark_replayed(
    pool: &sqlx::PgPool,
    kept: &Kept,
    to_partition: i32,
    to_offset: i64,
) -> Result<(), QuarantineError> {
    sqlx::query(
        "UPDATE quarantine SET replayed_at = now(), replayed_to = $4
         WHERE topic = $1 AND partition = $2 AND kafka_offset = $3",
    )
    .bind(&kept.topic)
    .bind(kept.partition)
    .bind(kept.kafka_offset)
    .bind(format!("{to_partition}:{to_offset}"))
    .execute(pool)
    .await
    .map_err(|source| QuarantineError::MarkReplayed {
        topic: kept.topic.clone(),
        partition: kept.partition,
        offset: kept.kafka_offset,
        source,
    })?;
    Ok(())
}
