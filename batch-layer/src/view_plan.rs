//! The view as DataFusion plans: the lake deduplicated per event id, optionally joined with the
//! profile history, then one plan per metric (filter, bucket, group, aggregate; sessions by
//! their gap rule). Their output is decoded into view rows by `plan_rows`.

use crate::BatchError;
use crate::lake::lake_schema;
use crate::plan_rows::append_rows;
use crate::sketch_udaf::hll_sketch;
use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::cast as cast_expr;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, col, lit};
use futures::{StreamExt, TryStreamExt};
use shared_io::view::ViewRow;
use shared_schema::config::PlatformConfig;
use shared_schema::time::Millis;
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{Aggregation, Dimension, MetricDef, ValueField},
};
use tokio_util::task::AbortOnDropHandle;

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
    // The plans below call these by name; a context made elsewhere may not know them yet.
    // Registering replaces a function of the same name, so doing it twice is harmless.
    ctx.register_udf(crate::id_hash::id_hash());
    ctx.register_udaf(crate::session_udaf::session_starts());
    let started = std::time::Instant::now();
    let deduped = deduplicated(ctx, lake_paths, &event_columns(catalog), cutover)
        .await
        .map_err(|source| BatchError::ReadLake {
            files: lake_paths.len(),
            source,
        })?;
    let enriched = match catalog.needs_profiles() {
        true => Some(crate::enrich::enrich(ctx, deduped.clone(), changelog_paths).await?),
        false => None,
    };

    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "lake deduplicated"
    );
    // Without a memory limit the metrics' plans run side by side over the cached events,
    // shared, not copied. Under `batch.memory_limit_mb` they take turns, so that each has the
    // whole pool to spill within rather than a share too small for its final aggregation.
    let side_by_side = match ctx.runtime_env().memory_pool.memory_limit() {
        MemoryLimit::Infinite => catalog.stored().count().max(1),
        MemoryLimit::Finite(_) | MemoryLimit::Unknown => 1,
    };
    // Every plan but the sessions' runs in one partition: side by side they keep the cores
    // busy anyway, and one partition aggregates once where two emit every group's state,
    // repartition it and merge it again. The sessions' plan, the longest, keeps the run's
    // partitions (BENCHMARKS.md, 2026-12-04, third run).
    let mut single = ctx.state();
    single
        .config_mut()
        .options_mut()
        .execution
        .target_partitions = 1;
    let single = SessionContext::new_with_state(single);
    // Each plan is a task of its own, decoding its rows as it finishes: polled together in
    // this task, the one-partition plans would share one thread. The tasks are aborted if the
    // run is dropped, so a cancelled run leaves no plan running.
    let jobs: Vec<(SessionContext, DataFrame, MetricDef)> = catalog
        .stored()
        .map(|(_, metric)| {
            let events = match (&enriched, metric.needs_profile()) {
                (Some(enriched), true) => enriched.clone(),
                _ => deduped.clone(),
            };
            match metric.aggregation {
                Aggregation::Sessions { .. } => (ctx.clone(), events, metric.clone()),
                _ => (
                    single.clone(),
                    DataFrame::new(single.state(), events.logical_plan().clone()),
                    metric.clone(),
                ),
            }
        })
        .collect();
    // Spawned as `buffered` takes them, so that under a memory limit they take turns.
    let per_metric: Vec<Vec<ViewRow>> = futures::stream::iter(jobs)
        .map(spawn_metric)
        .buffered(side_by_side)
        .map(joined)
        .try_collect()
        .await?;
    let mut rows = Vec::with_capacity(per_metric.iter().map(Vec::len).sum());
    for metric_rows in per_metric {
        rows.extend(metric_rows);
    }
    Ok(rows)
}

fn spawn_metric(
    (ctx, events, metric): (SessionContext, DataFrame, MetricDef),
) -> AbortOnDropHandle<Result<Vec<ViewRow>, BatchError>> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        metric_rows(&ctx, events, &metric).await
    }))
}

/// A metric task's rows; its panic goes on unwinding here, as if it had run in this task.
fn joined(
    joined: Result<Result<Vec<ViewRow>, BatchError>, tokio::task::JoinError>,
) -> Result<Vec<ViewRow>, BatchError> {
    match joined {
        Ok(rows) => rows,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BatchError::RunCancelled(e)),
    }
}

/// The metric's plan over `events`, executed and decoded into view rows.
async fn metric_rows(
    ctx: &SessionContext,
    events: DataFrame,
    metric: &MetricDef,
) -> Result<Vec<ViewRow>, BatchError> {
    let started = std::time::Instant::now();
    let batches = metric_batches(ctx, events, metric)
        .await
        .map_err(|source| BatchError::PlanMetric {
            metric: metric.name.clone(),
            source,
        })?;
    // Sized once: grown row by row, its copies and fresh pages were a tenth of the run.
    let mut rows = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in &batches {
        append_rows(&mut rows, metric, batch)?;
    }
    tracing::debug!(metric = %metric.name, rows = rows.len(), seconds = started.elapsed().as_secs_f64(), "metric computed");
    Ok(rows)
}

/// The metric's plan over `events`, executed.
async fn metric_batches(
    ctx: &SessionContext,
    events: DataFrame,
    metric: &MetricDef,
) -> DfResult<Vec<RecordBatch>> {
    let plan = match &metric.aggregation {
        Aggregation::Sessions { key, gap } => {
            sessions_plan(ctx, events, metric, *key, gap.millis()).await?
        }
        _ => metric_plan(events, metric)?,
    };
    plan.collect().await
}

