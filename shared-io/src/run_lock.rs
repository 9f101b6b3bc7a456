//! The lock that serialises batch runs, pins and rollbacks, and the proof a promotion gives
//! that it still holds it.
//!
//! The lock is a session advisory lock on a connection of its own, so a killed process's lock
//! dies with its connection. That connection sits idle while a run computes, and may die
//! (a network cut, `pg_terminate_backend`, an idle timeout) while the process goes on; another
//! run may then take the lock. So every transaction that promotes runs on the lock's own
//! session ([`RunLock::begin`]): it first checks that this session still holds the lock, and it
//! can only commit while the session lives. If the session dies before the commit, Postgres
//! rolls the transaction back and releases the lock together; a stale holder never promotes.

use sqlx::{Connection, PgConnection, Postgres, Transaction};

/// Key of the advisory lock that serialises batch runs.
pub const RUN_LOCK_KEY: i64 = 0x6261_7463_685f_7275; // "batch_ru"

/// Whether the session running it holds the run lock. A bigint advisory key is listed in
/// `pg_locks` as its high half in `classid`, its low half in `objid`, and `objsubid = 1`.
const HOLDS_LOCK: &str = "SELECT EXISTS (
     SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
       AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid
       AND objsubid = 1)";

#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    #[error("could not connect to Postgres for the batch run lock: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("could not take the batch run lock: {0}")]
    Acquire(#[source] sqlx::Error),
    /// The session holding the lock ended, so this run, pin or rollback may no longer be the
    /// only one: it must not promote.
    #[error("lost the batch run lock ({0}); not promoting, the served view and T are unchanged")]
    Lost(String),
    #[error("could not release the batch run lock: {0}")]
    Release(#[source] sqlx::Error),
}

/// Held for a whole run, pin or rollback.
pub struct RunLock {
    connection: PgConnection,
}

impl RunLock {
    /// Waits for the lock on a new session of `database_url`.
    pub async fn acquire(database_url: &str) -> Result<RunLock, RunLockError> {
        let mut connection = PgConnection::connect(database_url)
            .await
            .map_err(RunLockError::Connect)?;
        tracing::info!("waiting for the batch run lock");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(RUN_LOCK_KEY)
            .execute(&mut connection)
            .await
            .map_err(RunLockError::Acquire)?;
        Ok(RunLock { connection })
    }

    /// A transaction on the lock's own session, begun only if that session still holds the
    /// lock. Everything that moves T or the served version commits through one of these.
    pub async fn begin(&mut self) -> Result<Transaction<'_, Postgres>, RunLockError> {
        let lost = |e: sqlx::Error| RunLockError::Lost(e.to_string());
        let mut tx = self.connection.begin().await.map_err(lost)?;
        let held: bool = sqlx::query_scalar(HOLDS_LOCK)
            .bind(RUN_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await
            .map_err(lost)?;
        if !held {
            return Err(RunLockError::Lost("this session no longer holds it".into()));
        }
        Ok(tx)
    }

    pub async fn release(self) -> Result<(), RunLockError> {
        self.connection.close().await.map_err(RunLockError::Release)
    }
}
