//! Consumer positions kept in Postgres, one row per partition, written in the same transaction
//! as the output they account for. The speed layer and the lander each have their own table.

use chrono::{DateTime, Utc};
use shared_schema::time::{Millis, to_datetime};
use sqlx::{Postgres, Transaction};
use std::collections::BTreeMap;

/// A consumer's place in one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The offset of the next message to read.
    pub next_offset: i64,
    /// The greatest event time seen in this partition so far.
    pub max_event_time: Option<Millis>,
    /// The last read reached the end of the partition.
    pub caught_up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionTable {
    /// `speed_offsets`
    Speed,
    /// `lake_progress`
    Lake,
}

impl PositionTable {
    fn select(self) -> &'static str {
        match self {
            PositionTable::Speed => {
                "SELECT partition, next_offset, max_event_time, caught_up FROM speed_offsets WHERE topic = $1"
            }
            PositionTable::Lake => {
                "SELECT partition, next_offset, max_event_time, caught_up FROM lake_progress WHERE topic = $1"
            }
        }
    }

    fn upsert(self) -> &'static str {
        match self {
            PositionTable::Speed => {
                "INSERT INTO speed_offsets (topic, partition, next_offset, max_event_time, caught_up)
                 SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::timestamptz[], $5::bool[])
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
                     max_event_time = EXCLUDED.max_event_time, caught_up = EXCLUDED.caught_up, updated_at = now()"
            }
            PositionTable::Lake => {
                "INSERT INTO lake_progress (topic, partition, next_offset, max_event_time, caught_up)
                 SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::timestamptz[], $5::bool[])
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
                     max_event_time = EXCLUDED.max_event_time, caught_up = EXCLUDED.caught_up, updated_at = now()"
            }
        }
    }
}

/// The stored position of every partition of `topic`; on a pool, or on a transaction's
/// connection to read them consistently with other state.
pub async fn load_positions<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    table: PositionTable,
    topic: &str,
) -> Result<BTreeMap<i32, PartitionPosition>, sqlx::Error> {
    let rows: Vec<(i32, i64, Option<DateTime<Utc>>, bool)> = sqlx::query_as(table.select())
        .bind(topic)
        .fetch_all(executor)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(partition, next_offset, max, caught_up)| {
            let max_event_time = max.map(|t| t.timestamp_millis());
            (
                partition,
                PartitionPosition {
                    next_offset,
                    max_event_time,
                    caught_up,
                },
            )
        })
        .collect())
}

pub async fn store_positions(
    tx: &mut Transaction<'_, Postgres>,
    table: PositionTable,
    topic: &str,
    positions: &BTreeMap<i32, PartitionPosition>,
) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = positions.keys().copied().collect();
    let offsets: Vec<i64> = positions.values().map(|p| p.next_offset).collect();
    let max_times: Vec<Option<DateTime<Utc>>> = positions
        .values()
        .map(|p| p.max_event_time.map(to_datetime))
        .collect();
    let caught_up: Vec<bool> = positions.values().map(|p| p.caught_up).collect();
    sqlx::query(table.upsert())
        .bind(topic)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&max_times)
        .bind(&caught_up)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
