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

use chrono::DateTime;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use shared_schema::config::PlatformConfig;
use shared_schema::profiles::{
    ChangeEnvelope, ChangeSource, ProfileRow, SOURCE_TABLE, format_lsn, parse_lsn,
};
use shared_schema::time::{Millis, format_rfc3339, now_millis};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

mod refusals;

/// `source.connector` of every envelope.
pub const CONNECTOR: &str = "lambda-platform-cdc";
/// The schema the migrations create the table in.
const SOURCE_SCHEMA: &str = "public";

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error("Postgres: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {0}: {1}")]
    Topic(String, RDKafkaErrorCode),
    #[error("the broker did not acknowledge a change: {0}")]
    Delivery(KafkaError),
    #[error("wal2json output {0:?}: {1}")]
    Decode(String, String),
    #[error(
        "slot `{0}` belongs to database `{1}`: give this database its own slot (PLATFORM_CDC__SLOT)"
    )]
    ForeignSlot(String, String),
}

pub struct Publisher {
    pool: PgPool,
    config: PlatformConfig,
    producer: FutureProducer,
    database: String,
}

/// One change of a wal2json `format-version` 2 row.
#[derive(Debug, Deserialize)]
struct Wal2JsonRow {
    action: String,
    timestamp: Option<String>,
    lsn: Option<String>,
    xid: Option<i64>,
    table: Option<String>,
    #[serde(default)]
    columns: Vec<Column>,
    #[serde(default)]
    identity: Vec<Column>,
}

#[derive(Debug, Deserialize)]
struct Column {
    name: String,
    value: serde_json::Value,
}

/// Changes of complete transactions, and the slot position after them.
#[derive(Debug, Default)]
struct Read {
    envelopes: Vec<ChangeEnvelope>,
    /// Changes that cannot be published (see `refusals`): quarantined, then confirmed.
    refused: Vec<crate::refusals::Refused>,
    /// The end of the last complete transaction read: where the slot moves once published.
    confirm: Option<String>,
}

