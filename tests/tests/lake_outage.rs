//! The lake unwritable for a while (issue 5): the lander keeps the batch and retries with
//! backoff, lands nothing twice and loses nothing once the lake is back, and the next batch
//! run is exact.

use anyhow::{Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_lake_delays_landing_and_loses_nothing() -> Result<()> {
    let platform = Platform::new("lake_outage", 2).await?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 10 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let send = async |range: std::ops::Range<i64>, ends: &mut HashMap<i32, i64>| -> Result<()> {
        for i in range {
            let payload = json!({"event_id": format!("l{i}"), "event_type": "purchase", "event_time": base + i * 3_000,
                                 "country": "DE", "schema_version": 2});
            platform
                .send_tracked((i % 2) as i32, &payload, ends)
                .await?;
        }
        Ok(())
    };
    send(0..50, &mut ends).await?;
    platform.wait_caught_up("lake_progress", &ends).await?;

    // Root ignores permissions, so the lake is made unwritable by putting a file where the
    // events directory has to be.
    let events = platform.lake_dir.join("events");
    let away = platform.lake_dir.join("events.away");
    std::fs::rename(&events, &away)?;
    std::fs::write(&events, b"not a directory")?;
    let landed_before: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(row_count), 0)::bigint FROM lake_files")
            .fetch_one(&platform.pool)
            .await?;
    send(50..100, &mut ends).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let landed_during: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(row_count), 0)::bigint FROM lake_files")
            .fetch_one(&platform.pool)
            .await?;
    ensure!(
        landed_during == landed_before,
        "nothing can land while the lake is unwritable"
    );
    lander.assert_running()?;

    std::fs::remove_file(&events)?;
    std::fs::rename(&away, &events)?;
    platform.wait_caught_up("lake_progress", &ends).await?;
    let landed_after: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(row_count), 0)::bigint FROM lake_files")
            .fetch_one(&platform.pool)
            .await?;
    ensure!(
        landed_after == 100,
        "every event lands exactly once: {landed_after} rows"
    );

    let t = base + 3 * MINUTE_MS;
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t)])
        .await?;
    ensure!(ok, "batch run after the outage:\n{output}");
    let url = format!(
        "{}&step=1h",
        purchases_path(base - 60 * MINUTE_MS, base + 60 * MINUTE_MS)
    );
    let (_, body) = platform.get(&url).await?;
    let total = first_series_total(&body);
    ensure!(total == 100.0, "served {total} purchases: {body}");
    Ok(())
}
