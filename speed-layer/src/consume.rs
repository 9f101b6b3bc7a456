//! The consume loop of `speed-layer run` and `replay`: poll a batch, enrich it with profiles,
//! advance the event clock, commit it partition group by partition group, and between batches
//! check the promoted definitions and apply retention.

use crate::event_clock::EventClock;
use crate::leases::Leases;
use crate::state::store;
use crate::{CONSUMER_NAME, SERVICE, SpeedError, SpeedLayer, liveness, profiles, replay};
use futures::FutureExt;
use shared_io::commit_guard::Backoff;
use shared_io::kafka::Batch;
use shared_io::observe;
use shared_io::positions::{PositionTable, load_positions};
use shared_io::registry::{self, RegistryError};
use shared_io::{kafka::EventSource, positions::PartitionPosition};
use shared_schema::config::Assignment;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

/// How often state already covered by a promoted batch view is deleted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(30);

/// How often the state's size is measured (and `lambda_speed_state_bytes` set).
const STATE_MEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a batch read ahead may still be handled: not when its partitions were given up since
/// (the watchdog joined the group again as a new member, which clears the positions). They are
/// then read again from their stored offsets, by whichever instance the group assigns them to.
/// Assigned by lease, partitions are given up one by one while the others are read on: only
/// what the batch holds of those given up is dropped.
fn still_owned(batch: &mut Batch, source: &EventSource) -> bool {
    let owned: BTreeSet<i32> = source.owned_partitions().into_iter().collect();
    if !source.in_group() {
        if batch.retain_partitions(&owned) {
            tracing::info!("dropped what a batch read ahead held of partitions given up since");
        }
        return true;
    }
    let stale = batch.positions.keys().any(|p| !owned.contains(p));
    if stale {
        tracing::info!(
            partitions = ?batch.positions.keys().collect::<Vec<_>>(),
            "dropping a batch read ahead: its partitions were given up since"
        );
    }
    !stale
}

