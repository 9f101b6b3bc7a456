//! Recovery after a SIGKILL: the speed layer counts `events` distinct ids (all inside the dedupe
//! horizon, as nothing is promoted), is killed, and starts again; timed from the restart to the
//! commit of one event produced after the kill. Beside it, the same restart on an empty log
//! (connect, migrate, join the group, first commit), measured first in the same run.

use crate::load::{EventMaker, preload};
use crate::report::Figure;
use anyhow::{Context, Result};
use platform_tests::Platform;
use serde_json::json;
use shared_schema::time::now_millis;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

pub async fn run(events: u64) -> Result<Vec<Figure>> {
    let mut platform = crate::load::bench_platform("bench_recovery", PARTITIONS).await?;
    // The load time is read from the speed layer's own log line.
    platform.extra_env.retain(|(k, _)| k != "RUST_LOG");
    platform
        .extra_env
        .push(("RUST_LOG".into(), "warn,speed_layer=info".into()));

    // Baseline: a restart with nothing in the log.
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let empty = restart_until_fresh(&platform, &mut speed, "empty").await?;

    let mut maker = EventMaker::new(4, 1_000_000, now_millis());
    let ends = preload(
        &platform.brokers,
        &platform.topic,
        PARTITIONS,
        "r",
        events,
        &mut maker,
    )
    .await?;
    platform
        .wait_caught_up_within("speed_offsets", &ends, Duration::from_secs(3600))
        .await?;
    let ids: i64 = sqlx::query_scalar("SELECT coalesce(sum(entries), 0)::bigint FROM speed_log")
        .fetch_one(&platform.pool)
        .await?;
    let full = restart_until_fresh(&platform, &mut speed, "full").await?;
    // A log written on a terminal is coloured: drop any escape sequences before reading it.
    let log = platform_tests::without_colours(&speed.log());
    let loaded = log
        .lines()
        .find(|l| l.contains("loaded the speed state"))
        .and_then(|l| l.split("seconds=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    println!(
        "recovery: {ids} ids in the log; loading them took {loaded:.2}s; restart to fresh {full:.2}s, on an empty log {empty:.2}s"
    );
    Ok(vec![
        Figure::new(
            "speed-layer restart after SIGKILL to a fresh event committed",
            (full, "s"),
            ("the same restart on an empty log", empty),
            format!(
                "{ids} ids in the dedupe horizon, {PARTITIONS} partitions, 1M users; \
                 loading the log took {loaded:.2}s of it; the rest is connecting and the group \
                 handing the partitions over"
            ),
        )
        .target("<= 10 s", full <= 10.0),
    ])
}

/// SIGKILLs `speed`, produces one event, starts it again and returns the seconds from the
/// start to that event's offset being committed.
async fn restart_until_fresh(
    platform: &Platform,
    speed: &mut platform_tests::Service,
    label: &str,
) -> Result<f64> {
    // Let the running instance commit what it has, then kill it mid-flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    speed.kill9().await?;
    let fresh = json!({"event_id": format!("fresh-{label}"), "event_type": "purchase",
        "event_time": now_millis(), "user_id": "fresh", "country": "DE", "amount": 1.0});
    let offset = platform
        .send(0, fresh.to_string().as_bytes())
        .await
        .context("producing the fresh event")?;
    let started = Instant::now();
    *speed = platform.spawn("speed-layer", &["run"])?;
    platform
        .wait_caught_up_within(
            "speed_offsets",
            &HashMap::from([(0, offset + 1)]),
            Duration::from_secs(300),
        )
        .await?;
    Ok(started.elapsed().as_secs_f64())
}
