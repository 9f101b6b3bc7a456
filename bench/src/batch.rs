//! Batch recompute against DuckDB: the batch layer's DataFusion recompute (dedupe by
//! `event_id`, then every default metric) and DuckDB running the same dedupe and aggregation
//! (`bench/duckdb_recompute.py`) over the same Parquet files.

use crate::load::{COUNTRIES, KINDS};
use crate::report::Figure;
use anyhow::{Context, Result, ensure};
use batch_layer::incremental::{Previous, Request, Scope, hour_digests, plan};
use batch_layer::lake::{events_to_batch, partition_of, write_parquet_atomically};
use batch_layer::lake_snapshot::{Reused, reuse_promoted};
use batch_layer::view_plan::{compute_view, session_context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_io::kafka::SourcedEvent;
use shared_io::storage::Lake;
use shared_io::view::ViewRow;
use shared_io::view_segments::{Manifest, SegmentRef, manifest_path, publish_version};
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use shared_schema::event::Event;
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

    // The generator's writes reach the disk before either side reads: otherwise the kernel's
    // writeback competes with whichever side runs first (ours), and only with ours.
    std::process::Command::new("sync").status()?;

    let catalog = MetricCatalog::load(None)?;
    let paths: Vec<String> = files
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    let (view, datafusion_secs) = timed_recompute(&paths, &catalog, end).await?;
    let view_rows = view.len();
    // A full run also publishes every segment; the incremental run below publishes its own.
    let publishing = Instant::now();
    let local = Lake::Local(lake.clone());
    let (full_manifest, _) = publish_version(&local, "full", view, Vec::new()).await?;
    let publishing_secs = publishing.elapsed().as_secs_f64();
    // The figure is the same recompute in a fresh process, as `batch-layer run` and DuckDB's
    // script start, not in this one, which generated the lake and still holds its memory. The
    // two sides take turns, twice, and each keeps its best: whichever runs first after the
    // generator pays the kernel's reclaim of its memory (21 s of system time against 5 s in a
    // repeat of the same recompute), and DuckDB's script already keeps the best of its two
    // dedupe formulations.
    let glob = format!("{}/events/*/*/*.parquet", lake.display());
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut reported = serde_json::Value::Null;
    let mut duckdb_wall = f64::NAN;
    for _ in 0..2 {
        let fresh = std::process::Command::new(std::env::current_exe()?)
            .arg("--batch-recompute")
            .arg(&lake)
            .arg("--batch-end")
            .arg(end.to_string())
            .output()
            .context("running the recompute in a fresh process")?;
        ensure!(
            fresh.status.success(),
            "the fresh-process recompute failed: {}",
            String::from_utf8_lossy(&fresh.stderr)
        );
        let fresh: serde_json::Value = serde_json::from_slice(&fresh.stdout)?;
        ensure!(
            fresh["view_rows"].as_u64() == Some(view_rows as u64),
            "the fresh-process recompute made {} rows, this one {view_rows}",
            fresh["view_rows"]
        );
        ours.push(fresh["seconds"].as_f64().unwrap_or(f64::NAN));

        let duckdb = Instant::now();
        let output = std::process::Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_recompute.py"))
            .arg(&glob)
            .arg(end.to_string())
            .output()
            .context("running DuckDB")?;
        duckdb_wall = duckdb.elapsed().as_secs_f64();
        ensure!(
            output.status.success(),
            "DuckDB failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        reported = serde_json::from_slice(&output.stdout)?;
        theirs.push(reported["seconds"].as_f64().unwrap_or(duckdb_wall));
    }
    let in_process_secs = datafusion_secs;
    let datafusion_secs = ours.iter().copied().fold(f64::INFINITY, f64::min);
    let duckdb_secs = theirs.iter().copied().fold(f64::INFINITY, f64::min);
    println!("batch: full recompute, ours {ours:.1?} s, DuckDB {theirs:.1?} s (taking turns)");
    let full_secs = datafusion_secs + publishing_secs;

    let late = incremental_after_late_data(&lake, &files, &full_manifest, &catalog, end).await?;
    // BENCH_KEEP_LAKE=1 keeps it, to profile `bench --batch-recompute <lake> --batch-end <ms>`.
    if std::env::var_os("BENCH_KEEP_LAKE").is_none() {
        let _ = std::fs::remove_dir_all(&lake);
    } else {
        println!("batch: lake kept at {} (end {end})", lake.display());
    }
    Ok(vec![
        Figure::new(
            "batch full recompute",
            (datafusion_secs, "s"),
            ("DuckDB, same dedupe and aggregation", duckdb_secs),
            format!(
                "{events} events (1% sent twice) in {} Parquet files, {} stored default metrics (DuckDB: the 7 without a profile join), {} view rows; \
                 DuckDB {:.0} view rows, its time measured inside Python ({duckdb_wall:.1}s with interpreter start); \
                 ratio < 1 is faster than DuckDB; both timed in a fresh process, taking turns, the best of two each (ours {in_process_secs:.1}s in the generator's)",
                files.len(),
                catalog.stored().count(),
                view_rows,
                reported["view_rows"].as_f64().unwrap_or(f64::NAN)
            ),
        )
        .target("no slower than DuckDB", datafusion_secs <= duckdb_secs),
        Figure::new(
            "batch incremental recompute",
            (late.incremental_secs, "s"),
            ("the full recompute above, with publishing its segments", full_secs),
            format!(
                "{LATE_EVENTS} late events land in one hour of {LAKE_HOURS}; the run plans from the lake's digests, \
                 recomputes {} hours (the late one and, for session starts, the next), writes {} segments \
                 and lists the promoted version's other {} in its manifest",
                late.recomputed_hours, late.written_segments, late.reused_segments
            ),
        )
        .target(
            "at most 10% of the full run",
            late.incremental_secs <= 0.10 * full_secs,
        ),
        Figure::new(
            "batch idle run",
            (late.idle_secs, "s"),
            ("the full recompute above, with publishing its segments", full_secs),
            "nothing changed since the promoted version: plan, read its manifest, publish a manifest \
             listing the same segments (start-up and the promotion transaction left out)"
                .to_string(),
        )
        .target("under one second", late.idle_secs < 1.0),
    ])
}

const LATE_EVENTS: usize = 10_000;

/// What `batch-layer run` keeps of `version` under `scope`: its segments of the hours not
/// recomputed, listed again.
async fn kept_segments(
    lake: &Lake,
    version: &str,
    scope: &Scope,
    cutover: i64,
) -> Result<Vec<SegmentRef>> {
    match reuse_promoted(lake, &manifest_path(version), scope, cutover).await? {
        Reused::Segments(segments) => Ok(segments),
        Reused::Rows(_) => anyhow::bail!("{version} is not a manifest of segments"),
    }
}

/// The incremental and idle runs' figures.
struct LateRun {
    incremental_secs: f64,
    recomputed_hours: usize,
    written_segments: usize,
    reused_segments: usize,
    idle_secs: f64,
}

/// What `batch-layer run` does after one hour received late data: plan the scope from the lake
/// hours' digests, read the promoted manifest, recompute the scope's hours, publish their
/// segments and a manifest listing the promoted version's others. Then the same with nothing
/// changed (the idle run).
async fn incremental_after_late_data(
    lake: &Path,
    files: &[LakeFile],
    promoted: &Manifest,
    catalog: &MetricCatalog,
    end: i64,
) -> Result<LateRun> {
    let local = Lake::Local(lake.to_path_buf());
    let digests = |files: &[LakeFile]| {
        let paths: Vec<(i64, String, i64)> = files
            .iter()
            .map(|f| (f.hour, f.path.to_string_lossy().into_owned(), f.rows))
            .collect();
        hour_digests(
            paths
                .iter()
                .map(|(hour, path, rows)| (*hour, path.as_str(), *rows)),
        )
    };
    let previous = Previous {
        cutover: end,
        hours: digests(files),
    };

    let late_hour = end - 24 * HOUR_MS;
    let mut rng = StdRng::seed_from_u64(11);
    let late: Vec<SourcedEvent> = (0..LATE_EVENTS)
        .map(|i| SourcedEvent {
            partition: 0,
            offset: 1_000_000_000 + i as i64,
            event: Event {
                event_id: format!("late{i}"),
                event_type: "page_view".into(),
                event_time: late_hour + rng.random_range(0..HOUR_MS),
                schema_version: 2,
                user_id: Some(format!("u{}", rng.random_range(0..1_000_000))),
                product_id: None,
                amount_micros: None,
                city: None,
                country: Some("DE".into()),
                profile: None,
            },
        })
        .collect();
    let refs: Vec<&SourcedEvent> = late.iter().collect();
    let late_path = lake
        .join(partition_of(late_hour).dir())
        .join("part-late.parquet");
    write_parquet_atomically(&late_path, &events_to_batch(&refs)?)?;
    let mut now = files.to_vec();
    now.push(LakeFile {
        path: late_path,
        hour: late_hour,
        rows: LATE_EVENTS as i64,
    });

    let started = Instant::now();
    let scope = plan(
        catalog,
        &Request::default(),
        &digests(&now),
        Some(&previous),
        end,
    );
    let Scope::Hours { recompute, .. } = &scope else {
        anyhow::bail!("the incremental run planned a full recompute");
    };
    let kept = kept_segments(&local, &promoted.version, &scope, end).await?;
    let reused_segments = kept.len();
    let paths: Vec<String> = now
        .iter()
        .filter(|f| scope.reads(f.hour))
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    let mut rows = compute_view(
        &session_context(&PlatformConfig::default())?,
        &paths,
        catalog,
        end,
    )
    .await?;
    rows.retain(|r| scope.recomputes(r.row.bucket_start));
    let recomputed_rows = rows.len();
    let (written, _) = publish_version(&local, "incremental", rows, kept).await?;
    let secs = started.elapsed().as_secs_f64();
    let written_segments = written.segments.len() - reused_segments;
    println!(
        "batch: incremental run recomputed {} hours into {recomputed_rows} rows, wrote {written_segments} segments \
         and listed {reused_segments} in {secs:.2}s",
        recompute.len(),
    );

    // Nothing changed since: the idle run.
    let idle = Instant::now();
    let previous = Previous {
        cutover: end,
        hours: digests(&now),
    };
    let scope = plan(
        catalog,
        &Request::default(),
        &digests(&now),
        Some(&previous),
        end,
    );
    let kept = kept_segments(&local, "incremental", &scope, end).await?;
    ensure!(
        kept.len() == written.segments.len(),
        "the idle run recomputes something"
    );
    publish_version(&local, "idle", Vec::new(), kept).await?;
    let idle_secs = idle.elapsed().as_secs_f64();
    println!("batch: idle run in {idle_secs:.3}s");
    Ok(LateRun {
        incremental_secs: secs,
        recomputed_hours: recompute.len(),
        written_segments,
        reused_segments,
        idle_secs,
    })
}

/// Hours of event time the generated lake spans.
const LAKE_HOURS: i64 = 48;

/// The bench's child mode (`--batch-recompute <lake> --batch-end <ms>`): the full recompute of
/// the lake's files alone in this process, printed as JSON like DuckDB's script.
pub async fn recompute_in_this_process(lake: &Path, end: i64) -> Result<()> {
    let mut paths = Vec::new();
    let mut dirs = vec![lake.join("events")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                paths.push(path.to_string_lossy().into_owned());
            }
        }
    }
    let (view, seconds) = timed_recompute(&paths, &MetricCatalog::load(None)?, end).await?;
    println!(
        "{}",
        serde_json::json!({ "seconds": seconds, "view_rows": view.len() })
    );
    Ok(())
}

