//! The speed layer's event-time progress: per partition, the newest event time and when a
//! message last arrived, from which the watermark follows (see `shared_schema::watermark`).
//! Lateness is judged against it, and each committed batch stores its partitions' share of it
//! (`speed_offsets.watermark`), which the serving layer reads.

use chrono::{DateTime, Utc};
use shared_io::{kafka::Batch, positions::PartitionPosition};
use shared_schema::config::PlatformConfig;
use shared_schema::time::{Millis, to_datetime};
use shared_schema::watermark::{self, PartitionTime};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// Per partition: the newest event time, whether it is read to its end, and when a
/// message last arrived.
pub(crate) struct EventClock {
    max_event_time: BTreeMap<i32, Option<Millis>>,
    caught_up: BTreeMap<i32, bool>,
    last_message: HashMap<i32, Instant>,
    out_of_orderness: Millis,
    idle_timeout: Duration,
}

impl EventClock {
    pub(crate) fn new(stored: &BTreeMap<i32, PartitionPosition>, config: &PlatformConfig) -> Self {
        EventClock {
            max_event_time: stored
                .iter()
                .map(|(p, pos)| (*p, pos.max_event_time))
                .collect(),
            caught_up: BTreeMap::new(),
            last_message: HashMap::new(),
            out_of_orderness: config.speed.out_of_orderness.millis(),
            idle_timeout: config.speed.idle_timeout.as_std(),
        }
    }

    pub(crate) fn observe(&mut self, batch: &Batch) {
        let now = Instant::now();
        let partitions = batch
            .events
            .iter()
            .map(|e| e.partition)
            .chain(batch.bad.iter().map(|b| b.partition));
        for partition in partitions {
            self.last_message.insert(partition, now);
        }
        // The batch carries exactly the partitions this instance owns now.
        self.max_event_time = batch
            .positions
            .iter()
            .map(|(p, pos)| (*p, pos.max_event_time))
            .collect();
        self.caught_up = batch
            .positions
            .iter()
            .map(|(p, pos)| (*p, pos.caught_up))
            .collect();
    }

    fn is_idle(&self, partition: i32) -> bool {
        self.caught_up.get(&partition).copied().unwrap_or(false)
            && self
                .last_message
                .get(&partition)
                .is_none_or(|at| at.elapsed() >= self.idle_timeout)
    }

    fn partitions(&self) -> BTreeMap<i32, PartitionTime> {
        self.max_event_time
            .iter()
            .map(|(p, max)| {
                (
                    *p,
                    PartitionTime {
                        max_event_time: *max,
                        idle: self.is_idle(*p),
                    },
                )
            })
            .collect()
    }

    pub(crate) fn watermark(&self) -> Option<Millis> {
        let times: Vec<PartitionTime> = self.partitions().into_values().collect();
        watermark::watermark(&times, self.out_of_orderness)
    }

    /// Per partition of the batch: its contribution to the served watermark, `None` while idle.
    pub(crate) fn partition_watermarks(&self, batch: &Batch) -> Vec<(i32, Option<Millis>)> {
        let partitions = self.partitions();
        batch
            .positions
            .keys()
            .map(|p| {
                let newest = partitions
                    .get(p)
                    .filter(|t| !t.idle)
                    .and_then(|t| t.max_event_time);
                (*p, newest.map(|t| t.saturating_sub(self.out_of_orderness)))
            })
            .collect()
    }
}

/// Stores each partition's share of the watermark (`None` while idle) beside its position.
pub(crate) async fn store_watermarks(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    topic: &str,
    progress: &[(i32, Option<Millis>)],
) -> Result<(), sqlx::Error> {
    let partitions: Vec<i32> = progress.iter().map(|(p, _)| *p).collect();
    let watermarks: Vec<Option<DateTime<Utc>>> =
        progress.iter().map(|(_, w)| w.map(to_datetime)).collect();
    sqlx::query(
        "UPDATE speed_offsets o SET watermark = u.w
         FROM UNNEST($2::int[], $3::timestamptz[]) AS u(p, w)
         WHERE o.topic = $1 AND o.partition = u.p",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&watermarks)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
