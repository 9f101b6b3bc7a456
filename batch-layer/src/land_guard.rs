//! The lander's batch, guarded (see `shared_io::commit_guard`): an event Arrow or Parquet
//! refuses to encode is quarantined with the reason and the rest lands; the lake or Postgres
//! being away is retried with backoff and shows in `/metrics` and `/readyz`.
//!
//! Every value the manifest commit stores (paths, dates, row counts, event times within the
//! decoder's range, offsets) is made by the lander, not taken from an event, so a refused
//! commit is never one event's fault: it is retried, loudly, like an outage.

use crate::BatchError;
use crate::lake::{events_to_batch, partition_of, write_parquet};
use crate::land::{LakeFile, commit, write_files};
use crate::lander_lock::Fence;
use shared_io::commit_guard::{
    Backoff, CommitHealth, Failure, classify_sql, find_culprits, quarantine_culprits,
};
use shared_io::kafka::{Batch, SourcedEvent};
use shared_schema::config::PlatformConfig;
use sqlx::PgPool;
use std::collections::BTreeMap;

const HEALTH: CommitHealth = CommitHealth {
    consumer: "batch-lander",
};
const LAKE_AWAY: &str = "the lake refuses the lander's files";
const POSTGRES_AWAY: &str = "Postgres refuses or drops the lander's manifest commits";

/// Lands `batch`: its files written and listed, its offsets stored, its bad messages kept, with
/// the events the lake cannot encode among the bad messages. Returns once committed.
/// A commit refused for a stale `fence` (another lander took over) is retried like an outage
/// until the lander notices it lost its lock and drops this future.
pub async fn land(
    pool: &PgPool,
    config: &PlatformConfig,
    fence: &Fence,
    topic: &str,
    batch: &Batch,
) {
    let mut backoff = Backoff::default();
    let mut reduced: Option<Batch> = None;
    let files = loop {
        let current = reduced.as_ref().unwrap_or(batch);
        let error = match write_files(config, current).await {
            Ok(files) => break files,
            Err(e) => e,
        };
        if !matches!(
            error,
            BatchError::EncodeEvents { .. } | BatchError::WriteLakeFile { .. }
        ) {
            HEALTH.infrastructure_failed(LAKE_AWAY, &error.to_string());
            backoff.sleep().await;
            continue;
        }
        HEALTH.data_failed(&error.to_string());
        let found = find_culprits(current.events.len(), |indices| {
            let events: Vec<&SourcedEvent> = indices.iter().map(|&i| &current.events[i]).collect();
            let encoded = encode_in_memory(&events).map_err(|e| Failure::Data(e.to_string()));
            async move { encoded }
        })
        .await;
        match found {
            Ok(found) if !found.is_empty() => {
                let mut by_reason: BTreeMap<String, Vec<usize>> = BTreeMap::new();
                for (indices, reason) in found {
                    for &i in &indices {
                        let e = &current.events[i];
                        tracing::warn!(partition = e.partition, offset = e.offset, %reason, "quarantined at landing");
                    }
                    by_reason.entry(reason).or_default().extend(indices);
                }
                HEALTH.quarantined(by_reason.values().map(Vec::len).sum());
                reduced = Some(quarantine_culprits(current, &by_reason));
            }
            // Every event encodes in memory: writing them out failed.
            _ => {
                HEALTH.infrastructure_failed(LAKE_AWAY, &error.to_string());
                backoff.sleep().await;
            }
        }
    };
    let current = reduced.as_ref().unwrap_or(batch);
    commit_until_done(pool, fence, topic, current, &files).await;
}

async fn commit_until_done(
    pool: &PgPool,
    fence: &Fence,
    topic: &str,
    batch: &Batch,
    files: &[LakeFile],
) {
    let mut backoff = Backoff::default();
    loop {
        match commit(pool, fence, topic, batch, files).await {
            Ok(()) => {
                HEALTH.succeeded();
                return;
            }
            Err(e) => {
                let text = match classify_sql(&e) {
                    Failure::Data(reason) => reason,
                    Failure::Infrastructure(text) => text,
                };
                HEALTH.infrastructure_failed(POSTGRES_AWAY, &text);
                backoff.sleep().await;
            }
        }
    }
}

/// Encodes `events` as `write_files` would, into memory: one Parquet file per lake partition.
fn encode_in_memory(events: &[&SourcedEvent]) -> Result<(), BatchError> {
    let mut by_partition: BTreeMap<_, Vec<&SourcedEvent>> = BTreeMap::new();
    for sourced in events {
        by_partition
            .entry(partition_of(sourced.event.event_time))
            .or_default()
            .push(sourced);
    }
    for events in by_partition.values() {
        let record_batch = events_to_batch(events).map_err(|source| BatchError::EncodeEvents {
            events: events.len(),
            source,
        })?;
        let mut sink: Vec<u8> = Vec::new();
        write_parquet(&mut sink, "(in memory)", &record_batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_the_decoder_accepts_encode() {
        let decoded = shared_schema::event::decode(
            Some(br#"{"event_id":"a","event_type":"purchase","event_time":253402300799999,"amount":1e12,"user_id":"\u00e9","country":"DE"}"#),
            253_402_300_799_999,
            0,
        )
        .unwrap();
        let sourced = SourcedEvent {
            partition: 0,
            offset: 0,
            event: decoded,
        };
        assert!(encode_in_memory(&[&sourced]).is_ok());
    }
}
