//! Speed-layer memory: resident set size after growing numbers of events with 1M distinct users.
//! State lives in Postgres, so it must stay flat: bounded by a batch, not by events processed.

use crate::load::{EventMaker, preload, rss_mib};
use crate::report::Figure;
use anyhow::{Context, Result};
use shared_schema::time::now_millis;
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
    }
    drop(ends);
    let (first_events, first_rss) = samples[0];
    Ok(samples
        .iter()
        .map(|&(events, rss)| {
            Figure::new(
                &format!("speed-layer RSS after {}M events", events as f64 / 1e6),
                (rss, "MiB"),
                (
                    &format!("RSS after {}M events", first_events as f64 / 1e6),
                    first_rss,
                ),
                "1M distinct users, 4 partitions, default batch size; sampled when the committed \
                 offsets pass the checkpoint"
                    .into(),
            )
            .target(
                "bounded: <= 1.5x the first checkpoint",
                rss <= 1.5 * first_rss,
            )
        })
        .collect())
}
