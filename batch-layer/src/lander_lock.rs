//! One lander per topic. Two `batch-layer land` processes would each read every partition from
//! the stored positions and land every event twice, so a lander first takes the topic's lock:
//! a session advisory lock held on a connection of its own for as long as it runs. A second
//! lander waits for it, saying so in its log, and takes over when the first stops or dies.
//!
//! Taking the lock raises the topic's epoch (`lander_fence`, migration 0016), and every commit
//! of lake files and positions checks its epoch inside its transaction ([`Fence::check`]). So
//! a lander whose lock connection died (a network cut, `pg_terminate_backend`) cannot commit
//! once another has taken over, even before it notices; it notices within
//! [`WATCH_INTERVAL`] ([`LanderLock::lost`]) and stops with an error, for its supervisor to
//! restart it, when it waits for the lock like any second lander.

use crate::BatchError;
use shared_schema::config::PlatformConfig;
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use std::time::Duration;

/// How often a lander checks that it still holds its lock.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The advisory lock key of a topic's lander, computed by Postgres from this text.
fn key_text(topic: &str) -> String {
    format!("batch-lander:{topic}")
}

/// The epoch a lander took its topic with; every commit checks it.
#[derive(Debug, Clone)]
pub struct Fence {
    pub topic: String,
    pub epoch: i64,
}

impl Fence {
    /// Fails the transaction (SQLSTATE `LF001`) unless this is still the topic's current epoch,
    /// and holds the fence row until the transaction ends, so no new owner's epoch overtakes
    /// a commit in flight.
    pub async fn check(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT lambda_check_lander_fence($1, $2)")
            .bind(&self.topic)
            .bind(self.epoch)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The topic's lander lock, held until dropped (its connection closes).
pub struct LanderLock {
    connection: PgConnection,
    fence: Fence,
}

impl LanderLock {
    /// Takes the topic's lock, waiting for another lander to stop if one holds it, and raises
    /// the topic's epoch.
    pub async fn acquire(config: &PlatformConfig, topic: &str) -> Result<LanderLock, BatchError> {
        let url = config.database_url()?;
        Self::take(url, topic)
            .await
            .map_err(|source| BatchError::TakeLanderLock {
                topic: topic.to_string(),
                source,
            })
    }

    async fn take(url: &str, topic: &str) -> Result<LanderLock, sqlx::Error> {
        let mut connection = PgConnection::connect(url).await?;
        let key = key_text(topic);
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .fetch_one(&mut connection)
            .await?;
        if !free {
            let holder: Option<(i64, i32)> =
                sqlx::query_as("SELECT epoch, holder_pid FROM lander_fence WHERE topic = $1")
                    .bind(topic)
                    .fetch_optional(&mut connection)
                    .await?;
            tracing::warn!(
                topic,
                holder_epoch = holder.map(|(epoch, _)| epoch),
                holder_pid = holder.map(|(_, pid)| pid),
                "another lander is landing this topic; waiting until it stops"
            );
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .execute(&mut connection)
                .await?;
        }
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO lander_fence (topic, epoch, holder_pid) VALUES ($1, 1, $2)
             ON CONFLICT (topic) DO UPDATE
                 SET epoch = lander_fence.epoch + 1, holder_pid = $2, taken_at = now()
             RETURNING epoch",
        )
        .bind(topic)
        .bind(std::process::id() as i32)
        .fetch_one(&mut connection)
        .await?;
        tracing::info!(topic, epoch, "took the lander lock of the topic");
        Ok(LanderLock {
            connection,
            fence: Fence {
                topic: topic.to_string(),
                epoch,
            },
        })
    }

    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Resolves when this lander no longer holds the lock: its connection ended, or another
    /// lander raised the epoch.
    pub async fn lost(&mut self) -> BatchError {
        let fenced = |reason: String| BatchError::LanderFenced {
            topic: self.fence.topic.clone(),
            reason,
        };
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let current: Result<Option<i64>, sqlx::Error> =
                sqlx::query_scalar("SELECT epoch FROM lander_fence WHERE topic = $1")
                    .bind(&self.fence.topic)
                    .fetch_optional(&mut self.connection)
                    .await;
            match current {
                Ok(Some(epoch)) if epoch == self.fence.epoch => {}
                Ok(other) => {
                    return fenced(format!(
                        "epoch {} was replaced by {other:?}",
                        self.fence.epoch
                    ));
                }
                Err(e) => return fenced(format!("the lock's connection ended: {e}")),
            }
        }
    }

    pub async fn release(self) -> Result<(), BatchError> {
        let topic = self.fence.topic;
        self.connection
            .close()
            .await
            .map_err(|source| BatchError::ReleaseLanderLock { topic, source })
    }
}
