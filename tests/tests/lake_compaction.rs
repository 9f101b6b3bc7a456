//! The lake's closed hours are compacted (issue 18): the lander writes a file per touched hour
//! at every flush; after a promotion, `batch-layer run` rewrites each hour before T that holds
//! at least four files into one. The answers stay exact, the replaced files are gone from the
//! lake and from `lake_files`, and the next run sees those hours unchanged: it recomputes
//! nothing.

use anyhow::{Result, ensure};
use platform_tests::Platform;
use platform_tests::truth::{Sent, check_served, default_metrics, send_all};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::time::{Millis, format_rfc3339, now_millis};
use std::collections::{BTreeMap, HashMap};

const PARTITIONS: i32 = 2;
const HOUR: Millis = 3_600_000;
const HOURS: i64 = 3;
const ROUNDS: usize = 5;

/// Files per lake hour of the events topic, and their paths.
async fn hour_files(platform: &Platform) -> Result<BTreeMap<String, Vec<String>>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT dt::text || ' ' || lpad(hour::text, 2, '0'), path FROM lake_files WHERE topic = $1 ORDER BY path",
    )
    .bind(&platform.topic)
    .fetch_all(&platform.pool)
    .await?;
    let mut by_hour: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (hour, path) in rows {
        by_hour.entry(hour).or_default().push(path);
    }
    Ok(by_hour)
}

async fn run(platform: &Platform, cutover: Millis) -> Result<String> {
    let (ok, output) = platform
        .run(
            "batch-layer",
            &["run", "--cutover", &format_rfc3339(cutover)],
        )
        .await?;
    ensure!(ok, "batch-layer run failed:\n{output}");
    Ok(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_hours_are_compacted_and_answers_stay_exact() -> Result<()> {
    let mut platform = Platform::new("lake_compaction", PARTITIONS).await?;
    platform
        .extra_env
        .push(("PLATFORM_LANDER__FLUSH_INTERVAL".into(), "100ms".into()));
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = now_millis().div_euclid(HOUR) * HOUR - (HOURS + 1) * HOUR;
    let cutover = base + HOURS * HOUR;
    let metrics = default_metrics();
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let mut rng = StdRng::seed_from_u64(23);
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut ends = HashMap::new();
    // Each round lands at least one file in every hour.
    for round in 0..ROUNDS {
        let mut events = Vec::new();
        for hour in 0..HOURS {
            for i in 0..30 {
                let time = base + hour * HOUR + rng.random_range(0..HOUR);
                events.push(Sent::random(&mut rng, format!("r{round}h{hour}e{i}"), time));
            }
        }
        let refs: Vec<&Sent> = events.iter().collect();
        send_all(&platform, &refs, &mut rng, &mut ends).await?;
        platform.wait_caught_up("lake_progress", &ends).await?;
        sent.extend(events.into_iter().map(|e| (e.id.clone(), e)));
    }
    for partition in 0..PARTITIONS {
        let fence = Sent::random(&mut rng, format!("fence{partition}"), cutover + HOUR / 2);
        let payload: serde_json::Value = serde_json::from_slice(&fence.payload())?;
        platform
            .send_tracked(partition, &payload, &mut ends)
            .await?;
    }
    platform.wait_caught_up("lake_progress", &ends).await?;
    let before = hour_files(&platform).await?;
    let closed: Vec<&String> = before.keys().take(HOURS as usize).collect();
    ensure!(
        closed.len() == HOURS as usize && closed.iter().all(|h| before[*h].len() >= 4),
        "the lander wrote too few files to compact: {before:#?}"
    );

    let output = run(&platform, cutover).await?;
    ensure!(output.contains("full recompute"), "first run: {output}");
    let after = hour_files(&platform).await?;
    for hour in &closed {
        ensure!(
            after[*hour].len() == 1 && after[*hour][0].contains("compacted-"),
            "hour {hour} holds {:?} after the run",
            after[*hour]
        );
        for old in &before[*hour] {
            ensure!(
                !platform.lake_dir.join(old).exists(),
                "{old} was compacted but is still in the lake"
            );
        }
        ensure!(platform.lake_dir.join(&after[*hour][0]).exists());
    }
    // The open hour, after T, is left as it is.
    let open = before.keys().last().expect("the fence's hour");
    ensure!(
        after[open] == before[open],
        "the hour after T was compacted"
    );
    let range = (base, cutover);
    check_served(&platform, "after compaction", &metrics, range, &sent, &sent).await?;

    let output = run(&platform, cutover).await?;
    ensure!(
        output.contains("incremental: 0 hours recomputed"),
        "the run after compaction recomputed what compaction did not change: {output}"
    );
    check_served(&platform, "the run after", &metrics, range, &sent, &sent).await?;
    Ok(())
}
