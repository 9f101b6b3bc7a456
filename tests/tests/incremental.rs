//! Incremental recompute and backfill (issue 7) on the real stack: after a full first run, late
//! events in one old hour and duplicates in another cost those hours (and the hour after each,
//! for session starts) and nothing else; the incremental view answers exactly what a full
//! recompute answers; `--from`/`--to` recomputes a range whose files did not change.
//!
//! A version is a manifest of hour segments (issue 18): each run writes segments only for the
//! hours it recomputed and lists the others from the version before, and garbage collection
//! (with `batch.keep_versions = 2`) never removes a segment a kept version lists.

use anyhow::{Context, Result, ensure};
use platform_tests::truth::{Sent, check_served, default_metrics, group_by, send_all};
use platform_tests::{Platform, without_colours};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::time::{Millis, format_rfc3339, now_millis};
use std::collections::{BTreeMap, HashMap};

const PARTITIONS: i32 = 2;
const HOUR: Millis = 3_600_000;
const HOURS: i64 = 10;

async fn run(platform: &Platform, args: &[&str]) -> Result<String> {
    let (ok, output) = platform.run("batch-layer", args).await?;
    ensure!(ok, "batch-layer {args:?} failed:\n{output}");
    Ok(output)
}

/// Every default metric's answer over `range`, as served.
async fn answers(platform: &Platform, range: (Millis, Millis)) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for metric in default_metrics() {
        let mut url = format!(
            "/v1/metrics/{metric}?from={}&to={}",
            format_rfc3339(range.0),
            format_rfc3339(range.1)
        );
        if let Some(dim) = group_by(&metric) {
            url.push_str(&format!("&group_by={dim}"));
        }
        let (status, body) = platform.get(&url).await?;
        ensure!(status == 200, "{metric}: {status} {body}");
        out.push(body["series"].clone());
    }
    Ok(out)
}

