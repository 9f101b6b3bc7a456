//! The event source: connecting (alone or in a group), assignment, lag and closing.

use super::SourceError;
use super::client::{close_within, consumer_config, partitions_of, wait_for_partitions};
use super::context::{AssignmentChange, GroupRecipe, SourceContext, start_of};
use crate::positions::{PartitionPosition, PositionTable};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use shared_schema::kafka_access::KafkaAccess;
use shared_schema::time::Millis;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// The event topic read at positions kept in Postgres.
pub struct EventSource {
    pub(super) consumer: StreamConsumer<SourceContext>,
    pub(super) topic: String,
    /// Positions after the last batch handed out, with the group's assignment changes applied.
    pub(super) positions: BTreeMap<i32, PartitionPosition>,
    pub(super) max_skew_ms: Millis,
    /// A `next_batch` call is under way; still set on entry means the last one was dropped.
    pub(super) batch_in_flight: bool,
    /// Without a group: the positions stored at connect, where a partition found later starts.
    pub(super) stored: BTreeMap<i32, PartitionPosition>,
    /// The topic's partitions as last listed; how often they are listed again, and when they
    /// last were.
    pub(super) known_partitions: BTreeSet<i32>,
    pub(super) metadata_refresh: Duration,
    pub(super) last_discovery: Instant,
    /// In a group: how to join it again.
    pub(super) group: Option<GroupRecipe>,
    /// Partitions are assigned by hand (see `manual`): new ones are listed, not assigned.
    pub(super) manual: bool,
    /// Per partition, the offset a gap was last read again from (see `next_batch`).
    pub(super) gap_rereads: BTreeMap<i32, i64>,
    /// A batch ends once its messages hold this many bytes (see `set_max_batch_bytes`).
    pub(super) max_batch_bytes: usize,
}

impl EventSource {
    /// Connects and assigns every partition of `topic` at its stored position (the start of the
    /// partition where none is stored). Waits, with backoff, for the topic to exist. Partitions
    /// added to the topic later are found every `metadata_refresh` and assigned the same way.
    pub async fn connect(
        kafka: &KafkaAccess,
        group_id: &str,
        topic: &str,
        stored: &BTreeMap<i32, PartitionPosition>,
        max_skew_ms: Millis,
        metadata_refresh: Duration,
    ) -> Result<Self, SourceError> {
        let consumer = consumer_config(kafka, group_id, metadata_refresh)
            .create_with_context(SourceContext::new(None))
            .map_err(SourceError::create_consumer(group_id))?;
        let partitions = wait_for_partitions(&consumer, topic).await?;
        let mut source =
            EventSource::new(consumer, topic, &partitions, max_skew_ms, metadata_refresh);
        source.stored = stored.clone();
        source.assign_new(&partitions)?;
        tracing::info!(topic, partitions = ?source.positions.keys().collect::<Vec<_>>(), "assigned");
        Ok(source)
    }

    /// Adds those of `partitions` not assigned yet to the assignment, each at its stored
    /// position or its beginning; returns them.
    pub(super) fn assign_new(&mut self, partitions: &[i32]) -> Result<Vec<i32>, SourceError> {
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.positions.contains_key(p))
            .collect();
        if new.is_empty() {
            return Ok(new);
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &new {
            let (offset, position) = start_of(self.stored.get(partition));
            assignment
                .add_partition_offset(&self.topic, *partition, offset)
                .map_err(SourceError::assign(&self.topic))?;
            self.positions.insert(*partition, position);
        }
        self.consumer
            .incremental_assign(&assignment)
            .map_err(SourceError::assign(&self.topic))?;
        Ok(new)
    }

