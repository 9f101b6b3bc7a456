//! Speed-layer memory: resident set size after growing numbers of events with 1M distinct users.
//! The dedupe and session state lives in memory (issue 17), bounded by the horizon, not by
//! history: until the middle checkpoint nothing is promoted, so every id stays (the growth per
//! id is what an id costs); then the bench moves T past every event time (they spread over the
//! hour before the preload), as promotions do once events age past the horizon, retention drops
//! what lies before it, and RSS must stop growing.

use crate::load::{EventMaker, preload, rss_mib};
use crate::report::Figure;
use anyhow::{Context, Result};
use shared_schema::time::{MINUTE_MS, bucket_start, now_millis, to_datetime};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

pub async fn run(checkpoints: &[u64]) -> Result<Vec<Figure>> {
    let total = checkpoints
        .iter()
        .copied()
        .max()
        .context("no checkpoints")?;
    let platform = crate::load::bench_platform("bench_memory", PARTITIONS).await?;
    let mut maker = EventMaker::new(2, 1_000_000, now_millis());
    let ends = preload(
        &platform.brokers,
        &platform.topic,
        PARTITIONS,
        "m",
        total,
        &mut maker,
    )
    .await?;
    let speed = platform.spawn("speed-layer", &["run"])?;
    let pid = speed.pid().context("speed layer pid")?;

    let mut samples: Vec<(u64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3600);
    for &checkpoint in checkpoints {
        loop {
            let read: Option<i64> = sqlx::query_scalar(
                "SELECT sum(next_offset)::bigint FROM speed_offsets WHERE topic = $1",
            )
            .bind(&platform.topic)
            .fetch_one(&platform.pool)
            .await
            // Before the speed layer has created its tables.
            .unwrap_or_default();
            if read.unwrap_or(0) as u64 >= checkpoint {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the speed layer stalled before {checkpoint} events"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples.push((checkpoint, rss_mib(pid)?));
        if samples.len() == checkpoints.len().div_ceil(2) {
            // What a promotion does to the speed side: T moves, and retention follows.
            sqlx::query("UPDATE serving_state SET cutover = $1 WHERE id = 1")
                .bind(to_datetime(
                    // The horizon, T minus the 10-minute grace, then lies after every event.
                    bucket_start(now_millis(), MINUTE_MS) + 20 * MINUTE_MS,
                ))
                .execute(&platform.pool)
                .await?;
        }
    }
    drop(ends);
    let promoted = checkpoints.len().div_ceil(2) - 1;
    let (first_events, first_rss) = samples[0];
    let (promoted_events, promoted_rss) = samples[promoted];
    let per_id = (promoted_rss - first_rss) * 1024.0 * 1024.0
        / (promoted_events.saturating_sub(first_events)).max(1) as f64;
    let mut figures = vec![Figure::new(
        "speed-layer memory per id held",
        (per_id, "bytes"),
        ("an id's hash alone", 16.0),
        format!(
            "RSS growth from {first_events} to {promoted_events} events, nothing promoted: ids, \
             session times and table slack"
        ),
    )];
    figures.extend(samples.iter().enumerate().map(|(i, &(events, rss))| {
        let after = i > promoted;
        let figure = Figure::new(
            &format!(
                "speed-layer RSS after {}M events{}",
                events as f64 / 1e6,
                if after { ", T moved" } else { "" }
            ),
            (rss, "MiB"),
            (
                &format!(
                    "RSS when T moved, after {}M events",
                    promoted_events as f64 / 1e6
                ),
                promoted_rss,
            ),
            "1M distinct users, 4 partitions, default batch size; sampled when the committed \
             offsets pass the checkpoint"
                .into(),
        );
        if after {
            figure.target(
                "stops growing once T moves: <= 1.1x the RSS when it moved",
                rss <= 1.1 * promoted_rss,
            )
        } else {
            figure
        }
    }));
    Ok(figures)
}
