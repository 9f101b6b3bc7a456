//! The speed layer's batch commit, guarded (see `shared_io::commit_guard`): a message
//! whose values Postgres refuses is quarantined with the reason and the rest of the batch
//! commits in one transaction as before (ids claimed, partials added, offsets stored, bad
//! messages kept); Postgres being away is retried with backoff and shows in `/metrics` and
//! `/readyz`.

use crate::{CONSUMER_NAME, CheckpointError, SpeedLayer};
use shared_io::commit_guard::{
    Backoff, CommitHealth, Failure, classify_sql, find_culprits, quarantine_culprits,
};
use shared_io::kafka::Batch;
use shared_schema::time::Millis;
use std::collections::BTreeMap;
use tracing::Instrument;

const HEALTH: CommitHealth = CommitHealth {
    consumer: CONSUMER_NAME,
};
/// What `/readyz` says while commits fail for an infrastructure cause.
const POSTGRES_AWAY: &str = "Postgres refuses or drops the speed layer's batch commits";

impl SpeedLayer {
    /// Commits `batch`, quarantining what Postgres refuses; returns once it committed.
    /// Postgres being away must not lose the batch: it is retried, with backoff, until then.
    pub(crate) async fn commit_guarded(
        &self,
        topic: &str,
        batch: &Batch,
        watermark: Option<Millis>,
        progress: &[(i32, Option<Millis>)],
    ) {
        let mut backoff = Backoff::default();
        // The batch with the messages found bad so far moved to its bad ones, and without the
        // partitions another instance took.
        let mut reduced: Option<Batch> = None;
        let mut progress: Vec<(i32, Option<Millis>)> = progress.to_vec();
        loop {
            let current = reduced.as_ref().unwrap_or(batch);
            let error = match self
                .write_batch(topic, current, watermark, &progress, true)
                .await
            {
                Ok(_) => {
                    HEALTH.succeeded();
                    return;
                }
                Err(CheckpointError::Fenced { partitions, .. }) => {
                    // A zombie's batch: the new owner reads these partitions from their stored
                    // offsets, so dropping them here loses nothing.
                    tracing::warn!(
                        ?partitions,
                        "another instance owns these partitions now; dropping their part of the batch"
                    );
                    self.ownership
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .fence(&partitions);
                    progress.retain(|(p, _)| !partitions.contains(p));
                    let rest = without_partitions(current, &partitions);
                    if rest.events.is_empty() && rest.bad.is_empty() && rest.positions.is_empty() {
                        return;
                    }
                    reduced = Some(rest);
                    continue;
                }
                Err(CheckpointError::LoadState(e)) => {
                    HEALTH.infrastructure_failed(POSTGRES_AWAY, &e.to_string());
                    backoff.sleep().await;
                    continue;
                }
                Err(CheckpointError::Commit(e)) => e,
            };
            match classify_sql(&error.source) {
                Failure::Infrastructure(e) => {
                    HEALTH.infrastructure_failed(POSTGRES_AWAY, &e);
                    backoff.sleep().await;
                }
                Failure::Data(reason) => {
                    HEALTH.data_failed(&reason);
                    let isolated = self.isolate(topic, current, watermark).await;
                    match isolated {
                        Ok(culprits) if !culprits.is_empty() => {
                            HEALTH.quarantined(culprits.values().map(Vec::len).sum());
                            reduced = Some(quarantine_culprits(current, &culprits));
                        }
                        Ok(_) => {
                            // Every event passes alone: the refusal lies in the batch's
                            // bookkeeping, which no quarantine resolves. Loud, and retried.
                            HEALTH.infrastructure_failed(
                                "Postgres refuses the speed layer's batch bookkeeping",
                                &reason,
                            );
                            backoff.sleep().await;
                        }
                        Err(e) => {
                            HEALTH.infrastructure_failed(POSTGRES_AWAY, &e);
                            backoff.sleep().await;
                        }
                    }
                }
            }
        }
    }

    /// The events of `batch` Postgres refuses, by index, with the reason, found by trials in
    /// transactions that are rolled back.
    async fn isolate(
        &self,
        topic: &str,
        batch: &Batch,
        watermark: Option<Millis>,
    ) -> Result<BTreeMap<String, Vec<usize>>, String> {
        let span = tracing::warn_span!("isolate", topic, events = batch.events.len());
        let found = find_culprits(batch.events.len(), |indices| {
            let trial = Batch {
                events: indices.iter().map(|&i| batch.events[i].clone()).collect(),
                advanced: true,
                ..Batch::default()
            };
            async move {
                self.write_batch(topic, &trial, watermark, &[], false)
                    .await
                    .map(drop)
                    .map_err(|e| match e {
                        CheckpointError::Commit(e) => classify_sql(&e.source),
                        other => Failure::Infrastructure(other.to_string()),
                    })
            }
        })
        .instrument(span)
        .await?;
        let mut by_reason: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (indices, reason) in found {
            for &i in &indices {
                let e = &batch.events[i];
                tracing::warn!(partition = e.partition, offset = e.offset, %reason, "quarantined at commit");
            }
            by_reason.entry(reason).or_default().extend(indices);
        }
        Ok(by_reason)
    }
}

/// `batch` without anything of `partitions`.
fn without_partitions(batch: &Batch, partitions: &[i32]) -> Batch {
    let keep = |p: &i32| !partitions.contains(p);
    Batch {
        events: batch
            .events
            .iter()
            .filter(|e| keep(&e.partition))
            .cloned()
            .collect(),
        bad: batch
            .bad
            .iter()
            .filter(|b| keep(&b.partition))
            .cloned()
            .collect(),
        positions: batch
            .positions
            .iter()
            .filter(|(p, _)| keep(p))
            .map(|(p, position)| (*p, *position))
            .collect(),
        advanced: batch.advanced,
        missing_offsets: batch.missing_offsets,
    }
}
