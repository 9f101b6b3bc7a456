//! `batch-layer run`: one recomputation of every metric from the whole lake, then an atomic
//! promotion of the new view version and its cutover T.
//!
//! The order is what makes it safe:
//! 1. a session advisory lock serialises runs, so two runs started at once execute one after
//!    the other (a killed run's lock dies with its connection); the promotion commits on the
//!    lock's own session, so a run whose lock connection died never promotes (`run_lock`);
//! 2. one snapshot reads the manifest, the lander's progress and the promoted T;
//! 3. T is chosen and checked against the lake's completeness before any work;
//! 4. the view is published under a version-unique name: locally written under a staging name
//!    and renamed, on S3 one PUT of a new key (`shared_io::storage`);
//! 5. one transaction records the version and moves T. Until it commits, the previous view
//!    and T stay served; a run killed at any earlier step changes nothing that is served.

use crate::BatchError;
use crate::cutover_clock;
use crate::engine::Engine;
use crate::incremental::{self, HourDigests, Scope};
use crate::lake::lake_schema;
pub use crate::run_lock::RunLock;
use crate::sketch_udaf::hll_sketch;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::array::{ArrayRef, PrimitiveArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::Decimal128Type;
use arrow::datatypes::{DataType, Int64Type};
use chrono::{DateTime, Utc};
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::cast as cast_expr;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, col, lit};
use indicatif::{ProgressBar, ProgressStyle};
use shared_io::coverage;
use shared_io::storage::Lake;
use shared_io::view::{SUM_TYPE, VIEW_FILE, VIEWS_DIR, ViewRow, read_lake_view, write_view_to};
use shared_schema::config::PlatformConfig;
use shared_schema::cutover::with_unrecorded_partitions;
use shared_schema::cutover::{LandedPartition, lake_complete_until};
use shared_schema::hll::Hll;
use shared_schema::metrics::{Aggregation, Dimension, ValueField};
use shared_schema::query::BucketRow;
use shared_schema::time::{Millis, format_rfc3339, now_millis, to_datetime};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{MetricDef, Partial, encode_dims},
};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
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
    /// Rows copied from the promoted view.
    pub reused_rows: usize,
}

/// One file of the lake, as the manifest lists it.
struct LakeFile {
    path: String,
    hour: Millis,
    rows: i64,
}

/// What one snapshot of the metadata says about the lake and the promoted view.
struct LakeSnapshot {
    files: Vec<LakeFile>,
    /// The profile changelog's files, for the temporal join.
    changelog: Vec<LakeFile>,
    rows: i64,
    landed: Vec<LandedPartition>,
    /// The lander's next offset per partition: the lake the view is computed from holds every
    /// message before it.
    landed_offsets: BTreeMap<i32, i64>,
    /// What the speed layer counted at or after T (`shared_io::coverage`).
    counted: Vec<coverage::CountedRange>,
    current_cutover: Option<Millis>,
    /// The promoted view, its lake digests and its catalogue digest, if it recorded them.
    promoted: Option<PromotedView>,
}

struct PromotedView {
    view_path: String,
    /// The fingerprint of the definitions it was computed with: a view of other definitions
    /// has no rows to reuse.
    definitions: Option<String>,
    /// The digest of the changelog files it was joined with.
    changelog: Option<String>,
    previous: incremental::Previous,
}

impl LakeSnapshot {
    fn hour_digests(&self) -> HourDigests {
        incremental::hour_digests(self.files.iter().map(|f| (f.hour, f.path.as_str(), f.rows)))
    }

    fn changelog_digest(&self) -> String {
        incremental::digest_files(self.changelog.iter().map(|f| (f.path.as_str(), f.rows)))
    }

