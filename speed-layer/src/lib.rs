//! The speed layer: events from Kafka to per-bucket partial aggregates in Postgres, seconds
//! behind reality, exactly once.
//!
//! Each poll yields a batch. Decoding, in-batch deduplication and aggregation happen in memory;
//! Postgres then sees one transaction per batch that (1) claims the batch's `event_id`s in
//! `speed_dedupe`, (2) adds the partials of the newly claimed events to `speed_aggregates`,
//! (3) stores the next offset of every partition and (4) keeps the bad messages. A crash at any
//! moment rolls back all four together, and the restart resumes from the stored offsets, so
//! nothing is lost and nothing is counted twice. Claiming ids in a shared table is also what
//! makes deduplication hold across partitions and, later, across instances.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use shared_io::kafka::SourcedEvent;
use shared_io::positions::{PositionTable, load_positions, store_positions};
use shared_io::registry::{self, DefinitionsDiffer, RegistryError};
use shared_io::{
    kafka::{Batch, EventSource, SourceError},
    positions::PartitionPosition,
};
use shared_io::{observe, quarantine};
use shared_schema::config::PlatformConfig;
use shared_schema::event::AMOUNT_SCALE;
use shared_schema::hll::Hll;
use shared_schema::profiles::ProfileHistory;
use shared_schema::sessions;
use shared_schema::time::Millis;
use shared_schema::time::{bucket_start, to_datetime};
use shared_schema::watermark::{self, PartitionTime};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{Aggregation, LatePolicy, MetricDef, Partial, PartialKey, encode_dims},
};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

