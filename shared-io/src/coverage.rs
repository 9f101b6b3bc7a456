//! A promotion never hides an event the speed side was serving (CONTRACT §5.3).
//!
//! The lake's completeness rule looks at event times only: a burst of events for the hour
//! before the next T, counted by the speed layer but not landed yet, would vanish from the
//! answers when T moves past it. So the speed layer records, with every batch it commits, the
//! offsets of its events at or after T and their earliest event time (`speed_counted`). A batch
//! run may move T to `T2` only if, per partition, every such range the lake snapshot it computed
//! from has not wholly landed starts at or after `T2`: the lake then holds every message the
//! speed layer had counted for buckets before `T2`. The check runs again inside the promoting
//! transaction, after locking the speed layer's positions, so the ranges it reads are exactly
//! those counted when T moves.

use crate::kafka::SourcedEvent;
use chrono::{DateTime, Utc};
use shared_schema::time::{Millis, bucket_start, format_rfc3339, to_datetime};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::collections::BTreeMap;

/// Offsets of one partition the speed layer counted, with their earliest event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedRange {
    pub partition: i32,
    /// One past the last offset of the range.
    pub next_offset: i64,
    pub min_event_time: Millis,
}

#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    #[error(
        "the lake lags the speed layer: partition {partition} is landed up to offset {landed}, \
         but the speed layer counted messages up to offset {counted_to} with events from \
         {event_time}, before the cutover {cutover}; promoting would hide them. Wait for the \
         lander (`batch-layer land`) and run again, or choose a cutover at or before {floor}"
    )]
    LakeBehindSpeed {
        partition: i32,
        landed: i64,
        counted_to: i64,
        event_time: String,
        cutover: String,
        floor: String,
    },
    #[error("reading what the speed layer counted on topic {topic}: {source}")]
    ReadCounted { topic: String, source: sqlx::Error },
}

/// The range with the earliest event time among those `landed` (next offset per partition;
/// absent: nothing landed) does not wholly hold.
pub fn unlanded_floor(
    counted: &[CountedRange],
    landed: &BTreeMap<i32, i64>,
) -> Option<CountedRange> {
    counted
        .iter()
        .filter(|c| c.next_offset > landed.get(&c.partition).copied().unwrap_or(0))
        .min_by_key(|c| c.min_event_time)
        .copied()
}

/// Checks that moving T from `current` to `cutover` hides nothing the speed layer counted and
/// the lake lacks; a T that does not move hides nothing.
pub fn check(
    cutover: Millis,
    current: Option<Millis>,
    counted: &[CountedRange],
    landed: &BTreeMap<i32, i64>,
    alignment: Millis,
) -> Result<(), CoverageError> {
    if current.is_some_and(|t| cutover <= t) {
        return Ok(());
    }
    match unlanded_floor(counted, landed) {
        Some(floor) if floor.min_event_time < cutover => Err(CoverageError::LakeBehindSpeed {
            partition: floor.partition,
            landed: landed.get(&floor.partition).copied().unwrap_or(0),
            counted_to: floor.next_offset,
            event_time: format_rfc3339(floor.min_event_time),
            cutover: format_rfc3339(cutover),
            floor: format_rfc3339(bucket_start(floor.min_event_time, alignment)),
        }),
        _ => Ok(()),
    }
}

/// The automatic cutover lowered to the first bucket holding an event the speed layer counted
/// and the lake lacks, but never below the promoted T (T does not move backwards).
pub fn limit(
    chosen: Millis,
    current: Option<Millis>,
    counted: &[CountedRange],
    landed: &BTreeMap<i32, i64>,
    alignment: Millis,
) -> Millis {
    let limited = match unlanded_floor(counted, landed) {
        Some(floor) => chosen.min(bucket_start(floor.min_event_time, alignment)),
        None => chosen,
    };
    current.map_or(limited, |t| limited.max(t))
}

