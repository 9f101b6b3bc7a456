//! Reading the event topic with offsets kept outside Kafka.
//!
//! Both consumers (the speed layer and the lander) store their position per partition in
//! Postgres, in the same transaction as what they made of the messages. An [`EventSource`] is
//! therefore assigned partitions at the stored positions rather than committing to Kafka, and
//! it hands out batches that carry the positions to store with them.

mod batch;
mod client;
mod context;
mod manual;
mod poll;
mod source;

pub use batch::{BadMessage, Batch, SourcedEvent};
pub use client::{plain_consumer, topic_partitions, wait_for_partitions, with_access};
pub use context::SourceContext;
use rdkafka::error::KafkaError;
pub use source::EventSource;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("could not create the Kafka consumer of group {group}: {source}")]
    CreateConsumer { group: String, source: KafkaError },
    #[error("could not list the Kafka partitions of topic {topic}: {source}")]
    ListPartitions { topic: String, source: KafkaError },
    #[error("could not assign the Kafka partitions of topic {topic}: {source}")]
    Assign { topic: String, source: KafkaError },
    #[error("could not subscribe to Kafka topic {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error("could not seek on Kafka topic {topic}: {source}")]
    Seek { topic: String, source: KafkaError },
    #[error("could not read the Kafka offsets of topic {topic} partition {partition}: {source}")]
    ReadOffsets {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("could not find the Kafka offsets of topic {topic} at a time: {source}")]
    OffsetsForTimes { topic: String, source: KafkaError },
}

impl SourceError {
    pub fn create_consumer(group: &str) -> impl FnOnce(KafkaError) -> SourceError + '_ {
        move |source| SourceError::CreateConsumer {
            group: group.to_string(),
            source,
        }
    }

    pub fn assign(topic: &str) -> impl FnOnce(KafkaError) -> SourceError + '_ {
        move |source| SourceError::Assign {
            topic: topic.to_string(),
            source,
        }
    }

    pub fn subscribe(topic: &str) -> impl FnOnce(KafkaError) -> SourceError + '_ {
        move |source| SourceError::Subscribe {
            topic: topic.to_string(),
            source,
        }
    }

    pub fn seek(topic: &str) -> impl FnOnce(KafkaError) -> SourceError + '_ {
        move |source| SourceError::Seek {
            topic: topic.to_string(),
            source,
        }
    }
}
