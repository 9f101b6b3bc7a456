//! The watchdog of `speed-layer run`: partitions nobody consumes are taken back.
//!
//! A consumer group can leave a partition without a live consumer for good: a coordinator that
//! forms the group with an empty assignment after a crash loop (seen on the test broker), or a
//! dead member the broker has not expired. Every `liveness_interval` each instance asks the
//! broker for the end offset of every partition and records it beside the speed layer's stored
//! position in `speed_partition_liveness`, which keeps, shared by all instances, since when the
//! position has stood still below the end (see `shared_io::liveness`). When a partition
//! this instance does not own has stood still for `stall_timeout`, the instance leaves the group
//! and joins again as a new member, which makes the coordinator rebalance and hand the
//! partition to a live member. A new member first waits a session timeout (a dead member's
//! partitions are handed on then anyway); rejoins then back off (doubling from `stall_timeout`
//! up to [`MAX_BACKOFF`]) while the stall persists, and the backoff resets once nothing is
//! stalled. So a partition without a consumer is taken back within about
//! `max(stall_timeout, session_timeout) + liveness_interval` plus one rebalance.
//!
//! The same records tell `/readyz` what this instance owns, and the serving layer which
//! buckets a stalled partition may be missing.

use shared_io::kafka::{EventSource, SourceError};
use shared_io::liveness::{self, PartitionEvidence};
use shared_io::positions::{PositionTable, load_positions};
use shared_schema::time::Millis;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The longest wait between two rejoins while a stall persists.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long one broker request for a partition's end offset may take.
const END_OFFSET_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error("asking the broker for the end offsets of {topic}: {source}")]
    EndOffsets { topic: String, source: SourceError },
    #[error("recording the liveness of {topic}'s partitions: {source}")]
    Record { topic: String, source: sqlx::Error },
    #[error("joining the group for {topic} again: {source}")]
    Rejoin { topic: String, source: SourceError },
}

/// What `/readyz` reports: the partitions this instance owns and those no one consumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    pub owned: Vec<i32>,
    pub stalled: Vec<i32>,
    /// No check has completed yet.
    pub unknown: bool,
}

impl Readiness {
    /// Ready unless this instance owns nothing while some partition has no live consumer.
    pub fn ready(&self) -> bool {
        !self.unknown && (!self.owned.is_empty() || self.stalled.is_empty())
    }
}

pub type SharedReadiness = Arc<Mutex<Readiness>>;

/// `/readyz` of `speed-layer run`: `{"ready":..,"owned_partitions":[..],"stalled_partitions":[..]}`.
pub fn readiness_check(readiness: SharedReadiness) -> shared_io::observe::ReadinessCheck {
    Arc::new(move || {
        let r = readiness
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let reason = if r.unknown {
            Some("no liveness check has completed yet")
        } else if !r.ready() {
            Some("owns no partition while some partition has no live consumer")
        } else {
            None
        };
        (
            r.ready(),
            serde_json::json!({
                "ready": r.ready(),
                "owned_partitions": r.owned,
                "stalled_partitions": r.stalled,
                "reason": reason,
            }),
        )
    })
}

/// When to rejoin, given how long the stall has lasted and the rejoins made for it.
#[derive(Debug)]
pub struct Backoff {
    stall_timeout: Duration,
    next_allowed: Option<Instant>,
    attempts: u32,
}

impl Backoff {
    /// A member that joined at `joined` first gives the group `first_wait` to assign it
    /// partitions: a dead member's partitions are handed on once its session times out.
    pub fn new(stall_timeout: Duration, joined: Instant, first_wait: Duration) -> Self {
        Backoff {
            stall_timeout,
            next_allowed: Some(joined + first_wait),
            attempts: 0,
        }
    }

    /// Whether to rejoin at `now` for a stall of an unowned partition (`stalled`), and records
    /// the rejoin if so. A stall that ended resets the backoff.
    pub fn should_rejoin(&mut self, stalled: bool, now: Instant) -> bool {
        if !stalled {
            // The hold-off after joining stays; the backoff of past rejoins goes.
            if self.attempts > 0 {
                self.next_allowed = None;
            }
            self.attempts = 0;
            return false;
        }
        if self.next_allowed.is_some_and(|at| now < at) {
            return false;
        }
        let wait = self
            .stall_timeout
            .saturating_mul(2u32.saturating_pow(self.attempts))
            .min(MAX_BACKOFF);
        self.attempts = self.attempts.saturating_add(1);
        self.next_allowed = Some(now + wait);
        true
    }
}

pub struct Watchdog {
    pool: PgPool,
    topic: String,
    interval: Duration,
    stall_timeout: Duration,
    last_check: Option<Instant>,
    backoff: Backoff,
    readiness: SharedReadiness,
}

impl Watchdog {
    /// `session_timeout`: the group's; the first rejoin waits at least that long.
    pub fn new(
        pool: PgPool,
        topic: &str,
        (interval, stall_timeout, session_timeout): (Duration, Duration, Duration),
        readiness: SharedReadiness,
    ) -> Self {
        Watchdog {
            pool,
            topic: topic.to_string(),
            interval,
            stall_timeout,
            last_check: None,
            backoff: Backoff::new(
                stall_timeout,
                Instant::now(),
                stall_timeout.max(session_timeout),
            ),
            readiness,
        }
    }

    /// Checks once `interval` has passed since the last check; errors are logged, and the next
    /// check tries again.
    pub async fn tick(&mut self, source: &mut EventSource) {
        if self
            .last_check
            .is_some_and(|at| at.elapsed() < self.interval)
        {
            return;
        }
        self.last_check = Some(Instant::now());
        if let Err(e) = self.check(source).await {
            tracing::warn!(topic = %self.topic, error = %e, "liveness check failed; will retry");
        }
    }

