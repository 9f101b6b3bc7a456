//! Where `speed-layer replay --from` starts: every partition of the events topic from its
//! beginning, an offset, or the first message produced at or after a time.

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use shared_io::kafka::{SourceError, plain_consumer, wait_for_partitions};
use shared_io::positions::PartitionPosition;
use shared_schema::kafka_access::KafkaAccess;
use shared_schema::time::Millis;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a replay starts reading each partition of the events topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStart {
    /// Every partition from its first retained message.
    Earliest,
    /// Every partition from this offset.
    Offset(i64),
    /// Every partition from its first message produced at or after this time (Kafka's
    /// timestamp index, not event time).
    Time(Millis),
}

impl std::str::FromStr for ReplayStart {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "earliest" {
            return Ok(ReplayStart::Earliest);
        }
        if let Ok(offset) = text.parse::<i64>() {
            return if offset >= 0 {
                Ok(ReplayStart::Offset(offset))
            } else {
                Err(format!("offset {offset} is negative"))
            };
        }
        shared_schema::time::parse_rfc3339(text)
            .map(ReplayStart::Time)
            .ok_or_else(|| {
                format!("`{text}` is neither `earliest`, an offset nor an RFC 3339 time")
            })
    }
}

/// The position of every partition of `topic` at `start`: what a replay passes to
/// [`EventSource::connect`].
pub async fn replay_positions(
    kafka: &KafkaAccess,
    topic: &str,
    start: ReplayStart,
) -> Result<BTreeMap<i32, PartitionPosition>, SourceError> {
    const GROUP: &str = "replay-positions";
    let consumer = plain_consumer(kafka, GROUP).map_err(SourceError::create_consumer(GROUP))?;
    let partitions = wait_for_partitions(&consumer, topic).await?;
    let offsets: Vec<(i32, i64)> = match start {
        // An absent partition starts at its beginning.
        ReplayStart::Earliest => Vec::new(),
        ReplayStart::Offset(offset) => partitions.iter().map(|p| (*p, offset)).collect(),
        ReplayStart::Time(time) => {
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                list.add_partition_offset(topic, *partition, Offset::Offset(time))
                    .map_err(SourceError::assign(topic))?;
            }
            let found = tokio::task::block_in_place(|| {
                consumer.offsets_for_times(list, Duration::from_secs(10))
            })
            .map_err(|source| SourceError::OffsetsForTimes {
                topic: topic.to_string(),
                source,
            })?;
            let mut offsets = Vec::new();
            for element in found.elements() {
                let offset = match element.offset() {
                    Offset::Offset(offset) => offset,
                    // Nothing produced at or after `time`: start at the end.
                    _ => {
                        tokio::task::block_in_place(|| {
                            consumer.fetch_watermarks(
                                topic,
                                element.partition(),
                                Duration::from_secs(10),
                            )
                        })
                        .map_err(|source| SourceError::ReadOffsets {
                            topic: topic.to_string(),
                            partition: element.partition(),
                            source,
                        })?
                        .1
                    }
                };
                offsets.push((element.partition(), offset));
            }
            offsets
        }
    };
    Ok(offsets
        .into_iter()
        .map(|(partition, next_offset)| {
            (
                partition,
                PartitionPosition {
                    next_offset,
                    ..PartitionPosition::default()
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_starts_parse() {
        assert_eq!("earliest".parse(), Ok(ReplayStart::Earliest));
        assert_eq!("42".parse(), Ok(ReplayStart::Offset(42)));
        assert!("-1".parse::<ReplayStart>().is_err());
        assert!(matches!(
            "2026-11-22T00:00:00Z".parse(),
            Ok(ReplayStart::Time(_))
        ));
        assert!("yesterday".parse::<ReplayStart>().is_err());
    }
}
