//! Partition leases in Postgres (`speed.assignment = "leases"`): the instances share the
//! partitions among themselves, so no broker's group coordinator can leave one unread.
//!
//! Every third of the session timeout each instance runs a round, one transaction: it renews
//! its heartbeat in `speed_members`, locks every lease row of the topic, and computes from the
//! live members (heartbeat within the session timeout) which member each partition belongs
//! to ([`share`]): the same answer in every instance that sees the same members. It renews the
//! leases it holds that are still its share, gives up those that are not, and takes those that
//! are its share and free (released, or expired with their holder). A member that stops
//! (SIGKILL, a pause, a lost network) stops renewing; after the session timeout its partitions
//! are free and the next round of a live member takes them. So a partition is read again
//! within about `session_timeout` plus two rounds whatever the broker does.
//!
//! A lease only decides who reads. What may be committed is still decided by the partition's
//! epoch (`state::store::claim`), raised by every take: a paused instance whose lease expired
//! and was taken cannot commit when it wakes, and gives the partition up at its next round.

use crate::SpeedLayer;
use crate::state::store;
use shared_io::kafka::EventSource;
use shared_io::positions::{PositionTable, load_positions};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("renewing the speed layer's partition leases of {topic}: {source}")]
    Round { topic: String, source: sqlx::Error },
    #[error("taking partitions {partitions:?} of {topic}: {source}")]
    Take {
        topic: String,
        partitions: Vec<i32>,
        source: sqlx::Error,
    },
    #[error("assigning partitions of {topic}: {source}")]
    Assign {
        topic: String,
        source: shared_io::kafka::SourceError,
    },
}

/// The member each partition belongs to: round robin over the live members in their order, so
/// shares differ by at most one partition. Empty without members.
pub(crate) fn share<'m>(
    partitions: &BTreeSet<i32>,
    members: &'m [String],
) -> BTreeMap<i32, &'m str> {
    if members.is_empty() {
        return BTreeMap::new();
    }
    partitions
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, members[i % members.len()].as_str()))
        .collect()
}

/// What one round decided for this member.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseChange {
    /// Leased to this member now and not read yet.
    pub take: Vec<i32>,
    /// Read now but leased to it no longer.
    pub give_up: Vec<i32>,
}

/// A lease row as the round sees it.
struct Lease {
    owner: Option<String>,
    live: bool,
}

/// Given the lease rows, the partitions read now and the share: which leases this member
/// holds after the round, and what changes for its reading.
fn decide(
    member: &str,
    leases: &BTreeMap<i32, Lease>,
    reading: &BTreeSet<i32>,
    share: &BTreeMap<i32, &str>,
) -> (Vec<i32>, LeaseChange) {
    let mut held = Vec::new();
    let mut change = LeaseChange::default();
    for (partition, lease) in leases {
        let ours = lease.owner.as_deref() == Some(member);
        let free = lease.owner.is_none() || !lease.live;
        if share.get(partition) == Some(&member) && (ours || free) {
            held.push(*partition);
            if !reading.contains(partition) {
                change.take.push(*partition);
            }
        } else if reading.contains(partition) {
            change.give_up.push(*partition);
        }
    }
    // Read, but not a partition of the topic as listed: given up too.
    for partition in reading {
        if !leases.contains_key(partition) {
            change.give_up.push(*partition);
        }
    }
    (held, change)
}

pub(crate) struct Leases {
    pool: PgPool,
    topic: String,
    member: String,
    ttl: Duration,
    last_round: Option<Instant>,
}

impl Leases {
    /// Leases that live for `session_timeout` and are renewed every third of it.
    pub(crate) fn new(pool: PgPool, topic: &str, member: &str, session_timeout: Duration) -> Self {
        Leases {
            pool,
            topic: topic.to_string(),
            member: member.to_string(),
            ttl: session_timeout,
            last_round: None,
        }
    }

    fn interval(&self) -> Duration {
        self.ttl / 3
    }

