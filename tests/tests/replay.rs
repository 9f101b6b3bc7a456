//! Kappa replay (issue 7) on the real stack: the live speed state is damaged, `speed-layer
//! replay` rebuilds it from the bus at a bounded rate while the live instance keeps consuming,
//! and after the atomic swap every answer is exact again, events sent during the replay
//! included.

use anyhow::{Context, Result, ensure};
use platform_tests::Platform;
use platform_tests::truth::{Sent, check_served, default_metrics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

const PARTITIONS: i32 = 2;
const RATE: f64 = 400.0;

async fn send(
    platform: &Platform,
    events: &[Sent],
    rng: &mut StdRng,
    ends: &mut HashMap<i32, i64>,
) -> Result<()> {
    for event in events {
        let payload: serde_json::Value = serde_json::from_slice(&event.payload())?;
        platform
            .send_tracked(rng.random_range(0..PARTITIONS), &payload, ends)
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_rebuilds_damaged_state_at_its_rate_and_swaps_in() -> Result<()> {
    let platform = Platform::new("replay", PARTITIONS).await?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let test_started = now_millis() - 1_000;
    let base = bucket_start(now_millis(), MINUTE_MS) - 30 * MINUTE_MS;
    let mut rng = StdRng::seed_from_u64(9);
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut ends = HashMap::new();
    let first: Vec<Sent> = (0..1200)
        .map(|i| {
            let time = base + rng.random_range(0..25 * MINUTE_MS);
            Sent::random(&mut rng, format!("r{i}"), time)
        })
        .collect();
    send(&platform, &first, &mut rng, &mut ends).await?;
    sent.extend(first.into_iter().map(|e| (e.id.clone(), e)));
    platform.wait_caught_up("speed_offsets", &ends).await?;
    let metrics = default_metrics();
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let range = (base, base + 30 * MINUTE_MS);
    check_served(
        &platform,
        "before the damage",
        &metrics,
        range,
        &sent,
        &BTreeMap::new(),
    )
    .await?;

    // A bug's damage: counts inflated, one bucket lost.
    // Every packed row twice (a second copy under another seq), and the first bucket gone.
    sqlx::query(
        "INSERT INTO speed_cells (bucket_start, seq, metrics, seen, late, cells, body)
         SELECT bucket_start, seq + 1000000000, metrics, seen, late, cells, body FROM speed_cells",
    )
    .execute(&platform.pool)
    .await?;
    sqlx::query(
        "DELETE FROM speed_cells WHERE bucket_start = (SELECT min(bucket_start) FROM speed_cells)",
    )
    .execute(&platform.pool)
    .await?;
    ensure!(
        check_served(
            &platform,
            "damaged",
            &metrics,
            range,
            &sent,
            &BTreeMap::new()
        )
        .await
        .is_err(),
        "the damage did not show, so the replay would prove nothing"
    );

    // The replay runs while the live instance consumes new events.
    let started = Instant::now();
    let replay = {
        let rate = RATE.to_string();
        let args = ["replay", "--from", "earliest", "--max-rate", rate.as_str()];
        let mut command = platform.command("speed-layer", &args)?;
        tokio::spawn(async move { command.output().await })
    };
    let during: Vec<Sent> = (0..200)
        .map(|i| {
            let time = base + rng.random_range(0..25 * MINUTE_MS);
            Sent::random(&mut rng, format!("d{i}"), time)
        })
        .collect();
    send(&platform, &during, &mut rng, &mut ends).await?;
    sent.extend(during.into_iter().map(|e| (e.id.clone(), e)));
    let output = replay.await?.context("running the replay")?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "replay failed:\n{text}");
    ensure!(text.contains("swapped them in"), "replay output:\n{text}");
    // At RATE events/s with one second saved up, 1200 events take at least two seconds.
    let floor = 1200.0 / RATE - 1.0;
    ensure!(
        elapsed >= floor,
        "replay took {elapsed:.1}s, under the {floor:.1}s its rate allows"
    );

    platform.wait_caught_up("speed_offsets", &ends).await?;
    check_served(
        &platform,
        "after the replay",
        &metrics,
        range,
        &sent,
        &BTreeMap::new(),
    )
    .await?;

    // From a time: Kafka's timestamp index finds where to start; everything was produced after
    // `test_started`, so this replays it all again.
    let from = format_rfc3339(test_started);
    let (ok, text) = platform
        .run("speed-layer", &["replay", "--from", from.as_str()])
        .await?;
    ensure!(
        ok && text.contains("swapped them in"),
        "replay from a time:\n{text}"
    );
    check_served(
        &platform,
        "after a replay from a time",
        &metrics,
        range,
        &sent,
        &BTreeMap::new(),
    )
    .await?;

    let previous: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'speed_previous'",
    )
    .fetch_one(&platform.pool)
    .await?;
    ensure!(
        previous == 8,
        "the replaced tables are kept in speed_previous ({previous} there)"
    );
    Ok(())
}
