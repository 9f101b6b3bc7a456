//! One lander per topic (issue 15, coordination): two `batch-layer land` processes at once land
//! every event once, the second waiting (and saying so); and when the holder's lock connection
//! dies, one of them takes over and the lake still holds every event once.

use anyhow::{Result, ensure};
use platform_tests::{Platform, Service, wait_until};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, now_millis};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;
const WAITING: &str = "another lander is landing this topic";

async fn lake_rows(platform: &Platform) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(row_count), 0)::bigint FROM lake_files WHERE topic = $1",
    )
    .bind(&platform.topic)
    .fetch_one(&platform.pool)
    .await?)
}

async fn send(
    platform: &Platform,
    from: i64,
    count: i64,
    ends: &mut HashMap<i32, i64>,
) -> Result<()> {
    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    for i in from..from + count {
        let payload = json!({"event_id": format!("l{i}"), "event_type": "purchase",
                             "event_time": base + i * 1_000, "country": "DE", "amount": 1.0,
                             "schema_version": 2});
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &payload, ends)
            .await?;
    }
    Ok(())
}

/// Every message up to `ends` is landed, and a while later (a second lander would have
/// landed its copies by then) the lake holds `expected` rows.
async fn landed_once(platform: &Platform, ends: &HashMap<i32, i64>, expected: i64) -> Result<()> {
    platform.wait_caught_up("lake_progress", ends).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = lake_rows(platform).await?;
    ensure!(
        rows == expected,
        "the lake holds {rows} rows for {expected} events:\n{}",
        platform.log_tails(30)
    );
    Ok(())
}

fn waits(lander: &Service) -> bool {
    lander.log().contains(WAITING)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_landers_land_every_event_once() -> Result<()> {
    let platform = Platform::new("lander_fence", PARTITIONS).await?;
    let mut a = platform.spawn_as("lander-a", "batch-layer", &["land"])?;
    let mut b = platform.spawn_as("lander-b", "batch-layer", &["land"])?;
    let mut ends = HashMap::new();
    send(&platform, 0, 200, &mut ends).await?;
    landed_once(&platform, &ends, 200).await?;
    ensure!(
        waits(&a) != waits(&b),
        "exactly one lander must say it waits:\n{}",
        platform.log_tails(20)
    );

    // The holder's lock connection dies (a network cut): one of them takes the topic again
    // with a new epoch, and the lake still holds each event once.
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&platform.pool)
    .await?;
    ensure!(ended == 1, "one lander lock is held, not {ended}");
    wait_until(Duration::from_secs(30), "a new lander epoch", || async {
        sqlx::query_scalar::<_, i64>("SELECT epoch FROM lander_fence WHERE topic = $1")
            .bind(&platform.topic)
            .fetch_one(&platform.pool)
            .await
            .is_ok_and(|epoch| epoch == 2)
    })
    .await?;
    send(&platform, 200, 200, &mut ends).await?;
    landed_once(&platform, &ends, 400).await?;
    ensure!(
        a.log().contains("taking the lock again") || b.log().contains("taking the lock again"),
        "the lander that lost its lock says so:\n{}",
        platform.log_tails(20)
    );
    a.assert_running()?;
    b.assert_running()?;
    Ok(())
}