    /// `cutover` checked against what the speed layer counted and this lake lacks: an operator's
    /// (`requested`) is refused past it, an automatic one lowered to it.
    fn within_counted(
        &self,
        cutover: Millis,
        requested: bool,
        alignment: Millis,
    ) -> Result<Millis, BatchError> {
        let current = self.current_cutover;
        if requested {
            coverage::check(
                cutover,
                current,
                &self.counted,
                &self.landed_offsets,
                alignment,
            )?;
            return Ok(cutover);
        }
        let limited = coverage::limit(
            cutover,
            current,
            &self.counted,
            &self.landed_offsets,
            alignment,
        );
        if limited < cutover {
            tracing::info!(complete = %format_rfc3339(cutover), cutover = %format_rfc3339(limited),
                "the speed layer counted events the lake has not landed yet; T stops before them");
        }
        Ok(limited)
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
    match shared_io::kafka::topic_partitions(&config.kafka_brokers, &config.events_topic).await {
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
) -> Result<RunOutcome, BatchError> {
    let version = new_version_id();
    let span = tracing::info_span!("batch_run", run_id = %version);
    async {
        shared_io::failpoint::hit("batch.run.start").await;
        let engine = Engine::from_config(config)?;
        let mut lock = RunLock::acquire(config).await?;
        let definitions = crate::definitions::check_for_run(pool, catalog, options.accept_definitions).await?;
        let started_at = Utc::now();
        let lake = Lake::open(&config.lake_dir)?;
        remove_unpublished(pool, &lake).await;

        let snapshot = read_snapshot(pool, &config.events_topic, &config.cdc.topic).await?;
        let lateness = catalog.max_allowed_lateness();
        let complete_until = lake_complete_until_now(config, &snapshot.landed, lateness).await;
        let alignment = catalog.cutover_alignment();
        let limit = cutover_clock::clock_limit(now_millis(), lateness, alignment);
        let cutover = cutover_clock::choose(options.cutover, complete_until, snapshot.current_cutover, alignment, limit, lateness)?;
        // Never past what the speed layer counted and the lake lacks (CONTRACT §5.3).
        let cutover = snapshot.within_counted(cutover, options.cutover.is_some(), alignment)?;
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
        let mut reused = Vec::new();
        if let (Scope::Hours { .. }, Some(promoted)) = (&scope, &snapshot.promoted) {
            match read_promoted_rows(config, &promoted.view_path, &scope, cutover).await {
                Ok(rows) => reused = rows,
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
        tracing::info!(recomputed_hours = ?recomputed_hours, reused_rows = reused.len(), "scope");

        let hours = scope.recomputed_hours(&digests, cutover);
        let chunks = incremental::chunks(catalog, &hours, config.batch.chunk_hours);
        let mut progress = Progress::new(hours.len() as u64);
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
            progress.advance(chunk.recomputed_hours(&digests, cutover).len() as u64);
        }
        progress.finish();
        let reused_rows = reused.len();
        rows.append(&mut reused);
        let view_rows = rows.len();
        let view_path = publish_view(&lake, &version, rows).await?;
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
        remove_old_versions(pool, config, &lake).await;
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

/// Removes what killed runs left: staging directories, and view versions Postgres never listed
/// (on S3 a run writes its view under its final name, unlisted until it promotes). Only called
/// under the run lock, so no run is writing one. Best effort.
async fn remove_unpublished(pool: &PgPool, lake: &Lake) {
    let listed: Result<Vec<String>, sqlx::Error> =
        sqlx::query_scalar("SELECT version FROM batch_versions")
            .fetch_all(pool)
            .await;
    let dirs = lake.list_dirs(VIEWS_DIR).await;
    let (listed, dirs) = match (listed, dirs) {
        (Ok(listed), Ok(dirs)) => (listed, dirs),
        (Err(e), _) => return tracing::warn!(error = %e, "could not list view versions"),
        (_, Err(e)) => return tracing::warn!(error = %e, "could not list the views directory"),
    };
    for dir in dirs.into_iter().filter(|d| !listed.contains(d)) {
        let path = format!("{VIEWS_DIR}/{dir}");
        match lake.remove_dir(&path).await {
            Ok(()) => tracing::info!(path, "removed a killed run's unpublished view"),
            Err(e) => tracing::warn!(path, error = %e, "could not remove an unpublished view"),
        }
    }
}

/// Sortable by time, unique across concurrent runs: `20261121T134500Z-1a2b3c4d`.
fn new_version_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%SZ"), &uuid[..8])
}

async fn read_snapshot(
    pool: &PgPool,
    topic: &str,
    changelog_topic: &str,
) -> Result<LakeSnapshot, BatchError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let files: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT path, (EXTRACT(EPOCH FROM dt::timestamp)::bigint + hour::bigint * 3600) * 1000,
                row_count
         FROM lake_files WHERE topic = $1 ORDER BY path",
    )
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    let changelog: Vec<(String, i64)> =
        sqlx::query_as("SELECT path, row_count FROM lake_files WHERE topic = $1 ORDER BY path")
            .bind(changelog_topic)
            .fetch_all(&mut *tx)
            .await?;
    let landed: Vec<(i32, Option<DateTime<Utc>>, bool, i64)> = sqlx::query_as(
        "SELECT partition, max_event_time, caught_up, next_offset FROM lake_progress WHERE topic = $1",
    )
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    let counted = coverage::read_counted(&mut tx, topic, None).await?;
    let current_cutover: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT cutover FROM serving_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
    #[allow(clippy::type_complexity)]
    let promoted: Option<(String, DateTime<Utc>, Option<String>, Vec<i64>, Vec<String>, Option<String>)> =
        sqlx::query_as(
            "SELECT v.view_path, v.cutover, v.definitions_fingerprint, l.hours, l.digests, l.changelog_digest
         FROM serving_state s
         JOIN batch_versions v ON v.version = s.version
         JOIN batch_version_lake l ON l.version = s.version
         WHERE s.id = 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(LakeSnapshot {
        rows: files.iter().map(|(_, _, rows)| rows).sum(),
        files: files
            .into_iter()
            .map(|(path, hour, rows)| LakeFile { path, hour, rows })
            .collect(),
        changelog: changelog
            .into_iter()
            .map(|(path, rows)| LakeFile {
                path,
                hour: 0,
                rows,
            })
            .collect(),
        landed_offsets: landed.iter().map(|(p, _, _, next)| (*p, *next)).collect(),
        counted,
        landed: landed
            .into_iter()
            .map(|(partition, max, caught_up, _)| LandedPartition {
                partition,
                max_event_time: max.map(|t| t.timestamp_millis()),
                caught_up,
            })
            .collect(),
        current_cutover: current_cutover.map(|t| t.timestamp_millis()),
        promoted: promoted.map(
            |(view_path, cutover, definitions, hours, digests, changelog)| PromotedView {
                view_path,
                definitions,
                changelog,
                previous: incremental::Previous {
                    cutover: cutover.timestamp_millis(),
                    hours: hours.into_iter().zip(digests).collect(),
                },
            },
        ),
    })
}

/// The promoted view's rows that `scope` keeps: buckets before `cutover` it does not recompute.
async fn read_promoted_rows(
    config: &PlatformConfig,
    view_path: &str,
    scope: &Scope,
    cutover: Millis,
) -> Result<Vec<ViewRow>, BatchError> {
    let by_metric = read_lake_view(&Lake::open(&config.lake_dir)?, view_path).await?;
    Ok(by_metric
        .into_iter()
        .flat_map(|(metric, rows)| {
            rows.into_iter().map(move |row| ViewRow {
                metric: metric.clone(),
                row,
            })
        })
        .filter(|r| r.row.bucket_start < cutover && !scope.recomputes(r.row.bucket_start))
        .collect())
}

/// A local DataFusion context of the batch run's configuration (`engine::session_state`).
pub fn session_context(config: &PlatformConfig) -> Result<SessionContext, BatchError> {
    Ok(SessionContext::new_with_state(
        crate::engine::session_state(config)?,
    ))
}

/// A copy's place in the topic as one orderable number, partition above offset, for columns
/// qualified by `table` ("" or "alias."). Offsets stay below 2^40, a trillion per partition.
fn copy_position(table: &str) -> String {
    format!("(CAST({table}kafka_partition AS BIGINT) * 1099511627776 + {table}kafka_offset)")
}

/// Every metric's partials for every bucket before `cutover`, from the deduplicated lake, with
/// no profile history (every enriched field is `unknown`).
pub async fn compute_view(
    ctx: &SessionContext,
    lake_paths: &[String],
    catalog: &MetricCatalog,
    cutover: Millis,
) -> Result<Vec<ViewRow>, BatchError> {
    compute_enriched_view(ctx, lake_paths, &[], catalog, cutover).await
}

/// Every metric's partials for every bucket before `cutover`, from the deduplicated lake; the
/// metrics that read the buyer's profile join it from the changelog files `changelog_paths`.
pub async fn compute_enriched_view(
    ctx: &SessionContext,
    lake_paths: &[String],
    changelog_paths: &[String],
    catalog: &MetricCatalog,
    cutover: Millis,
) -> Result<Vec<ViewRow>, BatchError> {
    if lake_paths.is_empty() {
        return Ok(Vec::new());
    }
    let schema = lake_schema();
    let lake = ctx
        .read_parquet(
            lake_paths.to_vec(),
            ParquetReadOptions::default().schema(&schema),
        )
        .await?;
    ctx.register_table("lake", lake.into_view())?;
    // One copy per event_id: the first the lander read, by (partition, offset). Copies of an id
    // are the same event (CONTRACT §1), so which one is kept only matters for malformed input.
    // Most ids have one copy, so the repeated ids are found with a hash aggregate (which spills
    // under a memory limit) and only they are joined back; a window over every id sorted all of
    // them and was the batch layer's main cost (BENCHMARKS.md).
    let deduped = ctx
        .sql(&format!(
            "WITH repeated AS (
                 SELECT event_id, min({position}) AS first_copy
                 FROM lake GROUP BY event_id HAVING count(*) > 1
             )
             SELECT l.event_id, l.event_type, CAST(l.event_time AS BIGINT) AS event_time_ms,
                    l.user_id, l.product_id, l.amount, l.city, l.country
             FROM repeated r RIGHT JOIN lake l ON r.event_id = l.event_id
             WHERE r.first_copy IS NULL OR {l_position} = r.first_copy",
            position = copy_position(""),
            l_position = copy_position("l."),
        ))
        .await?
        .filter(col("event_time_ms").lt(lit(cutover)))?
        .cache()
        .await?;
    let enriched = match catalog.needs_profiles() {
        true => Some(
            crate::enrich::enrich(ctx, deduped.clone(), changelog_paths)
                .await?
                .cache()
                .await?,
        ),
        false => None,
    };

    let mut rows = Vec::new();
    for (_, metric) in catalog.stored() {
        let events = match (&enriched, metric.needs_profile()) {
            (Some(enriched), true) => enriched.clone(),
            _ => deduped.clone(),
        };
        let plan = match &metric.aggregation {
            Aggregation::Sessions { key, gap } => {
                sessions_plan(ctx, events, metric, *key, gap.millis()).await?
            }
            _ => metric_plan(events, metric)?,
        };
        let batches = plan.collect().await?;
        for batch in &batches {
            append_rows(&mut rows, metric, batch)?;
        }
    }
    Ok(rows)
}

/// The metric definition as a DataFusion plan: filter, bucket, group, aggregate. It produces
/// the partials `Partial::of_event` and `Partial::merge` produce in the speed layer: the bucket
/// is floor division on epoch milliseconds (the arithmetic of `time::bucket_start`), and the
/// filter is `MetricDef::matches`.
fn metric_plan(events: DataFrame, metric: &MetricDef) -> Result<DataFrame, BatchError> {
    let mut events = events;
    if let Some(event_type) = &metric.event_type {
        events = events.filter(col("event_type").eq(lit(event_type.clone())))?;
    }
    let required = match &metric.aggregation {
        Aggregation::Distinct(dimension) => Some(dimension.name()),
        other => other.value_field().map(ValueField::name),
    };
    if let Some(field) = required {
        events = events.filter(col(field).is_not_null())?;
    }
    let width = metric.bucket.millis();
    let t = col("event_time_ms");
    let bucket = (t.clone() - (t % lit(width) + lit(width)) % lit(width)).alias("bucket_start");
    let mut group = vec![bucket];
    group.extend(
        metric
            .dimensions
            .iter()
            .enumerate()
            .map(|(i, d)| col(d.name()).alias(format!("d{i}"))),
    );
    let mut aggregates = vec![
        count(lit(1)).alias("event_count"),
        sum(col("amount")).alias("sum_micros"),
        min(col("amount")).alias("min_micros"),
        max(col("amount")).alias("max_micros"),
    ];
    if let Aggregation::Distinct(dimension) = &metric.aggregation {
        aggregates.push(
            hll_sketch()
                .call(vec![cast_expr(col(dimension.name()), DataType::Utf8)])
                .alias("sketch"),
        );
    }
    Ok(events.aggregate(group, aggregates)?)
}

/// Sessions as a DataFusion plan: an event starts a session when the previous event of its key
/// is `gap` or more before it (or there is none), the rule of `shared_schema::sessions`; starts
/// are counted per bucket. Everything before T is in the plan's input, so a start before T is
/// decided exactly as the speed layer decides one after it.
async fn sessions_plan(
    ctx: &SessionContext,
    events: DataFrame,
    metric: &MetricDef,
    key: Dimension,
    gap: Millis,
) -> Result<DataFrame, BatchError> {
    let mut events = events.filter(col(key.name()).is_not_null())?;
    if let Some(event_type) = &metric.event_type {
        events = events.filter(col("event_type").eq(lit(event_type.clone())))?;
    }
    let input = format!("session_input_{}", metric.name);
    ctx.register_table(input.as_str(), events.into_view())?;
    // Identifiers come from the Dimension enum and numbers, never from free text.
    let starts = ctx
        .sql(&format!(
            "SELECT event_time_ms FROM (
                 SELECT event_time_ms,
                        event_time_ms - lag(event_time_ms) OVER (PARTITION BY {key} ORDER BY event_time_ms) AS since
                 FROM {input})
             WHERE since IS NULL OR since >= {gap}",
            key = key.name(),
        ))
        .await?;
    let width = metric.bucket.millis();
    let t = col("event_time_ms");
    let bucket = (t.clone() - (t % lit(width) + lit(width)) % lit(width)).alias("bucket_start");
    Ok(starts.aggregate(vec![bucket], vec![count(lit(1)).alias("event_count")])?)
}

fn append_rows(
    rows: &mut Vec<ViewRow>,
    metric: &MetricDef,
    batch: &RecordBatch,
) -> Result<(), BatchError> {
    let column = |name: &str, data_type: &DataType| -> Result<ArrayRef, BatchError> {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| BatchError::Lake(format!("plan output lacks {name}")))?;
        Ok(cast(array, data_type)?)
    };
    let bucket = column("bucket_start", &DataType::Int64)?;
    let bucket = bucket.as_primitive::<Int64Type>();
    let count = column("event_count", &DataType::Int64)?;
    let count = count.as_primitive::<Int64Type>();
    // Amount aggregates stay decimals at scale 6, so their unscaled values are micro-units.
    // Sessions plans have none of them.
    let decimals = |name: &str| -> Result<Option<ArrayRef>, BatchError> {
        batch
            .column_by_name(name)
            .map(|a| cast(a, &SUM_TYPE))
            .transpose()
            .map_err(Into::into)
    };
    let (sum, min, max) = (
        decimals("sum_micros")?,
        decimals("min_micros")?,
        decimals("max_micros")?,
    );
    let sum = sum.as_ref().map(|a| a.as_primitive::<Decimal128Type>());
    let min = min.as_ref().map(|a| a.as_primitive::<Decimal128Type>());
    let max = max.as_ref().map(|a| a.as_primitive::<Decimal128Type>());
    let sketch = batch.column_by_name("sketch").map(|s| s.as_binary::<i32>());
    let dims = (0..metric.dimensions.len())
        .map(|i| column(&format!("d{i}"), &DataType::Utf8))
        .collect::<Result<Vec<_>, _>>()?;
    let dims: Vec<&StringArray> = dims.iter().map(|d| d.as_string::<i32>()).collect();
    let micros = |array: Option<&PrimitiveArray<Decimal128Type>>, i: usize| -> Option<i64> {
        array
            .filter(|a| !a.is_null(i))
            .map(|a| a.value(i))
            .and_then(|v| i64::try_from(v).ok())
    };
    for i in 0..batch.num_rows() {
        let values: Vec<Option<&str>> = dims
            .iter()
            .map(|d| (!d.is_null(i)).then(|| d.value(i)))
            .collect();
        let sketch = match sketch {
            Some(sketch) if !sketch.is_null(i) => Some(
                Hll::from_bytes(sketch.value(i)).map_err(|e| BatchError::Lake(e.to_string()))?,
            ),
            _ => None,
        };
        rows.push(ViewRow {
            metric: metric.name.clone(),
            row: BucketRow {
                bucket_start: bucket.value(i),
                dims: encode_dims(&values),
                partial: Partial {
                    count: count.value(i),
                    sum_micros: sum.filter(|s| !s.is_null(i)).map_or(0, |s| s.value(i)),
                    min_micros: micros(min, i),
                    max_micros: micros(max, i),
                    sketch,
                },
            },
        });
    }
    Ok(())
}

