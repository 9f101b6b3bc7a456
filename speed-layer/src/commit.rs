//! The batch transaction: (1) claim the batch's `event_id`s in `speed_dedupe`, (2) add the
//! partials of the newly claimed events to `speed_aggregates` (with their session starts and
//! late counts), (3) store the next offset and watermark of every partition and (4) keep the
//! bad messages. A crash at any moment rolls back all four together, and the restart resumes
//! from the stored offsets, so nothing is lost and nothing is counted twice.

use crate::event_clock::store_watermarks;
use crate::late_events::LateEvents;
use crate::sessions::apply_sessions;
use crate::upsert::upsert_partials;
use crate::{CONSUMER_NAME, SpeedLayer};
use chrono::{DateTime, Utc};
use shared_io::kafka::{Batch, SourcedEvent};
use shared_io::positions::{PositionTable, store_positions};
use shared_io::quarantine;
use shared_schema::time::{Millis, bucket_start, to_datetime};
use shared_schema::watermark;
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{LatePolicy, Partial, PartialKey},
};
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// What a committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Events whose id this batch claimed first, and so counted.
    pub claimed: usize,
    /// Events not counted: a second copy in the batch, or an id claimed before.
    pub duplicates: usize,
}

impl SpeedLayer {
    /// One transaction: claim ids, add partials, store offsets and the partitions' watermarks
    /// (`progress`, per partition, see `event_clock`), keep bad messages. An event is late when its
    /// bucket closed by `watermark`, the watermark before this batch. A batch committed again,
    /// or by two instances, counts each event once: the claims decide.
    pub async fn commit_batch(
        &self,
        topic: &str,
        batch: &Batch,
        watermark: Option<Millis>,
        progress: &[(i32, Option<Millis>)],
    ) -> Result<Committed, CommitBatchError> {
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
    ) -> Result<Committed, CommitBatchError> {
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
            let candidates = first_copies(batch);
            let alignment = self.catalog.cutover_alignment();
            let ids: Vec<&str> = candidates
                .iter()
                .map(|&i| batch.events[i].event.event_id.as_str())
                .collect();
            let buckets: Vec<DateTime<Utc>> = candidates
                .iter()
                .map(|&i| to_datetime(bucket_start(batch.events[i].event.event_time, alignment)))
                .collect();

            let mut phases = PhaseTimer::start();
            let mut tx = self.pool.begin().await.map_err(failed("begin"))?;
            let claimed: HashSet<String> = if ids.is_empty() {
                HashSet::new()
            } else {
                sqlx::query_scalar(
                    "INSERT INTO speed_dedupe (event_id, bucket_start)
                     SELECT * FROM UNNEST($1::text[], $2::timestamptz[])
                     ON CONFLICT DO NOTHING
                     RETURNING event_id",
                )
                .bind(&ids)
                .bind(&buckets)
                .fetch_all(&mut *tx)
                .await
                .map_err(failed("claiming event ids"))?
                .into_iter()
                .collect()
            };

            phases.lap("claim");
            let claimed_events: Vec<&SourcedEvent> = candidates
                .iter()
                .map(|&i| &batch.events[i])
                .filter(|sourced| claimed.contains(&sourced.event.event_id))
                .collect();
            let Folded {
                late,
                applied,
                mut per_partition,
            } = fold(&self.catalog, &claimed_events, watermark);
            phases.lap("fold");
            apply_sessions(&mut tx, &self.catalog, &applied, &mut per_partition)
                .await
                .map_err(failed("session starts"))?;
            phases.lap("sessions");
            late.write(&mut tx, &self.catalog)
                .await
                .map_err(failed("late events"))?;
            phases.lap("late");
            upsert_partials(&mut tx, &self.catalog, per_partition)
                .await
                .map_err(failed("adding partials"))?;
            phases.lap("upsert");
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
                claimed: claimed.len(),
                duplicates: batch.events.len() - claimed.len(),
            };
            if !commit {
                tx.rollback()
                    .await
                    .map_err(failed("rolling back a trial"))?;
                return Ok(done);
            }
            tx.commit().await.map_err(failed("commit"))?;
            late.count(&self.catalog);
            phases.lap("commit");
            tracing::debug!(
                claimed = claimed.len(),
                duplicates = candidates.len() - claimed.len(),
                phases_ms = %phases,
                "committed"
            );
            Ok(done)
        }
        .instrument(span)
        .await
    }
}

/// The index of the first copy of each id in the batch, sorted by id so that concurrent
/// instances lock ids in the same order and cannot deadlock.
fn first_copies(batch: &Batch) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(batch.events.len());
    let mut candidates: Vec<usize> = (0..batch.events.len())
        .filter(|&i| seen.insert(batch.events[i].event.event_id.as_str()))
        .collect();
    candidates.sort_unstable_by(|a, b| {
        batch.events[*a]
            .event
            .event_id
            .cmp(&batch.events[*b].event.event_id)
    });
    candidates
}

/// What the claimed events of a batch come to before anything is written.
struct Folded<'a> {
    late: LateEvents<'a>,
    /// Per stored metric (by index), the events it applies.
    applied: Vec<Vec<&'a SourcedEvent>>,
    /// The partials of the metrics that fold per event, per Kafka partition.
    per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>>,
}

/// The claimed events per stored metric: late ones recorded (under every policy) and applied
/// only under `update`; the applied ones folded into partials per Kafka partition, except for
/// sessions, whose starts need the stored events (`sessions`).
fn fold<'a>(
    catalog: &MetricCatalog,
    claimed: &[&'a SourcedEvent],
    watermark: Option<Millis>,
) -> Folded<'a> {
    let mut late = LateEvents::default();
    let mut applied: Vec<Vec<&SourcedEvent>> = vec![Vec::new(); catalog.metrics.len()];
    for (index, metric) in catalog.stored() {
        for sourced in claimed.iter().filter(|s| metric.matches(&s.event)) {
            let is_late = watermark::is_late(metric, sourced.event.event_time, watermark);
            late.record(index, metric, sourced, is_late);
            if is_late && metric.late_policy != LatePolicy::Update {
                continue;
            }
            applied[index].push(sourced);
        }
    }
    let mut per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>> = BTreeMap::new();
    for (index, metric) in catalog.stored().filter(|(_, m)| m.folds_per_event()) {
        for sourced in &applied[index] {
            let table = per_partition.entry(sourced.partition).or_default();
            MetricCatalog::fold_one(index, metric, &sourced.event, table);
        }
    }
    Folded {
        late,
        applied,
        per_partition,
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
