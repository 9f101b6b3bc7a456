//! The metric definitions of a batch run: checked against the promoted view's before any work,
//! and recorded with the version the run promotes, so that every view names the definitions it
//! was computed with (see `shared_io::registry`).

use crate::BatchError;
use shared_io::registry::{self, RegistryError};
use shared_schema::catalog::MetricCatalog;
use shared_schema::fingerprint::CanonicalCatalog;
use sqlx::{PgConnection, PgPool};

/// The name batch runs register and report under.
pub const SERVICE: &str = "batch-layer run";

/// The definitions a run computes with.
#[derive(Debug, Clone)]
pub struct RunDefinitions {
    pub canonical: CanonicalCatalog,
    pub fingerprint: String,
}

/// Stores the run's definitions and checks them against the promoted view's. Called under the
/// run lock, which pins and rollbacks take too, so the promoted view cannot change between this
/// check and the run's own promotion: a run started with the old definitions while another
/// rolled new ones out waits for it, then refuses instead of promoting the old ones back.
pub async fn check_for_run(
    pool: &PgPool,
    catalog: &MetricCatalog,
    accept: bool,
) -> Result<RunDefinitions, BatchError> {
    let canonical = catalog.canonical();
    let checked = |source| BatchError::CheckDefinitions { source };
    let mut conn = pool.acquire().await.map_err(checked)?;
    let fingerprint = registry::record_definitions(&mut conn, &canonical)
        .await
        .map_err(checked)?;
    let promoted = registry::promoted_definitions(&mut conn)
        .await
        .map_err(checked)?;
    match registry::check(SERVICE, &canonical, promoted.as_ref()) {
        Ok(()) => {}
        Err(differ) if accept => {
            tracing::warn!(fingerprint, view = %differ.view_version, "recomputing with new definitions, as accepted:\n{differ}")
        }
        Err(differ) => return Err(RegistryError::from(differ).into()),
    }
    Ok(RunDefinitions {
        canonical,
        fingerprint,
    })
}

/// Inside the promotion transaction: the new version records the definitions it was computed
/// with, so it is the reference services are checked against from the commit on.
pub async fn record_view(
    tx: &mut PgConnection,
    version: &str,
    definitions: &RunDefinitions,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE batch_versions SET definitions_fingerprint = $2 WHERE version = $1")
        .bind(version)
        .bind(&definitions.fingerprint)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
