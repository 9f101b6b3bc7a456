//! The CDC publisher: the changes of `user_profiles`, read through Postgres logical decoding,
//! published to the changelog topic as Debezium-style envelopes.
//!
//! It reads a logical replication slot (output plugin wal2json) with
//! `pg_logical_slot_peek_changes` over an ordinary connection, which leaves the slot where it
//! is, publishes the changes of whole transactions, waits for the broker to acknowledge every
//! one, and only then moves the slot past them with `pg_replication_slot_advance`. The slot's
//! confirmed LSN is therefore the resume point: a publisher killed at any moment reads again
//! everything it had not confirmed, so nothing is lost. A crash between the acknowledgement and
//! the advance publishes some changes twice, with the same LSN, and the readers keep one copy
//! per LSN (see `shared_io::changelog`).
//!
//! On the first start for a slot, the rows already in the table are published once as `op: r`
//! (a snapshot), recorded in `cdc_snapshots`.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared_io::kafka::with_access;
use shared_schema::config::PlatformConfig;
use shared_schema::profiles::ChangeEnvelope;
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

mod changes;
mod refusals;
mod snapshot;

/// `source.connector` of every envelope.
pub const CONNECTOR: &str = "lambda-platform-cdc";
/// The schema the migrations create the table in.
const SOURCE_SCHEMA: &str = "public";

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error("creating the producer for {brokers}: {source}")]
    CreateProducer { brokers: String, source: KafkaError },
    #[error("reading the name of the connected database: {0}")]
    ReadDatabaseName(#[source] sqlx::Error),
    #[error("creating topic {topic} on {brokers}: {source}")]
    CreateTopic {
        topic: String,
        brokers: String,
        source: KafkaError,
    },
    #[error("creating topic {topic}: {code}")]
    TopicRefused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("reading replication slot `{slot}`: {source}")]
    ReadSlot { slot: String, source: sqlx::Error },
    #[error("creating replication slot `{slot}`: {source}")]
    CreateSlot { slot: String, source: sqlx::Error },
    #[error(
        "slot `{slot}` belongs to database `{database}`: give this database its own slot (PLATFORM_CDC__SLOT)"
    )]
    ForeignSlot { slot: String, database: String },
    #[error("reading the initial snapshot for slot `{slot}`: {source}")]
    ReadSnapshot { slot: String, source: sqlx::Error },
    #[error("the confirmed position {text:?} of slot `{slot}` is not an LSN")]
    SnapshotLsn { slot: String, text: String },
    #[error("recording the initial snapshot of slot `{slot}`: {source}")]
    RecordSnapshot { slot: String, source: sqlx::Error },
    #[error("peeking at the changes of slot `{slot}`: {source}")]
    PeekChanges { slot: String, source: sqlx::Error },
    #[error("quarantining changes that cannot be published: {0}")]
    RecordRefusals(#[source] sqlx::Error),
    #[error("moving slot `{slot}` to {lsn}: {source}")]
    AdvanceSlot {
        slot: String,
        lsn: String,
        source: sqlx::Error,
    },
    #[error("encoding the change at LSN {lsn}: {source}")]
    EncodeEnvelope { lsn: i64, source: serde_json::Error },
    #[error("the broker did not acknowledge a change to {topic}: {source}")]
    Deliver { topic: String, source: KafkaError },
}

/// How often the slot's lag is measured for `/metrics`.
const SLOT_LAG_INTERVAL: Duration = Duration::from_secs(5);

pub struct Publisher {
    pool: PgPool,
    config: PlatformConfig,
    producer: FutureProducer,
    database: String,
}

impl Publisher {
    pub async fn new(pool: PgPool, config: PlatformConfig) -> Result<Publisher, CdcError> {
        let producer: FutureProducer = with_access(
            ClientConfig::new()
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.timeout.ms", "30000")
                .set("linger.ms", "5"),
            &config.kafka_access(),
        )
        .create()
        .map_err(|source| CdcError::CreateProducer {
            brokers: config.kafka_brokers.clone(),
            source,
        })?;
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .map_err(CdcError::ReadDatabaseName)?;
        Ok(Publisher {
            pool,
            config,
            producer,
            database,
        })
    }

