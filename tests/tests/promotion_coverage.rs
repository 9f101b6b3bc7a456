//! A promotion never hides what the speed side was serving (issue 15, CONTRACT §5.3): a burst of
//! events for the hour before the next T, counted by the speed layer while the lander has not
//! landed it, must not vanish when T moves past it. The lake's event-time completeness alone
//! says yes (it landed later events already); the rule on offsets says no.

use anyhow::{Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;

const PARTITIONS: i32 = 2;

/// The purchases answer over `[from, to)`: its total and whether it says it is complete.
async fn served(platform: &Platform, from: i64, to: i64) -> Result<(f64, serde_json::Value)> {
    let (status, body) = platform.get(&purchases_path(from, to)).await?;
    ensure!(status == 200, "{status}: {body}");
    Ok((first_series_total(&body), body))
}

fn purchase(id: String, time: i64) -> serde_json::Value {
    json!({"event_id": id, "event_type": "purchase", "event_time": time,
           "country": "DE", "amount": 1.0, "schema_version": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_waits_for_the_lake_to_hold_what_the_speed_layer_counted() -> Result<()> {
    let platform = Platform::new("promotion_coverage", PARTITIONS).await?;
    let speed = platform.spawn("speed-layer", &["run"])?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // 50 minutes of purchases, one every 30 s, landed and counted.
    let base = bucket_start(now_millis(), MINUTE_MS) - 60 * MINUTE_MS;
    let mut times: Vec<i64> = Vec::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..100i64 {
        let time = base + i * 30_000;
        platform
            .send_tracked((i % 2) as i32, &purchase(format!("p{i}"), time), &mut ends)
            .await?;
        times.push(time);
    }
    platform.wait_both_caught_up(&ends).await?;
    let (t1, t2) = (base + 10 * MINUTE_MS, base + 30 * MINUTE_MS);
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t1)])
        .await?;
    ensure!(ok, "first run: {output}");

    // The lander stops; a burst for [T1 + 5m, T2) reaches only the speed layer.
    lander.kill9().await?;
    for i in 0..40i64 {
        let time = t1 + 5 * MINUTE_MS + i * 20_000;
        platform
            .send_tracked((i % 2) as i32, &purchase(format!("b{i}"), time), &mut ends)
            .await?;
        times.push(time);
    }
    platform.wait_caught_up("speed_offsets", &ends).await?;
    let truth =
        |from: i64, to: i64| times.iter().filter(|t| **t >= from && **t < to).count() as f64;
    let (total, body) = served(&platform, t1, t2).await?;
    ensure!(
        total == truth(t1, t2) && body["complete"] == true,
        "the speed side serves the burst exactly before any promotion: {total} != {} {body}",
        truth(t1, t2)
    );

    // The lake's event times say it is complete past T2, but it lacks the burst: refused.
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t2)])
        .await?;
    let (total, body) = served(&platform, base, base + 60 * MINUTE_MS).await?;
    ensure!(
        !ok,
        "a run moving T past counted, unlanded events must be refused; it promoted, and now \
         {total} of {} purchases are served, complete={}:\n{output}",
        truth(base, base + 60 * MINUTE_MS),
        body["complete"]
    );
    ensure!(
        output.contains("lake lags the speed layer"),
        "the refusal says why:\n{output}"
    );
    ensure!(platform.served().await?.1 == t1, "T stays at T1");
    ensure!(
        total == truth(base, base + 60 * MINUTE_MS) && body["complete"] == true,
        "after the refusal: {total} {body}"
    );

    // Without --cutover, T moves only up to the burst's first bucket.
    let (ok, output) = platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "an automatic run promotes below the burst: {output}");
    let burst_start = t1 + 5 * MINUTE_MS;
    let (_, cutover) = platform.served().await?;
    ensure!(
        cutover > t1 && cutover <= burst_start,
        "automatic T {} must stop at or before the burst at {}",
        format_rfc3339(cutover),
        format_rfc3339(burst_start)
    );
    let (total, body) = served(&platform, base, base + 60 * MINUTE_MS).await?;
    ensure!(
        total == truth(base, base + 60 * MINUTE_MS) && body["complete"] == true,
        "after the automatic run: {total} {body}"
    );

    // Once the lander has landed the burst, T2 is promoted and every purchase still counts.
    let _lander = platform.spawn("batch-layer", &["land"])?;
    platform.wait_both_caught_up(&ends).await?;
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t2)])
        .await?;
    ensure!(ok, "with the burst landed: {output}");
    ensure!(platform.served().await?.1 == t2, "T moved to T2");
    let (total, body) = served(&platform, base, base + 60 * MINUTE_MS).await?;
    ensure!(
        total == truth(base, base + 60 * MINUTE_MS) && body["complete"] == true,
        "after T2: {total} {body}"
    );
    let (t1t2, _) = served(&platform, t1, t2).await?;
    ensure!(
        t1t2 == truth(t1, t2),
        "[T1, T2) from the batch view: {t1t2}"
    );
    drop(speed);
    Ok(())
}