/// What the consume loop serves.
pub(crate) enum Mode<'a> {
    /// `speed-layer run`, its partitions assigned by the group, or by leases if given.
    Run(Option<&'a mut Leases>),
    /// `speed-layer replay`, which reads every partition itself.
    Replay(&'a mut replay::Replay),
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SpeedLayer {
    /// Claims, by raising their epochs, the partitions of this batch and of the assignment
    /// that this instance holds no epoch for, once the group assigned them (see `ownership`).
    /// Retried until Postgres answers: a partition checkpointed without a claim would be
    /// refused.
    async fn claim_partitions(&self, topic: &str, source: &EventSource, batch: &Batch) {
        let unclaimed = {
            let mut ownership = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
            if !ownership.fencing {
                return;
            }
            ownership.reassigned(source.assignments());
            ownership.unclaimed(
                source
                    .owned_partitions()
                    .into_iter()
                    .chain(batch.positions.keys().copied())
                    .collect::<BTreeSet<i32>>(),
            )
        };
        if unclaimed.is_empty() {
            return;
        }
        let mut backoff = Backoff::default();
        loop {
            match store::claim(&self.pool, topic, &unclaimed, &self.instance).await {
                Ok(epochs) => {
                    tracing::info!(?epochs, "claimed partitions");
                    self.ownership
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .epochs
                        .extend(epochs);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, partitions = ?unclaimed, "could not claim partitions; will retry");
                    backoff.sleep().await;
                }
            }
        }
    }

    /// Measures the state and reports it; true while it holds more than `speed.state_max_mb`.
    async fn measure_state(&self, topic: &str) -> bool {
        let (ids, bytes) = match self.state.lock().await.as_ref() {
            Some(state) => (state.ids(), state.bytes()),
            None => (0, 0),
        };
        observe::speed().set_state(topic, ids, bytes);
        let bound = self.config.speed.state_max_mb.saturating_mul(1024 * 1024);
        let over = bytes as u64 > bound;
        if over {
            tracing::warn!(
                ids,
                bytes,
                bound,
                "the speed state is over speed.state_max_mb: not reading until retention frees memory"
            );
        }
        over
    }

    /// Claims `partitions` of `topic` for this instance and checks its epochs from then on, as
    /// `run` does when the group assigns them.
    pub async fn take_partitions(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(), sqlx::Error> {
        let epochs = store::claim(&self.pool, topic, partitions, &self.instance).await?;
        let mut ownership = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
        ownership.fencing = true;
        ownership.epochs.extend(epochs);
        Ok(())
    }

    /// Consumes until `shutdown` resolves. A batch in flight at shutdown is not committed; the
    /// next start reads it again.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), SpeedError> {
        let topic = self.config.events_topic.clone();
        sqlx::query("INSERT INTO speed_coverage (topic, covered_from) VALUES ($1, NULL) ON CONFLICT DO NOTHING")
            .bind(&topic)
            .execute(&self.pool)
            .await
            .map_err(|source| SpeedError::RegisterCoverage {
                topic: topic.clone(),
                source,
            })?;
        let stored = load_positions(&self.pool, PositionTable::Speed, &topic)
            .await
            .map_err(|source| SpeedError::LoadPositions {
                topic: topic.clone(),
                source,
            })?;
        observe::consumer().start(CONSUMER_NAME);
        for (_, metric) in self.catalog.stored() {
            observe::speed().count_late(&metric.name, 0);
        }
        let speed = &self.config.speed;
        let mut leases = (speed.assignment == Assignment::Leases).then(|| {
            Leases::new(
                self.pool.clone(),
                &topic,
                &self.instance,
                speed.session_timeout.as_std(),
            )
        });
        let source = match leases {
            Some(_) => {
                EventSource::connect_manual(
                    &self.config.kafka_access(),
                    &speed.group_id,
                    &topic,
                    self.config.max_event_skew.millis(),
                    self.config.kafka_metadata_refresh.as_std(),
                )
                .await
            }
            None => {
                EventSource::connect_group(
                    &self.config.kafka_access(),
                    &speed.group_id,
                    speed.session_timeout.as_std(),
                    &topic,
                    self.pool.clone(),
                    PositionTable::Speed,
                    self.config.max_event_skew.millis(),
                    self.config.kafka_metadata_refresh.as_std(),
                )
                .await
            }
        }
        .map_err(|source| SpeedError::ConnectSource {
            topic: topic.clone(),
            source,
        })?;
        self.ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fencing = true;
        let consumed = self
            .consume(source, &stored, shutdown, Mode::Run(leases.as_mut()))
            .await;
        if let Some(leases) = &leases
            && let Err(e) = leases.leave().await
        {
            tracing::warn!(error = %e, "could not give up the leases; they expire after the session timeout");
        }
        consumed.map(|_| ())
    }

    /// The consume loop of `run` and `replay`. With a `replay`, each batch first waits for the
    /// rate limit, and the loop ends, returning true, once the replay has swapped in.
    pub(crate) async fn consume(
        &self,
        mut source: EventSource,
        stored: &BTreeMap<i32, PartitionPosition>,
        shutdown: impl Future<Output = ()>,
        mode: Mode<'_>,
    ) -> Result<bool, SpeedError> {
        let (mut replay, mut leases) = match mode {
            Mode::Run(leases) => (None, leases),
            Mode::Replay(replay) => (Some(replay), None),
        };
        let topic = self.config.events_topic.clone();
        source.set_max_batch_bytes(self.config.speed.batch_max_bytes);
        let mut clock = EventClock::new(stored, &self.config);
        let definitions = self.catalog.canonical();
        // Follows the profile changelog while this loop runs (the guard stops it on return).
        let _follower = if self.catalog.needs_profiles() {
            let history = profiles::load(&self.pool)
                .await
                .map_err(SpeedError::LoadProfiles)?;
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
        let mut last_measure = tokio::time::Instant::now();
        let mut over_bound = false;
        // A batch read while the one before it committed, not yet handled.
        let mut prefetched: Option<Batch> = None;
        loop {
            if let Some(leases) = leases.as_deref_mut() {
                self.follow_leases(leases, &mut source).await;
            }
            if let Some(watchdog) = watchdog.as_mut() {
                watchdog.tick(&mut source).await;
            }
            if last_measure.elapsed() >= STATE_MEASURE_INTERVAL {
                last_measure = tokio::time::Instant::now();
                over_bound = self.measure_state(&topic).await;
            }
            // Retention runs between batches, never by interrupting one; more often while the
            // state is over its bound, as only retention shrinks it.
            let retention_due = if over_bound {
                STATE_MEASURE_INTERVAL
            } else {
                RETENTION_INTERVAL
            };
            if last_retention.is_none_or(|at| at.elapsed() >= retention_due) {
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
            if over_bound {
                // Reading on would only grow the state: wait for retention instead.
                tokio::select! {
                    _ = &mut shutdown => {
                        source.close();
                        return Ok(false);
                    }
                    _ = tokio::time::sleep(STATE_MEASURE_INTERVAL) => continue,
                }
            }
            let wait = self.config.speed.batch_max_wait.as_std();
            let ahead = prefetched
                .take()
                .and_then(|mut batch| still_owned(&mut batch, &source).then_some(batch));
            let mut batch = match ahead {
                Some(batch) => batch,
                None => tokio::select! {
                    _ = &mut shutdown => {
                        tracing::info!("shutting down");
                        source.close();
                        return Ok(false);
                    }
                    batch = source.next_batch(max_events, wait) => {
                        batch.map_err(|source| SpeedError::ReadBatch { topic: topic.clone(), source })?
                    }
                },
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
                self.claim_partitions(&topic, &source, &batch).await;
                let progress = clock.partition_watermarks(&batch);
                // One checkpoint per batch: checkpoints are ordered by the log head anyway.
                // Postgres being away must not lose the batch: it is retried until it commits,
                // and a message Postgres refuses is quarantined instead (see `guarded_commit`).
                let commit = self.commit_guarded(&topic, &batch, watermark, &progress);
                if replay.is_some() {
                    commit.await;
                } else {
                    // The next batch is read (polled and decoded, on another core) while this
                    // one commits: Kafka, decoding and Postgres work at once. Only the reading
                    // overlaps; the next batch is folded after this commit, against the state
                    // it left. A read ends within `batch_max_wait`, so shutdown waits for it.
                    let read = tokio::spawn(async move {
                        let next = source.next_batch(max_events, wait).await;
                        (source, next)
                    });
                    let ((), read) = tokio::join!(commit, read);
                    let next;
                    (source, next) =
                        read.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    if (&mut shutdown).now_or_never().is_some() {
                        tracing::info!("shutting down");
                        source.close();
                        return Ok(false);
                    }
                    prefetched = Some(next.map_err(|source| SpeedError::ReadBatch {
                        topic: topic.clone(),
                        source,
                    })?);
                }
            }
            if let Some(replay) = replay.as_deref_mut()
                && replay.try_swap(&positions).await
            {
                return Ok(true);
            }
        }
    }
}
