//! The checkpoint: one transaction per batch that (1) takes the log head, which orders the
//! checkpoints of every instance, and reads the id log rows written since this instance last
//! looked, (2) checks that this instance still owns the batch's partitions, (3) keeps the events
//! whose id no instance counted yet, (4) writes their changed cells to `speed_cells` (with their
//! session starts and late counts), (5) appends their ids to the log, (6) stores the next offset
//! and watermark of every partition and (7) keeps the bad messages. A crash at any moment rolls
//! back all of it, and the restart resumes from the stored offsets, so nothing is lost and
//! nothing is counted twice. The in-memory state learns the batch's ids only once it committed.

use crate::cells::write_cells;
use crate::event_clock::store_watermarks;
use crate::plan::{Plan, plan};
use crate::state::store::{self, LoadStateError};
use crate::{CONSUMER_NAME, SpeedLayer};
use shared_io::kafka::Batch;
use shared_io::positions::{PositionTable, store_positions};
use shared_io::quarantine;
use shared_schema::time::Millis;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::Instrument;

/// A batch Postgres did not commit; `step` names the statement that failed. Nothing of the
/// batch is stored then.
#[derive(Debug, thiserror::Error)]
#[error("committing a batch of {topic} ({step}): {source}")]
pub struct CommitBatchError {
    pub topic: String,
    pub step: &'static str,
    #[source]
    pub source: sqlx::Error,
}

/// Why a checkpoint did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Commit(#[from] CommitBatchError),
    /// Another instance took these partitions since this one claimed them: nothing of the
    /// batch was written.
    #[error("checkpointing {topic}: partitions {partitions:?} belong to another instance now")]
    Fenced { topic: String, partitions: Vec<i32> },
    #[error(transparent)]
    LoadState(#[from] LoadStateError),
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Events whose id no instance had counted, and so counted now.
    pub claimed: usize,
    /// Events not counted: a second copy in the batch, or an id counted before.
    pub duplicates: usize,
}

impl SpeedLayer {
    /// One checkpoint: count the batch's new ids, add partials, store offsets and the
    /// partitions' watermarks (`progress`, per partition, see `event_clock`), keep bad messages.
    /// An event is late when its bucket closed by `watermark`, the watermark before this batch.
    /// A batch committed again, or by two instances, counts each event once: the log decides.
    pub async fn commit_batch(
        &self,
        topic: &str,
        batch: &Batch,
        watermark: Option<Millis>,
        progress: &[(i32, Option<Millis>)],
    ) -> Result<Committed, CheckpointError> {
        self.write_batch(topic, batch, watermark, progress, true)
            .await
    }

