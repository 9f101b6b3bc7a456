//! The schema registry in Postgres (migration 0009): the event schema versions the platform
//! knows, the metric definitions every service instance and batch view was computed with, and
//! the start-up check that keeps them in agreement.
//!
//! The rule: the promoted batch view is the reference. A service whose definitions (see
//! [`shared_schema::fingerprint`]) differ from the promoted view's refuses to start, naming each
//! difference; with no promoted view, or one promoted before the registry existed, there is
//! nothing to disagree with. New definitions are rolled out by a batch run that accepts them
//! (`batch-layer run --accept-definitions`), whose view then becomes the reference.

use shared_schema::catalog::MetricCatalog;
pub use shared_schema::definitions::{DefinitionsDiffer, PromotedDefinitions, check};
use shared_schema::event::SCHEMA_VERSIONS;
use shared_schema::fingerprint::CanonicalCatalog;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry: could not register the event schema versions: {source}")]
    RegisterSchemaVersions { source: sqlx::Error },
    #[error("schema registry: could not record the start of {service}: {source}")]
    RegisterService {
        service: String,
        source: sqlx::Error,
    },
    #[error("schema registry: could not read the promoted view's definitions: {source}")]
    ReadPromotedDefinitions { source: sqlx::Error },
    #[error(
        "event schema version {version} is registered with fields {registered} (fingerprint {registered_fingerprint}), \
         but this binary decodes it with fields {here} (fingerprint {fingerprint}): a recorded version must never change \
         meaning, a new shape needs a new version"
    )]
    SchemaVersionChanged {
        version: i32,
        registered: String,
        registered_fingerprint: String,
        here: String,
        fingerprint: String,
    },
    #[error(transparent)]
    DefinitionsDiffer(#[from] DefinitionsDiffer),
}

/// How a registered start went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The definitions agree with the promoted view's, or there is nothing to compare with.
    Started,
    /// They differ, and the service was told to accept them (a batch run rolling them out).
    Accepted,
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
        }
    }
}

/// What a start recorded.
#[derive(Debug, Clone)]
pub struct Registration {
    pub instance_id: i64,
    pub fingerprint: String,
    pub outcome: Outcome,
}

/// How long a start waits out Postgres being away, as `db::connect` does: a service restarted
/// while Postgres restarts waits for it instead of failing.
const PATIENCE: Duration = Duration::from_secs(120);

