//! Reading the event topic with offsets kept outside Kafka.
//!
//! Both consumers (the speed layer and the lander) store their position per partition in
//! Postgres, in the same transaction as what they made of the messages. An [`EventSource`] is
//! therefore assigned partitions at the stored positions rather than committing to Kafka, and
//! it hands out batches that carry the positions to store with them.

use crate::event::{Event, decode};
use crate::quarantine::BadMessage;
use crate::time::{Millis, now_millis};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

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

/// A decoded event and where it was read.
#[derive(Debug, Clone)]
pub struct SourcedEvent {
    pub partition: i32,
    pub offset: i64,
    pub event: Event,
}

/// What one poll produced, and the positions after it (for every assigned partition).
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<SourcedEvent>,
    pub bad: Vec<BadMessage>,
    pub positions: BTreeMap<i32, PartitionPosition>,
    /// Some partition's position changed (a message read, or its end reached).
    pub advanced: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
}

pub struct EventSource {
    consumer: StreamConsumer,
    topic: String,
    positions: BTreeMap<i32, PartitionPosition>,
    max_skew_ms: Millis,
}

impl EventSource {
    /// Connects and assigns every partition of `topic` at its stored position (the start of the
    /// partition where none is stored). Waits, with backoff, for the topic to exist.
    pub async fn connect(
        brokers: &str,
        group_id: &str,
        topic: &str,
        stored: &BTreeMap<i32, PartitionPosition>,
        max_skew_ms: Millis,
    ) -> Result<Self, SourceError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .create()?;
        let partitions = wait_for_partitions(&consumer, topic).await?;
        let mut assignment = TopicPartitionList::new();
        let mut positions = BTreeMap::new();
        for partition in partitions {
            let position = stored.get(&partition).copied().unwrap_or_default();
            let offset = match stored.get(&partition) {
                Some(p) => Offset::Offset(p.next_offset),
                None => Offset::Beginning,
            };
            assignment.add_partition_offset(topic, partition, offset)?;
            positions.insert(
                partition,
                PartitionPosition {
                    caught_up: false,
                    ..position
                },
            );
        }
        consumer.assign(&assignment)?;
        tracing::info!(topic, partitions = ?positions.keys().collect::<Vec<_>>(), "assigned");
        Ok(EventSource {
            consumer,
            topic: topic.to_string(),
            positions,
            max_skew_ms,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Reads until `max_messages` messages are in hand or `max_wait` has passed, whichever is
    /// first; may return an empty batch. Cancel-safe: a dropped call loses nothing that was not
    /// already in memory, and positions only move when the caller stores a batch's.
    pub async fn next_batch(
        &mut self,
        max_messages: usize,
        max_wait: Duration,
    ) -> Result<Batch, SourceError> {
        let deadline = Instant::now() + max_wait;
        let mut batch = Batch::default();
        while batch.events.len() + batch.bad.len() < max_messages {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(position) = self.positions.get_mut(&partition)
                        && !position.caught_up
                    {
                        position.caught_up = true;
                        batch.advanced = true;
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    // Transient broker errors surface here; librdkafka reconnects by itself.
                    tracing::warn!(error = %e, "Kafka consumer error");
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            let (partition, offset) = (message.partition(), message.offset());
            let position = self.positions.entry(partition).or_default();
            position.next_offset = offset + 1;
            position.caught_up = false;
            batch.advanced = true;
            match decode(message.payload(), now_millis(), self.max_skew_ms) {
                Ok(event) => {
                    position.max_event_time = Some(
                        position
                            .max_event_time
                            .map_or(event.event_time, |m| m.max(event.event_time)),
                    );
                    batch.events.push(SourcedEvent {
                        partition,
                        offset,
                        event,
                    });
                }
                Err(reason) => {
                    tracing::debug!(partition, offset, %reason, "quarantined");
                    batch.bad.push(BadMessage {
                        partition,
                        offset,
                        raw: message.payload().map(<[u8]>::to_vec),
                        reason: reason.to_string(),
                    });
                }
            }
        }
        batch.positions = self.positions.clone();
        Ok(batch)
    }
}

async fn wait_for_partitions(
    consumer: &StreamConsumer,
    topic: &str,
) -> Result<Vec<i32>, SourceError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match partitions_of(consumer, topic) {
            Ok(partitions) if !partitions.is_empty() => return Ok(partitions),
            Ok(_) => tracing::info!(topic, "waiting for the topic to be created"),
            Err(e) => tracing::warn!(topic, error = %e, "could not read topic metadata"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn partitions_of(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    // Metadata calls block; they are short and happen only at start.
    let metadata = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
    })?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}