    /// Lists the topic's partitions once `metadata_refresh` has passed since the last look.
    /// Assigned by hand, only lists them. Without a group, assigns the new ones and returns them. In a group, leaves it and joins
    /// again as a new member: librdkafka's group leader rejoins by itself on a partition count
    /// change, but a coordinator may hand a leader that rejoins unchanged its old assignment
    /// back (tansu 0.6 does; Apache Kafka rebalances), while a member leaving and a new one
    /// joining make every coordinator rebalance. A failed look is retried at the next refresh.
    pub(super) fn discover_partitions(&mut self) -> Result<Vec<i32>, SourceError> {
        if self.last_discovery.elapsed() < self.metadata_refresh {
            return Ok(Vec::new());
        }
        self.last_discovery = Instant::now();
        let listed = match partitions_of(&self.consumer, &self.topic) {
            Ok(partitions) => partitions,
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "could not list the topic's partitions; will look again");
                return Ok(Vec::new());
            }
        };
        let added: Vec<i32> = listed
            .into_iter()
            .filter(|p| self.known_partitions.insert(*p))
            .collect();
        if added.is_empty() || self.manual {
            return Ok(Vec::new());
        }
        if self.group.is_some() {
            tracing::info!(topic = %self.topic, partitions = ?added, "partitions added to the topic; joining the group again");
            self.rejoin_group()?;
            return Ok(Vec::new());
        }
        let new = self.assign_new(&added)?;
        tracing::info!(topic = %self.topic, partitions = ?new, "partitions added to the topic; assigned");
        Ok(new)
    }

    /// Joins consumer group `group_id`, which shares the partitions of `topic` among its
    /// members; each assigned partition starts at its position stored in `table`. Partitions
    /// added to the topic are seen within `metadata_refresh` and shared by a rebalance.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect_group(
        kafka: &KafkaAccess,
        group_id: &str,
        session_timeout: Duration,
        topic: &str,
        pool: sqlx::PgPool,
        table: PositionTable,
        max_skew_ms: Millis,
        metadata_refresh: Duration,
    ) -> Result<Self, SourceError> {
        let mut config = consumer_config(kafka, group_id, metadata_refresh);
        config.set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        );
        let recipe = GroupRecipe {
            config,
            pool,
            table,
            session_timeout,
        };
        let consumer = recipe
            .consumer(topic)
            .map_err(SourceError::create_consumer(group_id))?;
        let partitions = wait_for_partitions(&consumer, topic).await?;
        consumer
            .subscribe(&[topic])
            .map_err(SourceError::subscribe(topic))?;
        tracing::info!(topic, group_id, "joined the consumer group");
        let mut source =
            EventSource::new(consumer, topic, &partitions, max_skew_ms, metadata_refresh);
        source.group = Some(recipe);
        Ok(source)
    }

    /// A source of `topic` (whose partitions are `partitions`) reading nothing yet: outside any
    /// group, nothing stored, nothing assigned.
    pub(super) fn new(
        consumer: StreamConsumer<SourceContext>,
        topic: &str,
        partitions: &[i32],
        max_skew_ms: Millis,
        metadata_refresh: Duration,
    ) -> Self {
        EventSource {
            consumer,
            topic: topic.to_string(),
            positions: BTreeMap::new(),
            max_skew_ms,
            batch_in_flight: false,
            stored: BTreeMap::new(),
            known_partitions: partitions.iter().copied().collect(),
            metadata_refresh,
            last_discovery: Instant::now(),
            group: None,
            manual: false,
            gap_rereads: BTreeMap::new(),
            max_batch_bytes: usize::MAX,
        }
    }

    /// Applies the group's assignment changes to the positions this instance owns: `owned`, the
    /// positions of the last batch handed out, and `reading`, those of the batch being read.
    pub(super) fn apply_assignment_changes(
        context: &SourceContext,
        owned: &mut BTreeMap<i32, PartitionPosition>,
        reading: &mut BTreeMap<i32, PartitionPosition>,
    ) {
        let Some(group) = &context.group else { return };
        let changes = match group.changes.lock() {
            Ok(mut changes) => std::mem::take(&mut *changes),
            Err(_) => return,
        };
        for change in changes {
            match change {
                AssignmentChange::Assigned(assigned) => {
                    owned.extend(assigned.clone());
                    reading.extend(assigned);
                }
                AssignmentChange::Revoked(partitions) => {
                    for partition in partitions {
                        owned.remove(&partition);
                        reading.remove(&partition);
                    }
                }
            }
        }
    }

    /// Puts the consumer back at the positions of the last batch handed out, after a
    /// `next_batch` call was dropped with messages it had taken from the consumer.
    pub(super) fn rewind(&self) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        for (partition, position) in &self.positions {
            list.add_partition_offset(
                &self.topic,
                *partition,
                Offset::Offset(position.next_offset),
            )
            .map_err(SourceError::seek(&self.topic))?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        tracing::info!(positions = ?self.positions.iter().map(|(p, pos)| (*p, pos.next_offset)).collect::<Vec<_>>(), "rewinding after an interrupted batch");
        let result = tokio::task::block_in_place(|| {
            self.consumer.seek_partitions(list, Duration::from_secs(10))
        })
        .map_err(SourceError::seek(&self.topic))?;
        for element in result.elements() {
            if let Err(e) = element.error() {
                tracing::error!(partition = element.partition(), error = %e, "could not rewind a partition");
            }
        }
        Ok(())
    }

    pub(super) fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        tokio::task::block_in_place(|| {
            self.consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
        })
        .map_err(SourceError::seek(&self.topic))
    }

    /// How many times the group has assigned partitions to this member: a change means some
    /// partition may have had another owner in between. Without a group: always 0.
    pub fn assignments(&self) -> u64 {
        if self.consumer.context().group.is_some() {
            super::context::ASSIGNMENTS.load(std::sync::atomic::Ordering::SeqCst)
        } else {
            0
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Caps each batch by the bytes of its messages (keys and values) besides their count: a
    /// batch ends with the message that reaches `bytes`, so it holds at least one message.
    pub fn set_max_batch_bytes(&mut self, bytes: usize) {
        self.max_batch_bytes = bytes.max(1);
    }

    /// In a group: leaves it and joins again as a new member (a consumer with a fresh member
    /// id), which makes every coordinator rebalance. Without a group: nothing.
    pub fn rejoin_group(&mut self) -> Result<(), SourceError> {
        let Some(recipe) = &self.group else {
            return Ok(());
        };
        let group = recipe.group_id();
        let fresh = recipe
            .consumer(&self.topic)
            .map_err(SourceError::create_consumer(&group))?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        // Closing leaves the group at once: the group need not wait out the old session.
        tokio::task::block_in_place(|| close_within(old, recipe.session_timeout));
        // What the old member held, the group assigns again.
        self.positions.clear();
        self.batch_in_flight = false;
        self.consumer
            .subscribe(&[&self.topic])
            .map_err(SourceError::subscribe(&self.topic))
    }

    /// Whether a consumer group assigns the partitions.
    pub fn in_group(&self) -> bool {
        self.group.is_some()
    }

    /// The partitions this instance owns, as of the last batch handed out.
    pub fn owned_partitions(&self) -> Vec<i32> {
        self.positions.keys().copied().collect()
    }

    /// The broker's end offset (high watermark) of every partition of the topic, asked of the
    /// broker now: a partition owned by no one reports none in the statistics. Blocks the
    /// calling thread for at most `timeout` per partition.
    pub fn end_offsets(&self, timeout: Duration) -> Result<BTreeMap<i32, i64>, SourceError> {
        let mut ends = BTreeMap::new();
        for partition in &self.known_partitions {
            let (_, high) = tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_watermarks(&self.topic, *partition, timeout)
            })
            .map_err(|source| SourceError::ReadOffsets {
                topic: self.topic.clone(),
                partition: *partition,
                source,
            })?;
            ends.insert(*partition, high);
        }
        Ok(ends)
    }

    /// Leaves the consumer group, if in one (see [`close_within`]), and closes the consumer.
    pub fn close(self) {
        match self.group.map(|recipe| recipe.session_timeout) {
            Some(within) => tokio::task::block_in_place(|| close_within(self.consumer, within)),
            None => drop(self.consumer),
        }
    }

    /// Messages not yet read, per owned partition: the high watermark librdkafka last reported
    /// in its statistics (from its fetch responses, so no request to the broker), minus the
    /// next offset. A partition with no reported watermark yet is left out.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        let Ok(high) = self.consumer.context().high_watermarks.lock() else {
            return BTreeMap::new();
        };
        self.positions
            .iter()
            .filter_map(|(partition, position)| {
                let high = high.get(&(self.topic.clone(), *partition))?;
                Some((*partition, (high - position.next_offset).max(0)))
            })
            .collect()
    }
}