mod guarded_commit;
pub mod liveness;
mod profiles;
pub mod quarantine_admin;
pub mod replay;
pub mod replay_start;

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Name under which this layer records quarantined messages.
const CONSUMER_NAME: &str = "speed-layer";
/// Name under which this layer registers its instances (`service_instances`).
pub const SERVICE: &str = "speed-layer run";
/// How often state already covered by a promoted batch view is deleted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error(transparent)]
    Config(#[from] shared_schema::config::ConfigError),
    #[error(transparent)]
    Db(#[from] shared_io::db::DbError),
    #[error("Postgres: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Definitions(#[from] DefinitionsDiffer),
}

pub struct SpeedLayer {
    pool: PgPool,
    config: PlatformConfig,
    catalog: MetricCatalog,
    /// The profile changelog, for the temporal join (see `profiles`).
    profiles: Arc<RwLock<ProfileHistory>>,
    /// What `/readyz` reports, kept by the liveness watchdog of `run`.
    readiness: liveness::SharedReadiness,
}

impl SpeedLayer {
    pub fn new(pool: PgPool, config: PlatformConfig, catalog: MetricCatalog) -> Self {
        SpeedLayer {
            pool,
            config,
            catalog,
            profiles: Arc::default(),
            readiness: Arc::new(std::sync::Mutex::new(liveness::Readiness {
                unknown: true,
                ..liveness::Readiness::default()
            })),
        }
    }

    /// What `/readyz` reads: the partitions owned and the stalled ones.
    pub fn readiness(&self) -> liveness::SharedReadiness {
        self.readiness.clone()
    }

    /// Consumes until `shutdown` resolves. A batch in flight at shutdown is not committed; the
    /// next start reads it again.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), SpeedError> {
        let topic = self.config.events_topic.clone();
        sqlx::query("INSERT INTO speed_coverage (topic, covered_from) VALUES ($1, NULL) ON CONFLICT DO NOTHING")
            .bind(&topic)
            .execute(&self.pool)
            .await?;
        let stored = load_positions(&self.pool, PositionTable::Speed, &topic).await?;
        observe::consumer().start(CONSUMER_NAME);
        for (_, metric) in self.catalog.stored() {
            observe::speed().count_late(&metric.name, 0);
        }
        let source = EventSource::connect_group(
            &self.config.kafka_brokers,
            &self.config.speed.group_id,
            self.config.speed.session_timeout.as_std(),
            &topic,
            self.pool.clone(),
            PositionTable::Speed,
            self.config.max_event_skew.millis(),
            self.config.kafka_metadata_refresh.as_std(),
        )
        .await?;
        self.consume(source, &stored, shutdown, None).await?;
        Ok(())
    }

    /// The consume loop of `run` and `replay`. With a `replay`, each batch first waits for the
    /// rate limit, and the loop ends, returning true, once the replay has swapped in.
    pub(crate) async fn consume(
        &self,
        mut source: EventSource,
        stored: &BTreeMap<i32, PartitionPosition>,
        shutdown: impl Future<Output = ()>,
        mut replay: Option<&mut replay::Replay>,
    ) -> Result<bool, SpeedError> {
        let topic = self.config.events_topic.clone();
        source.set_max_batch_bytes(self.config.speed.batch_max_bytes);
        let mut clock = EventClock::new(stored, &self.config);
        let definitions = self.catalog.canonical();
        // Follows the profile changelog while this loop runs (the guard stops it on return).
        let _follower = if self.catalog.needs_profiles() {
            let history = profiles::load(&self.pool).await?;
            tracing::info!(versions = history.len(), "loaded the profile changelog");
            *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = history;
            Some(AbortOnDrop(tokio::spawn(profiles::follow(
                self.pool.clone(),
                self.config.clone(),
                self.profiles.clone(),
            ))))
        } else {
            None
        };
        tokio::pin!(shutdown);
        let mut last_retention: Option<tokio::time::Instant> = None;
        let max_events = match &replay {
            Some(replay) => replay.max_batch(self.config.speed.batch_max_events),
            None => self.config.speed.batch_max_events,
        };
        // A replay reads every partition itself; only the group needs watching.
        let mut watchdog = replay.is_none().then(|| {
            liveness::Watchdog::new(
                self.pool.clone(),
                &topic,
                (
                    self.config.speed.liveness_interval.as_std(),
                    self.config.speed.stall_timeout.as_std(),
                    self.config.speed.session_timeout.as_std(),
                ),
                self.readiness.clone(),
            )
        });
        loop {
            if let Some(watchdog) = watchdog.as_mut() {
                watchdog.tick(&mut source).await;
            }
            // Retention runs between batches, never by interrupting one.
            if last_retention.is_none_or(|at| at.elapsed() >= RETENTION_INTERVAL) {
                // A view computed with other definitions was promoted while this instance ran:
                // what it folds from now on would mean something else than the view, so it
                // stops, and a restart with these definitions is refused, naming them.
                match registry::check_promoted(&self.pool, SERVICE, &definitions).await {
                    Ok(()) => {}
                    Err(RegistryError::DefinitionsDiffer(differ)) => return Err(differ.into()),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not check the promoted view's definitions; will retry")
                    }
                }
                if let Err(e) = self.apply_retention().await {
                    tracing::warn!(error = %e, "retention failed; will retry");
                }
                last_retention = Some(tokio::time::Instant::now());
            }
            let mut batch = tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    source.close();
                    return Ok(false);
                }
                batch = source.next_batch(max_events, self.config.speed.batch_max_wait.as_std()) => batch?,
            };
            observe::consumer().record_batch(CONSUMER_NAME, &batch, &source.lag());
            if self.catalog.needs_profiles() {
                let history = self.profiles.read().unwrap_or_else(|e| e.into_inner());
                profiles::enrich(&history, &mut batch.events);
            }
            if let Some(replay) = replay.as_deref_mut() {
                replay.throttle(batch.events.len() + batch.bad.len()).await;
            }
            // Lateness is judged against the watermark before this batch, which a restart
            // recomputes from the stored positions.
            let watermark = clock.watermark();
            clock.observe(&batch);
            observe::speed().set_watermark(&topic, clock.watermark());
            let positions = batch.positions.clone();
            if batch.advanced {
                let progress = clock.partition_watermarks(&batch);
                let commits = batch
                    .split_by_partition(self.config.speed.commit_parallelism)
                    .into_iter()
                    .map(|part| {
                        // Each transaction updates only its own partitions' rows, so two never
                        // wait on each other's.
                        let progress: Vec<(i32, Option<Millis>)> = progress
                            .iter()
                            .filter(|(p, _)| part.positions.contains_key(p))
                            .copied()
                            .collect();
                        let topic = &topic;
                        async move {
                            self.commit_with_retry(topic, &part, watermark, &progress)
                                .await
                        }
                    });
                futures::future::join_all(commits).await;
            }
            if let Some(replay) = replay.as_deref_mut()
                && replay.try_swap(&positions).await?
            {
                return Ok(true);
            }
        }
    }

    /// Postgres being away must not lose the batch: retry it, with backoff, until it commits;
    /// a message Postgres refuses is quarantined instead (see `guarded_commit`).
    async fn commit_with_retry(
        &self,
        topic: &str,
        batch: &Batch,
        watermark: Option<Millis>,
        progress: &[(i32, Option<Millis>)],
    ) {
        self.commit_guarded(topic, batch, watermark, progress).await
    }

    /// One transaction: claim ids, add partials, store offsets, keep bad messages.
    pub async fn commit_batch(
        &self,
        topic: &str,
        batch: &Batch,
        watermark: Option<Millis>,
        progress: &[(i32, Option<Millis>)],
    ) -> Result<(), sqlx::Error> {
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
    ) -> Result<(), sqlx::Error> {
        let span = tracing::info_span!(
            "commit_batch",
            topic,
            events = batch.events.len(),
            bad = batch.bad.len(),
            offsets = %describe_offsets(batch),
        );
        async {
            // First copy of each id in the batch; sorted so concurrent instances lock ids in the
            // same order and cannot deadlock.
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
            let mut tx = self.pool.begin().await?;
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
                .await?
                .into_iter()
                .collect()
            };

            phases.lap("claim");
            let claimed_events: Vec<&SourcedEvent> = candidates
                .iter()
                .map(|&i| &batch.events[i])
                .filter(|sourced| claimed.contains(&sourced.event.event_id))
                .collect();
            // Late events: counted under every policy, applied only under `update`.
            let mut late = LateEvents::default();
            let mut applied: Vec<Vec<&SourcedEvent>> = vec![Vec::new(); self.catalog.metrics.len()];
            for (index, metric) in self.catalog.stored() {
                for sourced in claimed_events.iter().filter(|s| metric.matches(&s.event)) {
                    let is_late = watermark::is_late(metric, sourced.event.event_time, watermark);
                    late.record(index, metric, sourced, is_late);
                    if is_late && metric.late_policy != LatePolicy::Update {
                        continue;
                    }
                    applied[index].push(sourced);
                }
            }
            let mut per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>> = BTreeMap::new();
            for (index, metric) in self.catalog.stored().filter(|(_, m)| m.folds_per_event()) {
                for sourced in &applied[index] {
                    let table = per_partition.entry(sourced.partition).or_default();
                    MetricCatalog::fold_one(index, metric, &sourced.event, table);
                }
            }
            phases.lap("fold");
            apply_sessions(&mut tx, &self.catalog, &applied, &mut per_partition).await?;
            phases.lap("sessions");
            late.write(&mut tx, &self.catalog).await?;
            phases.lap("late");
            upsert_partials(&mut tx, &self.catalog, per_partition).await?;
            phases.lap("upsert");
            store_positions(&mut tx, PositionTable::Speed, topic, &batch.positions).await?;
            // After the positions, whose upsert creates a partition's row on its first batch.
            store_watermarks(&mut tx, topic, progress).await?;
            quarantine::record(&mut tx, topic, CONSUMER_NAME, &batch.bad).await?;
            // What a promotion must find in the lake before moving T past it (CONTRACT §5.3).
            shared_io::coverage::record_counted(&mut tx, topic, &batch.events).await?;
            if !commit {
                return tx.rollback().await;
            }
            tx.commit().await?;
            late.count(&self.catalog);
            phases.lap("commit");
            tracing::debug!(
                claimed = claimed.len(),
                duplicates = candidates.len() - claimed.len(),
                phases_ms = %phases,
                "committed"
            );
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Deletes speed state that a promoted batch view has covered for longer than the grace
    /// period (CONTRACT §5.4). Buckets at or after T are never touched.
    pub async fn apply_retention(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        shared_io::failpoint::hit("speed.retention.begun").await;
        // T is read in the deleting transaction, share-locked: a promotion or rollback (which
        // update this row) waits for the deletes, or the deletes wait for it and see its T.
        let cutover: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT cutover FROM serving_state WHERE id = 1 FOR SHARE")
                .fetch_one(&mut *tx)
                .await?;
        let Some(cutover) = cutover else {
            return Ok(());
        };
        let horizon =
            cutover - chrono::Duration::milliseconds(self.config.speed.retention_grace.millis());
        let aggregates = sqlx::query("DELETE FROM speed_aggregates WHERE bucket_start < $1")
            .bind(horizon)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let ids = sqlx::query("DELETE FROM speed_dedupe WHERE bucket_start < $1")
            .bind(horizon)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // From here on the speed side holds nothing before the horizon: a rollback below it
        // must show a gap, not zeros.
        sqlx::query(
            "UPDATE speed_coverage SET covered_from = GREATEST(coalesce(covered_from, '-infinity'), $2)
             WHERE topic = $1",
        )
        .bind(&self.config.events_topic)
        .bind(horizon)
        .execute(&mut *tx)
        .await?;
        // Late counts and side output follow their buckets; the lake keeps the events.
        sqlx::query("DELETE FROM speed_late_counts WHERE bucket_start < $1")
            .bind(horizon)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM speed_late_events WHERE event_time < $1")
            .bind(horizon)
            .execute(&mut *tx)
            .await?;
        // Session starts at or after the horizon still need the events one gap before them.
        let session_horizon =
            horizon - chrono::Duration::milliseconds(self.catalog.max_session_gap());
        sqlx::query("DELETE FROM speed_session_events WHERE event_time < $1")
            .bind(session_horizon)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if aggregates + ids > 0 {
            tracing::info!(%horizon, aggregates, ids, "retention removed state covered by the batch view");
        }
        Ok(())
    }
}