/// Publishes the view as `views/<version>/view.parquet`. Returns that path, relative to
/// `LAKE_DIR`.
async fn publish_view(
    lake: &Lake,
    version: &str,
    rows: Vec<ViewRow>,
) -> Result<PathBuf, BatchError> {
    let dir = format!("{VIEWS_DIR}/{version}");
    lake.publish_in_new_dir(&dir, VIEW_FILE, move |out| -> Result<(), BatchError> {
        Ok(write_view_to(out, &rows)?)
    })
    .await?;
    Ok(PathBuf::from(dir).join(VIEW_FILE))
}

/// What `promote` records of a finished view.
struct VersionRecord<'a> {
    version: &'a str,
    cutover: Millis,
    view_path: &'a std::path::Path,
    view_rows: usize,
    started_at: DateTime<Utc>,
    definitions: &'a crate::definitions::RunDefinitions,
    digests: &'a HourDigests,
    changelog_digest: &'a str,
    recomputed_hours: Option<usize>,
}

/// One transaction: record the version and move T, unless another run already moved T past it.
/// It runs on the run lock's session, so it commits only while this run holds the lock.
async fn promote(
    lock: &mut RunLock,
    record: &VersionRecord<'_>,
    snapshot: &LakeSnapshot,
    (topic, alignment): (&str, Millis),
) -> Result<(), BatchError> {
    let (version, cutover) = (record.version, record.cutover);
    let mut tx = lock.begin().await?;
    let current: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT cutover FROM serving_state WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    // What the speed layer counted when T moves, with its commits held back until this
    // transaction ends, against the lake the view was computed from.
    coverage::check_in_promotion(
        &mut tx,
        topic,
        cutover,
        current.map(|c| c.timestamp_millis()),
        &snapshot.landed_offsets,
        alignment,
    )
    .await?;
    if let Some(current) = current
        .map(|c| c.timestamp_millis())
        .filter(|c| *c > cutover)
    {
        return Err(shared_schema::cutover::CutoverError::Backwards {
            requested: format_rfc3339(cutover),
            current: format_rfc3339(current),
        }
        .into());
    }
    sqlx::query(
        "INSERT INTO batch_versions (version, cutover, view_path, row_count, lake_files, lake_rows, started_at, promoted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())",
    )
    .bind(version)
    .bind(to_datetime(cutover))
    .bind(record.view_path.to_string_lossy().as_ref())
    .bind(record.view_rows as i64)
    .bind(snapshot.files.len() as i64)
    .bind(snapshot.rows)
    .bind(record.started_at)
    .execute(&mut *tx)
    .await?;
    let (hours, digests): (Vec<i64>, Vec<&str>) = record
        .digests
        .iter()
        .map(|(hour, digest)| (*hour, digest.as_str()))
        .unzip();
    crate::definitions::record_view(&mut tx, version, record.definitions).await?;
    sqlx::query(
        "INSERT INTO batch_version_lake (version, hours, digests, recomputed_hours, changelog_digest)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(version)
    .bind(&hours)
    .bind(&digests)
    .bind(record.recomputed_hours.map(|h| h as i32))
    .bind(record.changelog_digest)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE serving_state SET version = $1, cutover = $2, promoted_at = now() WHERE id = 1",
    )
    .bind(version)
    .bind(to_datetime(cutover))
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO promotions (version, cutover, reason) VALUES ($1, $2, 'run')")
        .bind(version)
        .bind(to_datetime(cutover))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the files of promoted versions beyond the newest `keep_versions`. Best effort: a
/// failure here never fails the run that already promoted.
async fn remove_old_versions(pool: &PgPool, config: &PlatformConfig, lake: &Lake) {
    let old: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
        "SELECT version FROM batch_versions
         WHERE version NOT IN (SELECT version FROM serving_state WHERE version IS NOT NULL)
         ORDER BY promoted_at DESC NULLS LAST OFFSET $1",
    )
    .bind(config.batch.keep_versions.saturating_sub(1) as i64)
    .fetch_all(pool)
    .await;
    match old {
        Ok(old) => {
            for version in old {
                if let Err(e) = lake.remove_dir(&format!("{VIEWS_DIR}/{version}")).await {
                    tracing::warn!(version, error = %e, "could not remove an old view version");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list old view versions"),
    }
}

/// Recomputed hours out of the run's total: a bar on a terminal, a log line per chunk otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} hours ({eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
        }
    }

    fn advance(&mut self, hours: u64) {
        self.done += hours;
        match &self.bar {
            Some(bar) => bar.inc(hours),
            None => tracing::info!(done = self.done, total = self.total, "recomputed hours"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
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
