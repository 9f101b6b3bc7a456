//! `speed-layer quarantine list|replay`: what the quarantine keeps, and re-injecting what the
//! decoder accepts now (after a fix, or once an event from the future is no longer ahead).
//!
//! A replayed message is produced again, unchanged, to the events topic, keyed by its
//! `user_id` as producers key them (CONTRACT §1), and both layers consume it as any other: its
//! `event_id` still deduplicates it against a copy that was counted. A message the decoder
//! still refuses stays in quarantine with its reason, and is reported, not produced.

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared_io::kafka::with_access;
use shared_io::quarantine::{self, Kept, QuarantineError, Selection};
use shared_schema::config::PlatformConfig;
use shared_schema::event;
use shared_schema::time::now_millis;
use sqlx::PgPool;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    #[error("creating the producer for {brokers}: {source}")]
    Producer {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("producing {partition}:{offset} again to {topic}: {source}")]
    Produce {
        topic: String,
        partition: i32,
        offset: i64,
        source: rdkafka::error::KafkaError,
    },
}

/// What `replay` did with each selected message.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
    /// `(from, to)`: the quarantined `partition:offset` and where its copy was produced.
    pub produced: Vec<(String, String)>,
    /// `(from, reason)`: refused again by the decoder, left in quarantine.
    pub still_bad: Vec<(String, String)>,
}

/// One line of `list`: the message's place, when and why it was kept, and its payload as
/// text (cut at `preview_bytes`).
pub fn describe(kept: &Kept, preview_bytes: usize) -> serde_json::Value {
    let raw = kept.raw.as_deref().unwrap_or_default();
    let shown = &raw[..raw.len().min(preview_bytes)];
    serde_json::json!({
        "topic": kept.topic,
        "partition": kept.partition,
        "offset": kept.kafka_offset,
        "received_at": kept.received_at.to_rfc3339(),
        "detected_by": kept.detected_by,
        "reason": kept.reason,
        "bytes": raw.len(),
        "payload": String::from_utf8_lossy(shown),
        "truncated": shown.len() < raw.len(),
        "replayed_at": kept.replayed_at.map(|t| t.to_rfc3339()),
        "replayed_to": kept.replayed_to,
    })
}

/// Produces again every message of `selection` on the events topic that the decoder accepts
/// now, and marks it replayed; with `dry_run`, only says what it would do.
pub async fn replay(
    pool: &PgPool,
    config: &PlatformConfig,
    selection: &Selection,
    dry_run: bool,
) -> Result<ReplayOutcome, ReplayError> {
    // Only the events topic: the changelog's messages are another schema, with another decoder.
    let selection = Selection {
        topic: Some(config.events_topic.clone()),
        include_replayed: false,
        ..selection.clone()
    };
    let kept = quarantine::list(pool, &selection).await?;
    let producer: FutureProducer = with_access(
        ClientConfig::new().set("message.timeout.ms", "30000"),
        &config.kafka_access(),
    )
    .create()
    .map_err(|source| ReplayError::Producer {
        brokers: config.kafka_brokers.clone(),
        source,
    })?;
    let mut outcome = ReplayOutcome::default();
    for message in &kept {
        let from = format!("{}:{}", message.partition, message.kafka_offset);
        let Some(payload) = message.raw.as_deref() else {
            outcome.still_bad.push((from, "no payload".into()));
            continue;
        };
        // Judged as the consumers will judge the copy: against a clock of about now.
        let decoded =
            match event::decode(Some(payload), now_millis(), config.max_event_skew.millis()) {
                Ok(decoded) => decoded,
                Err(refused) => {
                    outcome.still_bad.push((from, refused.to_string()));
                    continue;
                }
            };
        if dry_run {
            outcome.produced.push((from, "(dry run)".into()));
            continue;
        }
        let key = decoded.user_id.as_deref().unwrap_or_default();
        let record = FutureRecord::to(&config.events_topic)
            .key(key.as_bytes())
            .payload(payload);
        let (partition, offset) = producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(source, _)| ReplayError::Produce {
                topic: config.events_topic.clone(),
                partition: message.partition,
                offset: message.kafka_offset,
                source,
            })?;
        // Produced but not marked (a crash in between): a later replay produces it once more,
        // which the event id deduplicates.
        quarantine::mark_replayed(pool, message, partition, offset).await?;
        outcome
            .produced
            .push((from, format!("{partition}:{offset}")));
    }
    Ok(outcome)
}