/// Adds the session starts that the claimed events create or remove (see
/// `shared_schema::sessions`). Each key's known events near the new ones are read under a
/// transaction lock on the key, so concurrent instances never place events on a stale view.
async fn apply_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    catalog: &MetricCatalog,
    applied: &[Vec<&SourcedEvent>],
    per_partition: &mut BTreeMap<i32, HashMap<PartialKey, Partial>>,
) -> Result<(), sqlx::Error> {
    for (index, metric) in catalog.stored() {
        let Aggregation::Sessions { key, gap } = &metric.aggregation else {
            continue;
        };
        let gap = gap.millis();
        // key -> (partition of its first event here, times, ids)
        let mut added: BTreeMap<&str, (i32, Vec<Millis>, Vec<&str>)> = BTreeMap::new();
        for sourced in &applied[index] {
            let Some(value) = key.value(&sourced.event) else {
                continue;
            };
            let entry = added
                .entry(value)
                .or_insert_with(|| (sourced.partition, Vec::new(), Vec::new()));
            entry.1.push(sourced.event.event_time);
            entry.2.push(sourced.event.event_id.as_str());
        }
        if added.is_empty() {
            continue;
        }
        let keys: Vec<&str> = added.keys().copied().collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || k, 0))
             FROM UNNEST($2::text[]) AS k ORDER BY k",
        )
        .bind(&metric.name)
        .bind(&keys)
        .execute(&mut **tx)
        .await?;
        let bound = |f: fn(&[Millis]) -> Option<&Millis>, shift: Millis| -> Vec<DateTime<Utc>> {
            added
                .values()
                .map(|(_, times, _)| to_datetime(f(times).copied().unwrap_or_default() + shift))
                .collect()
        };
        let (lows, highs) = (
            bound(|t| t.iter().min(), -gap),
            bound(|t| t.iter().max(), gap),
        );
        let known: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT s.session_key, s.event_time
             FROM speed_session_events s
             JOIN UNNEST($2::text[], $3::timestamptz[], $4::timestamptz[]) AS u(k, lo, hi)
               ON s.session_key = u.k AND s.event_time BETWEEN u.lo AND u.hi
             WHERE s.metric = $1",
        )
        .bind(&metric.name)
        .bind(&keys)
        .bind(&lows)
        .bind(&highs)
        .fetch_all(&mut **tx)
        .await?;
        let mut known_by_key: HashMap<String, Vec<Millis>> = HashMap::new();
        for (k, t) in known {
            known_by_key
                .entry(k)
                .or_default()
                .push(t.timestamp_millis());
        }
        let width = metric.bucket.millis();
        for (value, (partition, times, _)) in &added {
            let known = known_by_key
                .get(*value)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (t, change) in sessions::start_changes(known, times, gap) {
                let cell = PartialKey {
                    metric: index,
                    bucket_start: bucket_start(t, width),
                    dims: encode_dims(&[]),
                };
                per_partition
                    .entry(*partition)
                    .or_default()
                    .entry(cell)
                    .or_default()
                    .count += change;
            }
        }
        let (mut rows_key, mut rows_time, mut rows_id) = (Vec::new(), Vec::new(), Vec::new());
        for (value, (_, times, ids)) in &added {
            for (t, id) in times.iter().zip(ids) {
                rows_key.push(*value);
                rows_time.push(to_datetime(*t));
                rows_id.push(*id);
            }
        }
        sqlx::query(
            "INSERT INTO speed_session_events (metric, session_key, event_time, event_id)
             SELECT $1, * FROM UNNEST($2::text[], $3::timestamptz[], $4::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&metric.name)
        .bind(&rows_key)
        .bind(&rows_time)
        .bind(&rows_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The speed layer's event-time progress: per partition, the newest event time and when a
/// message last arrived, from which the watermark follows (see `shared_schema::watermark`).
struct EventClock {
    max_event_time: BTreeMap<i32, Option<Millis>>,
    caught_up: BTreeMap<i32, bool>,
    last_message: HashMap<i32, Instant>,
    out_of_orderness: Millis,
    idle_timeout: Duration,
}

impl EventClock {
    fn new(stored: &BTreeMap<i32, PartitionPosition>, config: &PlatformConfig) -> Self {
        EventClock {
            max_event_time: stored
                .iter()
                .map(|(p, pos)| (*p, pos.max_event_time))
                .collect(),
            caught_up: BTreeMap::new(),
            last_message: HashMap::new(),
            out_of_orderness: config.speed.out_of_orderness.millis(),
            idle_timeout: config.speed.idle_timeout.as_std(),
        }
    }

    fn observe(&mut self, batch: &Batch) {
        let now = Instant::now();
        let partitions = batch
            .events
            .iter()
            .map(|e| e.partition)
            .chain(batch.bad.iter().map(|b| b.partition));
        for partition in partitions {
            self.last_message.insert(partition, now);
        }
        // The batch carries exactly the partitions this instance owns now.
        self.max_event_time = batch
            .positions
            .iter()
            .map(|(p, pos)| (*p, pos.max_event_time))
            .collect();
        self.caught_up = batch
            .positions
            .iter()
            .map(|(p, pos)| (*p, pos.caught_up))
            .collect();
    }

    fn is_idle(&self, partition: i32) -> bool {
        self.caught_up.get(&partition).copied().unwrap_or(false)
            && self
                .last_message
                .get(&partition)
                .is_none_or(|at| at.elapsed() >= self.idle_timeout)
    }

    fn partitions(&self) -> BTreeMap<i32, PartitionTime> {
        self.max_event_time
            .iter()
            .map(|(p, max)| {
                (
                    *p,
                    PartitionTime {
                        max_event_time: *max,
                        idle: self.is_idle(*p),
                    },
                )
            })
            .collect()
    }

    fn watermark(&self) -> Option<Millis> {
        let times: Vec<PartitionTime> = self.partitions().into_values().collect();
        watermark::watermark(&times, self.out_of_orderness)
    }

    /// Per partition of the batch: its contribution to the served watermark, `None` while idle.
    fn partition_watermarks(&self, batch: &Batch) -> Vec<(i32, Option<Millis>)> {
        let partitions = self.partitions();
        batch
            .positions
            .keys()
            .map(|p| {
                let newest = partitions
                    .get(p)
                    .filter(|t| !t.idle)
                    .and_then(|t| t.max_event_time);
                (*p, newest.map(|t| t.saturating_sub(self.out_of_orderness)))
            })
            .collect()
    }
}

async fn store_watermarks(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    topic: &str,
    progress: &[(i32, Option<Millis>)],
) -> Result<(), sqlx::Error> {
    let partitions: Vec<i32> = progress.iter().map(|(p, _)| *p).collect();
    let watermarks: Vec<Option<DateTime<Utc>>> =
        progress.iter().map(|(_, w)| w.map(to_datetime)).collect();
    sqlx::query(
        "UPDATE speed_offsets o SET watermark = u.w
         FROM UNNEST($2::int[], $3::timestamptz[]) AS u(p, w)
         WHERE o.topic = $1 AND o.partition = u.p",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&watermarks)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Late events of one batch: counts per metric, bucket and partition, and the `side_output`
/// records.
#[derive(Default)]
struct LateEvents<'a> {
    /// (seen, late) per metric, bucket and partition.
    counts: BTreeMap<(usize, Millis, i32), (i64, i64)>,
    side_output: Vec<(usize, &'a SourcedEvent)>,
}

impl<'a> LateEvents<'a> {
    fn record(
        &mut self,
        index: usize,
        metric: &MetricDef,
        sourced: &'a SourcedEvent,
        is_late: bool,
    ) {
        let counts = self
            .counts
            .entry((index, metric.bucket_of(&sourced.event), sourced.partition))
            .or_default();
        counts.0 += 1;
        if !is_late {
            return;
        }
        counts.1 += 1;
        if metric.late_policy == LatePolicy::SideOutput {
            self.side_output.push((index, sourced));
        }
    }

    /// Counts the late events of a committed batch on `/metrics`.
    fn count(&self, catalog: &MetricCatalog) {
        let mut per_metric: BTreeMap<usize, i64> = BTreeMap::new();
        for ((metric, _, _), (_, late)) in &self.counts {
            *per_metric.entry(*metric).or_default() += late;
        }
        for (metric, late) in per_metric.into_iter().filter(|(_, late)| *late > 0) {
            observe::speed().count_late(&catalog.metrics[metric].name, late.unsigned_abs());
        }
    }

    async fn write(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        catalog: &MetricCatalog,
    ) -> Result<(), sqlx::Error> {
        if !self.counts.is_empty() {
            let metrics: Vec<&str> = self
                .counts
                .keys()
                .map(|(m, _, _)| catalog.metrics[*m].name.as_str())
                .collect();
            let buckets: Vec<DateTime<Utc>> = self
                .counts
                .keys()
                .map(|(_, b, _)| to_datetime(*b))
                .collect();
            let partitions: Vec<i32> = self.counts.keys().map(|(_, _, p)| *p).collect();
            let seen: Vec<i64> = self.counts.values().map(|(seen, _)| *seen).collect();
            let late: Vec<i64> = self.counts.values().map(|(_, late)| *late).collect();
            sqlx::query(
                "INSERT INTO speed_late_counts (metric, bucket_start, partition, seen_count, late_count)
                 SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int[], $4::bigint[], $5::bigint[])
                 ON CONFLICT (metric, bucket_start, partition) DO UPDATE SET
                     seen_count = speed_late_counts.seen_count + EXCLUDED.seen_count,
                     late_count = speed_late_counts.late_count + EXCLUDED.late_count",
            )
            .bind(&metrics)
            .bind(&buckets)
            .bind(&partitions)
            .bind(&seen)
            .bind(&late)
            .execute(&mut **tx)
            .await?;
        }
        if !self.side_output.is_empty() {
            let records = &self.side_output;
            let metrics: Vec<&str> = records
                .iter()
                .map(|(m, _)| catalog.metrics[*m].name.as_str())
                .collect();
            let ids: Vec<&str> = records
                .iter()
                .map(|(_, s)| s.event.event_id.as_str())
                .collect();
            let times: Vec<DateTime<Utc>> = records
                .iter()
                .map(|(_, s)| to_datetime(s.event.event_time))
                .collect();
            let partitions: Vec<i32> = records.iter().map(|(_, s)| s.partition).collect();
            let offsets: Vec<i64> = records.iter().map(|(_, s)| s.offset).collect();
            sqlx::query(
                "INSERT INTO speed_late_events (metric, event_id, event_time, partition, kafka_offset)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::bigint[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&metrics)
            .bind(&ids)
            .bind(&times)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Adds partials to `speed_aggregates`: one `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO
/// UPDATE` per batch. Public for the write-path benchmark.
pub async fn upsert_partials(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    catalog: &MetricCatalog,
    per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>>,
) -> Result<(), sqlx::Error> {
    // Sorted by primary key, again so that concurrent writers take row locks in one order.
    let mut rows: Vec<(PartialKey, i32, Partial)> = per_partition
        .into_iter()
        .flat_map(|(partition, table)| table.into_iter().map(move |(k, v)| (k, partition, v)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    merge_stored_sketches(tx, catalog, &mut rows).await?;

    let metrics: Vec<&str> = rows
        .iter()
        .map(|(k, _, _)| catalog.metrics[k.metric].name.as_str())
        .collect();
    let buckets: Vec<DateTime<Utc>> = rows
        .iter()
        .map(|(k, _, _)| to_datetime(k.bucket_start))
        .collect();
    let dims: Vec<&str> = rows.iter().map(|(k, _, _)| k.dims.as_str()).collect();
    let partitions: Vec<i32> = rows.iter().map(|(_, p, _)| *p).collect();
    let counts: Vec<i64> = rows.iter().map(|(_, _, v)| v.count).collect();
    let sums: Vec<Decimal> = rows
        .iter()
        .map(|(_, _, v)| Decimal::from_i128_with_scale(v.sum_micros, AMOUNT_SCALE))
        .collect();
    let mins: Vec<Option<i64>> = rows.iter().map(|(_, _, v)| v.min_micros).collect();
    let maxs: Vec<Option<i64>> = rows.iter().map(|(_, _, v)| v.max_micros).collect();
    let sketches: Vec<Option<Vec<u8>>> = rows
        .iter()
        .map(|(_, _, v)| v.sketch.as_ref().map(Hll::to_bytes))
        .collect();
    sqlx::query(
        "INSERT INTO speed_aggregates
             (metric, bucket_start, dims, partition, event_count, sum_micros, min_micros, max_micros, sketch)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int[], $5::bigint[],
                              $6::numeric[], $7::bigint[], $8::bigint[], $9::bytea[])
         ON CONFLICT (metric, bucket_start, dims, partition) DO UPDATE SET
             event_count = speed_aggregates.event_count + EXCLUDED.event_count,
             sum_micros = speed_aggregates.sum_micros + EXCLUDED.sum_micros,
             min_micros = LEAST(speed_aggregates.min_micros, EXCLUDED.min_micros),
             max_micros = GREATEST(speed_aggregates.max_micros, EXCLUDED.max_micros),
             sketch = COALESCE(EXCLUDED.sketch, speed_aggregates.sketch),
             updated_at = now()",
    )
    .bind(&metrics)
    .bind(&buckets)
    .bind(&dims)
    .bind(&partitions)
    .bind(&counts)
    .bind(&sums)
    .bind(&mins)
    .bind(&maxs)
    .bind(&sketches)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sketches cannot be merged in SQL, so the stored sketch of every row the batch touches is
/// read (and locked) and merged into the batch's partial, which then replaces it. Sketch union
/// is idempotent, so this stays exact even if a row were written twice.
async fn merge_stored_sketches(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    catalog: &MetricCatalog,
    rows: &mut [(PartialKey, i32, Partial)],
) -> Result<(), sqlx::Error> {
    let with_sketch: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].2.sketch.is_some())
        .collect();
    if with_sketch.is_empty() {
        return Ok(());
    }
    let metrics: Vec<&str> = with_sketch
        .iter()
        .map(|&i| catalog.metrics[rows[i].0.metric].name.as_str())
        .collect();
    let buckets: Vec<DateTime<Utc>> = with_sketch
        .iter()
        .map(|&i| to_datetime(rows[i].0.bucket_start))
        .collect();
    let dims: Vec<&str> = with_sketch
        .iter()
        .map(|&i| rows[i].0.dims.as_str())
        .collect();
    let partitions: Vec<i32> = with_sketch.iter().map(|&i| rows[i].1).collect();
    // Two instances can write one row while a partition moves between them: serialise on the
    // row's key first, in sorted order, so neither overwrites the other's registers.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(m || chr(31) || b::text || chr(31) || d || chr(31) || p::text, 0))
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int[]) AS k(m, b, d, p)
         ORDER BY m, b, d, p",
    )
    .bind(&metrics)
    .bind(&buckets)
    .bind(&dims)
    .bind(&partitions)
    .execute(&mut **tx)
    .await?;
    let stored: Vec<(i32, Vec<u8>)> = sqlx::query_as(
        "SELECT k.ord::int, a.sketch
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int[]) WITH ORDINALITY AS k(m, b, d, p, ord)
         JOIN speed_aggregates a ON a.metric = k.m AND a.bucket_start = k.b AND a.dims = k.d AND a.partition = k.p
         WHERE a.sketch IS NOT NULL
         ORDER BY k.ord
         FOR UPDATE OF a",
    )
    .bind(&metrics)
    .bind(&buckets)
    .bind(&dims)
    .bind(&partitions)
    .fetch_all(&mut **tx)
    .await?;
    for (ordinal, bytes) in stored {
        let Some(&row) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|k| with_sketch.get(k))
        else {
            continue;
        };
        match Hll::from_bytes(&bytes) {
            Ok(existing) => {
                if let Some(sketch) = rows[row].2.sketch.as_mut() {
                    sketch.merge(&existing);
                }
            }
            Err(e) => tracing::error!(error = %e, "a stored sketch is unreadable; it is replaced"),
        }
    }
    Ok(())
}

/// `p0:10..42 p1:7..9`: the offset range of each partition in the batch, for the span.
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
