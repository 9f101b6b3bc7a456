//! Whether every partition of the topic has a live speed-layer consumer, judged from what
//! Postgres holds: the evidence read here, judged by the rules of [`shared_schema::liveness`]
//! (re-exported, so a caller needs one module).

use chrono::{DateTime, Utc};
pub use shared_schema::liveness::{
    PartitionEvidence, stalled_from, stalled_partitions, with_stall_gap,
};
use shared_schema::time::Millis;
use sqlx::PgConnection;

/// Every partition's evidence, and Postgres's clock, read on `connection` (in the caller's
/// snapshot, if it holds one).
pub async fn read_evidence(
    connection: &mut PgConnection,
    topic: &str,
) -> Result<(Vec<PartitionEvidence>, Millis), sqlx::Error> {
    type Row = (
        i32,
        Option<i64>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<i64>,
        Option<DateTime<Utc>>,
        Option<i64>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "WITH p AS (
             SELECT partition FROM speed_offsets WHERE topic = $1
             UNION SELECT partition FROM lake_progress WHERE topic = $1
             UNION SELECT partition FROM speed_partition_liveness WHERE topic = $1)
         SELECT p.partition, s.next_offset, s.updated_at, coalesce(s.watermark, s.max_event_time),
                s.max_event_time, l.next_offset, l.max_event_time, v.end_offset, v.behind_since
         FROM p
         LEFT JOIN speed_offsets s ON s.topic = $1 AND s.partition = p.partition
         LEFT JOIN lake_progress l ON l.topic = $1 AND l.partition = p.partition
         LEFT JOIN speed_partition_liveness v ON v.topic = $1 AND v.partition = p.partition
         ORDER BY p.partition",
    )
    .bind(topic)
    .fetch_all(&mut *connection)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *connection)
        .await?;
    let millis = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    let evidence = rows
        .into_iter()
        .map(
            |(partition, speed, updated, time, speed_max, lake, lake_max, end, since)| {
                PartitionEvidence {
                    partition,
                    speed_offset: speed,
                    speed_updated_at: millis(updated),
                    speed_time: millis(time),
                    speed_max_time: millis(speed_max),
                    lake_max_time: millis(lake_max),
                    lake_offset: lake,
                    end_offset: end,
                    behind_since: millis(since),
                }
            },
        )
        .collect();
    Ok((evidence, now.timestamp_millis()))
}
