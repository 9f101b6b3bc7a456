//! Reading the event topic with offsets kept outside Kafka.
//!
//! Both consumers (the speed layer and the lander) store their position per partition in
//! Postgres, in the same transaction as what they made of the messages. An [`EventSource`] is
//! therefore assigned partitions at the stored positions rather than committing to Kafka, and
//! it hands out batches that carry the positions to store with them.

mod batch;
mod client;
mod context;
mod poll;
mod source;

pub use batch::{BadMessage, Batch, SourcedEvent};
pub use client::{plain_consumer, topic_partitions, wait_for_partitions};
pub use context::SourceContext;
use rdkafka::error::KafkaError;
pub use source::EventSource;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
}
