//! The broker side of a scenario: topics, a producer, and the group session timeout.

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::time::Duration;

/// Creates `topic` with `partitions` partitions; an existing topic is fine.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

pub fn producer(brokers: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()?)
}

/// Sends one message to an explicit partition and returns its offset.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &[u8],
    payload: &[u8],
) -> Result<i64> {
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(payload);
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("delivery failed: {e}"))?;
    Ok(delivery.offset)
}

/// Produces `messages` (partition, key, payload) to `topic` with many deliveries in flight, and
/// returns the end offset (one past the last message) of every partition written.
pub async fn send_all<K: AsRef<[u8]>, P: AsRef<[u8]>>(
    producer: &FutureProducer,
    topic: &str,
    messages: impl IntoIterator<Item = (i32, K, P)>,
) -> Result<HashMap<i32, i64>> {
    const IN_FLIGHT: usize = 20_000;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut pending = Vec::with_capacity(IN_FLIGHT);
    let mut messages = messages.into_iter().peekable();
    while let Some((partition, key, payload)) = messages.next() {
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(key.as_ref())
            .payload(payload.as_ref());
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => bail!("enqueueing: {e}"),
        }
        if pending.len() == IN_FLIGHT || messages.peek().is_none() {
            for delivery in pending.drain(..) {
                match delivery.await {
                    Ok(Ok(d)) => {
                        let end = ends.entry(d.partition).or_default();
                        *end = (*end).max(d.offset + 1);
                    }
                    Ok(Err((e, _))) => bail!("delivery failed: {e}"),
                    Err(_) => bail!("delivery cancelled"),
                }
            }
        }
    }
    Ok(ends)
}

/// The speed layer's consumer-group session timeout in every scenario.
///
/// A scenario starts the replacement of a SIGKILLed group member only after this has passed,
/// as a supervisor's restart delay would. tansu 0.6 (the test broker) can take a follower's
/// SyncGroup for the leader's when the dead leader's session expires during that very request,
/// and then forms the group with an empty assignment that nothing ever corrects: seen in about
/// one run in three of `walking_platform` when a replacement joined within the session timeout.
/// Apache Kafka's coordinator only accepts assignments from the leader it elected.
pub const GROUP_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Waits out [`GROUP_SESSION_TIMEOUT`] after a group member was killed, so that its replacement
/// joins a group the dead member has left.
pub async fn wait_out_group_session() {
    tokio::time::sleep(GROUP_SESSION_TIMEOUT + Duration::from_secs(1)).await;
}

/// How many partitions the broker lists for `topic`.
pub(crate) fn partition_count(brokers: &str, topic: &str) -> Result<i32> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let topic = metadata
        .topics()
        .first()
        .context("no topic in the metadata")?;
    Ok(i32::try_from(topic.partitions().len())?)
}
