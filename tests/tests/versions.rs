//! View versions (issue 5): pin and roll back a version, with T moving with it; a killed run's
//! staging output is cleaned up; and when a rollback brings T below speed state that retention
//! already removed, answers report the gap instead of zeros.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path, wait_until};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;

async fn run(platform: &Platform, args: &[&str]) -> Result<String> {
    let (ok, output) = platform.run("batch-layer", args).await?;
    ensure!(ok, "batch-layer {args:?} failed:\n{output}");
    Ok(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pin_rollback_staging_cleanup_and_gaps_after_retention() -> Result<()> {
    let platform = Platform::new("versions", PARTITIONS).await?;
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..120i64 {
        let payload = json!({"event_id": format!("v{i}"), "event_type": "purchase", "event_time": base + i * 15_000,
                             "country": "DE", "amount": 2.0, "schema_version": 2});
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &payload, &mut ends)
            .await?;
    }
    platform.wait_both_caught_up(&ends).await?;

    let (t1, t2) = (base + 3 * MINUTE_MS, base + 20 * MINUTE_MS);
    run(&platform, &["run", "--cutover", &format_rfc3339(t1)]).await?;
    let (v1, _) = platform.served().await?;
    // A killed run's staging output is removed by the next run.
    let staging = platform.lake_dir.join("views/.staging-killed-run");
    std::fs::create_dir_all(&staging)?;
    run(&platform, &["run", "--cutover", &format_rfc3339(t2)]).await?;
    let (v2, cutover) = platform.served().await?;
    ensure!(
        cutover == t2 && v2 != v1,
        "second run serves {v2} at {cutover}"
    );
    ensure!(
        !staging.exists(),
        "staging output of a killed run survived the next run"
    );

    // Retention now drops speed state more than the grace (10 minutes) before T2.
    speed.kill9().await?;
    speed = platform.spawn("speed-layer", &["run"])?;
    wait_until(Duration::from_secs(30), "retention to run", || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT covered_from FROM speed_coverage",
        )
        .fetch_one(&platform.pool)
        .await
        .ok()
        .flatten()
        .is_some_and(|t| t.timestamp_millis() == t2 - 10 * MINUTE_MS)
    })
    .await?;

    // Rollback serves v1 and T1 again; [T1, T2 - grace) is covered by neither side.
    let output = run(&platform, &["rollback"]).await?;
    ensure!(
        platform.served().await? == (v1.clone(), t1),
        "rollback should serve {v1}: {output}"
    );
    let url = purchases_path(base, base + 30 * MINUTE_MS);
    let (status, body) = platform.get(&url).await?;
    ensure!(
        status == 200 && body["complete"] == false,
        "a rollback below retention must be incomplete: {body}"
    );
    ensure!(
        body["gaps"]
            == json!([{"from": format_rfc3339(t1), "to": format_rfc3339(t2 - 10 * MINUTE_MS)}]),
        "gaps: {}",
        body["gaps"]
    );
    let points = body["series"][0]["points"].as_array().context("points")?;
    ensure!(
        points.iter().all(|p| {
            let t = shared_schema::time::parse_rfc3339(p["t"].as_str().unwrap_or_default())
                .unwrap_or_default();
            t < t1 || t >= t2 - 10 * MINUTE_MS
        }),
        "no point may be served inside the gap: {points:?}"
    );

    // Pinning v2 brings T2 back, and the answer is complete again.
    run(&platform, &["promote", "--version", &v2]).await?;
    ensure!(
        platform.served().await? == (v2.clone(), t2),
        "pin should serve {v2}"
    );
    let (_, body) = platform.get(&url).await?;
    ensure!(body["complete"] == true, "after the pin: {body}");
    let total = first_series_total(&body);
    ensure!(total == 120.0, "all 120 purchases are served once: {total}");

    // A version that does not exist is refused.
    let (ok, output) = platform
        .run("batch-layer", &["promote", "--version", "no-such-version"])
        .await?;
    ensure!(!ok && output.contains("no-such-version"), "{output}");
    speed.assert_running()?;
    Ok(())
}
