//! The connection pool HTTP requests read through: `serving.database_url` (the role
//! `lambda_reader` of migration 0011), else `DATABASE_URL`. Its sessions are read-only either
//! way, so no request path can write even through the shared role; the role makes it a rule
//! of the server, not of this code.

use shared_schema::config::{ConfigError, PlatformConfig};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// Neither `serving.database_url` nor `DATABASE_URL` is usable.
    #[error(transparent)]
    FindDatabaseUrl(#[from] ConfigError),
    #[error("connecting the read-only pool (serving.database_url): {0}")]
    Connect(#[from] sqlx::Error),
}

pub async fn connect(config: &PlatformConfig) -> Result<PgPool, ReaderError> {
    let url = match config.serving.database_url.as_deref() {
        Some(url) => url,
        None => config.database_url()?,
    };
    let options =
        PgConnectOptions::from_str(url)?.options([("default_transaction_read_only", "on")]);
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    Ok(pool)
}
