//! A rollback racing retention (issue 15, coordination). Retention reads T and then deletes
//! the speed state covered by the view of T; a rollback that lands in between brings back a
//! view that does not cover what retention is about to delete. Retention's transaction is
//! held open (a failpoint sleeping just after it begins) while the rollback commits: the
//! deletes must follow the rolled-back T, so every bucket is still served exactly.

use anyhow::{Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path, wait_until};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;

async fn run(platform: &Platform, args: &[&str]) -> Result<()> {
    let (ok, output) = platform.run("batch-layer", args).await?;
    ensure!(ok, "batch-layer {args:?} failed:\n{output}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_during_retention_keeps_what_the_restored_view_lacks() -> Result<()> {
    let mut platform = Platform::new("retention_race", PARTITIONS).await?;
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..120i64 {
        let payload = json!({"event_id": format!("rr{i}"), "event_type": "purchase",
                             "event_time": base + i * 15_000, "country": "DE", "amount": 2.0,
                             "schema_version": 2});
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &payload, &mut ends)
            .await?;
    }
    platform.wait_both_caught_up(&ends).await?;
    // No retention may run between the two promotions: the speed layer stops first.
    speed.kill9().await?;

    let (t1, t2) = (base + 3 * MINUTE_MS, base + 20 * MINUTE_MS);
    run(&platform, &["run", "--cutover", &format_rfc3339(t1)]).await?;
    let (v1, _) = platform.served().await?;
    run(&platform, &["run", "--cutover", &format_rfc3339(t2)]).await?;

    // The restarted speed layer runs retention at once (T2: it would delete before T2 minus
    // the 10-minute grace), and holds its transaction open for a while.
    platform.extra_env.push((
        "LAMBDA_FAILPOINTS".into(),
        "speed.retention.begun=sleep:8000".into(),
    ));
    let speed = platform.spawn("speed-layer", &["run"])?;
    platform.extra_env.pop();
    wait_until(Duration::from_secs(60), "retention to begin", || async {
        speed.log().contains("failpoint: sleeping")
    })
    .await?;
    run(&platform, &["rollback"]).await?;
    ensure!(
        platform.served().await? == (v1.clone(), t1),
        "rollback serves {v1}"
    );
    wait_until(Duration::from_secs(60), "retention to finish", || async {
        speed.log().contains("failpoint: slept")
    })
    .await?;
    // Its transaction commits right after; give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (status, body) = platform
        .get(&purchases_path(base, base + 30 * MINUTE_MS))
        .await?;
    ensure!(
        status == 200 && body["complete"] == true && body["gaps"] == json!([]),
        "retention deleted state the restored view does not cover: {body}"
    );
    let total = first_series_total(&body);
    ensure!(total == 120.0, "all 120 purchases are served once: {total}");
    Ok(())
}
