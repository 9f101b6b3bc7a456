//! Reading a batch: polling, decoding and judging each message, positions and gaps.

use super::{Batch, EventSource, SourceError, SourcedEvent};
use crate::kafka::BadMessage;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use shared_schema::event::decode;
use shared_schema::time::now_millis;
use shared_schema::validity::judging_clock;
use std::time::Duration;
use tokio::time::Instant;

impl EventSource {
    /// Reads until `max_messages` messages are in hand or `max_wait` has passed, whichever is
    /// first; may return an empty batch. Cancel-safe: positions move only when a batch is
    /// returned, and the call after a dropped one first puts the consumer back at them, so the
    /// messages the dropped call had taken are read again.
    pub async fn next_batch(
        &mut self,
        max_messages: usize,
        max_wait: Duration,
    ) -> Result<Batch, SourceError> {
        let deadline = Instant::now() + max_wait;
        // A new partition's position is handed out at once, so that its (empty) progress is
        // stored before anything is read from it.
        let mut batch = Batch {
            advanced: !self.discover_partitions()?.is_empty(),
            ..Batch::default()
        };
        let mut reading = self.positions.clone();
        Self::apply_assignment_changes(self.consumer.context(), &mut self.positions, &mut reading);
        if self.batch_in_flight {
            self.rewind()?;
            reading = self.positions.clone();
        }
        self.batch_in_flight = true;
        let mut batch_bytes = 0usize;
        while batch.events.len() + batch.bad.len() < max_messages
            && batch_bytes < self.max_batch_bytes
        {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(position) = reading.get_mut(&partition)
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
            Self::apply_assignment_changes(
                self.consumer.context(),
                &mut self.positions,
                &mut reading,
            );
            // A message of a partition this instance no longer owns is its new owner's to count.
            let Some(position) = reading.get_mut(&partition) else {
                continue;
            };
            let expected = position.next_offset;
            if offset > expected {
                if self.gap_rereads.get(&partition) != Some(&expected) {
                    // The consumer is ahead of what was counted, as a fetch position left by
                    // a rebalance can be: read the gap again rather than lose it. A gap that
                    // comes back the same is in the log itself (compaction, transaction
                    // markers, retention).
                    tracing::warn!(
                        partition,
                        expected,
                        offset,
                        "offsets skipped; reading them again"
                    );
                    drop(message);
                    self.gap_rereads.insert(partition, expected);
                    self.seek(partition, expected)?;
                    continue;
                }
                tracing::warn!(partition, expected, offset, "offsets missing from the log");
                batch.missing_offsets += (offset - expected) as u64;
            }
            position.next_offset = offset + 1;
            position.caught_up = false;
            batch.advanced = true;
            batch_bytes = batch_bytes
                .saturating_add(message.payload_len())
                .saturating_add(message.key().map_or(0, <[u8]>::len));
            // Judged against the message's own timestamp, so every reader agrees (validity.rs).
            let clock = judging_clock(message.timestamp().to_millis(), now_millis());
            match decode(message.payload(), clock, self.max_skew_ms) {
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
        self.positions = reading;
        self.batch_in_flight = false;
        batch.positions = self.positions.clone();
        Ok(batch)
    }
}
