//! Time that runs away (issue 15): events from the near future must not carry T past the wall
//! clock minus the allowed lateness, and one event dated 1970 must not make a promotion's work
//! proportional to the 56 years between it and now.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 2;
/// The allowed lateness of the shipped metrics.
const LATENESS: i64 = MINUTE_MS;

async fn send_purchases(
    platform: &Platform,
    prefix: &str,
    times: impl IntoIterator<Item = i64>,
    ends: &mut HashMap<i32, i64>,
) -> Result<usize> {
    let mut sent = 0;
    for (i, time) in times.into_iter().enumerate() {
        let country = ["DE", "FR", "IT"][i % 3];
        let payload = json!({"event_id": format!("{prefix}{i}"), "event_type": "purchase",
                             "event_time": time, "country": country,
                             "user_id": format!("u{}", i % 7), "amount": 1.5, "schema_version": 2});
        platform
            .send_tracked((i % PARTITIONS as usize) as i32, &payload, ends)
            .await?;
        sent += 1;
    }
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t_never_passes_the_wall_clock_minus_the_lateness() -> Result<()> {
    let platform = Platform::new("runaway_future", PARTITIONS).await?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let now = now_millis();
    let mut ends = HashMap::new();
    // The last twenty minutes, then on every partition events five minutes ahead of the clock
    // (within the decoder's ten minutes of skew).
    let past = (0..40).map(|i| now - 20 * MINUTE_MS + i * 30_000);
    send_purchases(&platform, "p", past, &mut ends).await?;
    send_purchases(
        &platform,
        "f",
        (0..4).map(|_| now + 5 * MINUTE_MS),
        &mut ends,
    )
    .await?;
    platform.wait_caught_up("lake_progress", &ends).await?;

    let (ok, output) = platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "the run failed:\n{output}");
    let (_, t) = platform.served().await?;
    let limit = now_millis() - LATENESS;
    ensure!(
        t <= limit,
        "T {} passed the wall clock minus the lateness {}",
        format_rfc3339(t),
        format_rfc3339(limit)
    );

    // An operator's cutover beyond it is refused, with a clear message, and nothing moves.
    let ahead = bucket_start(now_millis() + 2 * MINUTE_MS, MINUTE_MS);
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(ahead)])
        .await?;
    ensure!(
        !ok && output.contains("wall clock"),
        "a cutover ahead of the clock must be refused:\n{output}"
    );
    ensure!(platform.served().await?.1 == t, "a refused run moved T");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_dated_1970_keeps_the_first_promotion_quick() -> Result<()> {
    let platform = Platform::new("runaway_1970", PARTITIONS).await?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let mut ends = HashMap::new();
    let recent = (0..240).map(|i| base + i * 7_500);
    send_purchases(&platform, "n", recent, &mut ends).await?;
    // A phone whose clock reset: one second after the epoch.
    send_purchases(&platform, "epoch", [1_000], &mut ends).await?;
    platform.wait_both_caught_up(&ends).await?;

    let cutover = base + 20 * MINUTE_MS;
    let started = Instant::now();
    let (ok, output) = platform
        .run(
            "batch-layer",
            &["run", "--cutover", &format_rfc3339(cutover)],
        )
        .await?;
    let took = started.elapsed();
    ensure!(ok, "the run failed:\n{output}");
    ensure!(
        took < Duration::from_secs(60),
        "the first promotion took {took:?}: its work grew with the span of event times"
    );
    let (version, _) = platform.served().await?;
    let compared: i64 = sqlx::query_scalar("SELECT count(*) FROM divergence WHERE version = $1")
        .bind(&version)
        .fetch_one(&platform.pool)
        .await?;
    ensure!(compared > 0, "the divergence check recorded nothing");

    // The old event is kept (and cheap): the view counts it in its bucket.
    let (status, body) = platform.get(&purchases_path(0, MINUTE_MS)).await?;
    ensure!(status == 200, "{status} {body}");
    let total = first_series_total(&body);
    ensure!(total == 1.0, "the 1970 purchase is counted once: {body}");
    let (_, body) = platform.get(&purchases_path(base, cutover)).await?;
    let points = body["series"][0]["points"].as_array().context("points")?;
    ensure!(!points.is_empty(), "{body}");
    let recent_total = first_series_total(&body);
    // 240 purchases 7.5 s apart from `base`: 160 before T.
    ensure!(
        recent_total == 160.0,
        "the recent purchases before T are counted once: {recent_total}"
    );
    Ok(())
}
