//! `batch-layer land`: every event from Kafka into the lake.
//!
//! Each poll's events are written as one Parquet file per lake partition (date and hour of
//! event time), each published by rename. Then one Postgres transaction lists the files in the
//! manifest and stores the next offset of every Kafka partition. A crash before that commit
//! leaves files nobody lists, which no reader opens, and the restart lands the same messages
//! again from the stored offsets: nothing is lost and nothing lands twice. One lander lands a
//! topic at a time (`lander_lock`), and every commit proves it still is that one.

use crate::BatchError;
use crate::lake::{LakePartition, events_to_batch, partition_of, write_parquet};
use crate::lander_lock::{Fence, LanderLock};
use chrono::{DateTime, NaiveDate, Utc};
use shared_io::kafka::{Batch, EventSource, SourcedEvent};
use shared_io::positions::{PositionTable, load_positions, store_positions};
use shared_io::storage::Lake;
use shared_io::{observe, quarantine, retry};
use shared_schema::config::PlatformConfig;
use shared_schema::time::to_datetime;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::future::Future;
use tracing::Instrument;

const CONSUMER_NAME: &str = "batch-lander";

/// A published lake file, as listed in the manifest.
#[derive(Debug, Clone)]
pub struct LakeFile {
    /// Relative to `LAKE_DIR`.
    pub path: String,
    pub partition: LakePartition,
    pub rows: i64,
    pub min_event_time: i64,
    pub max_event_time: i64,
}

pub struct Lander {
    pool: PgPool,
    config: PlatformConfig,
}

impl Lander {
    pub fn new(pool: PgPool, config: PlatformConfig) -> Self {
        Lander { pool, config }
    }

    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), BatchError> {
        tokio::pin!(shutdown);
        let topic = self.config.events_topic.clone();
        // One lander per topic (`lander_lock`): a lander that loses its lock (its connection
        // died, e.g. with Postgres) takes it again and starts over from the stored positions,
        // since another may have landed meanwhile.
        loop {
            let acquire = retry::until_success("taking the lander lock", || {
                LanderLock::acquire(&self.config, &topic)
            });
            let mut lock = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                lock = acquire => lock,
            };
            // The profile changelog lands beside the events, for the batch layer's temporal join.
            let changelog = tokio::spawn(crate::land_changelog::run(
                self.pool.clone(),
                self.config.clone(),
            ));
            let fence = lock.fence();
            let landed = tokio::select! {
                landed = self.land_events(&fence, shutdown.as_mut()) => Some(landed),
                lost = lock.lost() => {
                    tracing::warn!(error = %lost, "stopped landing; taking the lock again");
                    None
                }
            };
            changelog.abort();
            if let Some(landed) = landed {
                let _ = lock.release().await;
                return landed;
            }
        }
    }

    async fn land_events(
        &self,
        fence: &Fence,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), BatchError> {
        let topic = self.config.events_topic.clone();
        let stored = load_positions(&self.pool, PositionTable::Lake, &topic)
            .await
            .map_err(|source| BatchError::ReadLakePositions {
                topic: topic.clone(),
                source,
            })?;
        let mut source = EventSource::connect(
            &self.config.kafka_access(),
            &self.config.lander.group_id,
            &topic,
            &stored,
            self.config.max_event_skew.millis(),
            self.config.kafka_metadata_refresh.as_std(),
        )
        .await?;
        source.set_max_batch_bytes(self.config.lander.flush_max_bytes);
        observe::consumer().start(CONSUMER_NAME);
        tokio::pin!(shutdown);
        loop {
            let batch = tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                batch = source.next_batch(self.config.lander.flush_max_events, self.config.lander.flush_interval.as_std()) => batch?,
            };
            observe::consumer().record_batch(CONSUMER_NAME, &batch, &source.lag());
            if !batch.advanced {
                continue;
            }
            // A lake or Postgres away delays the batch, never loses it; an event the lake
            // cannot encode is quarantined (see `land_guard`).
            crate::land_guard::land(&self.pool, &self.config, fence, &topic, &batch).await;
        }
    }
}

/// Writes one file per lake partition touched by the batch.
pub async fn write_files(
    config: &PlatformConfig,
    batch: &Batch,
) -> Result<Vec<LakeFile>, BatchError> {
    let mut by_partition: BTreeMap<LakePartition, Vec<&SourcedEvent>> = BTreeMap::new();
    for sourced in &batch.events {
        by_partition
            .entry(partition_of(sourced.event.event_time))
            .or_default()
            .push(sourced);
    }
    let lake = Lake::open(&config.lake_dir)?;
    let mut files = Vec::with_capacity(by_partition.len());
    for (partition, events) in by_partition {
        let record_batch = events_to_batch(&events).map_err(|source| BatchError::EncodeEvents {
            events: events.len(),
            source,
        })?;
        let relative = format!("{}/part-{}.parquet", partition.dir(), uuid::Uuid::now_v7());
        let span = tracing::debug_span!("write_lake_file", path = %relative, rows = events.len());
        let path = lake.location(&relative);
        lake.publish(&relative, move |out| {
            span.in_scope(|| write_parquet(out, &path, &record_batch))
        })
        .await?;
        files.push(LakeFile {
            path: relative,
            partition,
            rows: events.len() as i64,
            min_event_time: events
                .iter()
                .map(|e| e.event.event_time)
                .min()
                .unwrap_or_default(),
            max_event_time: events
                .iter()
                .map(|e| e.event.event_time)
                .max()
                .unwrap_or_default(),
        });
    }
    Ok(files)
}

/// Lists the files, stores the offsets and keeps the bad messages, all in one transaction.
pub async fn commit(
    pool: &PgPool,
    fence: &Fence,
    topic: &str,
    batch: &Batch,
    files: &[LakeFile],
) -> Result<(), sqlx::Error> {
    let span = tracing::info_span!(
        "land_batch",
        topic,
        events = batch.events.len(),
        bad = batch.bad.len(),
        files = files.len()
    );
    async {
        let mut tx = pool.begin().await?;
        fence.check(&mut tx).await?;
        if !files.is_empty() {
            let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            let dates: Vec<NaiveDate> = files.iter().map(|f| f.partition.date).collect();
            let hours: Vec<i32> = files.iter().map(|f| f.partition.hour as i32).collect();
            let rows: Vec<i64> = files.iter().map(|f| f.rows).collect();
            let mins: Vec<DateTime<Utc>> = files.iter().map(|f| to_datetime(f.min_event_time)).collect();
            let maxs: Vec<DateTime<Utc>> = files.iter().map(|f| to_datetime(f.max_event_time)).collect();
            sqlx::query(
                "INSERT INTO lake_files (path, topic, dt, hour, row_count, min_event_time, max_event_time)
                 SELECT p, $1, d, h, r, lo, hi
                 FROM UNNEST($2::text[], $3::date[], $4::int[], $5::bigint[], $6::timestamptz[], $7::timestamptz[])
                     AS u(p, d, h, r, lo, hi)
                 ON CONFLICT (path) DO NOTHING",
            )
            .bind(topic)
            .bind(&paths)
            .bind(&dates)
            .bind(&hours)
            .bind(&rows)
            .bind(&mins)
            .bind(&maxs)
            .execute(&mut *tx)
            .await?;
        }
        store_positions(&mut tx, PositionTable::Lake, topic, &batch.positions).await?;
        quarantine::record(&mut tx, topic, CONSUMER_NAME, &batch.bad).await?;
        tx.commit().await
    }
    .instrument(span)
    .await
}
