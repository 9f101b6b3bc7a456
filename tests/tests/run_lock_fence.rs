//! A batch run that lost its run lock never promotes (issue 15, coordination): the lock's
//! connection is ended with `pg_terminate_backend` while a slow run computes, another run takes
//! the lock and promotes, and the slow one then refuses to promote and exits non-zero.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, wait_until};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;

/// The run lock's key 0x6261_7463_685f_7275 as `pg_locks` lists it: high half, low half.
const TERMINATE_RUN_LOCK: &str = "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
     WHERE locktype = 'advisory' AND granted
       AND classid = 1650553955::oid AND objid = 1751085685::oid AND objsubid = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_lock_connection_died_does_not_promote() -> Result<()> {
    let mut platform = Platform::new("run_lock_fence", PARTITIONS).await?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let base = bucket_start(now_millis(), MINUTE_MS) - 30 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..60i64 {
        let payload = json!({"event_id": format!("r{i}"), "event_type": "purchase",
                             "event_time": base + i * 15_000, "country": "FR", "amount": 3.0,
                             "schema_version": 2});
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &payload, &mut ends)
            .await?;
    }
    platform.wait_caught_up("lake_progress", &ends).await?;
    let t = format_rfc3339(base + 10 * MINUTE_MS);

    // A slow run: it holds the lock and sleeps just before promoting.
    platform.extra_env.push((
        "LAMBDA_FAILPOINTS".into(),
        "batch.run.before_promote=sleep:15000".into(),
    ));
    let mut slow = platform.spawn_as("slow-run", "batch-layer", &["run", "--cutover", &t])?;
    platform.extra_env.pop();
    wait_until(
        Duration::from_secs(120),
        "the slow run to reach its promotion",
        || async { slow.log().contains("failpoint: sleeping") },
    )
    .await?;

    let ended: i64 = sqlx::query_scalar(TERMINATE_RUN_LOCK)
        .fetch_one(&platform.pool)
        .await?;
    ensure!(ended == 1, "the slow run holds the run lock: ended {ended}");
    // The lock is free: another run takes it and promotes.
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &t])
        .await?;
    ensure!(ok, "the second run failed:\n{output}");
    let (promoted, _) = platform.served().await?;

    let status = slow
        .exited_within(Duration::from_secs(60))
        .await?
        .context("the slow run is still running")?;
    ensure!(
        !status.success(),
        "a run that lost its lock promoted:\n{}",
        slow.log()
    );
    ensure!(
        slow.log().contains("lost the batch run lock"),
        "the refusal names the lost lock:\n{}",
        slow.log()
    );
    ensure!(
        platform.served().await?.0 == promoted,
        "the served version changed after the second run"
    );
    let promotions: i64 = sqlx::query_scalar("SELECT count(*) FROM promotions")
        .fetch_one(&platform.pool)
        .await?;
    ensure!(promotions == 1, "{promotions} promotions, not 1");
    Ok(())
}
