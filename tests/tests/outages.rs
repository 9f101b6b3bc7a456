//! Postgres going away and coming back (issue 5): serving answers 503 with a JSON error within
//! its timeout and reports not-ready, the consumers retry with backoff, and once Postgres is
//! back every bucket is exact: nothing lost, nothing counted twice.
//!
//! It restarts the shared test Postgres, so it lives alone in this test binary (cargo runs
//! test binaries one at a time).

use anyhow::{Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path, stack, wait_until};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, now_millis};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_loses_nothing_and_serving_says_503_meanwhile() -> Result<()> {
    let mut platform = Platform::new("outage_pg", 2).await?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__QUERY_TIMEOUT".into(), "3s".into()));
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 10 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let send = async |platform: &Platform,
                      range: std::ops::Range<i64>,
                      ends: &mut HashMap<i32, i64>|
           -> Result<()> {
        for i in range {
            let payload = json!({"event_id": format!("o{i}"), "event_type": "purchase", "event_time": base + i * 2_000,
                                 "country": "DE", "amount": 1.0, "schema_version": 2});
            platform
                .send_tracked((i % 2) as i32, &payload, ends)
                .await?;
        }
        Ok(())
    };
    send(&platform, 0..100, &mut ends).await?;
    platform.wait_caught_up("speed_offsets", &ends).await?;
    let url = format!(
        "{}&step=1h",
        purchases_path(base - 60 * MINUTE_MS, base + 60 * MINUTE_MS)
    );
    let (_, body) = platform.get(&url).await?;
    ensure!(
        first_series_total(&body) == 100.0,
        "before the outage: {body}"
    );
    // The answer is in the serving layer's cache when Postgres goes: a cached answer must not
    // hide the outage (it did while the lost notification connection waited to reconnect).
    let body_hits = platform.cache_hits("body").await?;
    wait_until(Duration::from_secs(30), "a cached answer", || async {
        platform.get(&url).await.is_ok()
            && platform
                .cache_hits("body")
                .await
                .is_ok_and(|hits| hits > body_hits)
    })
    .await?;

    stack("stop_postgres")?;
    let asked = Instant::now();
    let (status, body) = platform.get(&url).await?;
    ensure!(
        status == 503 && body["error"]["code"].is_string(),
        "while Postgres is down: {status} {body}"
    );
    ensure!(
        asked.elapsed() < Duration::from_secs(10),
        "a 503 must not hang: {:?}",
        asked.elapsed()
    );
    let (status, _) = platform.get("/readyz").await?;
    ensure!(status == 503, "readyz while Postgres is down: {status}");
    // Events keep arriving on the bus meanwhile.
    send(&platform, 100..200, &mut ends).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack("start_postgres")?;

    platform.wait_for_http().await?;
    platform.wait_both_caught_up(&ends).await?;
    wait_until(
        Duration::from_secs(30),
        "all 200 purchases to be served",
        || async {
            platform
                .get(&url)
                .await
                .is_ok_and(|(_, body)| first_series_total(&body) == 200.0)
        },
    )
    .await?;
    for service in [&mut speed, &mut lander, &mut serving] {
        service.assert_running()?;
    }
    let (ok, output) = platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "batch run after the outage:\n{output}");
    let (_, body) = platform.get(&url).await?;
    ensure!(
        first_series_total(&body) == 200.0,
        "after the batch run: {body}"
    );
    Ok(())
}