    /// One round (see the module's description), given the topic's partitions and those read
    /// now.
    pub(crate) async fn round(
        &self,
        partitions: &BTreeSet<i32>,
        reading: &BTreeSet<i32>,
    ) -> Result<LeaseChange, sqlx::Error> {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let listed: Vec<i32> = partitions.iter().copied().collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO speed_members (topic, member, heartbeat_at) VALUES ($1, $2, now())
             ON CONFLICT (topic, member) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(&self.topic)
        .bind(&self.member)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO speed_leases (topic, partition, owner, expires_at)
             SELECT $1, p, NULL, now() FROM UNNEST($2::int[]) AS p ON CONFLICT DO NOTHING",
        )
        .bind(&self.topic)
        .bind(&listed)
        .execute(&mut *tx)
        .await?;
        // The rows stay locked until the round commits: rounds of all members take turns.
        let rows: Vec<(i32, Option<String>, bool)> = sqlx::query_as(
            "SELECT partition, owner, expires_at > now() FROM speed_leases
             WHERE topic = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE",
        )
        .bind(&self.topic)
        .bind(&listed)
        .fetch_all(&mut *tx)
        .await?;
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT member FROM speed_members
             WHERE topic = $1 AND heartbeat_at > now() - $2::bigint * interval '1 millisecond'
             ORDER BY member",
        )
        .bind(&self.topic)
        .bind(ttl_ms)
        .fetch_all(&mut *tx)
        .await?;
        let leases: BTreeMap<i32, Lease> = rows
            .into_iter()
            .map(|(p, owner, live)| (p, Lease { owner, live }))
            .collect();
        let (held, change) = decide(&self.member, &leases, reading, &share(partitions, &members));
        sqlx::query(
            "UPDATE speed_leases SET owner = $2,
                 expires_at = now() + $4::bigint * interval '1 millisecond'
             WHERE topic = $1 AND partition = ANY($3)",
        )
        .bind(&self.topic)
        .bind(&self.member)
        .bind(&held)
        .bind(ttl_ms)
        .execute(&mut *tx)
        .await?;
        // Given up now rather than left to expire: the member whose share it is takes it at
        // its next round.
        sqlx::query(
            "UPDATE speed_leases SET owner = NULL, expires_at = now()
             WHERE topic = $1 AND owner = $2 AND NOT partition = ANY($3)",
        )
        .bind(&self.topic)
        .bind(&self.member)
        .bind(&held)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Leaves: the heartbeat and every lease go, so the others take the partitions at their
    /// next round instead of after the session timeout.
    pub(crate) async fn leave(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM speed_members WHERE topic = $1 AND member = $2")
            .bind(&self.topic)
            .bind(&self.member)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE speed_leases SET owner = NULL, expires_at = now()
             WHERE topic = $1 AND owner = $2",
        )
        .bind(&self.topic)
        .bind(&self.member)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

impl SpeedLayer {
    /// Runs a lease round when one is due and applies it to `source`: partitions whose
    /// checkpoints were refused are read again from their stored positions under a new epoch
    /// if still leased here; those given up stop being read; those taken are claimed (raising
    /// their epoch, which waits for a checkpoint of the old owner in flight) and read from the
    /// positions stored then. Errors are logged and the next round tries again.
    pub(crate) async fn follow_leases(&self, leases: &mut Leases, source: &mut EventSource) {
        if leases
            .last_round
            .is_some_and(|at| at.elapsed() < leases.interval())
        {
            return;
        }
        leases.last_round = Some(Instant::now());
        if let Err(e) = self.lease_round(leases, source).await {
            tracing::warn!(error = %e, "lease round failed; will retry");
        }
    }

