//! The lake's lifecycle (issue 18), applied by `batch-layer run` after a promotion:
//! - closed hours are compacted: the lander writes a file per touched hour at every flush; each
//!   hour before T that holds at least four files is rewritten into one. The answers stay exact,
//!   the replaced files are gone from the lake and from `lake_files`, and the next run sees those
//!   hours unchanged: it recomputes nothing;
//! - `lake.retention` deletes the hours past the horizon from the lake and the views, ignores a
//!   late event landed there afterwards, and never deletes an hour at or after T.

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

    let output = platform.run_batch(cutover).await?;
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

    let output = platform.run_batch(cutover).await?;
    ensure!(
        output.contains("incremental: 0 hours recomputed"),
        "the run after compaction recomputed what compaction did not change: {output}"
    );
    check_served(&platform, "the run after", &metrics, range, &sent, &sent).await?;
    Ok(())
}

/// Lands `per_hour` random events in each of `hours` hours from `base`, plus one fence event a
/// half hour past `cutover` on every partition, so the lake is complete up to T.
async fn land_hours(
    platform: &Platform,
    rng: &mut StdRng,
    (base, hours, per_hour): (Millis, i64, usize),
    cutover: Millis,
) -> Result<BTreeMap<String, Sent>> {
    let mut ends = HashMap::new();
    let mut events = Vec::new();
    for hour in 0..hours {
        for i in 0..per_hour {
            let time = base + hour * HOUR + rng.random_range(0..HOUR);
            events.push(Sent::random(rng, format!("h{hour}e{i}"), time));
        }
    }
    let refs: Vec<&Sent> = events.iter().collect();
    send_all(platform, &refs, rng, &mut ends).await?;
    for partition in 0..PARTITIONS {
        let fence = Sent::random(rng, format!("fence{partition}"), cutover + HOUR / 2);
        let payload: serde_json::Value = serde_json::from_slice(&fence.payload())?;
        platform
            .send_tracked(partition, &payload, &mut ends)
            .await?;
    }
    platform.wait_caught_up("lake_progress", &ends).await?;
    Ok(events.into_iter().map(|e| (e.id.clone(), e)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_deletes_old_hours_from_the_lake_and_the_views_but_nothing_after_t() -> Result<()>
{
    const LAKE_HOURS: i64 = 6;
    let mut platform = Platform::new("lake_retention", PARTITIONS).await?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // Hours h0..h5 end an hour before the current one, which holds the fences past T; the
    // horizons below assume the hour does not turn during the test.
    if now_millis().rem_euclid(HOUR) > HOUR - 60_000 {
        tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    }
    let now_hour = now_millis().div_euclid(HOUR) * HOUR;
    let base = now_hour - (LAKE_HOURS + 1) * HOUR;
    let cutover = base + LAKE_HOURS * HOUR;
    let metrics = default_metrics();
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let mut rng = StdRng::seed_from_u64(29);
    let sent = land_hours(&platform, &mut rng, (base, LAKE_HOURS, 150), cutover).await?;
    let range = (base, cutover);
    let output = platform.run_batch(cutover).await?;
    ensure!(output.contains("full recompute"), "first run: {output}");
    check_served(
        &platform,
        "without retention",
        &metrics,
        range,
        &sent,
        &sent,
    )
    .await?;

    // Now minus four hours lies in h3: h0, h1 and h2 are past the horizon.
    let horizon = base + 3 * HOUR;
    platform
        .extra_env
        .push(("PLATFORM_LAKE__RETENTION".into(), "4h".into()));
    let before = hour_files(&platform).await?;
    let output = platform.run_batch(cutover).await?;
    ensure!(output.contains("incremental"), "retention run: {output}");
    let after = hour_files(&platform).await?;
    let old: Vec<&String> = before.keys().take(3).collect();
    for hour in &old {
        ensure!(
            !after.contains_key(*hour),
            "hour {hour} is still listed: {after:#?}"
        );
        for path in &before[*hour] {
            ensure!(
                !platform.lake_dir.join(path).exists(),
                "{path} is past retention but still in the lake"
            );
        }
    }
    ensure!(
        after.len() == before.len() - 3,
        "only the three old hours go: {before:#?} {after:#?}"
    );
    // The views keep what the lake keeps; a session running into h3 starts there now.
    let kept: BTreeMap<String, Sent> = sent
        .iter()
        .filter(|(_, e)| e.time >= horizon)
        .map(|(id, e)| (id.clone(), e.clone()))
        .collect();
    check_served(&platform, "after retention", &metrics, range, &sent, &kept).await?;

    // A late event in h1 lands after the hour was deleted: no run counts it, the next deletes it.
    let mut ends = HashMap::new();
    let late = Sent::random(&mut rng, "late-h1".into(), base + HOUR + HOUR / 2);
    let payload: serde_json::Value = serde_json::from_slice(&late.payload())?;
    platform.send_tracked(0, &payload, &mut ends).await?;
    platform.wait_caught_up("lake_progress", &ends).await?;
    ensure!(
        hour_files(&platform).await?.len() == after.len() + 1,
        "the late event was not landed"
    );
    let output = platform.run_batch(cutover).await?;
    ensure!(
        output.contains("incremental: 0 hours recomputed"),
        "a late event past retention made the run recompute: {output}"
    );
    ensure!(
        hour_files(&platform).await?.keys().eq(after.keys()),
        "the late event's file was kept"
    );
    check_served(
        &platform,
        "after a late event",
        &metrics,
        range,
        &sent,
        &kept,
    )
    .await?;

    // A retention shorter than the lag of T deletes every hour before T, none after it.
    platform
        .extra_env
        .retain(|(k, _)| k != "PLATFORM_LAKE__RETENTION");
    platform
        .extra_env
        .push(("PLATFORM_LAKE__RETENTION".into(), "1m".into()));
    platform.run_batch(cutover).await?;
    let last = hour_files(&platform).await?;
    ensure!(
        last.len() == 1 && last.keys().next() == after.keys().last(),
        "only the hour after T is kept: {last:#?}"
    );
    for metric in &metrics {
        let url = format!(
            "/v1/metrics/{metric}?from={}&to={}",
            format_rfc3339(base),
            format_rfc3339(cutover)
        );
        let (status, body) = platform.get(&url).await?;
        let points: Vec<&serde_json::Value> = body["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["points"].as_array().into_iter().flatten())
            .filter(|p| p["value"].as_f64() != Some(0.0))
            .collect();
        ensure!(
            status == 200 && points.is_empty(),
            "{metric} before T after everything before T was deleted: {status} {points:?}"
        );
    }
    Ok(())
}