    async fn check(&mut self, source: &mut EventSource) -> Result<(), LivenessError> {
        let topic = &self.topic;
        let recording = |source| LivenessError::Record {
            topic: topic.clone(),
            source,
        };
        let ends =
            source
                .end_offsets(END_OFFSET_TIMEOUT)
                .map_err(|source| LivenessError::EndOffsets {
                    topic: topic.clone(),
                    source,
                })?;
        let stored = load_positions(&self.pool, PositionTable::Speed, topic)
            .await
            .map_err(recording)?;
        let speed: BTreeMap<i32, i64> = stored
            .iter()
            .map(|(p, pos)| (*p, pos.next_offset))
            .collect();
        record(&self.pool, topic, &ends, &speed)
            .await
            .map_err(recording)?;
        shared_io::coverage::prune_landed(&self.pool, topic).await;
        let mut connection = self.pool.acquire().await.map_err(recording)?;
        let (evidence, now) = liveness::read_evidence(&mut connection, topic)
            .await
            .map_err(recording)?;
        drop(connection);
        let stall_ms = Millis::try_from(self.stall_timeout.as_millis()).unwrap_or(Millis::MAX);
        let stalled = liveness::stalled_partitions(&evidence, now, stall_ms);
        let owned = source.owned_partitions();
        let orphaned: Vec<i32> = stalled
            .iter()
            .copied()
            .filter(|p| !owned.contains(p))
            .collect();
        if let Ok(mut readiness) = self.readiness.lock() {
            *readiness = Readiness {
                owned: owned.clone(),
                stalled: stalled.clone(),
                unknown: false,
            };
        }
        // Assigned by lease, partitions are taken back without the group (see `leases`).
        if source.in_group()
            && self
                .backoff
                .should_rejoin(!orphaned.is_empty(), Instant::now())
        {
            tracing::warn!(
                topic = %self.topic,
                owned = ?owned,
                orphaned = ?orphaned,
                positions = %describe(&evidence, &orphaned),
                "partitions have had no live consumer for the stall timeout; joining the group again as a new member"
            );
            source
                .rejoin_group()
                .map_err(|source| LivenessError::Rejoin {
                    topic: topic.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// `p1:120<200` per orphaned partition: stored position below the broker's end.
fn describe(evidence: &[PartitionEvidence], partitions: &[i32]) -> String {
    evidence
        .iter()
        .filter(|e| partitions.contains(&e.partition))
        .map(|e| {
            format!(
                "p{}:{}<{}",
                e.partition,
                e.speed_offset.unwrap_or(0),
                e.end_offset.unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Records the broker's end offsets beside the stored positions. `behind_since` keeps its
/// value while the position stands still below the end, starts now when it falls behind or
/// moves while behind, and clears when it is not behind: the same rule whichever instance
/// writes, so the instances agree on how long a partition has stood still.
async fn record(
    pool: &PgPool,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    speed: &BTreeMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    if ends.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let end_offsets: Vec<i64> = ends.values().copied().collect();
    let speed_offsets: Vec<i64> = partitions
        .iter()
        .map(|p| speed.get(p).copied().unwrap_or(0))
        .collect();
    sqlx::query(
        "INSERT INTO speed_partition_liveness AS v (topic, partition, end_offset, speed_offset, behind_since)
         SELECT $1, p, e, s, CASE WHEN e > s THEN now() END
         FROM UNNEST($2::int[], $3::bigint[], $4::bigint[]) AS u(p, e, s)
         ON CONFLICT (topic, partition) DO UPDATE SET
             end_offset = EXCLUDED.end_offset,
             speed_offset = EXCLUDED.speed_offset,
             behind_since = CASE
                 WHEN EXCLUDED.end_offset <= EXCLUDED.speed_offset THEN NULL
                 WHEN v.speed_offset = EXCLUDED.speed_offset THEN coalesce(v.behind_since, now())
                 ELSE now() END,
             observed_at = now()",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&end_offsets)
    .bind(&speed_offsets)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoins_back_off_while_a_stall_lasts_and_reset_after() {
        let start = Instant::now();
        let s = Duration::from_secs(10);
        let mut backoff = Backoff::new(s, start, s);
        assert!(!backoff.should_rejoin(false, start));
        // A new member first waits one stall timeout for the group.
        assert!(!backoff.should_rejoin(true, start + Duration::from_secs(9)));
        let start = start + s;
        assert!(backoff.should_rejoin(true, start));
        assert!(!backoff.should_rejoin(true, start + Duration::from_secs(9)));
        assert!(backoff.should_rejoin(true, start + s));
        // Then 20 s, 40 s, ...
        assert!(!backoff.should_rejoin(true, start + s + Duration::from_secs(19)));
        assert!(backoff.should_rejoin(true, start + s + Duration::from_secs(20)));
        let late = start + Duration::from_secs(100_000);
        for _ in 0..40 {
            backoff.should_rejoin(true, late);
        }
        assert!(backoff.next_allowed.unwrap() <= late + MAX_BACKOFF);
        // A stall that ended: the next one rejoins at once.
        assert!(!backoff.should_rejoin(false, late));
        assert!(backoff.should_rejoin(true, late));
    }

    #[test]
    fn ready_unless_owning_nothing_beside_a_stalled_partition() {
        let mut r = Readiness {
            unknown: true,
            ..Readiness::default()
        };
        assert!(!r.ready());
        r.unknown = false;
        assert!(r.ready(), "a standby while every partition is consumed");
        r.stalled = vec![1];
        assert!(!r.ready());
        r.owned = vec![0];
        assert!(r.ready());
    }
}
