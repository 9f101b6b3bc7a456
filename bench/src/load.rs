//! Benchmark input: contract-shaped events, and loading many of them into a topic quickly.

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use serde_json::json;
use shared_schema::time::{MINUTE_MS, Millis};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// Event types in the shares a storefront sees; every default metric gets input.
pub const KINDS: [&str; 8] = [
    "page_view",
    "page_view",
    "page_view",
    "page_view",
    "click",
    "purchase",
    "error",
    "login_failed",
];
pub const COUNTRIES: [&str; 6] = ["DE", "FR", "ES", "US", "JP", "BR"];

/// Generates the `index`-th event deterministically: `users` distinct users, event times spread
/// over the hour before `end` (or `with_span`).
pub struct EventMaker {
    rng: StdRng,
    pub users: u64,
    pub end: Millis,
    span: Millis,
}

impl EventMaker {
    pub fn new(seed: u64, users: u64, end: Millis) -> EventMaker {
        EventMaker {
            rng: StdRng::seed_from_u64(seed),
            users,
            end,
            span: 60 * MINUTE_MS,
        }
    }

    /// Event times spread over `span` before `end` instead of one hour.
    pub fn with_span(mut self, span: Millis) -> EventMaker {
        self.span = span;
        self
    }

    pub fn time(&mut self) -> Millis {
        self.end - self.rng.random_range(0..self.span)
    }

    /// The payload and its message key, the user id (CONTRACT §1).
    pub fn payload(&mut self, id: &str, time: Millis) -> (String, Vec<u8>) {
        let kind = KINDS[self.rng.random_range(0..KINDS.len())];
        let user = format!("u{}", self.rng.random_range(0..self.users));
        let mut event = json!({
            "event_id": id,
            "event_type": kind,
            "event_time": time,
            "schema_version": 2,
            "user_id": user,
            "product_id": format!("p{}", self.rng.random_range(0..200)),
            "country": COUNTRIES[self.rng.random_range(0..COUNTRIES.len())],
        });
        if kind == "purchase" {
            event["amount"] = json!(self.rng.random_range(100..50_000) as f64 / 100.0);
        }
        (user, event.to_string().into_bytes())
    }
}

/// A producer tuned for bulk loading.
pub fn bulk_producer(brokers: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "120000")
        .create()?)
}

/// Produces `count` events keyed by user id, each user's on one partition as a key-hashing
/// producer places them (CONTRACT §1), ids `{prefix}{i}`, and returns the end offset of every
/// partition.
pub async fn preload(
    brokers: &str,
    topic: &str,
    partitions: i32,
    prefix: &str,
    count: u64,
    maker: &mut EventMaker,
) -> Result<HashMap<i32, i64>> {
    let producer = bulk_producer(brokers)?;
    let messages = (0..count).map(|i| {
        let id = format!("{prefix}{i}");
        let time = maker.time();
        let (user, payload) = maker.payload(&id, time);
        let mut hasher = std::hash::DefaultHasher::new();
        user.hash(&mut hasher);
        let partition = (hasher.finish() % partitions as u64) as i32;
        (partition, user, payload)
    });
    platform_tests::send_all(&producer, topic, messages).await
}

/// The baseline consumer: plain rdkafka reading every partition from the start until `ends`,
/// touching each payload's bytes. Returns the messages read.
pub fn bare_consume(brokers: &str, topic: &str, ends: &HashMap<i32, i64>) -> Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in ends.keys() {
        assignment.add_partition_offset(topic, *partition, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut remaining: HashMap<i32, i64> = ends.clone();
    let (mut read, mut checksum) = (0u64, 0u64);
    while !remaining.is_empty() {
        let Some(message) = consumer.poll(Duration::from_secs(5)) else {
            continue;
        };
        let message = message?;
        checksum = checksum.wrapping_add(message.payload().map_or(0, |p| p.len() as u64));
        read += 1;
        if remaining
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&message.partition());
        }
    }
    std::hint::black_box(checksum);
    Ok(read)
}

/// The resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    Ok(kib / 1024.0)
}

/// A private platform (database, topic, lake) whose services log at `BENCH_SERVICE_LOG`
/// (default `warn`), so that logging does not weigh on the figures.
pub async fn bench_platform(name: &str, partitions: i32) -> Result<platform_tests::Platform> {
    let mut platform = platform_tests::Platform::new(name, partitions).await?;
    platform.extra_env.push((
        "RUST_LOG".into(),
        std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
    ));
    // The services' own default, not the scenarios' shorter one, unless asked otherwise.
    platform.extra_env.push((
        "PLATFORM_SPEED__BATCH_MAX_WAIT".into(),
        std::env::var("BENCH_SPEED_BATCH_MAX_WAIT").unwrap_or_else(|_| {
            let default = shared_schema::config::PlatformConfig::default();
            format!("{}ms", default.speed.batch_max_wait.millis())
        }),
    ));
    Ok(platform)
}