/// Records the start of `service` (e.g. `"speed-layer run"`) with `catalog`, after registering
/// the event schema versions, and checks the definitions against the promoted view's. A
/// disagreement refuses the start (recorded as such) unless `accept` is set.
pub async fn register_service(
    pool: &PgPool,
    service: &str,
    catalog: &MetricCatalog,
    accept: bool,
) -> Result<Registration, RegistryError> {
    let canonical = catalog.canonical();
    let fingerprint = canonical.fingerprint();
    let span = tracing::info_span!("register_service", service, fingerprint = %fingerprint);
    async {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut backoff = Duration::from_millis(100);
        loop {
            match try_register(pool, service, &canonical, accept).await {
                Err(
                    e @ (RegistryError::RegisterSchemaVersions { .. }
                    | RegistryError::RegisterService { .. }),
                ) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "could not register; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }
    .instrument(span)
    .await
}

async fn try_register(
    pool: &PgPool,
    service: &str,
    canonical: &CanonicalCatalog,
    accept: bool,
) -> Result<Registration, RegistryError> {
    let fingerprint = canonical.fingerprint();
    register_schema_versions(pool).await?;
    let failed = |source| RegistryError::RegisterService {
        service: service.to_string(),
        source,
    };
    let mut conn = pool.acquire().await.map_err(failed)?;
    record_definitions(&mut conn, canonical)
        .await
        .map_err(failed)?;
    let promoted = promoted_definitions(&mut conn).await.map_err(failed)?;
    let verdict = check(service, canonical, promoted.as_ref());
    let (outcome, detail) = match &verdict {
        Ok(()) => (Outcome::Started, None),
        Err(differ) if accept => (Outcome::Accepted, Some(differ.to_string())),
        Err(differ) => (Outcome::Refused, Some(differ.to_string())),
    };
    let instance_id: i64 = sqlx::query_scalar(
        "INSERT INTO service_instances (service, fingerprint, host, pid, outcome, detail)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(service)
    .bind(&fingerprint)
    .bind(host_name())
    .bind(std::process::id() as i32)
    .bind(outcome.as_str())
    .bind(detail)
    .fetch_one(&mut *conn)
    .await
    .map_err(failed)?;
    match (outcome, &promoted) {
        (Outcome::Refused, _) => {}
        (_, None) => tracing::info!("registered; no promoted view to compare definitions with"),
        (_, Some(p)) if p.fingerprint.is_none() => tracing::info!(
            view = %p.version,
            "registered; the promoted view predates the registry, definitions not compared"
        ),
        (Outcome::Accepted, Some(p)) => tracing::warn!(
            view = %p.version,
            "registered with definitions that differ from the promoted view's, accepted"
        ),
        (_, Some(p)) => {
            tracing::info!(view = %p.version, "registered; definitions agree with the promoted view")
        }
    }
    match verdict {
        Err(differ) if !accept => Err(differ.into()),
        _ => Ok(Registration {
            instance_id,
            fingerprint,
            outcome,
        }),
    }
}

/// The check alone, against the view promoted now: for a running service to notice that
/// another view became the reference.
pub async fn check_promoted(
    pool: &PgPool,
    service: &str,
    canonical: &CanonicalCatalog,
) -> Result<(), RegistryError> {
    let failed = |source| RegistryError::ReadPromotedDefinitions { source };
    let mut conn = pool.acquire().await.map_err(failed)?;
    let promoted = promoted_definitions(&mut conn).await.map_err(failed)?;
    Ok(check(service, canonical, promoted.as_ref())?)
}

/// Stores `canonical` under its fingerprint (once) and returns the fingerprint.
pub async fn record_definitions(
    conn: &mut PgConnection,
    canonical: &CanonicalCatalog,
) -> Result<String, sqlx::Error> {
    let fingerprint = canonical.fingerprint();
    sqlx::query(
        "INSERT INTO metric_definitions (fingerprint, definitions) VALUES ($1, $2::jsonb)
         ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(&fingerprint)
    .bind(canonical.to_json())
    .execute(&mut *conn)
    .await?;
    Ok(fingerprint)
}

/// The promoted view and the definitions it was computed with; `None` before any promotion.
pub async fn promoted_definitions(
    conn: &mut PgConnection,
) -> Result<Option<PromotedDefinitions>, sqlx::Error> {
    let row: (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT s.version, b.definitions_fingerprint, d.definitions::text
         FROM serving_state s
         LEFT JOIN batch_versions b ON b.version = s.version
         LEFT JOIN metric_definitions d ON d.fingerprint = b.definitions_fingerprint
         WHERE s.id = 1",
    )
    .fetch_one(&mut *conn)
    .await?;
    let (Some(version), fingerprint, definitions) = row else {
        return Ok(None);
    };
    let canonical = definitions.and_then(|text| match CanonicalCatalog::from_json(&text) {
        Ok(canonical) => Some(canonical),
        Err(e) => {
            tracing::warn!(view = %version, error = %e, "cannot read the promoted view's definitions");
            None
        }
    });
    Ok(Some(PromotedDefinitions {
        version,
        fingerprint,
        canonical,
    }))
}

/// Records every event schema version this binary decodes, and refuses if one was recorded
/// with other fields. Versions recorded by newer binaries are only warned about: this one
/// quarantines their events as unsupported.
pub async fn register_schema_versions(pool: &PgPool) -> Result<(), RegistryError> {
    let failed = |source| RegistryError::RegisterSchemaVersions { source };
    for version in &SCHEMA_VERSIONS {
        let fields = version.fields_json();
        let fingerprint = version.fingerprint();
        sqlx::query(
            "INSERT INTO event_schema_versions (version, description, fields, fingerprint)
             VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (version) DO NOTHING",
        )
        .bind(version.version)
        .bind(version.description)
        .bind(&fields)
        .bind(&fingerprint)
        .execute(pool)
        .await
        .map_err(failed)?;
        let (registered_fingerprint, registered): (String, String) = sqlx::query_as(
            "SELECT fingerprint, fields::text FROM event_schema_versions WHERE version = $1",
        )
        .bind(version.version)
        .fetch_one(pool)
        .await
        .map_err(failed)?;
        if registered_fingerprint != fingerprint {
            return Err(RegistryError::SchemaVersionChanged {
                version: version.version,
                registered,
                registered_fingerprint,
                here: fields,
                fingerprint,
            });
        }
    }
    let newest = SCHEMA_VERSIONS.iter().map(|v| v.version).max().unwrap_or(0);
    let unknown: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM event_schema_versions WHERE version > $1 ORDER BY version",
    )
    .bind(newest)
    .fetch_all(pool)
    .await
    .map_err(failed)?;
    if !unknown.is_empty() {
        tracing::warn!(
            ?unknown,
            newest,
            "the registry knows event schema versions this binary does not decode; their events go to quarantine here"
        );
    }
    Ok(())
}

/// This machine's name, for telling instances apart.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}
