//! `speed-layer replay`: the Kappa rebuild. The speed state is computed again from the bus into
//! a fresh copy of the speed tables, in schema `speed_replay`, by the same consume loop as
//! `run`, throttled to `--max-rate` events/s so that it cannot flood Postgres. Once it has read
//! every partition to its end and stands at or past every live offset, one transaction swaps it
//! in: the live tables move to `speed_previous` (kept for inspection until the next replay) and
//! the replayed ones take their names.
//!
//! Running instances need no restart. Their next statements resolve the table names again and
//! land in the new tables, whose offsets are at or past theirs; their next checkpoint finds the
//! replayed log's generation and loads it, so what they read after the swap is either new
//! (counted there) or replayed already (dropped as a duplicate). The swap locks the live tables,
//! so no live batch commits half in the old tables and half in the new.
//!
//! The partition epochs (`speed_partition_epochs`) are not swapped: they say which live instance
//! owns a partition, and the replay, which reads every partition alone, claims none.

use crate::replay_start::{ReplayStart, replay_positions};
use crate::{SpeedError, SpeedLayer};
use shared_io::{
    kafka::{EventSource, SourceError},
    positions::PartitionPosition,
};
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::{ConfigError, PlatformConfig};
use shared_schema::time::to_datetime;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Where a replay builds its tables.
pub const REPLAY_SCHEMA: &str = "speed_replay";
/// Where the tables it replaced are kept.
pub const PREVIOUS_SCHEMA: &str = "speed_previous";
/// Every table of speed state, in the order a live batch first writes them, which the swap
/// locks them in so that it does not deadlock with one.
const SPEED_TABLES: [&str; 8] = [
    "speed_log_head",
    "speed_log",
    "speed_late_counts",
    "speed_late_events",
    "speed_aggregates",
    "speed_cells",
    "speed_offsets",
    "speed_coverage",
];

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("preparing the replay's tables in schema {REPLAY_SCHEMA}: {0}")]
    PrepareSchema(#[source] sqlx::Error),
    #[error("connecting the replay to Postgres: {0}")]
    DatabaseUrl(#[from] ConfigError),
    #[error("connecting the replay to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("finding where to replay {topic} from: {source}")]
    StartPositions { topic: String, source: SourceError },
    #[error("reading {topic} to replay it: {source}")]
    ConnectSource { topic: String, source: SourceError },
}

/// A token bucket: `rate` tokens a second, at most one second of them saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64) -> TokenBucket {
        let rate = rate.max(1.0);
        TokenBucket {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// The most one call to [`take`](Self::take) should ask for.
    pub fn capacity(&self) -> usize {
        self.rate as usize
    }

    /// Waits until `n` tokens are there, and takes them.
    pub async fn take(&mut self, n: usize) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        let n = n as f64;
        if self.tokens < n {
            let wait = Duration::from_secs_f64((n - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.last = Instant::now();
            self.tokens = 0.0;
        } else {
            self.tokens -= n;
        }
    }
}

/// A replay in progress: its throttle, and the live pool the swap runs on.
pub struct Replay {
    live: PgPool,
    topic: String,
    throttle: Option<TokenBucket>,
    pub events: u64,
}

impl Replay {
    pub(crate) fn max_batch(&self, configured: usize) -> usize {
        match &self.throttle {
            Some(bucket) => configured.min(bucket.capacity()).max(1),
            None => configured,
        }
    }

    pub(crate) async fn throttle(&mut self, messages: usize) {
        self.events += messages as u64;
        if let Some(bucket) = &mut self.throttle {
            bucket.take(messages).await;
        }
    }

    /// Swaps the replayed tables in if every partition was read to its end and none is behind
    /// the live offsets; otherwise leaves everything as it is and returns false.
    pub(crate) async fn try_swap(&mut self, positions: &BTreeMap<i32, PartitionPosition>) -> bool {
        if positions.is_empty() || !positions.values().all(|p| p.caught_up) {
            return false;
        }
        match swap(&self.live, &self.topic).await {
            Ok(swapped) => swapped,
            // A lock timeout or a deadlock with a live batch: try again after the next batch.
            Err(e) => {
                tracing::warn!(error = %e, "swap failed; will retry");
                false
            }
        }
    }
}

/// What a finished replay did.
#[derive(Debug)]
pub struct ReplayOutcome {
    pub events: u64,
    pub seconds: f64,
    pub swapped: bool,
}

/// Replays from `start`, at most `max_rate` events/s, and swaps the result in once it has
/// caught up. Returns early, without swapping, when `shutdown` resolves.
pub async fn replay(
    live: PgPool,
    config: PlatformConfig,
    catalog: MetricCatalog,
    start: ReplayStart,
    max_rate: Option<f64>,
    shutdown: impl Future<Output = ()>,
) -> Result<ReplayOutcome, SpeedError> {
    let started = Instant::now();
    let topic = config.events_topic.clone();
    prepare_schema(&live, &topic, start)
        .await
        .map_err(ReplayError::PrepareSchema)?;
    let pool = replay_pool(&config).await?;
    let positions = replay_positions(&config.kafka_access(), &topic, start)
        .await
        .map_err(|source| ReplayError::StartPositions {
            topic: topic.clone(),
            source,
        })?;
    tracing::info!(
        ?start,
        ?max_rate,
        partitions = positions.len(),
        "replaying into {REPLAY_SCHEMA}"
    );
    let source = EventSource::connect(
        &config.kafka_access(),
        &format!("{}-replay", config.speed.group_id),
        &topic,
        &positions,
        config.max_event_skew.millis(),
        config.kafka_metadata_refresh.as_std(),
    )
    .await
    .map_err(|source| ReplayError::ConnectSource {
        topic: topic.clone(),
        source,
    })?;
    let mut control = Replay {
        live,
        topic,
        throttle: max_rate.map(TokenBucket::new),
        events: 0,
    };
    let layer = SpeedLayer::new(pool, config, catalog);
    let swapped = layer
        .consume(
            source,
            &positions,
            shutdown,
            crate::consume::Mode::Replay(&mut control),
        )
        .await?;
    Ok(ReplayOutcome {
        events: control.events,
        seconds: started.elapsed().as_secs_f64(),
        swapped,
    })
}

/// A fresh, empty copy of the speed tables in [`REPLAY_SCHEMA`]; a killed replay's is dropped.
async fn prepare_schema(live: &PgPool, topic: &str, start: ReplayStart) -> Result<(), sqlx::Error> {
    let mut tx = live.begin().await?;
    tx.execute(
        format!("DROP SCHEMA IF EXISTS {REPLAY_SCHEMA} CASCADE; CREATE SCHEMA {REPLAY_SCHEMA}")
            .as_str(),
    )
    .await?;
    for table in SPEED_TABLES {
        tx.execute(
            format!("CREATE TABLE {REPLAY_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)")
                .as_str(),
        )
        .await?;
    }
    // A replay from a time holds nothing before it; from an offset, nothing is known to be
    // missing, as when the speed layer first starts.
    let covered_from = match start {
        ReplayStart::Time(time) => Some(to_datetime(time)),
        ReplayStart::Earliest | ReplayStart::Offset(_) => None,
    };
    // A log of its own generation: running instances load it once it is swapped in.
    sqlx::query(&format!(
        "INSERT INTO {REPLAY_SCHEMA}.speed_log_head (id, seq, generation)
         VALUES (1, 0, (random() * 9e15)::bigint)"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {REPLAY_SCHEMA}.speed_coverage (topic, covered_from) VALUES ($1, $2)"
    ))
    .bind(topic)
    .bind(covered_from)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Connections whose unqualified speed tables are the replay's; every other table is shared.
async fn replay_pool(config: &PlatformConfig) -> Result<PgPool, ReplayError> {
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .after_connect(|connection, _| {
            Box::pin(async move {
                connection
                    .execute(format!("SET search_path TO {REPLAY_SCHEMA}, public").as_str())
                    .await?;
                Ok(())
            })
        })
        .connect(config.database_url()?)
        .await
        .map_err(ReplayError::Connect)?;
    Ok(pool)
}

async fn swap(live: &PgPool, topic: &str) -> Result<bool, sqlx::Error> {
    let mut tx = live.begin().await?;
    tx.execute("SET LOCAL lock_timeout = '10s'").await?;
    let tables: Vec<String> = SPEED_TABLES.iter().map(|t| format!("public.{t}")).collect();
    tx.execute(format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", tables.join(", ")).as_str())
        .await?;
    let behind: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT l.partition FROM public.speed_offsets l
         LEFT JOIN {REPLAY_SCHEMA}.speed_offsets r ON r.topic = l.topic AND r.partition = l.partition
         WHERE l.topic = $1 AND (r.next_offset IS NULL OR r.next_offset < l.next_offset)"
    ))
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    if !behind.is_empty() {
        tracing::info!(
            ?behind,
            "caught up with the log but behind the live offsets; replaying on"
        );
        tx.rollback().await?;
        return Ok(false);
    }
    tx.execute(
        format!("DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE; CREATE SCHEMA {PREVIOUS_SCHEMA}")
            .as_str(),
    )
    .await?;
    for table in SPEED_TABLES {
        tx.execute(format!("ALTER TABLE public.{table} SET SCHEMA {PREVIOUS_SCHEMA}").as_str())
            .await?;
    }
    for table in SPEED_TABLES {
        tx.execute(format!("ALTER TABLE {REPLAY_SCHEMA}.{table} SET SCHEMA public").as_str())
            .await?;
    }
    tx.execute(format!("DROP SCHEMA {REPLAY_SCHEMA}").as_str())
        .await?;
    // The swapped-in tables were created without the triggers that tell the serving layer its
    // cached snapshots are stale (migration 0013); this also notifies of the swap itself.
    tx.execute("SELECT lambda_watch_served_state(); NOTIFY lambda_served_state")
        .await?;
    tx.commit().await?;
    tracing::info!("replayed state swapped in; the replaced tables are in {PREVIOUS_SCHEMA}");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_holds_the_rate() {
        let mut bucket = TokenBucket::new(100.0);
        let start = Instant::now();
        // One second saved up, then 100 a second.
        for _ in 0..30 {
            bucket.take(10).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(
            (1.9..2.1).contains(&elapsed),
            "300 tokens at 100/s with 100 saved took {elapsed}s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_saves_at_most_one_second() {
        let mut bucket = TokenBucket::new(50.0);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        bucket.take(50).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.take(50).await;
        let elapsed = start.elapsed().as_secs_f64();
        assert!(
            (0.99..1.01).contains(&elapsed),
            "the second 50 took {elapsed}s"
        );
    }
}
