//! Consumers and topic metadata: the consumer configuration every reader shares, waiting for a
//! topic, listing its partitions, and closing a consumer without hanging.

use super::SourceError;
use super::context::{STATISTICS_INTERVAL_MS, SourceContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use shared_schema::kafka_access::KafkaAccess;
use std::time::Duration;

/// Closes `consumer`, which leaves its group, waiting at most `within`. librdkafka's close
/// waits for the coordinator without a limit, and a coordinator in a stuck rebalance never
/// answers; the positions are in Postgres, so giving up loses nothing: the group hands the
/// partitions on after the session timeout instead of at once. Blocks the calling thread.
pub(super) fn close_within(consumer: StreamConsumer<SourceContext>, within: Duration) {
    let (closed, done) = std::sync::mpsc::channel();
    // Dropping closes it; on a thread of its own, so that a close that never ends is left
    // behind (and ends with the process).
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not close the consumer on a thread of its own");
        return;
    }
    if done.recv_timeout(within).is_err() {
        tracing::warn!(
            waited = ?within,
            "the consumer did not leave its group in time; going on without it"
        );
    }
}

/// A consumer outside any group, for a reader that assigns partitions itself.
pub fn plain_consumer(
    kafka: &KafkaAccess,
    group_id: &str,
) -> Result<StreamConsumer<SourceContext>, KafkaError> {
    consumer_config(kafka, group_id, DEFAULT_METADATA_REFRESH)
        .create_with_context(SourceContext::new(None))
}

/// librdkafka's own default, for consumers of topics that do not grow.
const DEFAULT_METADATA_REFRESH: Duration = Duration::from_secs(300);

/// Completes a client's configuration, every consumer's, producer's and admin's: the operator's
/// properties (`[kafka.properties]`) after the platform's tuning, so they may change it, then
/// the servers. The properties the platform's guarantees rest on were refused when the
/// configuration was loaded.
pub fn with_access<'c>(config: &'c mut ClientConfig, kafka: &KafkaAccess) -> &'c mut ClientConfig {
    for (key, value) in &kafka.properties.0 {
        config.set(key, value);
    }
    config.set("bootstrap.servers", &kafka.brokers)
}

pub(super) fn consumer_config(
    kafka: &KafkaAccess,
    group_id: &str,
    metadata_refresh: Duration,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // How long the broker may hold a fetch waiting for data: the default (500 ms) is most of
        // an event's way to an answer; an idle consumer sends 50 fetches a second instead of 2.
        .set("fetch.wait.max.ms", "20")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .set(
            "topic.metadata.refresh.interval.ms",
            metadata_refresh.as_millis().max(1).to_string(),
        );
    with_access(&mut config, kafka);
    config
}

pub async fn wait_for_partitions(
    consumer: &StreamConsumer<SourceContext>,
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

/// The partitions `topic` has now, from one metadata request (no waiting for the topic to
/// exist): what the batch layer judges the lake's completeness over.
pub async fn topic_partitions(kafka: &KafkaAccess, topic: &str) -> Result<Vec<i32>, SourceError> {
    const GROUP: &str = "topic-partitions";
    let consumer = plain_consumer(kafka, GROUP).map_err(SourceError::create_consumer(GROUP))?;
    partitions_of(&consumer, topic).map_err(|source| SourceError::ListPartitions {
        topic: topic.to_string(),
        source,
    })
}

pub(super) fn partitions_of(
    consumer: &StreamConsumer<SourceContext>,
    topic: &str,
) -> Result<Vec<i32>, KafkaError> {
    // Metadata calls block; they are short, and happen at start and every metadata refresh.
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