    /// [`Self::commit_batch`], or with `commit` false the same transaction rolled back: a
    /// trial of whether Postgres accepts the batch.
    pub(crate) async fn write_batch(
        &self,
        topic: &str,
        batch: &Batch,
        watermark: Option<Millis>,
        progress: &[(i32, Option<Millis>)],
        commit: bool,
    ) -> Result<Committed, CheckpointError> {
        let span = tracing::info_span!(
            "commit_batch",
            topic,
            events = batch.events.len(),
            bad = batch.bad.len(),
            offsets = %describe_offsets(batch),
        );
        let failed = |step: &'static str| {
            move |source| CommitBatchError {
                topic: topic.to_string(),
                step,
                source,
            }
        };
        async {
            if commit {
                // Holding a batch, before anything is written: where a scenario pauses a zombie.
                shared_io::failpoint::hit("speed.checkpoint.begun").await;
            }
            let mut phases = PhaseTimer::start();
            let mut guard = self.state.lock().await;
            let state = match &mut *guard {
                Some(state) => state,
                // The first checkpoint, before any transaction of this instance holds the head.
                empty => empty.insert(self.load_state(true).await?),
            };
            let mut tx = self.pool.begin().await.map_err(failed("begin"))?;
            let (seq, generation) = store::lock_head(&mut tx)
                .await
                .map_err(failed("taking the log head"))?;
            if generation != state.generation {
                // A replay swapped in its log: what this instance knew is of the old one.
                tracing::warn!("the speed log was replaced (a replay swapped in); loading it");
                // This transaction holds the log head: no import, which would wait for it.
                *state = self.load_state(false).await?;
            }
            store::catch_up(&mut tx, state, seq).await?;
            phases.lap("log");
            let held = {
                let ownership = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
                if ownership.fencing {
                    let partitions: BTreeSet<i32> = batch
                        .positions
                        .keys()
                        .copied()
                        .chain(batch.events.iter().map(|e| e.partition))
                        .chain(batch.bad.iter().map(|b| b.partition))
                        .collect();
                    Some(ownership.held(partitions).map_err(|partitions| {
                        CheckpointError::Fenced {
                            topic: topic.to_string(),
                            partitions,
                        }
                    })?)
                } else {
                    None
                }
            };
            if let Some(held) = held {
                let fenced = store::fenced_partitions(&mut tx, topic, &held)
                    .await
                    .map_err(failed("checking partition epochs"))?;
                if !fenced.is_empty() {
                    return Err(CheckpointError::Fenced {
                        topic: topic.to_string(),
                        partitions: fenced,
                    });
                }
            }

            phases.lap("dedupe");
            let Plan {
                claimed: claimed_events,
                late,
                cells,
                entries,
            } = plan(state, &self.catalog, batch, watermark);
            phases.lap("fold");
            late.write_side_output(&mut tx, &self.catalog)
                .await
                .map_err(failed("late events"))?;
            let written = write_cells(&mut tx, &self.catalog, seq, cells, &late.counts)
                .await
                .map_err(failed("writing cells"))?;
            phases.lap("cells");
            store::append(&mut tx, seq, &entries)
                .await
                .map_err(failed("appending to the id log"))?;
            store_positions(&mut tx, PositionTable::Speed, topic, &batch.positions)
                .await
                .map_err(failed("storing offsets"))?;
            // After the positions, whose upsert creates a partition's row on its first batch.
            store_watermarks(&mut tx, topic, progress)
                .await
                .map_err(failed("storing watermarks"))?;
            quarantine::record(&mut tx, topic, CONSUMER_NAME, &batch.bad)
                .await
                .map_err(failed("quarantining bad messages"))?;
            // What a promotion must find in the lake before moving T past it (CONTRACT §5.3).
            shared_io::coverage::record_counted(&mut tx, topic, &batch.events)
                .await
                .map_err(failed("recording counted offsets"))?;
            let done = Committed {
                claimed: claimed_events.len(),
                duplicates: batch.events.len() - claimed_events.len(),
            };
            if !commit {
                tx.rollback()
                    .await
                    .map_err(failed("rolling back a trial"))?;
                return Ok(done);
            }
            // Everything written, nothing committed: where the scenarios SIGKILL a checkpoint.
            shared_io::failpoint::hit("speed.checkpoint.written").await;
            tx.commit().await.map_err(failed("commit"))?;
            for entry in &entries {
                state.apply(entry);
            }
            state.applied_seq = seq;
            late.count(&self.catalog);
            phases.lap("commit");
            tracing::debug!(
                claimed = done.claimed,
                duplicates = done.duplicates,
                cell_rows = written.rows,
                merged_buckets = written.merged,
                phases_ms = %phases,
                "committed"
            );
            Ok(done)
        }
        .instrument(span)
        .await
    }
}

/// Where a batch commit spends its time, for the debug log and profiling.
struct PhaseTimer {
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl PhaseTimer {
    fn start() -> Self {
        PhaseTimer {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for PhaseTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (phase, took) in &self.laps {
            write!(f, "{phase}={} ", took.as_millis())?;
        }
        Ok(())
    }
}

/// `p0:10..42 p1:7..9`: the offset range of each partition in the batch, for the span.
fn describe_offsets(batch: &Batch) -> String {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let offsets = batch
        .events
        .iter()
        .map(|e| (e.partition, e.offset))
        .chain(batch.bad.iter().map(|b| (b.partition, b.offset)));
    for (partition, offset) in offsets {
        let range = ranges.entry(partition).or_insert((offset, offset));
        range.0 = range.0.min(offset);
        range.1 = range.1.max(offset);
    }
    ranges
        .iter()
        .map(|(p, (lo, hi))| format!("p{p}:{lo}..{hi}"))
        .collect::<Vec<_>>()
        .join(" ")
}
