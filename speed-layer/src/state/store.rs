//! The id log and partition epochs in Postgres.
//!
//! Each checkpoint transaction first raises `speed_log_head.seq` (a row lock held until it
//! commits, which orders the checkpoints of all instances), then reads the log rows other
//! instances wrote since it last looked, decides what of its batch is new, and writes its own
//! row under the sequence it took. Rows are written in sequence order, so "every row after the
//! last one applied" never skips one committed later under a smaller number.
//!
//! A partition's epoch is raised by the instance the group assigns it to; a checkpoint holding
//! an older epoch for any of its partitions is refused, so an instance that lost its partitions
//! while paused (a zombie) writes nothing after the new owner took them.

use super::SpeedState;
use super::log::{self, DecodeLogError, LogEntry};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use shared_schema::time::{Millis, to_datetime};
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum LoadStateError {
    #[error("loading the speed state from speed_log: {0}")]
    Read(#[from] sqlx::Error),
    #[error("loading the speed state from speed_log row {seq}: {source}")]
    Decode { seq: i64, source: DecodeLogError },
}

/// The log head, locked until the transaction ends: the sequence this checkpoint writes its
/// row under, and the generation of the log (a replay swaps in a new one).
pub(crate) async fn lock_head(tx: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    // A paused instance must not hold every other instance's checkpoints for long: Postgres
    // ends its session if it sits idle inside this transaction.
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query_as("UPDATE speed_log_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, generation")
        .fetch_one(&mut *tx)
        .await
}

/// Applies the log rows after the last one `state` applied and before `until`; returns how
/// many entries were new to it.
pub(crate) async fn catch_up(
    tx: &mut PgConnection,
    state: &mut SpeedState,
    until: i64,
) -> Result<usize, LoadStateError> {
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, body FROM speed_log WHERE seq > $1 AND seq < $2 ORDER BY seq")
            .bind(state.applied_seq)
            .bind(until)
            .fetch_all(&mut *tx)
            .await?;
    let mut new = 0;
    for (seq, body) in rows {
        log::decode(&body, |entry| new += usize::from(state.apply(&entry)))
            .map_err(|source| LoadStateError::Decode { seq, source })?;
    }
    state.applied_seq = until - 1;
    Ok(new)
}

/// Writes a checkpoint's row.
pub(crate) async fn append(
    tx: &mut PgConnection,
    seq: i64,
    entries: &[LogEntry],
) -> Result<(), sqlx::Error> {
    let Some(latest) = entries.iter().map(|e| e.event_time).max() else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO speed_log (seq, entries, max_event_time, body) VALUES ($1, $2, $3, $4)",
    )
    .bind(seq)
    .bind(i32::try_from(entries.len()).unwrap_or(i32::MAX))
    .bind(to_datetime(latest))
    .bind(log::encode(entries))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The state the log holds, read from one snapshot: what a starting instance, or one that
/// finds a replayed log swapped in, begins from. Rows wholly before `session_horizon` are
/// skipped; what they hold was dropped from every instance's memory already.
pub(crate) async fn load(
    pool: &PgPool,
    id_horizon: Millis,
    session_horizon: Millis,
) -> Result<SpeedState, LoadStateError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (seq, generation): (i64, i64) =
        sqlx::query_as("SELECT seq, generation FROM speed_log_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
    let mut state = SpeedState {
        applied_seq: seq,
        generation,
        ..SpeedState::default()
    };
    {
        let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT seq, body FROM speed_log
             WHERE $1::timestamptz IS NULL OR max_event_time >= $1 ORDER BY seq",
        )
        // No horizon while nothing is promoted.
        .bind((session_horizon > Millis::MIN).then(|| to_datetime(session_horizon)))
        .fetch(&mut *tx);
        while let Some((seq, body)) = rows.try_next().await? {
            log::decode(&body, |entry| {
                state.apply(&entry);
            })
            .map_err(|source| LoadStateError::Decode { seq, source })?;
        }
    }
    tx.commit().await?;
    state.expire(id_horizon, session_horizon);
    Ok(state)
}

/// Deletes the log rows whose every entry lies before `session_horizon`; returns how many.
pub(crate) async fn delete_before(
    tx: &mut PgConnection,
    session_horizon: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM speed_log WHERE max_event_time < $1")
        .bind(session_horizon)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}

/// Raises the epoch of `partitions` of `topic` for `owner`, which the group just assigned them
/// to; returns the new epochs.
pub(crate) async fn claim(
    pool: &PgPool,
    topic: &str,
    partitions: &[i32],
    owner: &str,
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "INSERT INTO speed_partition_epochs (topic, partition, epoch, owner)
         SELECT $1, p, 1, $3 FROM UNNEST($2::int[]) AS p
         ON CONFLICT (topic, partition) DO UPDATE SET
             epoch = speed_partition_epochs.epoch + 1, owner = EXCLUDED.owner, claimed_at = now()
         RETURNING partition, epoch",
    )
    .bind(topic)
    .bind(partitions)
    .bind(owner)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The partitions of `held` whose epoch is no longer the one held. The rows stay share-locked
/// until the transaction ends, so a claim waits for a checkpoint in flight instead of
/// overtaking it.
pub(crate) async fn fenced_partitions(
    tx: &mut PgConnection,
    topic: &str,
    held: &BTreeMap<i32, i64>,
) -> Result<Vec<i32>, sqlx::Error> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i32> = held.keys().copied().collect();
    let current: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, epoch FROM speed_partition_epochs
         WHERE topic = $1 AND partition = ANY($2) ORDER BY partition FOR SHARE",
    )
    .bind(topic)
    .bind(&partitions)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(held
        .iter()
        .filter(|(p, epoch)| current.get(p) != Some(epoch))
        .map(|(p, _)| *p)
        .collect())
}