/// The full recompute of the lake files at `paths` before `end`, and its seconds.
async fn timed_recompute(
    paths: &[String],
    catalog: &MetricCatalog,
    end: i64,
) -> Result<(Vec<ViewRow>, f64)> {
    let started = Instant::now();
    let view = compute_view(
        &session_context(&PlatformConfig::default())?,
        paths,
        catalog,
        end,
    )
    .await?;
    Ok((view, started.elapsed().as_secs_f64()))
}

/// One generated lake file and its hour partition.
#[derive(Clone)]
struct LakeFile {
    path: PathBuf,
    hour: i64,
    rows: i64,
}

/// Writes `events` events over the [`LAKE_HOURS`] hours before `end` into hour partitions, as
/// the lander would, with 1% of ids written a second time from another partition.
fn generate_lake(lake: &Path, events: u64, end: i64) -> Result<Vec<LakeFile>> {
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
                    event_time: end - 1 - rng.random_range(0..LAKE_HOURS * HOUR_MS),
                    schema_version: 2,
                    user_id: Some(format!("u{}", rng.random_range(0..1_000_000))),
                    product_id: Some(format!("p{}", rng.random_range(0..200))),
                    amount_micros: (kind == "purchase")
                        .then(|| rng.random_range(1..50_000) * 10_000),
                    city: None,
                    country: Some(COUNTRIES[rng.random_range(0..COUNTRIES.len())].into()),
                    profile: None,
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
            files.push(LakeFile {
                hour: bucket_start(rows[0].event.event_time, HOUR_MS),
                rows: rows.len() as i64,
                path,
            });
        }
        written += size;
        chunk_index += 1;
    }
    Ok(files)
}
