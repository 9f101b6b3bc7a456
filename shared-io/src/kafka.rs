//! Reading the event topic with offsets kept outside Kafka.
//!
//! Both consumers (the speed layer and the lander) store their position per partition in
//! Postgres, in the same transaction as what they made of the messages. An [`EventSource`] is
//! therefore assigned partitions at the stored positions rather than committing to Kafka, and
//! it hands out batches that carry the positions to store with them.

use crate::positions::{PositionTable, load_positions};
use crate::quarantine::BadMessage;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use shared_schema::event::{Event, decode};
use shared_schema::time::{Millis, now_millis};
use shared_schema::validity::judging_clock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
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
    /// Offsets passed over because the broker, asked for them twice, returned a later one: not
    /// in the log (compaction, transaction markers, retention), or a broker serving a fetch
    /// that starts inside a record batch from the next batch on. Counted, never silent.
    pub missing_offsets: u64,
}

impl Batch {
    /// Splits the batch into at most `groups` batches that hold whole partitions (dealt in turn
    /// by partition number), each with its partitions' events, bad messages and positions. They
    /// can be committed in transactions of their own, like the batches of two instances that
    /// share the topic.
    pub fn split_by_partition(self, groups: usize) -> Vec<Batch> {
        let groups = groups.max(1).min(self.positions.len().max(1));
        let group_of: HashMap<i32, usize> = self
            .positions
            .keys()
            .enumerate()
            .map(|(i, p)| (*p, i % groups))
            .collect();
        let mut split: Vec<Batch> = (0..groups)
            .map(|_| Batch {
                advanced: self.advanced,
                ..Batch::default()
            })
            .collect();
        // A partition without a position (none in practice) goes to the first group.
        let index = |partition: i32| group_of.get(&partition).copied().unwrap_or(0);
        for event in self.events {
            split[index(event.partition)].events.push(event);
        }
        for bad in self.bad {
            split[index(bad.partition)].bad.push(bad);
        }
        for (partition, position) in self.positions {
            split[index(partition)]
                .positions
                .insert(partition, position);
        }
        split
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Consumer callbacks. In group mode, partitions the group assigns to this instance start at the
/// positions stored in Postgres, read while the rebalance is in progress, so a partition moves
/// between instances with its offset; the instance then drops what it held of revoked ones.
pub struct SourceContext {
    group: Option<GroupAssigner>,
    /// The high watermark of each (topic, partition), from librdkafka's statistics.
    high_watermarks: Mutex<BTreeMap<(String, i32), i64>>,
}

impl SourceContext {
    fn new(group: Option<GroupAssigner>) -> Self {
        SourceContext {
            group,
            high_watermarks: Mutex::new(BTreeMap::new()),
        }
    }
}

struct GroupAssigner {
    pool: sqlx::PgPool,
    table: PositionTable,
    topic: String,
    runtime: tokio::runtime::Handle,
    changes: Mutex<Vec<AssignmentChange>>,
}

/// What a group member needs to join the group again as a new member.
struct GroupRecipe {
    config: ClientConfig,
    pool: sqlx::PgPool,
    table: PositionTable,
    /// Also how long leaving the group may take (see [`close_within`]).
    session_timeout: Duration,
}

impl GroupRecipe {
    /// A consumer of the group, not yet subscribed.
    fn consumer(&self, topic: &str) -> Result<StreamConsumer<SourceContext>, KafkaError> {
        self.config
            .create_with_context(SourceContext::new(Some(GroupAssigner {
                pool: self.pool.clone(),
                table: self.table,
                topic: topic.to_string(),
                runtime: tokio::runtime::Handle::current(),
                changes: Mutex::new(Vec::new()),
            })))
    }
}

enum AssignmentChange {
    Assigned(BTreeMap<i32, PartitionPosition>),
    Revoked(Vec<i32>),
}

/// How often librdkafka reports the high watermarks behind [`EventSource::lag`].
const STATISTICS_INTERVAL_MS: &str = "1000";

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // With `enable.partition.eof` every partition end also arrives here; it is no error,
        // and `next_batch` handles it.
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::trace!(reason, "partition end");
            return;
        }
        tracing::error!(%error, reason, "librdkafka");
    }

    fn stats(&self, statistics: Statistics) {
        let Ok(mut high) = self.high_watermarks.lock() else {
            return;
        };
        for (name, topic) in statistics.topics {
            // Partition -1 is librdkafka's internal one; -1 offsets are "not known yet".
            for (partition, stats) in topic.partitions {
                if partition >= 0 && stats.hi_offset >= 0 {
                    high.insert((name.clone(), partition), stats.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let Some(group) = &self.group else { return };
        let assigned: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let change = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let load = || {
                    group
                        .runtime
                        .block_on(load_positions(&group.pool, group.table, &group.topic))
                };
                // The callback runs inside a poll; on a runtime thread it may block only in place.
                let stored = match tokio::runtime::Handle::try_current() {
                    Ok(_) => tokio::task::block_in_place(load),
                    Err(_) => load(),
                };
                let stored = stored.unwrap_or_else(|e| {
                    // Reading from the start is safe, as the dedupe drops what was counted.
                    tracing::error!(error = %e, "could not read stored positions; starting assigned partitions from their beginning");
                    BTreeMap::new()
                });
                let mut positions = BTreeMap::new();
                for partition in &assigned {
                    let (offset, position) = start_of(stored.get(partition));
                    if let Err(e) =
                        partitions.set_partition_offset(&group.topic, *partition, offset)
                    {
                        tracing::error!(partition, error = %e, "could not position an assigned partition");
                    }
                    positions.insert(*partition, position);
                }
                if let Err(e) = consumer.assign(partitions) {
                    tracing::error!(error = %e, "assignment failed");
                }
                tracing::info!(topic = %group.topic, partitions = ?assigned, "assigned by the group");
                AssignmentChange::Assigned(positions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _ = consumer.unassign();
                tracing::info!(topic = %group.topic, partitions = ?assigned, "revoked by the group");
                AssignmentChange::Revoked(assigned)
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                AssignmentChange::Revoked(assigned)
            }
        };
        if let Ok(mut changes) = group.changes.lock() {
            changes.push(change);
        }
    }
}

pub struct EventSource {
    consumer: StreamConsumer<SourceContext>,
    topic: String,
    /// Positions after the last batch handed out, with the group's assignment changes applied.
    positions: BTreeMap<i32, PartitionPosition>,
    max_skew_ms: Millis,
    /// A `next_batch` call is under way; still set on entry means the last one was dropped.
    batch_in_flight: bool,
    /// Without a group: the positions stored at connect, where a partition found later starts.
    stored: BTreeMap<i32, PartitionPosition>,
    /// The topic's partitions as last listed; how often they are listed again, and when they
    /// last were.
    known_partitions: BTreeSet<i32>,
    metadata_refresh: Duration,
    last_discovery: Instant,
    /// In a group: how to join it again.
    group: Option<GroupRecipe>,
    /// Per partition, the offset a gap was last read again from (see `next_batch`).
    gap_rereads: BTreeMap<i32, i64>,
    /// A batch ends once its messages hold this many bytes (see `set_max_batch_bytes`).
    max_batch_bytes: usize,
}

/// Where a consumer starts reading a partition: its stored position, or the partition's
/// beginning when nothing is stored (never read, or added to the topic since).
fn start_of(stored: Option<&PartitionPosition>) -> (Offset, PartitionPosition) {
    match stored {
        Some(position) => (
            Offset::Offset(position.next_offset),
            PartitionPosition {
                caught_up: false,
                ..*position
            },
        ),
        None => (Offset::Beginning, PartitionPosition::default()),
    }
}

impl EventSource {
    /// Connects and assigns every partition of `topic` at its stored position (the start of the
    /// partition where none is stored). Waits, with backoff, for the topic to exist. Partitions
    /// added to the topic later are found every `metadata_refresh` and assigned the same way.
    pub async fn connect(
        brokers: &str,
        group_id: &str,
        topic: &str,
        stored: &BTreeMap<i32, PartitionPosition>,
        max_skew_ms: Millis,
        metadata_refresh: Duration,
    ) -> Result<Self, SourceError> {
        let consumer = consumer_config(brokers, group_id, metadata_refresh)
            .create_with_context(SourceContext::new(None))?;
        let partitions = wait_for_partitions(&consumer, topic).await?;
        let mut source = EventSource {
            consumer,
            topic: topic.to_string(),
            positions: BTreeMap::new(),
            max_skew_ms,
            batch_in_flight: false,
            stored: stored.clone(),
            known_partitions: partitions.iter().copied().collect(),
            metadata_refresh,
            last_discovery: Instant::now(),
            group: None,
            gap_rereads: BTreeMap::new(),
            max_batch_bytes: usize::MAX,
        };
        source.assign_new(&partitions)?;
        tracing::info!(topic, partitions = ?source.positions.keys().collect::<Vec<_>>(), "assigned");
        Ok(source)
    }

    /// Adds those of `partitions` not assigned yet to the assignment, each at its stored
    /// position or its beginning; returns them.
    fn assign_new(&mut self, partitions: &[i32]) -> Result<Vec<i32>, SourceError> {
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.positions.contains_key(p))
            .collect();
        if new.is_empty() {
            return Ok(new);
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &new {
            let (offset, position) = start_of(self.stored.get(partition));
            assignment.add_partition_offset(&self.topic, *partition, offset)?;
            self.positions.insert(*partition, position);
        }
        self.consumer.incremental_assign(&assignment)?;
        Ok(new)
    }

    /// Lists the topic's partitions once `metadata_refresh` has passed since the last look.
    /// Without a group, assigns the new ones and returns them. In a group, leaves it and joins
    /// again as a new member: librdkafka's group leader rejoins by itself on a partition count
    /// change, but a coordinator may hand a leader that rejoins unchanged its old assignment
    /// back (tansu 0.6 does; Apache Kafka rebalances), while a member leaving and a new one
    /// joining make every coordinator rebalance. A failed look is retried at the next refresh.
    fn discover_partitions(&mut self) -> Result<Vec<i32>, SourceError> {
        if self.last_discovery.elapsed() < self.metadata_refresh {
            return Ok(Vec::new());
        }
        self.last_discovery = Instant::now();
        let listed = match partitions_of(&self.consumer, &self.topic) {
            Ok(partitions) => partitions,
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "could not list the topic's partitions; will look again");
                return Ok(Vec::new());
            }
        };
        let added: Vec<i32> = listed
            .into_iter()
            .filter(|p| self.known_partitions.insert(*p))
            .collect();
        if added.is_empty() {
            return Ok(added);
        }
        if self.group.is_some() {
            tracing::info!(topic = %self.topic, partitions = ?added, "partitions added to the topic; joining the group again");
            self.rejoin_group()?;
            return Ok(Vec::new());
        }
        let new = self.assign_new(&added)?;
        tracing::info!(topic = %self.topic, partitions = ?new, "partitions added to the topic; assigned");
        Ok(new)
    }

    /// Joins consumer group `group_id`, which shares the partitions of `topic` among its
    /// members; each assigned partition starts at its position stored in `table`. Partitions
    /// added to the topic are seen within `metadata_refresh` and shared by a rebalance.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect_group(
        brokers: &str,
        group_id: &str,
        session_timeout: Duration,
        topic: &str,
        pool: sqlx::PgPool,
        table: PositionTable,
        max_skew_ms: Millis,
        metadata_refresh: Duration,
    ) -> Result<Self, SourceError> {
        let mut config = consumer_config(brokers, group_id, metadata_refresh);
        config.set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        );
        let recipe = GroupRecipe {
            config,
            pool,
            table,
            session_timeout,
        };
        let consumer = recipe.consumer(topic)?;
        let partitions = wait_for_partitions(&consumer, topic).await?;
        consumer.subscribe(&[topic])?;
        tracing::info!(topic, group_id, "joined the consumer group");
        Ok(EventSource {
            consumer,
            topic: topic.to_string(),
            positions: BTreeMap::new(),
            max_skew_ms,
            batch_in_flight: false,
            stored: BTreeMap::new(),
            known_partitions: partitions.into_iter().collect(),
            metadata_refresh,
            last_discovery: Instant::now(),
            group: Some(recipe),
            gap_rereads: BTreeMap::new(),
            max_batch_bytes: usize::MAX,
        })
    }

    /// Applies the group's assignment changes to the positions this instance owns: `owned`, the
    /// positions of the last batch handed out, and `reading`, those of the batch being read.
    fn apply_assignment_changes(
        context: &SourceContext,
        owned: &mut BTreeMap<i32, PartitionPosition>,
        reading: &mut BTreeMap<i32, PartitionPosition>,
    ) {
        let Some(group) = &context.group else { return };
        let changes = match group.changes.lock() {
            Ok(mut changes) => std::mem::take(&mut *changes),
            Err(_) => return,
        };
        for change in changes {
            match change {
                AssignmentChange::Assigned(assigned) => {
                    owned.extend(assigned.clone());
                    reading.extend(assigned);
                }
                AssignmentChange::Revoked(partitions) => {
                    for partition in partitions {
                        owned.remove(&partition);
                        reading.remove(&partition);
                    }
                }
            }
        }
    }

    /// Puts the consumer back at the positions of the last batch handed out, after a
    /// `next_batch` call was dropped with messages it had taken from the consumer.
    fn rewind(&self) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        for (partition, position) in &self.positions {
            list.add_partition_offset(
                &self.topic,
                *partition,
                Offset::Offset(position.next_offset),
            )?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        tracing::info!(positions = ?self.positions.iter().map(|(p, pos)| (*p, pos.next_offset)).collect::<Vec<_>>(), "rewinding after an interrupted batch");
        let result = tokio::task::block_in_place(|| {
            self.consumer.seek_partitions(list, Duration::from_secs(10))
        })?;
        for element in result.elements() {
            if let Err(e) = element.error() {
                tracing::error!(partition = element.partition(), error = %e, "could not rewind a partition");
            }
        }
        Ok(())
    }

    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        tokio::task::block_in_place(|| {
            self.consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
        })?;
        Ok(())
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Caps each batch by the bytes of its messages (keys and values) besides their count: a
    /// batch ends with the message that reaches `bytes`, so it holds at least one message.
    pub fn set_max_batch_bytes(&mut self, bytes: usize) {
        self.max_batch_bytes = bytes.max(1);
    }

    /// In a group: leaves it and joins again as a new member (a consumer with a fresh member
    /// id), which makes every coordinator rebalance. Without a group: nothing.
    pub fn rejoin_group(&mut self) -> Result<(), SourceError> {
        let Some(recipe) = &self.group else {
            return Ok(());
        };
        let old = std::mem::replace(&mut self.consumer, recipe.consumer(&self.topic)?);
        // Closing leaves the group at once: the group need not wait out the old session.
        tokio::task::block_in_place(|| close_within(old, recipe.session_timeout));
        // What the old member held, the group assigns again.
        self.positions.clear();
        self.batch_in_flight = false;
        self.consumer.subscribe(&[&self.topic])?;
        Ok(())
    }

    /// The partitions this instance owns, as of the last batch handed out.
    pub fn owned_partitions(&self) -> Vec<i32> {
        self.positions.keys().copied().collect()
    }

    /// The broker's end offset (high watermark) of every partition of the topic, asked of the
    /// broker now: a partition owned by no one reports none in the statistics. Blocks the
    /// calling thread for at most `timeout` per partition.
    pub fn end_offsets(&self, timeout: Duration) -> Result<BTreeMap<i32, i64>, SourceError> {
        let mut ends = BTreeMap::new();
        for partition in &self.known_partitions {
            let (_, high) = tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_watermarks(&self.topic, *partition, timeout)
            })?;
            ends.insert(*partition, high);
        }
        Ok(ends)
    }

    /// Leaves the consumer group, if in one (see [`close_within`]), and closes the consumer.
    pub fn close(self) {
        match self.group.map(|recipe| recipe.session_timeout) {
            Some(within) => tokio::task::block_in_place(|| close_within(self.consumer, within)),
            None => drop(self.consumer),
        }
    }

    /// Messages not yet read, per owned partition: the high watermark librdkafka last reported
    /// in its statistics (from its fetch responses, so no request to the broker), minus the
    /// next offset. A partition with no reported watermark yet is left out.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        let Ok(high) = self.consumer.context().high_watermarks.lock() else {
            return BTreeMap::new();
        };
        self.positions
            .iter()
            .filter_map(|(partition, position)| {
                let high = high.get(&(self.topic.clone(), *partition))?;
                Some((*partition, (high - position.next_offset).max(0)))
            })
            .collect()
    }

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
        let mut batch = Batch::default();
        // A new partition's position is handed out at once, so that its (empty) progress is
        // stored before anything is read from it.
        batch.advanced = !self.discover_partitions()?.is_empty();
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