impl Publisher {
    pub async fn new(pool: PgPool, config: PlatformConfig) -> Result<Publisher, CdcError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .create()?;
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await?;
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
        self.ensure_topic().await?;
        self.ensure_slot().await?;
        self.snapshot_once().await?;
        loop {
            let published = tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                published = self.publish_once() => published,
            };
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
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.config.kafka_brokers)
            .create()?;
        let topic = &self.config.cdc.topic;
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(CdcError::Topic(name, code)),
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
        .await?;
        match existing {
            Some(Some(database)) if database == self.database => Ok(()),
            Some(other) => Err(CdcError::ForeignSlot(
                slot.clone(),
                other.unwrap_or_default(),
            )),
            None => {
                let lsn: String = sqlx::query_scalar(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'wal2json')",
                )
                .bind(slot)
                .fetch_one(&self.pool)
                .await?;
                tracing::info!(slot, lsn, "created the replication slot");
                Ok(())
            }
        }
    }

    /// Publishes the table's rows as they are, once per slot: what the slot cannot replay
    /// because it was written before the slot existed.
    async fn snapshot_once(&self) -> Result<(), CdcError> {
        let slot = &self.config.cdc.slot;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT rows FROM cdc_snapshots WHERE slot = $1")
                .bind(slot)
                .fetch_optional(&self.pool)
                .await?;
        if done.is_some() {
            return Ok(());
        }
        // Every row read here was committed at or before this LSN; a change streamed after it
        // has a greater one and wins where both describe the same version.
        let lsn_text: String = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_one(&self.pool)
        .await?;
        let lsn = parse_lsn(&lsn_text)
            .ok_or_else(|| CdcError::Decode(lsn_text.clone(), "not an LSN".into()))?;
        let rows: Vec<(String, String, Option<String>, DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT user_id, tier, signup_country, updated_at FROM user_profiles ORDER BY user_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = now_millis();
        let envelopes: Vec<ChangeEnvelope> = rows
            .iter()
            .map(|(user_id, tier, country, updated_at)| ChangeEnvelope {
                before: None,
                after: Some(ProfileRow::new(
                    user_id,
                    tier,
                    country.as_deref(),
                    updated_at.timestamp_millis(),
                )),
                op: "r".into(),
                ts_ms: now,
                source: self.source(lsn, None, now, true),
            })
            .collect();
        let unsendable = self.send_all(&envelopes).await?;
        crate::refusals::record(&self.pool, &unsendable).await?;
        sqlx::query("INSERT INTO cdc_snapshots (slot, lsn, rows) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(slot)
            .bind(lsn)
            .bind(envelopes.len() as i64)
            .execute(&self.pool)
            .await?;
        tracing::info!(
            rows = envelopes.len(),
            lsn = lsn_text,
            "published the initial snapshot"
        );
        Ok(())
    }

    /// Reads whole transactions from the slot, publishes their changes, waits for the broker,
    /// then confirms them. Returns how many changes were published.
    pub async fn publish_once(&self) -> Result<usize, CdcError> {
        let mut read = self.read_changes().await?;
        let unsendable = self.send_all(&read.envelopes).await?;
        read.refused.extend(unsendable);
        // Kept before the slot moves past them, so a refused change is never lost silently.
        crate::refusals::record(&self.pool, &read.refused).await?;
        if let Some(confirm) = &read.confirm {
            sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
                .bind(&self.config.cdc.slot)
                .bind(confirm)
                .execute(&self.pool)
                .await?;
            tracing::info!(changes = read.envelopes.len(), confirmed = %confirm, "published and confirmed");
        }
        Ok(read.envelopes.len())
    }

    async fn read_changes(&self) -> Result<Read, CdcError> {
        let table = format!("{SOURCE_SCHEMA}.{SOURCE_TABLE}");
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2,
                 'format-version', '2', 'include-timestamp', '1', 'include-lsn', '1',
                 'include-xids', '1', 'include-types', '0', 'add-tables', $3)",
        )
        .bind(&self.config.cdc.slot)
        .bind(i32::try_from(self.config.cdc.batch_max_changes).unwrap_or(i32::MAX))
        .bind(&table)
        .fetch_all(&self.pool)
        .await?;
        let mut read = Read::default();
        let (mut pending, mut pending_refused) = (Vec::new(), Vec::new());
        let mut xid = None;
        for (row_lsn, data) in rows {
            // A change that cannot be made an envelope is quarantined, never retried forever.
            let refuse = |reason: String| crate::refusals::Refused::new(&row_lsn, &data, reason);
            let row: Wal2JsonRow = match serde_json::from_str(&data) {
                Ok(row) => row,
                Err(e) => {
                    pending_refused.push(refuse(format!("wal2json output: {e}")));
                    continue;
                }
            };
            match row.action.as_str() {
                "B" => xid = row.xid,
                "C" => {
                    read.envelopes.append(&mut pending);
                    read.refused.append(&mut pending_refused);
                    read.confirm = Some(row_lsn);
                }
                "I" | "U" | "D" if row.table.as_deref() == Some(SOURCE_TABLE) => {
                    match self.envelope(&row, xid) {
                        Ok(envelope) => pending.push(envelope),
                        Err(e) => pending_refused.push(refuse(e)),
                    }
                }
                // Messages, truncates and other tables carry no profile version.
                _ => {}
            }
        }
        Ok(read)
    }

    fn envelope(&self, row: &Wal2JsonRow, xid: Option<i64>) -> Result<ChangeEnvelope, String> {
        let lsn_text = row.lsn.as_deref().ok_or("no lsn")?;
        let lsn = parse_lsn(lsn_text).ok_or("bad lsn")?;
        let committed = row
            .timestamp
            .as_deref()
            .map(parse_pg_time)
            .transpose()?
            .unwrap_or_else(now_millis);
        let image = |columns: &[Column]| -> Result<Option<ProfileRow>, String> {
            if columns.is_empty() {
                return Ok(None);
            }
            let text = |name: &str| -> Option<String> {
                columns
                    .iter()
                    .find(|c| c.name == name)
                    .and_then(|c| c.value.as_str().map(str::to_string))
            };
            let updated_at = parse_pg_time(&text("updated_at").ok_or("no updated_at")?)?;
            Ok(Some(ProfileRow {
                user_id: text("user_id").ok_or("no user_id")?,
                tier: text("tier").ok_or("no tier")?,
                signup_country: text("signup_country"),
                updated_at: format_rfc3339(updated_at),
            }))
        };
        let (op, before, after) = match row.action.as_str() {
            "I" => ("c", None, image(&row.columns)?),
            "U" => ("u", image(&row.identity)?, image(&row.columns)?),
            _ => ("d", image(&row.identity)?, None),
        };
        Ok(ChangeEnvelope {
            before,
            after,
            op: op.into(),
            ts_ms: now_millis(),
            source: self.source(lsn, xid, committed, false),
        })
    }

    fn source(&self, lsn: i64, tx_id: Option<i64>, ts_ms: Millis, snapshot: bool) -> ChangeSource {
        ChangeSource {
            connector: CONNECTOR.into(),
            db: self.database.clone(),
            schema: SOURCE_SCHEMA.into(),
            table: SOURCE_TABLE.into(),
            lsn,
            lsn_text: format_lsn(lsn),
            tx_id,
            ts_ms,
            snapshot,
        }
    }

    /// Sends every envelope keyed by its user and waits for the broker to acknowledge all of
    /// them. One producer with idempotence keeps each key's changes in log order. Returns the
    /// envelopes the broker refuses for what they are (too large, invalid), to be quarantined;
    /// any other failure is an error, and the caller sends them all again.
    async fn send_all(
        &self,
        envelopes: &[ChangeEnvelope],
    ) -> Result<Vec<crate::refusals::Refused>, CdcError> {
        let mut deliveries = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let key = envelope
                .after
                .as_ref()
                .or(envelope.before.as_ref())
                .map(|row| row.user_id.clone())
                .unwrap_or_default();
            let payload = serde_json::to_vec(envelope)
                .map_err(|e| CdcError::Decode(format!("{envelope:?}"), e.to_string()))?;
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
                    Err((e, _)) if crate::refusals::refused_for_content(&e) => Ok(Some(
                        crate::refusals::Refused::unsendable(envelope, payload, &e),
                    )),
                    Err((e, _)) => Err(CdcError::Delivery(e)),
                }
            });
        }
        let sent = futures::future::try_join_all(deliveries).await?;
        Ok(sent.into_iter().flatten().collect())
    }
}

/// Postgres's text form of a `timestamptz` (`2026-11-22 05:18:10.141435+00`) in epoch ms.
fn parse_pg_time(text: &str) -> Result<Millis, String> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("timestamp {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_times_parse() {
        assert_eq!(parse_pg_time("1970-01-01 00:00:01.5+00"), Ok(1_500));
        assert_eq!(parse_pg_time("1970-01-01 01:00:00+01"), Ok(0));
        assert_eq!(parse_pg_time("1970-01-01 00:00:00+05:30"), Ok(-19_800_000));
        assert!(parse_pg_time("yesterday").is_err());
    }
}
