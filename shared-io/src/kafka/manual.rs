//! Assignment by hand: a reader that decides itself which partitions it reads (the speed
//! layer's Postgres leases) connects without a group and adds or drops partitions as it goes.

use super::client::{consumer_config, wait_for_partitions};
use super::context::{SourceContext, start_of};
use super::{EventSource, SourceError};
use crate::positions::PartitionPosition;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use shared_schema::kafka_access::KafkaAccess;
use shared_schema::time::Millis;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

impl EventSource {
    /// Connects to `topic` and reads nothing until partitions are given with [`Self::take`].
    /// Partitions added to the topic later are only listed (see [`Self::partitions`]).
    pub async fn connect_manual(
        kafka: &KafkaAccess,
        group_id: &str,
        topic: &str,
        max_skew_ms: Millis,
        metadata_refresh: Duration,
    ) -> Result<Self, SourceError> {
        let consumer = consumer_config(kafka, group_id, metadata_refresh)
            .create_with_context(SourceContext::new(None))
            .map_err(SourceError::create_consumer(group_id))?;
        let partitions = wait_for_partitions(&consumer, topic).await?;
        let mut source =
            EventSource::new(consumer, topic, &partitions, max_skew_ms, metadata_refresh);
        source.manual = true;
        Ok(source)
    }

    /// The topic's partitions as last listed (every `metadata_refresh`).
    pub fn partitions(&self) -> &BTreeSet<i32> {
        &self.known_partitions
    }

    /// Starts reading `taken`, each partition at its given position (its beginning where none
    /// is given). A partition read already is left as it is.
    pub fn take(
        &mut self,
        taken: &[i32],
        stored: &BTreeMap<i32, PartitionPosition>,
    ) -> Result<(), SourceError> {
        let mut assignment = TopicPartitionList::new();
        let mut positions = Vec::new();
        for partition in taken {
            if self.positions.contains_key(partition) {
                continue;
            }
            let (offset, position) = start_of(stored.get(partition));
            assignment
                .add_partition_offset(&self.topic, *partition, offset)
                .map_err(SourceError::assign(&self.topic))?;
            positions.push((*partition, position));
        }
        if positions.is_empty() {
            return Ok(());
        }
        self.consumer
            .incremental_assign(&assignment)
            .map_err(SourceError::assign(&self.topic))?;
        self.positions.extend(positions);
        Ok(())
    }

    /// Stops reading `given_up`; messages of theirs already fetched are skipped.
    pub fn give_up(&mut self, given_up: &[i32]) -> Result<(), SourceError> {
        let mut assignment = TopicPartitionList::new();
        for partition in given_up {
            if self.positions.remove(partition).is_some() {
                assignment.add_partition(&self.topic, *partition);
            }
        }
        if assignment.count() == 0 {
            return Ok(());
        }
        self.consumer
            .incremental_unassign(&assignment)
            .map_err(SourceError::assign(&self.topic))
    }
}
