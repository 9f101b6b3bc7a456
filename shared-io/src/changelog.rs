//! Reading the `user_profiles` changelog topic, for the speed layer and the lander.
//!
//! Every reader reads every partition (the changelog is small and each reader needs all of
//! it), from its position in `changelog_positions`, which it stores in the same transaction as
//! what it made of the records. A record delivered twice (the publisher crashed between the
//! broker's ack and advancing its slot) carries the same LSN, and both readers key what they
//! keep by it, so it is applied once.

use crate::kafka::BadMessage;
use crate::kafka::{SourceContext, SourceError, plain_consumer, wait_for_partitions};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use shared_schema::kafka_access::KafkaAccess;
use shared_schema::profiles::{ChangeEnvelope, SourcedVersion};
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// What one read produced, and the next offset per partition after it.
#[derive(Debug, Default)]
pub struct ChangelogBatch {
    pub versions: Vec<SourcedVersion>,
    pub bad: Vec<BadMessage>,
    pub positions: BTreeMap<i32, i64>,
    /// Some record was read.
    pub advanced: bool,
}

pub struct ChangelogReader {
    consumer: StreamConsumer<SourceContext>,
    positions: BTreeMap<i32, i64>,
}

impl ChangelogReader {
    /// [`ChangelogReader::connect`] to the configured changelog topic as `consumer`, retried
    /// until the broker and Postgres answer.
    pub async fn connect_until_success(
        pool: &PgPool,
        config: &shared_schema::config::PlatformConfig,
        consumer: &str,
    ) -> ChangelogReader {
        let kafka = config.kafka_access();
        crate::retry::until_success("connecting to the profile changelog", || {
            ChangelogReader::connect(
                pool,
                &kafka,
                &config.cdc.group_id,
                &config.cdc.topic,
                consumer,
            )
        })
        .await
    }

    /// Waits for `topic` to exist, then assigns all its partitions at `consumer`'s stored
    /// positions (the beginning where none is stored).
    pub async fn connect(
        pool: &PgPool,
        kafka: &KafkaAccess,
        group_id: &str,
        topic: &str,
        consumer: &str,
    ) -> Result<ChangelogReader, ChangelogError> {
        let stored: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM changelog_positions WHERE consumer = $1 AND topic = $2",
        )
        .bind(consumer)
        .bind(topic)
        .fetch_all(pool)
        .await
        .map_err(|source| ChangelogError::ReadPositions {
            consumer: consumer.to_string(),
            topic: topic.to_string(),
            source,
        })?;
        let stored: BTreeMap<i32, i64> = stored.into_iter().collect();
        let kafka =
            plain_consumer(kafka, group_id).map_err(SourceError::create_consumer(group_id))?;
        let partitions = wait_for_partitions(&kafka, topic).await?;
        let mut assignment = TopicPartitionList::new();
        let mut positions = BTreeMap::new();
        for partition in partitions {
            let offset = stored.get(&partition).copied();
            assignment
                .add_partition_offset(
                    topic,
                    partition,
                    offset.map_or(Offset::Beginning, Offset::Offset),
                )
                .map_err(SourceError::assign(topic))?;
            positions.insert(partition, offset.unwrap_or(0));
        }
        kafka
            .assign(&assignment)
            .map_err(SourceError::assign(topic))?;
        tracing::info!(topic, consumer, "reading the profile changelog");
        Ok(ChangelogReader {
            consumer: kafka,
            positions,
        })
    }

    /// Reads until `max` records are in hand or `max_wait` has passed. Not cancel-safe: drop
    /// the reader with the call (a restart reads again from the stored positions).
    /// [`ChangelogReader::next_batch`], a failed read retried after a second.
    pub async fn next_batch_until_success(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> ChangelogBatch {
        loop {
            match self.next_batch(max, max_wait).await {
                Ok(batch) => return batch,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the profile changelog failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    pub async fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<ChangelogBatch, ChangelogError> {
        let deadline = Instant::now() + max_wait;
        let mut batch = ChangelogBatch::default();
        while batch.versions.len() + batch.bad.len() < max {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Err(KafkaError::PartitionEOF(_))) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error on the changelog");
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            let (partition, offset) = (message.partition(), message.offset());
            self.positions.insert(partition, offset + 1);
            batch.advanced = true;
            let decoded = message
                .payload()
                .ok_or_else(|| "message has no value".to_string())
                .and_then(|bytes| ChangeEnvelope::decode(bytes).map_err(|e| e.to_string()))
                .and_then(|envelope| envelope.version().map_err(|e| e.to_string()));
            match decoded {
                Ok(version) => batch.versions.push(SourcedVersion {
                    partition,
                    offset,
                    version,
                }),
                Err(reason) => batch.bad.push(BadMessage {
                    partition,
                    offset,
                    raw: message.payload().map(<[u8]>::to_vec),
                    reason,
                }),
            }
        }
        batch.positions = self.positions.clone();
        Ok(batch)
    }
}

/// Stores `consumer`'s positions in the caller's transaction.
pub async fn store_positions(
    tx: &mut Transaction<'_, Postgres>,
    consumer: &str,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    let partitions: Vec<i32> = positions.keys().copied().collect();
    let offsets: Vec<i64> = positions.values().copied().collect();
    sqlx::query(
        "INSERT INTO changelog_positions (consumer, topic, partition, next_offset)
         SELECT $1, $2, * FROM UNNEST($3::int[], $4::bigint[])
         ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
    )
    .bind(consumer)
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("could not read the changelog positions of {consumer} on topic {topic}: {source}")]
    ReadPositions {
        consumer: String,
        topic: String,
        source: sqlx::Error,
    },
}