    /// Publishes until `shutdown` resolves. Changes read but not yet confirmed when it stops
    /// are read again by the next start.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), CdcError> {
        tokio::pin!(shutdown);
        shared_io::observe::cdc();
        self.ensure_topic().await?;
        self.ensure_slot().await?;
        self.snapshot_once().await?;
        let mut lag_measured: Option<tokio::time::Instant> = None;
        loop {
            let published = tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                published = self.publish_once() => published,
            };
            // Not at every poll: a scrape reads it every 15 s or so.
            if lag_measured.is_none_or(|at| at.elapsed() >= SLOT_LAG_INTERVAL) {
                lag_measured = Some(tokio::time::Instant::now());
                self.measure_slot_lag().await;
            }
            match published {
                Ok(0) => tokio::time::sleep(self.config.cdc.poll_interval.as_std()).await,
                Ok(n) => tracing::debug!(changes = n, "published"),
                Err(e) => {
                    // Postgres or the broker away: nothing was confirmed, so retry the same.
                    tracing::warn!(error = %e, "publishing failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn ensure_topic(&self) -> Result<(), CdcError> {
        let topic = &self.config.cdc.topic;
        let brokers = &self.config.kafka_brokers;
        let failed = |source| CdcError::CreateTopic {
            topic: topic.clone(),
            brokers: brokers.clone(),
            source,
        };
        let admin: AdminClient<DefaultClientContext> =
            with_access(&mut ClientConfig::new(), &self.config.kafka_access())
                .create()
                .map_err(failed)?;
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(failed)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(CdcError::TopicRefused { topic, code }),
            }
        }
        Ok(())
    }

    async fn ensure_slot(&self) -> Result<(), CdcError> {
        let slot = &self.config.cdc.slot;
        let existing: Option<Option<String>> = sqlx::query_scalar(
            "SELECT database::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| CdcError::ReadSlot {
            slot: slot.clone(),
            source,
        })?;
        match existing {
            Some(Some(database)) if database == self.database => Ok(()),
            Some(other) => Err(CdcError::ForeignSlot {
                slot: slot.clone(),
                database: other.unwrap_or_default(),
            }),
            None => {
                let lsn: String = sqlx::query_scalar(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'wal2json')",
                )
                .bind(slot)
                .fetch_one(&self.pool)
                .await
                .map_err(|source| CdcError::CreateSlot {
                    slot: slot.clone(),
                    source,
                })?;
                tracing::info!(slot, lsn, "created the replication slot");
                Ok(())
            }
        }
    }

    /// Reads whole transactions from the slot, publishes their changes, waits for the broker,
    /// then confirms them. Returns how many changes were published.
    pub async fn publish_once(&self) -> Result<usize, CdcError> {
        let mut read = self.read_changes().await?;
        let unsendable = self.send_all(&read.envelopes).await?;
        read.refused.extend(unsendable);
        // Kept before the slot moves past them, so a refused change is never lost silently.
        refusals::record(&self.pool, &read.refused)
            .await
            .map_err(CdcError::RecordRefusals)?;
        if let Some(confirm) = &read.confirm {
            sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
                .bind(&self.config.cdc.slot)
                .bind(confirm)
                .execute(&self.pool)
                .await
                .map_err(|source| CdcError::AdvanceSlot {
                    slot: self.config.cdc.slot.clone(),
                    lsn: confirm.clone(),
                    source,
                })?;
            tracing::info!(changes = read.envelopes.len(), confirmed = %confirm, "published and confirmed");
            shared_io::observe::cdc().published(read.envelopes.len());
        }
        Ok(read.envelopes.len())
    }

    /// Measures the WAL the slot holds back (Postgres keeps it until the slot confirms it, so a
    /// slot nobody reads fills the disk) and reports it; a failed measure only logs.
    async fn measure_slot_lag(&self) {
        let lag: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&self.config.cdc.slot)
        .fetch_optional(&self.pool)
        .await
        .map(Option::flatten);
        match lag {
            Ok(Some(bytes)) => shared_io::observe::cdc().set_slot_lag(bytes),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not measure the slot's lag"),
        }
    }

    /// Sends every envelope keyed by its user and waits for the broker to acknowledge all of
    /// them. One producer with idempotence keeps each key's changes in log order. Returns the
    /// envelopes the broker refuses for what they are (too large, invalid), to be quarantined;
    /// any other failure is an error, and the caller sends them all again.
    async fn send_all(
        &self,
        envelopes: &[ChangeEnvelope],
    ) -> Result<Vec<refusals::Refused>, CdcError> {
        let mut deliveries = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let key = envelope
                .after
                .as_ref()
                .or(envelope.before.as_ref())
                .map(|row| row.user_id.clone())
                .unwrap_or_default();
            let payload =
                serde_json::to_vec(envelope).map_err(|source| CdcError::EncodeEnvelope {
                    lsn: envelope.source.lsn,
                    source,
                })?;
            let producer = self.producer.clone();
            let topic = self.config.cdc.topic.clone();
            deliveries.push(async move {
                let sent = producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await;
                match sent {
                    Ok(_) => Ok(None),
                    Err((e, _)) if refusals::refused_for_content(&e) => {
                        Ok(Some(refusals::Refused::unsendable(envelope, payload, &e)))
                    }
                    Err((source, _)) => Err(CdcError::Deliver { topic, source }),
                }
            });
        }
        let sent = futures::future::try_join_all(deliveries).await?;
        Ok(sent.into_iter().flatten().collect())
    }
}