/// Per partition of `events`: the range of offsets of its events at or after `cutover`, and
/// their earliest event time. Pure, for [`record_counted`].
pub fn ranges_at_or_after(
    events: &[SourcedEvent],
    cutover: Option<Millis>,
) -> Vec<(i32, i64, CountedRange)> {
    let mut ranges: BTreeMap<i32, (i64, CountedRange)> = BTreeMap::new();
    for sourced in events {
        let time = sourced.event.event_time;
        if cutover.is_some_and(|t| time < t) {
            continue;
        }
        let entry = ranges.entry(sourced.partition).or_insert((
            sourced.offset,
            CountedRange {
                partition: sourced.partition,
                next_offset: sourced.offset + 1,
                min_event_time: time,
            },
        ));
        entry.0 = entry.0.min(sourced.offset);
        entry.1.next_offset = entry.1.next_offset.max(sourced.offset + 1);
        entry.1.min_event_time = entry.1.min_event_time.min(time);
    }
    ranges
        .into_iter()
        .map(|(partition, (first, range))| (partition, first, range))
        .collect()
}

/// Records, in the speed layer's batch transaction, the ranges of `events` at or after the
/// cutover promoted now. Reading T here without a lock is safe: a T read too early is lower,
/// which records more, never less.
pub async fn record_counted(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    events: &[SourcedEvent],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let cutover: Option<DateTime<Utc>> = sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
        "SELECT cutover FROM serving_state WHERE id = 1",
    )
    .fetch_optional(&mut **tx)
    .await?
    .flatten();
    let ranges = ranges_at_or_after(events, cutover.map(|t| t.timestamp_millis()));
    if ranges.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = ranges.iter().map(|(p, _, _)| *p).collect();
    let firsts: Vec<i64> = ranges.iter().map(|(_, f, _)| *f).collect();
    let nexts: Vec<i64> = ranges.iter().map(|(_, _, r)| r.next_offset).collect();
    let times: Vec<DateTime<Utc>> = ranges
        .iter()
        .map(|(_, _, r)| to_datetime(r.min_event_time))
        .collect();
    sqlx::query(
        "INSERT INTO speed_counted (topic, partition, first_offset, next_offset, min_event_time)
         SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::bigint[], $5::timestamptz[])
         ON CONFLICT (topic, partition, first_offset) DO UPDATE SET
             next_offset = GREATEST(speed_counted.next_offset, EXCLUDED.next_offset),
             min_event_time = LEAST(speed_counted.min_event_time, EXCLUDED.min_event_time)",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&firsts)
    .bind(&nexts)
    .bind(&times)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What the speed layer counted with event times before `before` (only those can stop a T;
/// `None`: all of it).
pub async fn read_counted(
    connection: &mut PgConnection,
    topic: &str,
    before: Option<Millis>,
) -> Result<Vec<CountedRange>, sqlx::Error> {
    let rows: Vec<(i32, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT partition, next_offset, min_event_time FROM speed_counted
         WHERE topic = $1 AND ($2::timestamptz IS NULL OR min_event_time < $2)",
    )
    .bind(topic)
    .bind(before.map(to_datetime))
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(partition, next_offset, t)| CountedRange {
            partition,
            next_offset,
            min_event_time: t.timestamp_millis(),
        })
        .collect())
}

/// Inside the promoting transaction: waits for the speed layer's batches in flight and holds
/// back new ones until the promotion commits (by locking its positions), then checks what it
/// has counted against the lake the view was computed from (`landed`).
pub async fn check_in_promotion(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    cutover: Millis,
    current: Option<Millis>,
    landed: &BTreeMap<i32, i64>,
    alignment: Millis,
) -> Result<(), CoverageError> {
    if current.is_some_and(|t| cutover <= t) {
        return Ok(());
    }
    sqlx::query(
        "SELECT partition FROM speed_offsets WHERE topic = $1 ORDER BY partition FOR SHARE",
    )
    .bind(topic)
    .execute(&mut **tx)
    .await
    .map_err(|source| CoverageError::ReadCounted {
        topic: topic.to_string(),
        source,
    })?;
    let counted = read_counted(tx, topic, Some(cutover))
        .await
        .map_err(|source| CoverageError::ReadCounted {
            topic: topic.to_string(),
            source,
        })?;
    check(cutover, current, &counted, landed, alignment)
}

