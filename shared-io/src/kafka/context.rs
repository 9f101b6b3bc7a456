//! The consumer's callbacks: librdkafka's errors and statistics (the high watermarks behind
//! the lag), and in group mode the rebalance that starts assigned partitions at their stored
//! positions.

use crate::positions::{PartitionPosition, PositionTable, load_positions};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Consumer callbacks. In group mode, partitions the group assigns to this instance start at the
/// positions stored in Postgres, read while the rebalance is in progress, so a partition moves
/// between instances with its offset; the instance then drops what it held of revoked ones.
pub struct SourceContext {
    pub(super) group: Option<GroupAssigner>,
    /// The high watermark of each (topic, partition), from librdkafka's statistics.
    pub(super) high_watermarks: Mutex<BTreeMap<(String, i32), i64>>,
}

impl SourceContext {
    pub(super) fn new(group: Option<GroupAssigner>) -> Self {
        SourceContext {
            group,
            high_watermarks: Mutex::new(BTreeMap::new()),
        }
    }
}

pub(super) struct GroupAssigner {
    pub(super) pool: sqlx::PgPool,
    pub(super) table: PositionTable,
    pub(super) topic: String,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) changes: Mutex<Vec<AssignmentChange>>,
}

/// How many assignments any consumer group has made to this process (see
/// `EventSource::assignments`). Process-wide, so that joining again as a new member, with a new
/// consumer, still counts on from where the old one stopped.
pub(super) static ASSIGNMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a group member needs to join the group again as a new member.
pub(super) struct GroupRecipe {
    pub(super) config: ClientConfig,
    pub(super) pool: sqlx::PgPool,
    pub(super) table: PositionTable,
    /// Also how long leaving the group may take (see [`close_within`]).
    pub(super) session_timeout: Duration,
}

impl GroupRecipe {
    /// The `group.id` its consumers join.
    pub(super) fn group_id(&self) -> String {
        self.config.get("group.id").unwrap_or_default().to_string()
    }

    /// A consumer of the group, not yet subscribed.
    pub(super) fn consumer(
        &self,
        topic: &str,
    ) -> Result<StreamConsumer<SourceContext>, KafkaError> {
        self.config
            .create_with_context(SourceContext::new(Some(GroupAssigner {
                pool: self.pool.clone(),
                table: self.table,
                topic: topic.to_string(),
                runtime: tokio::runtime::Handle::current(),
                changes: Mutex::new(Vec::new()),
            })))
    }
}

pub(super) enum AssignmentChange {
    Assigned(BTreeMap<i32, PartitionPosition>),
    Revoked(Vec<i32>),
}

/// How often librdkafka reports the high watermarks behind [`EventSource::lag`].
pub(super) const STATISTICS_INTERVAL_MS: &str = "1000";

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // With `enable.partition.eof` every partition end also arrives here; it is no error,
        // and `next_batch` handles it.
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::trace!(reason, "partition end");
            return;
        }
        tracing::error!(%error, reason, "librdkafka");
    }

    fn stats(&self, statistics: Statistics) {
        let Ok(mut high) = self.high_watermarks.lock() else {
            return;
        };
        for (name, topic) in statistics.topics {
            // Partition -1 is librdkafka's internal one; -1 offsets are "not known yet".
            for (partition, stats) in topic.partitions {
                if partition >= 0 && stats.hi_offset >= 0 {
                    high.insert((name.clone(), partition), stats.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let Some(group) = &self.group else { return };
        let assigned: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let change = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let load = || {
                    group
                        .runtime
                        .block_on(load_positions(&group.pool, group.table, &group.topic))
                };
                // The callback runs inside a poll; on a runtime thread it may block only in place.
                let stored = match tokio::runtime::Handle::try_current() {
                    Ok(_) => tokio::task::block_in_place(load),
                    Err(_) => load(),
                };
                let stored = stored.unwrap_or_else(|e| {
                    // Reading from the start is safe, as the dedupe drops what was counted.
                    tracing::error!(error = %e, "could not read stored positions; starting assigned partitions from their beginning");
                    BTreeMap::new()
                });
                let mut positions = BTreeMap::new();
                for partition in &assigned {
                    let (offset, position) = start_of(stored.get(partition));
                    if let Err(e) =
                        partitions.set_partition_offset(&group.topic, *partition, offset)
                    {
                        tracing::error!(partition, error = %e, "could not position an assigned partition");
                    }
                    positions.insert(*partition, position);
                }
                if let Err(e) = consumer.assign(partitions) {
                    tracing::error!(error = %e, "assignment failed");
                }
                tracing::info!(topic = %group.topic, partitions = ?assigned, "assigned by the group");
                ASSIGNMENTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                AssignmentChange::Assigned(positions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _ = consumer.unassign();
                tracing::info!(topic = %group.topic, partitions = ?assigned, "revoked by the group");
                AssignmentChange::Revoked(assigned)
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                AssignmentChange::Revoked(assigned)
            }
        };
        if let Ok(mut changes) = group.changes.lock() {
            changes.push(change);
        }
    }
}

/// Where a consumer starts reading a partition: its stored position, or the partition's
/// beginning when nothing is stored (never read, or added to the topic since).
pub(super) fn start_of(stored: Option<&PartitionPosition>) -> (Offset, PartitionPosition) {
    match stored {
        Some(position) => (
            Offset::Offset(position.next_offset),
            PartitionPosition {
                caught_up: false,
                ..*position
            },
        ),
        None => (Offset::Beginning, PartitionPosition::default()),
    }
}
