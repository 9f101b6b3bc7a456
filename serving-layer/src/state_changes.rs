//! Knowing when a cached query snapshot went stale.
//!
//! Migration 0013 makes every write to what a query reads notify `lambda_served_state`. One
//! connection LISTENs and counts notifications into a generation; a snapshot cached under an
//! older generation is never reused. While that connection is down no generation is given out,
//! so nothing is cached that a missed notification could leave stale.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub const CHANNEL: &str = "lambda_served_state";

#[derive(Clone, Default)]
pub struct StateGeneration {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: AtomicU64,
    listening: AtomicBool,
}

impl StateGeneration {
    /// Listens on `pool`'s database until the process ends, reconnecting as needed.
    pub fn listen(pool: PgPool) -> Self {
        let generation = StateGeneration::default();
        tokio::spawn(generation.clone().follow(pool));
        generation
    }

    /// The generation to cache a snapshot under, read before the snapshot is; `None` when
    /// changes cannot be heard now, and nothing may be cached.
    pub fn current(&self) -> Option<u64> {
        self.inner
            .listening
            .load(Ordering::Acquire)
            .then(|| self.inner.generation.load(Ordering::Acquire))
    }

    fn changed(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn follow(self, pool: PgPool) {
        loop {
            match self.listen_once(&pool).await {
                Ok(()) => tracing::warn!("state notifications lost; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "state notifications unavailable; reconnecting")
                }
            }
            self.inner.listening.store(false, Ordering::Release);
            self.changed();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Returns when the connection is lost.
    async fn listen_once(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        // By default a lost connection is re-acquired from the pool inside `try_recv`, which
        // waits out the pool's acquire timeout while Postgres is down, and all that time cached
        // answers would still be served. Return at once instead, so caching stops with the loss.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        // Whatever changed before LISTEN took effect was not heard: start a new generation.
        self.changed();
        self.inner.listening.store(true, Ordering::Release);
        tracing::info!(channel = CHANNEL, "listening for state changes");
        // `try_recv` gives `None` when the connection dropped (notifications may be lost).
        while listener.try_recv().await?.is_some() {
            self.changed();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_cached_until_listening() {
        let generation = StateGeneration::default();
        assert_eq!(generation.current(), None);
        generation.inner.listening.store(true, Ordering::Release);
        let before = generation.current();
        generation.changed();
        assert_ne!(generation.current(), before);
    }
}