/// Forgets the ranges the lake has landed whole. Best effort.
pub async fn prune_landed(pool: &PgPool, topic: &str) {
    let pruned = sqlx::query(
        "DELETE FROM speed_counted c USING lake_progress l
         WHERE c.topic = $1 AND l.topic = c.topic AND l.partition = c.partition
           AND c.next_offset <= l.next_offset",
    )
    .bind(topic)
    .execute(pool)
    .await;
    if let Err(e) = pruned {
        tracing::warn!(topic, error = %e, "could not prune the landed speed ranges; will retry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::event::Event;
    use shared_schema::time::MINUTE_MS;

    const M: Millis = MINUTE_MS;

    fn range(partition: i32, next_offset: i64, min_event_time: Millis) -> CountedRange {
        CountedRange {
            partition,
            next_offset,
            min_event_time,
        }
    }

    fn sourced(partition: i32, offset: i64, event_time: Millis) -> SourcedEvent {
        SourcedEvent {
            partition,
            offset,
            event: Event {
                event_id: format!("{partition}-{offset}"),
                event_type: "purchase".into(),
                event_time,
                schema_version: 2,
                user_id: None,
                product_id: None,
                amount_micros: None,
                city: None,
                country: None,
                profile: None,
            },
        }
    }

    #[test]
    fn a_cutover_past_an_unlanded_counted_event_is_refused() {
        let counted = [range(0, 10, 50 * M), range(1, 20, 30 * M + 5)];
        let landed = BTreeMap::from([(0, 10), (1, 15)]);
        // Partition 0's range is landed; partition 1's ends past the lake.
        let err = check(40 * M, Some(20 * M), &counted, &landed, M).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("partition 1") && text.contains("offset 15"),
            "{text}"
        );
        assert!(check(30 * M, Some(20 * M), &counted, &landed, M).is_ok());
        // Once landed, nothing stops it.
        let all = BTreeMap::from([(0, 10), (1, 20)]);
        assert!(check(40 * M, Some(20 * M), &counted, &all, M).is_ok());
        // A partition the lander never recorded has landed nothing.
        assert!(check(40 * M, None, &counted, &BTreeMap::from([(0, 10)]), M).is_err());
        // A T that does not move hides nothing.
        assert!(check(20 * M, Some(20 * M), &counted, &landed, M).is_ok());
    }

    #[test]
    fn the_automatic_cutover_stops_before_the_first_unlanded_bucket_but_never_goes_back() {
        let counted = [range(0, 10, 30 * M + 5)];
        let none = BTreeMap::new();
        assert_eq!(limit(40 * M, Some(20 * M), &counted, &none, M), 30 * M);
        assert_eq!(limit(40 * M, Some(35 * M), &counted, &none, M), 35 * M);
        assert_eq!(limit(25 * M, None, &counted, &none, M), 25 * M);
        let landed = BTreeMap::from([(0, 10)]);
        assert_eq!(limit(40 * M, Some(20 * M), &counted, &landed, M), 40 * M);
        // The limited T passes the check.
        let t = limit(40 * M, Some(20 * M), &counted, &none, M);
        assert!(check(t, Some(20 * M), &counted, &none, M).is_ok());
    }

    #[test]
    fn ranges_keep_only_events_at_or_after_t_per_partition() {
        let events = [
            sourced(0, 5, 10 * M),
            sourced(0, 6, 3 * M),
            sourced(0, 7, 12 * M),
            sourced(1, 2, 4 * M),
        ];
        let ranges = ranges_at_or_after(&events, Some(5 * M));
        assert_eq!(ranges, vec![(0, 5, range(0, 8, 10 * M))]);
        let all = ranges_at_or_after(&events, None);
        assert_eq!(
            all,
            vec![(0, 5, range(0, 8, 3 * M)), (1, 2, range(1, 3, 4 * M))]
        );
    }
}