/// The served version's segments: how many it wrote and how many it lists from earlier
/// versions; each must exist.
async fn segments(platform: &Platform) -> Result<(usize, usize)> {
    let (version, path) = platform.served_view_path().await?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(platform.lake_dir.join(&path))?)?;
    let (mut own, mut listed) = (0, 0);
    for segment in manifest["segments"].as_array().context("segments")? {
        let path = segment["path"].as_str().context("a segment's path")?;
        ensure!(
            platform.lake_dir.join(path).exists(),
            "{path}, listed by the served version {version}, is gone"
        );
        if path.starts_with(&format!("views/{version}/")) {
            own += 1;
        } else {
            listed += 1;
        }
    }
    Ok((own, listed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_changed_hours_are_recomputed_and_the_answer_is_the_full_one() -> Result<()> {
    let mut platform = Platform::new("incremental", PARTITIONS).await?;
    platform
        .extra_env
        .push(("PLATFORM_BATCH__KEEP_VERSIONS".into(), "2".into()));
    // Three hours at a time: a run's chunks, and the session context across their edges, are
    // exercised too.
    platform
        .extra_env
        .push(("PLATFORM_BATCH__CHUNK_HOURS".into(), "3".into()));
    // The memory limit and spill directory reach DataFusion from the environment.
    // (`batch-layer/tests/memory_limit.rs` shows spilling at a limit the input exceeds.)
    platform
        .extra_env
        .push(("PLATFORM_BATCH__MEMORY_LIMIT_MB".into(), "256".into()));
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = now_millis().div_euclid(HOUR) * HOUR - (HOURS + 1) * HOUR;
    let cutover = base + HOURS * HOUR;
    let range = (base, cutover);
    let metrics = default_metrics();
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut ends = HashMap::new();

    for i in 0..800 {
        let time = base + rng.random_range(0..HOURS * HOUR);
        let event = Sent::random(&mut rng, format!("i{i}"), time);
        sent.insert(event.id.clone(), event);
    }
    let first: Vec<&Sent> = sent.values().collect();
    send_all(&platform, &first, &mut rng, &mut ends).await?;
    // An event past T in every partition tells the batch layer the lake is complete up to T.
    for partition in 0..PARTITIONS {
        let fence = Sent::random(&mut rng, format!("fence{partition}"), cutover + HOUR / 2);
        let payload: serde_json::Value = serde_json::from_slice(&fence.payload())?;
        platform
            .send_tracked(partition, &payload, &mut ends)
            .await?;
    }
    platform.wait_caught_up("lake_progress", &ends).await?;
    let output = run(&platform, &["run", "--cutover", &format_rfc3339(cutover)]).await?;
    ensure!(output.contains("full recompute"), "first run: {output}");
    // Without a terminal, progress is a log line per chunk: 10 hours in chunks of 3.
    let plain = without_colours(&output);
    ensure!(
        plain.matches("recomputed hours").count() == 4 && plain.contains("done=10 total=10"),
        "first run logs no progress per chunk: {plain}"
    );
    check_served(&platform, "first run", &metrics, range, &sent, &sent).await?;

    // Late events in hour 2; copies of events already counted in hour 6.
    let mut late = Vec::new();
    for i in 0..40 {
        let time = base + 2 * HOUR + rng.random_range(0..HOUR);
        late.push(Sent::random(&mut rng, format!("late{i}"), time));
    }
    let copies: Vec<Sent> = sent
        .values()
        .filter(|e| (e.time - base) / HOUR == 6)
        .take(15)
        .cloned()
        .collect();
    ensure!(!copies.is_empty(), "no event in hour 6 to send again");
    let resend: Vec<&Sent> = late.iter().chain(copies.iter()).collect();
    send_all(&platform, &resend, &mut rng, &mut ends).await?;
    sent.extend(late.into_iter().map(|e| (e.id.clone(), e)));
    platform.wait_caught_up("lake_progress", &ends).await?;

    let output = run(&platform, &["run", "--cutover", &format_rfc3339(cutover)]).await?;
    // Hours 2 and 6 changed; sessions move hours 3 and 7 with them.
    ensure!(
        output.contains("incremental: 4 hours recomputed"),
        "second run: {output}"
    );
    let (own, listed) = segments(&platform).await?;
    ensure!(
        own == 4 && listed == HOURS as usize - 4,
        "the incremental run wrote {own} segments and listed {listed}"
    );
    check_served(&platform, "incremental run", &metrics, range, &sent, &sent).await?;
    let incremental = answers(&platform, range).await?;

    let output = run(
        &platform,
        &["run", "--full", "--cutover", &format_rfc3339(cutover)],
    )
    .await?;
    ensure!(output.contains("full recompute"), "--full run: {output}");
    let full = answers(&platform, range).await?;
    for ((metric, a), b) in default_metrics().iter().zip(&incremental).zip(&full) {
        ensure!(
            a == b,
            "{metric}: the incremental view answers\n{a}\nbut a full recompute\n{b}"
        );
    }

    // Nothing changed: a plain run recomputes nothing, a backfill its range (and, for
    // sessions, the hour after it).
    let output = run(&platform, &["run", "--cutover", &format_rfc3339(cutover)]).await?;
    ensure!(
        output.contains("incremental: 0 hours recomputed"),
        "idle run: {output}"
    );
    let (own, listed) = segments(&platform).await?;
    ensure!(
        own == 0 && listed == HOURS as usize,
        "the idle run wrote {own} segments and listed {listed}"
    );
    let (from, to) = (
        format_rfc3339(base + 8 * HOUR),
        format_rfc3339(base + 9 * HOUR),
    );
    let output = run(
        &platform,
        &[
            "run",
            "--cutover",
            &format_rfc3339(cutover),
            "--from",
            &from,
            "--to",
            &to,
        ],
    )
    .await?;
    ensure!(
        output.contains("incremental: 2 hours recomputed"),
        "backfill: {output}"
    );
    // The --full run's segments are listed by the two kept versions, so they stay, while its
    // manifest went with it (beyond `keep_versions`).
    let (own, listed) = segments(&platform).await?;
    ensure!(
        own == 2 && listed == HOURS as usize - 2,
        "the backfill wrote {own} segments and listed {listed}"
    );
    let versions = std::fs::read_dir(platform.lake_dir.join("views"))?.count();
    let manifests = std::fs::read_dir(platform.lake_dir.join("views"))?
        .filter_map(|dir| dir.ok())
        .filter(|dir| dir.path().join("manifest.json").exists())
        .count();
    ensure!(
        manifests == 2 && versions == 3,
        "{manifests} manifests in {versions} version directories: keep_versions is 2, and the \
         --full run's directory holds segments the kept ones list"
    );
    check_served(&platform, "backfill", &metrics, range, &sent, &sent).await?;
    Ok(())
}