/// Closes `consumer`, which leaves its group, waiting at most `within`. librdkafka's close
/// waits for the coordinator without a limit, and a coordinator in a stuck rebalance never
/// answers; the positions are in Postgres, so giving up loses nothing: the group hands the
/// partitions on after the session timeout instead of at once. Blocks the calling thread.
fn close_within(consumer: StreamConsumer<SourceContext>, within: Duration) {
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
pub(crate) fn plain_consumer(
    brokers: &str,
    group_id: &str,
) -> Result<StreamConsumer<SourceContext>, KafkaError> {
    consumer_config(brokers, group_id, DEFAULT_METADATA_REFRESH)
        .create_with_context(SourceContext::new(None))
}

/// librdkafka's own default, for consumers of topics that do not grow.
const DEFAULT_METADATA_REFRESH: Duration = Duration::from_secs(300);

fn consumer_config(brokers: &str, group_id: &str, metadata_refresh: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .set(
            "topic.metadata.refresh.interval.ms",
            metadata_refresh.as_millis().max(1).to_string(),
        );
    config
}

pub(crate) async fn wait_for_partitions(
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
pub async fn topic_partitions(brokers: &str, topic: &str) -> Result<Vec<i32>, SourceError> {
    let consumer = plain_consumer(brokers, "topic-partitions")?;
    Ok(partitions_of(&consumer, topic)?)
}

fn partitions_of(
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
    brokers: &str,
    topic: &str,
    start: ReplayStart,
) -> Result<BTreeMap<i32, PartitionPosition>, SourceError> {
    let consumer = plain_consumer(brokers, "replay-positions")?;
    let partitions = wait_for_partitions(&consumer, topic).await?;
    let offsets: Vec<(i32, i64)> = match start {
        // An absent partition starts at its beginning.
        ReplayStart::Earliest => Vec::new(),
        ReplayStart::Offset(offset) => partitions.iter().map(|p| (*p, offset)).collect(),
        ReplayStart::Time(time) => {
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                list.add_partition_offset(topic, *partition, Offset::Offset(time))?;
            }
            let found = tokio::task::block_in_place(|| {
                consumer.offsets_for_times(list, Duration::from_secs(10))
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
    use proptest::prelude::*;
    use shared_schema::event::Event;

    fn sourced(partition: i32, offset: i64) -> SourcedEvent {
        SourcedEvent {
            partition,
            offset,
            event: Event {
                event_id: format!("{partition}-{offset}"),
                event_type: "click".into(),
                event_time: 0,
                schema_version: 2,
                user_id: None,
                product_id: None,
                amount_micros: None,
                city: None,
                country: None,
                profile: None,
            },
        }
    }

    proptest! {
        #[test]
        fn a_split_keeps_every_message_once_with_its_partition_whole(
            messages in proptest::collection::vec((0..6i32, any::<bool>()), 0..60),
            assigned in proptest::collection::btree_set(0..6i32, 0..6),
            groups in 0usize..5,
        ) {
            let mut batch = Batch { advanced: true, ..Batch::default() };
            for p in &assigned {
                batch.positions.insert(*p, PartitionPosition { next_offset: 1, ..Default::default() });
            }
            for (offset, (partition, bad)) in messages.iter().enumerate() {
                if *bad {
                    batch.bad.push(BadMessage { partition: *partition, offset: offset as i64, raw: None, reason: "x".into() });
                } else {
                    batch.events.push(sourced(*partition, offset as i64));
                }
            }
            let (events, bad, positions) = (batch.events.clone(), batch.bad.clone(), batch.positions.clone());
            let split = batch.split_by_partition(groups);
            prop_assert!(!split.is_empty() && split.len() <= groups.max(1));
            let mut owner: HashMap<i32, usize> = HashMap::new();
            for (i, part) in split.iter().enumerate() {
                prop_assert!(part.advanced);
                let partitions = part.events.iter().map(|e| e.partition)
                    .chain(part.bad.iter().map(|b| b.partition))
                    .chain(part.positions.keys().copied());
                for p in partitions {
                    prop_assert_eq!(*owner.entry(p).or_insert(i), i, "partition {} in two groups", p);
                }
            }
            // Each partition's messages keep their order, so offsets stay increasing.
            let offsets = |v: Vec<(i32, i64)>| { let mut v = v; v.sort(); v };
            prop_assert_eq!(
                offsets(split.iter().flat_map(|b| b.events.iter().map(|e| (e.partition, e.offset))).collect()),
                offsets(events.iter().map(|e| (e.partition, e.offset)).collect())
            );
            for part in &split {
                for w in part.events.windows(2).filter(|w| w[0].partition == w[1].partition) {
                    prop_assert!(w[0].offset < w[1].offset);
                }
            }
            prop_assert_eq!(split.iter().map(|b| b.bad.len()).sum::<usize>(), bad.len());
            let merged: BTreeMap<i32, PartitionPosition> = split.into_iter().flat_map(|b| b.positions).collect();
            prop_assert_eq!(merged, positions);
        }
    }
}
