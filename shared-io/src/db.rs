//! Postgres connection and migrations, shared by every service.

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// The migrations in `migrations/`, compiled in. sqlx takes a Postgres advisory lock while it
/// applies them, so any number of services may start at once against an empty database.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("could not reach Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("could not apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connects, retrying with backoff for up to `patience`, so that a service started before
/// Postgres (as under docker-compose) waits for it instead of failing.
pub async fn connect(
    url: &str,
    max_connections: u32,
    patience: Duration,
) -> Result<PgPool, DbError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Postgres not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(DbError::Connect(e)),
        }
    }
}

/// Connects and applies the migrations: what every service does at start.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let pool = connect(url, max_connections, Duration::from_secs(120)).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
