//! Listing view versions (issue 19, item 4): `batch-layer versions` and `GET /v1/versions` name
//! every version with its cutover, rows and definitions, which one is served and which one a
//! rollback would serve, and follow a rollback.

use anyhow::{Result, ensure};
use platform_tests::Platform;
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;

async fn batch(platform: &Platform, args: &[&str]) -> Result<String> {
    let (ok, output) = platform.run("batch-layer", args).await?;
    ensure!(ok, "batch-layer {args:?} failed:\n{output}");
    Ok(output)
}

/// `(version, served, rollback_target)` from the API, newest first.
async fn listed(platform: &Platform) -> Result<Vec<(String, bool, bool)>> {
    let (status, body) = platform.get("/v1/versions").await?;
    ensure!(status == 200, "{status}: {body}");
    let versions = body["versions"].as_array().cloned().unwrap_or_default();
    for v in &versions {
        ensure!(
            v["cutover"].is_string() && v["rows"].as_i64().is_some_and(|r| r > 0),
            "a version without its cutover or rows: {v}"
        );
        ensure!(
            v["definitions_fingerprint"].is_string(),
            "a version without its definitions: {v}"
        );
    }
    Ok(versions
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap_or_default().to_string(),
                v["served"] == true,
                v["rollback_target"] == true,
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_are_listed_with_what_is_served_and_what_a_rollback_serves() -> Result<()> {
    let platform = Platform::new("version_listing", 1).await?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    ensure!(listed(&platform).await?.is_empty(), "no version yet");

    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let mut ends = HashMap::new();
    for i in 0..60i64 {
        let payload = json!({"event_id": format!("l{i}"), "event_type": "purchase",
                             "event_time": base + i * 30_000, "country": "DE", "amount": 1.0,
                             "schema_version": 2});
        platform.send_tracked(0, &payload, &mut ends).await?;
    }
    platform.wait_caught_up("lake_progress", &ends).await?;
    batch(
        &platform,
        &["run", "--cutover", &format_rfc3339(base + 5 * MINUTE_MS)],
    )
    .await?;
    let (v1, _) = platform.served().await?;
    batch(
        &platform,
        &["run", "--cutover", &format_rfc3339(base + 20 * MINUTE_MS)],
    )
    .await?;
    let (v2, _) = platform.served().await?;

    let want = vec![(v2.clone(), true, false), (v1.clone(), false, true)];
    ensure!(listed(&platform).await? == want, "after two runs");
    let table = batch(&platform, &["versions"]).await?;
    let line = |v: &str| {
        table
            .lines()
            .find(|l| l.starts_with(v))
            .unwrap_or_default()
            .to_string()
    };
    ensure!(
        line(&v2).ends_with("served") && line(&v1).ends_with("rollback target"),
        "batch-layer versions:\n{table}"
    );
    ensure!(
        line(&v1).contains(&format_rfc3339(base + 5 * MINUTE_MS)),
        "the cutover is listed:\n{table}"
    );

    batch(&platform, &["rollback"]).await?;
    ensure!(
        listed(&platform).await? == vec![(v2, false, false), (v1, true, false)],
        "after the rollback, v1 is served and nothing earlier is left to roll back to"
    );
    Ok(())
}
