//! `batch-layer run`: one recomputation of every metric from the whole lake, then an atomic
//! promotion of the new view version and its cutover T.
//!
//! The order is what makes it safe:
//! 1. a session advisory lock serialises runs, so two runs started at once execute one after
//!    the other (a killed run's lock dies with its connection); the promotion commits on the
//!    lock's own session, so a run whose lock connection died never promotes
//!    (`shared_io::run_lock`);
//! 2. one snapshot reads the manifest, the lander's progress and the promoted T (`lake_snapshot`);
//! 3. T is chosen and checked against the lake's completeness before any work;
//! 4. the view is computed (`view_plan`, `plan_rows`) for the hours that changed and published
//!    as segments under version-unique names, then a manifest listing them with the promoted
//!    version's segments of the other hours; each file written atomically, locally by rename,
//!    on S3 by one PUT of a new key (`publish`, `shared_io::view_segments`);
//! 5. one transaction records the version and moves T (`publish::promote`). Until it commits,
//!    the previous view and T stay served; a run killed at any earlier step changes nothing
//!    that is served;
//! 6. still under the lock: old versions are removed (`view_gc`), the lake's hours past
//!    `lake.retention` deleted (`lake_retention`) and closed lake hours compacted
//!    (`lake_compaction`).

use crate::BatchError;
use crate::cutover_clock;
use crate::engine::Engine;
use crate::incremental::{self, Scope};
use crate::lake_compaction::compact_closed_hours;
use crate::lake_retention;
use crate::lake_snapshot::{Reused, read_snapshot, reuse_promoted};
use crate::publish::{VersionRecord, promote, publish_view};
use crate::view_gc::{remove_old_versions, remove_unpublished};
use crate::view_plan::compute_enriched_view;
use chrono::Utc;
use shared_io::run_lock::RunLock;
use shared_io::storage::Lake;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use shared_schema::cutover::{LandedPartition, lake_complete_until, with_unrecorded_partitions};
use shared_schema::time::{Millis, format_rfc3339, now_millis};
use sqlx::PgPool;
use tracing::Instrument;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The operator's `--cutover`; rounded down to a bucket boundary.
    pub cutover: Option<Millis>,
    /// `--full`, `--from`/`--to`.
    pub request: incremental::Request,
    /// `--accept-definitions`: compute and promote even if the promoted view's definitions differ.
    pub accept_definitions: bool,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub version: String,
    pub cutover: Millis,
    pub view_rows: usize,
    pub lake_files: usize,
    pub lake_rows: i64,
    /// Hours recomputed; `None` for a full recompute.
    pub recomputed_hours: Option<usize>,
    /// Rows kept from the promoted view (its segments listed again, or, from a version written
    /// as one file, its rows copied).
    pub reused_rows: usize,
}

/// How far a run is: hours of the lake recomputed out of the run's total. Reported once before
/// the first chunk and after every chunk; drawing it is the caller's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunProgress {
    pub done: u64,
    pub total: u64,
}

/// A progress report for a run with nothing to draw on: a log line per chunk.
pub fn log_progress(progress: RunProgress) {
    if progress.done > 0 {
        tracing::info!(
            done = progress.done,
            total = progress.total,
            "recomputed hours"
        );
    }
}

/// How far the lake is complete, over every partition the topic has now: one added since the
/// lander last looked holds T back. With the broker away the partitions are unknown, and so is
/// completeness: T stays where it is.
async fn lake_complete_until_now(
    config: &PlatformConfig,
    landed: &[LandedPartition],
    allowed_lateness: Millis,
) -> Option<Millis> {
    match shared_io::kafka::topic_partitions(&config.kafka_access(), &config.events_topic).await {
        Ok(partitions) => lake_complete_until(
            &with_unrecorded_partitions(landed.to_vec(), &partitions),
            allowed_lateness,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the topic's partitions, so how far the lake is complete is unknown; T stays where it is");
            None
        }
    }
}

