//! Several speed-layer instances in one consumer group (issue 5): they share the partitions,
//! a SIGKILLed instance's partitions move to the other with their offsets, a restarted one
//! takes some back, and every bucket stays exact throughout, duplicates across partitions
//! included.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, purchases_path};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const PARTITIONS: i32 = 4;
/// How long a member may wait for the group to hand it partitions.
const ASSIGNMENT_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_partitions_and_survive_a_kill() -> Result<()> {
    let platform = Platform::new("group", PARTITIONS).await?;
    let mut first = platform.spawn_as("speed-first", "speed-layer", &["run"])?;
    let mut second = platform.spawn_as("speed-second", "speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut rng = StdRng::seed_from_u64(5);
    let mut truth: BTreeMap<Millis, f64> = BTreeMap::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for round in 0..4 {
        for i in 0..200 {
            let id = format!("g{round}-{i}");
            let time = base + rng.random_range(0..15 * MINUTE_MS);
            let payload = json!({"event_id": id, "event_type": "purchase", "event_time": time, "schema_version": 2});
            let copies = if rng.random_bool(0.2) { 2 } else { 1 };
            for _ in 0..copies {
                let partition = rng.random_range(0..PARTITIONS);
                platform
                    .send_tracked(partition, &payload, &mut ends)
                    .await?;
            }
            *truth.entry(bucket_start(time, MINUTE_MS)).or_default() += 1.0;
        }
        match round {
            1 => {
                // Killed while it holds partitions, so they must move with their offsets.
                first.wait_for_partitions(ASSIGNMENT_LIMIT).await?;
                first.kill9().await?
            }
            2 => {
                platform_tests::wait_out_group_session().await;
                first = platform.spawn_as("speed-first", "speed-layer", &["run"])?
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A rebalance takes a heartbeat or two: wait for it rather than race the last round.
    first
        .wait_for_partitions(ASSIGNMENT_LIMIT)
        .await
        .context("the restarted instance never took partitions back")?;
    platform.wait_caught_up("speed_offsets", &ends).await?;

    let url = purchases_path(base, base + 20 * MINUTE_MS);
    let (status, body) = platform.get(&url).await?;
    ensure!(status == 200, "{status} {body}");
    let served = platform_tests::first_series_points(&body)?;
    ensure!(served == truth, "served {served:?}\ntruth  {truth:?}");
    ensure!(
        second.got_partitions(),
        "the second instance never got partitions"
    );
    first.assert_running()?;
    second.assert_running()?;
    Ok(())
}
