//! Speed scaling by instances: the same preloaded 4-partition topic read by one speed-layer
//! instance and by two in one consumer group, each into a database of its own, alternated so
//! that whatever else runs on the machine weighs on both alike.

use crate::load::{EventMaker, bare_consume, preload};
use crate::report::Figure;
use anyhow::Result;
use shared_schema::time::now_millis;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

/// What one run measured.
struct Run {
    /// From the instances' start to the last offset committed.
    seconds: f64,
    /// Postgres rows and bytes after the run.
    rows: f64,
    bytes: f64,
    /// Distinct events the speed layer counted: all of them, unless the broker lost some.
    counted: i64,
}

/// One run: `instances` speed layers started together on a fresh database reading `topic`.
async fn run_once(
    topic: &str,
    ends: &HashMap<i32, i64>,
    instances: usize,
    round: usize,
) -> Result<Run> {
    let mut platform =
        crate::load::bench_platform(&format!("bench_scaling_{instances}_{round}"), PARTITIONS)
            .await?;
    // Every run reads the one preloaded topic; its database and consumer group are its own.
    platform.topic = topic.to_string();
    let started = Instant::now();
    let _speed: Vec<_> = (0..instances)
        .map(|i| platform.spawn_as(&format!("speed-{i}"), "speed-layer", &["run"]))
        .collect::<Result<_>>()?;
    platform
        .wait_caught_up_within("speed_offsets", ends, Duration::from_secs(3600))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let (counted, rows, bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(entries), 0)::bigint FROM speed_log),
                (SELECT count(*) FROM speed_log) + (SELECT count(*) FROM speed_cells),
                pg_database_size(current_database())",
    )
    .fetch_one(&platform.pool)
    .await?;
    Ok(Run {
        seconds,
        rows: rows as f64,
        bytes: bytes as f64,
        counted,
    })
}

pub async fn run(events: u64, rounds: usize) -> Result<Vec<Figure>> {
    let source = crate::load::bench_platform("bench_scaling_topic", PARTITIONS).await?;
    let mut maker = EventMaker::new(3, 1_000_000, now_millis());
    let ends = preload(
        &source.brokers,
        &source.topic,
        PARTITIONS,
        "s",
        events,
        &mut maker,
    )
    .await?;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    let mut per_event = (0.0, 0.0);
    // Events counted per run, 1 and 2 instances alternating: a handover must lose none.
    let mut counted = Vec::new();
    for round in 0..rounds {
        let single = run_once(&source.topic, &ends, 1, round).await?;
        per_event = (single.rows / events as f64, single.bytes / events as f64);
        one.push(single.seconds);
        let pair = run_once(&source.topic, &ends, 2, round).await?;
        two.push(pair.seconds);
        println!(
            "scaling round {round}: 1 instance {:.1}s ({} events counted), 2 instances {:.1}s ({} events counted)",
            single.seconds, single.counted, pair.seconds, pair.counted
        );
        for run in [&single, &pair] {
            if run.counted != events as i64 {
                eprintln!(
                    "WARNING: a run counted {} of {events} events; a broker that answers a \
                     fetch inside a record batch with the next batch (tansu's memory:// \
                     storage) loses the rest of the batch at every handover",
                    run.counted
                );
            }
        }
        counted.extend([single.counted, pair.counted]);
    }
    let (lander_rate, lake_bytes) = land(&source.topic, &ends, events).await?;
    let (brokers, topic, bare_ends) = (source.brokers.clone(), source.topic.clone(), ends.clone());
    let bare = Instant::now();
    let read =
        tokio::task::spawn_blocking(move || bare_consume(&brokers, &topic, &bare_ends)).await??;
    let bare_rate = read as f64 / bare.elapsed().as_secs_f64();
    let rate = |times: &[f64]| events as f64 * times.len() as f64 / times.iter().sum::<f64>();
    let (one_rate, two_rate) = (rate(&one), rate(&two));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    Ok(vec![
        Figure::new(
            "speed-layer, 2 instances on 4 partitions",
            (two_rate, "events/s"),
            ("1 instance, same topic", one_rate),
            format!(
                "{events} events, {PARTITIONS} partitions, 1M distinct users, every default metric, \
                 {rounds} rounds alternating 1 and 2 instances (seconds: 1 = {one:.1?}, 2 = {two:.1?}); \
                 each run on a fresh database, timed from process start to the last offset \
                 committed; {cores} cores shared by Postgres, the broker and the instances; \
                 Postgres after a run: {:.2} rows and {:.0} bytes per event; distinct events \
                 counted per run (1, 2, 1, 2, ...): {counted:?}",
                per_event.0, per_event.1
            ),
        ),
        Figure::new(
            "lander, 1 instance on 4 partitions",
            (lander_rate, "events/s"),
            ("bare rdkafka consumer", bare_rate),
            format!(
                "{events} events landed into the local lake, timed from process start to the \
                 last offset committed; {lake_bytes:.1} lake bytes per event (Parquet)"
            ),
        ),
    ])
}

/// The lander reading the same topic into a lake of its own: events/s, and lake bytes per event.
async fn land(topic: &str, ends: &HashMap<i32, i64>, events: u64) -> Result<(f64, f64)> {
    let mut platform = crate::load::bench_platform("bench_scaling_lander", PARTITIONS).await?;
    platform.topic = topic.to_string();
    let started = Instant::now();
    let _lander = platform.spawn("batch-layer", &["land"])?;
    platform
        .wait_caught_up_within("lake_progress", ends, Duration::from_secs(3600))
        .await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let bytes = directory_bytes(&platform.lake_dir)?;
    Ok((rate, bytes as f64 / events as f64))
}

fn directory_bytes(dir: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            directory_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
