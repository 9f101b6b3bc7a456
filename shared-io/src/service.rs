//! What every service does at start: load the configuration and the metric definitions (either
//! broken one refuses the start with its message), connect to Postgres and apply migrations.

use crate::db::{DbError, connect_and_migrate};
use shared_schema::config::{ConfigError, PlatformConfig};
use shared_schema::{catalog::MetricCatalog, metrics::MetricError};
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Metrics(#[from] MetricError),
    #[error(transparent)]
    Db(#[from] DbError),
}

pub struct Started {
    pub config: PlatformConfig,
    pub catalog: MetricCatalog,
    pub pool: PgPool,
}

pub async fn start() -> Result<Started, StartError> {
    // The configuration says how to log, so a broken one is reported by the caller's error.
    let config = PlatformConfig::load()?;
    crate::telemetry::init_tracing(config.log_format);
    let catalog = config.metric_catalog()?;
    let pool = connect_and_migrate(config.database_url()?, config.database_max_connections).await?;
    Ok(Started {
        config,
        catalog,
        pool,
    })
}