/// The event fields the stored metrics of `catalog` read, as the deduplicated table's columns:
/// the type and time always, the amount for every partial's sum, min and max, each dimension
/// the event carries, and the user id when a profile is joined by it. Caching only these keeps
/// the event id (36 bytes of 20M rows in the bench) out of memory.
fn event_columns(catalog: &MetricCatalog) -> Vec<&'static str> {
    let mut columns = vec!["event_type", "event_time_ms", ValueField::Amount.name()];
    let mut add = |column: &'static str| {
        if !columns.contains(&column) {
            columns.push(column);
        }
    };
    if catalog.needs_profiles() {
        add(Dimension::UserId.name());
    }
    for (_, metric) in catalog.stored() {
        let counted = match &metric.aggregation {
            Aggregation::Distinct(d) | Aggregation::Sessions { key: d, .. } => Some(*d),
            _ => None,
        };
        for dimension in metric.dimensions.iter().chain(&counted) {
            if !dimension.is_enriched() {
                add(dimension.name());
            }
        }
    }
    columns
}

/// The lake files at `lake_paths`, one copy per event id, before `cutover`, cached: the event
/// fields named in `columns` (see `event_columns`), `event_time` as `event_time_ms`.
async fn deduplicated(
    ctx: &SessionContext,
    lake_paths: &[String],
    columns: &[&str],
    cutover: Millis,
) -> DfResult<DataFrame> {
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
    // Most ids have one copy, so only the repeated ids are found and joined back; a window over
    // every id sorted all of them (BENCHMARKS.md). Finding them groups each id's 64-bit hash,
    // then groups the exact ids of the hashes seen twice: grouping 20M ids' bytes cost 12 s of
    // a 19 s run, their hashes 5 s. A collision only adds a candidate the exact step drops.
    // The candidates come first in the join, so they are its hash table: written as
    // `lake WHERE h IN (candidates)`, DataFusion built the table from the whole lake, which
    // cannot spill under `batch.memory_limit_mb`.
    let repeated = format!(
        "WITH candidates AS (
                 SELECT h FROM (SELECT {hash}(event_id) AS h FROM lake)
                 GROUP BY h HAVING count(*) > 1
             ),
             repeated AS (
                 SELECT l.event_id, min({position}) AS first_copy
                 FROM candidates c JOIN lake l ON c.h = {hash}(l.event_id)
                 GROUP BY l.event_id HAVING count(*) > 1
             )",
        hash = crate::id_hash::NAME,
        position = copy_position("l."),
    );
    // Both joins build a table of the repeated ids' few rows (1% of the bench's) and stream
    // the lake past it, in the lake's own partitions. Partitioned by id instead, the default,
    // every lake row is moved between partitions first: a fifth of the run (BENCHMARKS.md).
    let mut collect_left = ctx.state();
    collect_left
        .config_mut()
        .options_mut()
        .optimizer
        .repartition_joins = false;
    let deduped = SessionContext::new_with_state(collect_left)
        .sql(&format!(
            "{repeated}
             SELECT {selected}
             FROM repeated r RIGHT JOIN lake l ON r.event_id = l.event_id
             WHERE r.first_copy IS NULL OR {l_position} = r.first_copy",
            l_position = copy_position("l."),
            selected = columns
                .iter()
                .map(|c| match *c {
                    "event_time_ms" => "CAST(l.event_time AS BIGINT) AS event_time_ms".to_string(),
                    other => format!("l.{other}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ))
        .await?
        .filter(col("event_time_ms").lt(lit(cutover)))?;
    let cached = deduped.cache().await?;
    Ok(DataFrame::new(ctx.state(), cached.logical_plan().clone()))
}

/// The metric definition as a DataFusion plan: filter, bucket, group, aggregate. It produces
/// the partials `Partial::of_event` and `Partial::merge` produce in the speed layer: the bucket
/// is floor division on epoch milliseconds (the arithmetic of `time::bucket_start`), and the
/// filter is `MetricDef::matches`.
fn metric_plan(events: DataFrame, metric: &MetricDef) -> DfResult<DataFrame> {
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
    events.aggregate(group, aggregates)
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
) -> DfResult<DataFrame> {
    let mut events = events.filter(col(key.name()).is_not_null())?;
    if let Some(event_type) = &metric.event_type {
        events = events.filter(col("event_type").eq(lit(event_type.clone())))?;
    }
    let input = format!("session_input_{}", metric.name);
    ctx.register_table(input.as_str(), events.into_view())?;
    // Grouped by key, each key's times sorted on their own (`session_udaf`), not one global
    // sort by (key, time) under a window. Identifiers come from the Dimension enum and numbers,
    // never from free text.
    let starts = ctx
        .sql(&format!(
            "SELECT unnest(starts) AS event_time_ms FROM (
                 SELECT {udaf}(event_time_ms, CAST({gap} AS BIGINT)) AS starts
                 FROM {input} GROUP BY {key})",
            udaf = crate::session_udaf::NAME,
            key = key.name(),
        ))
        .await?;
    let width = metric.bucket.millis();
    let t = col("event_time_ms");
    let bucket = (t.clone() - (t % lit(width) + lit(width)) % lit(width)).alias("bucket_start");
    starts.aggregate(vec![bucket], vec![count(lit(1)).alias("event_count")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_holds_what_the_metrics_read_and_not_the_id() {
        let catalog = MetricCatalog::default();
        let columns = event_columns(&catalog);
        assert!(!columns.contains(&"event_id"), "{columns:?}");
        for (_, metric) in catalog.stored() {
            for dimension in metric.dimensions.iter().filter(|d| !d.is_enriched()) {
                assert!(
                    columns.contains(&dimension.name()),
                    "{}: {columns:?}",
                    metric.name
                );
            }
        }
        // Every partial sums the amount; the profile join needs the user.
        for needed in ["event_type", "event_time_ms", "amount", "user_id"] {
            assert!(columns.contains(&needed), "{needed}: {columns:?}");
        }
    }
}