    async fn lease_round(
        &self,
        leases: &Leases,
        source: &mut EventSource,
    ) -> Result<(), LeaseError> {
        let topic = &leases.topic;
        let assign = |source| LeaseError::Assign {
            topic: topic.clone(),
            source,
        };
        let fenced: Vec<i32> = {
            let mut ownership = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut ownership.fenced).into_iter().collect()
        };
        source.give_up(&fenced).map_err(assign)?;
        let reading: BTreeSet<i32> = source.owned_partitions().into_iter().collect();
        let change = leases
            .round(source.partitions(), &reading)
            .await
            .map_err(|source| LeaseError::Round {
                topic: topic.clone(),
                source,
            })?;
        if !change.give_up.is_empty() {
            source.give_up(&change.give_up).map_err(assign)?;
            let mut ownership = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
            for partition in &change.give_up {
                ownership.epochs.remove(partition);
            }
            tracing::info!(partitions = ?change.give_up, "gave up partitions: no longer leased here");
        }
        if !change.take.is_empty() {
            self.take_leased(topic, &change.take, source).await?;
        }
        if !(change.take.is_empty() && change.give_up.is_empty() && fenced.is_empty()) {
            // The same shape as the group's line, which the tests read.
            tracing::info!(topic = %topic, partitions = ?source.owned_partitions(), "assigned by lease");
        }
        Ok(())
    }

    /// Claims `take` (raising its epochs) and reads it from the positions stored then.
    async fn take_leased(
        &self,
        topic: &str,
        take: &[i32],
        source: &mut EventSource,
    ) -> Result<(), LeaseError> {
        let taking = |source| LeaseError::Take {
            topic: topic.to_string(),
            partitions: take.to_vec(),
            source,
        };
        let epochs = store::claim(&self.pool, topic, take, &self.instance)
            .await
            .map_err(taking)?;
        let stored = load_positions(&self.pool, PositionTable::Speed, topic)
            .await
            .map_err(taking)?;
        source
            .take(take, &stored)
            .map_err(|source| LeaseError::Assign {
                topic: topic.to_string(),
                source,
            })?;
        tracing::info!(?epochs, "took partitions by lease");
        self.ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .epochs
            .extend(epochs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn every_partition_has_one_member_and_shares_differ_by_at_most_one() {
        for partitions in 0..20 {
            let all: BTreeSet<i32> = (0..partitions).collect();
            for n in 1..6 {
                let members = members(n);
                let share = share(&all, &members);
                assert_eq!(share.len(), all.len());
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for m in share.values() {
                    *counts.entry(m).or_default() += 1;
                }
                let most = counts.values().max().copied().unwrap_or(0);
                let least = if counts.len() < n.min(all.len()) {
                    0
                } else {
                    counts.values().min().copied().unwrap_or(0)
                };
                assert!(
                    most - least <= 1,
                    "{partitions} partitions, {n} members: {counts:?}"
                );
            }
        }
        assert!(share(&BTreeSet::from([0]), &[]).is_empty());
    }

    fn lease(owner: Option<&str>, live: bool) -> Lease {
        Lease {
            owner: owner.map(str::to_string),
            live,
        }
    }

    #[test]
    fn a_member_takes_its_free_share_waits_for_a_live_holder_and_gives_up_the_rest() {
        let members = members(2);
        let all = BTreeSet::from([0, 1, 2, 3]);
        let share = share(&all, &members);
        // m0's share is 0 and 2; m1's is 1 and 3.
        let leases = BTreeMap::from([
            (0, lease(None, false)),         // free: taken
            (1, lease(Some("m0"), true)),    // ours, not our share: given up
            (2, lease(Some("m1"), true)),    // our share, live elsewhere: wait
            (3, lease(Some("dead"), false)), // expired, not our share: left alone
        ]);
        let reading = BTreeSet::from([1]);
        let (held, change) = decide("m0", &leases, &reading, &share);
        assert_eq!(held, vec![0]);
        assert_eq!(
            change,
            LeaseChange {
                take: vec![0],
                give_up: vec![1]
            }
        );
        // Once m1 released 2, m0 takes it; an expired lease of its own share is taken too.
        let leases = BTreeMap::from([(0, lease(Some("m0"), true)), (2, lease(Some("m1"), false))]);
        let (held, change) = decide("m0", &leases, &BTreeSet::from([0]), &share);
        assert_eq!(held, vec![0, 2]);
        assert_eq!(
            change,
            LeaseChange {
                take: vec![2],
                give_up: vec![]
            }
        );
    }

    #[test]
    fn a_lease_of_its_own_not_read_is_taken_again_and_an_unlisted_partition_given_up() {
        let members = members(1);
        let share = share(&BTreeSet::from([0]), &members);
        // Its own lease, expired or not, not read now (a refused checkpoint gave it up).
        let leases = BTreeMap::from([(0, lease(Some("m0"), false))]);
        let (held, change) = decide("m0", &leases, &BTreeSet::from([7]), &share);
        assert_eq!(held, vec![0]);
        assert_eq!(
            change,
            LeaseChange {
                take: vec![0],
                give_up: vec![7]
            }
        );
    }
}
