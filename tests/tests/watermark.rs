//! The served speed watermark (issue 4): the slowest partition holds it back by its newest
//! event time minus the out-of-orderness, until that partition has been idle for the idle
//! timeout; then it stops holding the watermark back.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, purchases_path, wait_until};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, SECOND_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_partition_stops_holding_the_watermark_back() -> Result<()> {
    let mut platform = Platform::new("watermark", 3).await?;
    platform
        .extra_env
        .push(("PLATFORM_SPEED__IDLE_TIMEOUT".into(), "2s".into()));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let newest = bucket_start(now_millis(), MINUTE_MS) - 5 * MINUTE_MS;
    let slow = newest - 3 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut next = 0;
    let mut send = async |partition: i32, time: i64, ends: &mut HashMap<i32, i64>| -> Result<()> {
        next += 1;
        let payload =
            json!({"event_id": format!("w{next}"), "event_type": "click", "event_time": time});
        platform.send_tracked(partition, &payload, ends).await
    };
    send(0, newest, &mut ends).await?;
    send(1, newest, &mut ends).await?;
    send(2, slow, &mut ends).await?;
    platform.wait_caught_up("speed_offsets", &ends).await?;

    let url = purchases_path(newest, newest + MINUTE_MS);
    let watermark = async || -> Result<Option<String>> {
        let (_, body) = platform.get(&url).await?;
        Ok(body["speed_watermark"].as_str().map(str::to_string))
    };
    let held_back = format_rfc3339(slow - 5 * SECOND_MS);
    let first = watermark().await?;
    ensure!(
        first.as_deref() == Some(held_back.as_str()),
        "partition 2 should hold the watermark at {held_back}, not {first:?}"
    );

    // Partition 2 goes quiet; the next commit no longer counts it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    send(0, newest, &mut ends).await?;
    let released = format_rfc3339(newest - 5 * SECOND_MS);
    wait_until(
        Duration::from_secs(20),
        "the idle partition to release the watermark",
        || async { watermark().await.ok().flatten().as_deref() == Some(released.as_str()) },
    )
    .await
    .context(format!(
        "watermark stayed at {:?}",
        watermark().await.ok().flatten()
    ))?;
    Ok(())
}