pub async fn run_once(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
    options: &RunOptions,
    progress: &(dyn Fn(RunProgress) + Send + Sync),
) -> Result<RunOutcome, BatchError> {
    let version = new_version_id();
    let span = tracing::info_span!("batch_run", run_id = %version);
    async {
        shared_io::failpoint::hit("batch.run.start").await;
        let engine = Engine::from_config(config)?;
        let mut lock = RunLock::acquire(config.database_url()?).await?;
        let definitions = crate::definitions::check_for_run(pool, catalog, options.accept_definitions).await?;
        let started_at = Utc::now();
        let lake = Lake::open(&config.lake_dir)?;
        remove_unpublished(pool, &lake).await;

        let mut snapshot = read_snapshot(pool, &config.events_topic, &config.cdc.topic).await?;
        let lateness = catalog.max_allowed_lateness();
        let complete_until = lake_complete_until_now(config, &snapshot.landed, lateness).await;
        let alignment = catalog.cutover_alignment();
        let limit = cutover_clock::clock_limit(now_millis(), lateness, alignment);
        let cutover = cutover_clock::choose(options.cutover, complete_until, snapshot.current_cutover, alignment, limit, lateness)?;
        // Never past what the speed layer counted and the lake lacks (CONTRACT §5.3).
        let cutover = snapshot.within_counted(cutover, options.cutover.is_some(), alignment)?;
        let horizon = lake_retention::horizon(pool, config.lake.retention, config.batch.keep_versions, alignment, (now_millis(), cutover)).await?;
        if let Some(horizon) = horizon {
            snapshot.drop_hours_before(horizon);
        }
        tracing::info!(cutover = %format_rfc3339(cutover), files = snapshot.files.len(), rows = snapshot.rows, %engine, "recomputing");

        let digests = snapshot.hour_digests();
        let changelog_digest = snapshot.changelog_digest();
        // A changed profile history can change any enriched bucket: recompute everything.
        let previous = snapshot
            .promoted
            .as_ref()
            .filter(|p| p.definitions.as_deref() == Some(definitions.fingerprint.as_str()))
            .filter(|p| !catalog.needs_profiles() || p.changelog.as_deref() == Some(changelog_digest.as_str()))
            .map(|p| &p.previous);
        let mut scope = incremental::plan(catalog, &options.request, &digests, previous, cutover);
        let mut reused = Reused::Rows(Vec::new());
        if let (Scope::Hours { .. }, Some(promoted)) = (&scope, &snapshot.promoted) {
            match reuse_promoted(&lake, &promoted.view_path, &scope, cutover).await {
                Ok(kept) => reused = kept,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the promoted view; recomputing everything");
                    scope = Scope::Full;
                }
            }
        }
        let recomputed_hours = match &scope {
            Scope::Full => None,
            Scope::Hours { recompute, .. } => Some(recompute.len()),
        };
        tracing::info!(recomputed_hours = ?recomputed_hours, reused_rows = reused.rows(), "scope");

        let mut hours = scope.recomputed_hours(&digests, cutover);
        // Hours past retention recompute to nothing: no chunk needs to look at them.
        hours.retain(|h| horizon.is_none_or(|horizon| *h >= horizon));
        let chunks = incremental::chunks(catalog, &hours, config.batch.chunk_hours);
        let total = hours.len() as u64;
        let mut done = 0;
        progress(RunProgress { done, total });
        let mut rows = Vec::new();
        for chunk in &chunks {
            let lake_paths: Vec<String> = snapshot
                .files
                .iter()
                .filter(|f| chunk.reads(f.hour))
                .map(|f| lake.location(&f.path))
                .collect();
            let ctx = engine.context(config).await?;
            let changelog_paths: Vec<String> = snapshot
                .changelog
                .iter()
                .map(|f| lake.location(&f.path))
                .collect();
            let mut chunk_rows =
                compute_enriched_view(&ctx, &lake_paths, &changelog_paths, catalog, cutover)
                    .await
                    .map_err(|e| match &engine {
                        Engine::Local => e,
                        Engine::Ballista { .. } => BatchError::Distributed {
                            engine: engine.to_string(),
                            cause: Box::new(e),
                        },
                    })?;
            chunk_rows.retain(|r| chunk.recomputes(r.row.bucket_start));
            rows.append(&mut chunk_rows);
            done += chunk.recomputed_hours(&digests, cutover).len() as u64;
            progress(RunProgress { done, total });
        }
        let reused_rows = reused.rows();
        let reused_segments = match reused {
            Reused::Segments(segments) => segments,
            Reused::Rows(mut kept) => {
                rows.append(&mut kept);
                Vec::new()
            }
        };
        let (view_path, view_rows) = publish_view(&lake, &version, rows, reused_segments).await?;
        let record = VersionRecord {
            version: &version,
            cutover,
            view_path: &view_path,
            view_rows,
            started_at,
            definitions: &definitions,
            digests: &digests,
            changelog_digest: &changelog_digest,
            recomputed_hours,
        };
        shared_io::failpoint::hit("batch.run.before_promote").await;
        promote(&mut lock, &record, &snapshot, (&config.events_topic, catalog.cutover_alignment())).await?;
        tracing::info!(cutover = %format_rfc3339(cutover), rows = view_rows, "promoted");
        // The speed state of [previous T, T) is kept for the retention grace: compare it now.
        let previous = snapshot.current_cutover;
        crate::divergence::after_promotion(pool, config, catalog, &version, previous, cutover, &view_path).await;
        remove_old_versions(pool, config.batch.keep_versions, &lake).await;
        // Under the run lock: no run reads the files these delete or replace.
        if let Some(horizon) = horizon {
            match lake_retention::remove_before(pool, &lake, &config.events_topic, horizon).await {
                Ok(0) => {}
                Ok(files) => tracing::info!(files, horizon = %format_rfc3339(horizon), "deleted lake files past retention"),
                Err(e) => tracing::warn!(error = %e, "could not apply lake retention; will retry next run"),
            }
        }
        match compact_closed_hours(pool, &lake, &config.events_topic, cutover).await {
            Ok(0) => {}
            Ok(hours) => tracing::info!(hours, "compacted closed lake hours"),
            Err(e) => tracing::warn!(error = %e, "could not compact the lake; will retry next run"),
        }
        lock.release().await?;
        Ok(RunOutcome {
            version: version.clone(),
            cutover,
            view_rows,
            lake_files: snapshot.files.len(),
            lake_rows: snapshot.rows,
            recomputed_hours,
            reused_rows,
        })
    }
    .instrument(span)
    .await
}

/// Sortable by time, unique across concurrent runs: `20261121T134500Z-1a2b3c4d`.
fn new_version_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%SZ"), &uuid[..8])
}

pub fn describe(outcome: &RunOutcome) -> String {
    let scope = match outcome.recomputed_hours {
        None => "full recompute".to_string(),
        Some(hours) => format!(
            "incremental: {hours} hours recomputed, {} rows reused",
            outcome.reused_rows
        ),
    };
    format!(
        "promoted version {} with cutover {} ({} view rows from {} lake rows in {} files; {scope})",
        outcome.version,
        format_rfc3339(outcome.cutover),
        outcome.view_rows,
        outcome.lake_rows,
        outcome.lake_files
    )
}
