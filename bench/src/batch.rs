//! Batch recompute against DuckDB: the batch layer's DataFusion recompute (dedupe by
//! `event_id`, then every default metric) and DuckDB running the same dedupe and aggregation
//! (`bench/duckdb_recompute.py`) over the same Parquet files.

use crate::load::{COUNTRIES, KINDS};
use crate::report::Figure;
use anyhow::{Context, Result, ensure};
use batch_layer::lake::{events_to_batch, partition_of, write_parquet_atomically};
use batch_layer::recompute::{compute_view, session_context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::config::PlatformConfig;
use shared_schema::event::Event;
use shared_schema::kafka::SourcedEvent;
use shared_schema::metrics::MetricCatalog;
use shared_schema::time::{HOUR_MS, bucket_start, now_millis};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Rows per generated file (one file per hour partition per chunk).
const CHUNK: u64 = 1_000_000;

pub async fn run(events: u64, python: &Path) -> Result<Vec<Figure>> {
    let lake = platform_tests::target_dir()?.join("bench-lake");
    let _ = std::fs::remove_dir_all(&lake);
    let end = bucket_start(now_millis(), HOUR_MS);
    let generating = Instant::now();
    let files = tokio::task::spawn_blocking({
        let lake = lake.clone();
        move || generate_lake(&lake, events, end)
    })
    .await??;
    println!(
        "batch: {events} events written to {} files in {:.1}s",
        files.len(),
        generating.elapsed().as_secs_f64()
    );

    let catalog = MetricCatalog::load(None)?;
    let paths: Vec<String> = files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let datafusion = Instant::now();
    let view = compute_view(
        &session_context(&PlatformConfig::default())?,
        &paths,
        &catalog,
        end,
    )
    .await?;
    let datafusion_secs = datafusion.elapsed().as_secs_f64();

    let glob = format!("{}/events/*/*/*.parquet", lake.display());
    let duckdb = Instant::now();
    let output = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_recompute.py"))
        .arg(&glob)
        .arg(end.to_string())
        .output()
        .context("running DuckDB")?;
    let duckdb_wall = duckdb.elapsed().as_secs_f64();
    ensure!(
        output.status.success(),
        "DuckDB failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reported: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let duckdb_secs = reported["seconds"].as_f64().unwrap_or(duckdb_wall);
    let _ = std::fs::remove_dir_all(&lake);
    Ok(vec![
        Figure::new(
            "batch full recompute",
            (datafusion_secs, "s"),
            ("DuckDB, same dedupe and aggregation", duckdb_secs),
            format!(
                "{events} events (1% sent twice) in {} Parquet files, 7 stored default metrics, {} view rows; \
                 DuckDB {:.0} view rows, its time measured inside Python ({duckdb_wall:.1}s with interpreter start); \
                 ratio < 1 is faster than DuckDB",
                files.len(),
                view.len(),
                reported["view_rows"].as_f64().unwrap_or(f64::NAN)
            ),
        )
        .target("no slower than DuckDB", datafusion_secs <= duckdb_secs),
    ])
}

/// Writes `events` events over the six hours before `end` into hour partitions, as the lander
/// would, with 1% of ids written a second time from another partition.
fn generate_lake(lake: &Path, events: u64, end: i64) -> Result<Vec<PathBuf>> {
    let mut rng = StdRng::seed_from_u64(3);
    let mut files = Vec::new();
    let mut written = 0u64;
    let mut chunk_index = 0;
    while written < events {
        let size = CHUNK.min(events - written);
        let mut chunk: Vec<SourcedEvent> = Vec::with_capacity(size as usize);
        for i in written..written + size {
            let id = if rng.random_bool(0.01) && i > 0 {
                format!("b{}", rng.random_range(0..i))
            } else {
                format!("b{i}")
            };
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            chunk.push(SourcedEvent {
                partition: (i % 4) as i32,
                offset: (i / 4) as i64,
                event: Event {
                    event_id: id,
                    event_type: kind.into(),
                    event_time: end - rng.random_range(0..6 * HOUR_MS),
                    schema_version: 2,
                    user_id: Some(format!("u{}", rng.random_range(0..1_000_000))),
                    product_id: Some(format!("p{}", rng.random_range(0..200))),
                    amount_micros: (kind == "purchase")
                        .then(|| rng.random_range(1..50_000) * 10_000),
                    city: None,
                    country: Some(COUNTRIES[rng.random_range(0..COUNTRIES.len())].into()),
                },
            });
        }
        let mut by_partition: BTreeMap<_, Vec<&SourcedEvent>> = BTreeMap::new();
        for sourced in &chunk {
            by_partition
                .entry(partition_of(sourced.event.event_time))
                .or_default()
                .push(sourced);
        }
        for (partition, rows) in by_partition {
            let path = lake
                .join(partition.dir())
                .join(format!("part-{chunk_index:05}.parquet"));
            write_parquet_atomically(&path, &events_to_batch(&rows)?)?;
            files.push(path);
        }
        written += size;
        chunk_index += 1;
    }
    Ok(files)
}
