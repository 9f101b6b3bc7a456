//! Batch runs requested over HTTP (issue 16): `POST /v1/admin/runs` only records the request,
//! in Postgres, so it survives a restart of the serving layer that took it; the batch layer
//! runs it (`batch-layer schedule`, or the one-shot `batch-layer run --requested`) and reports
//! back, and `GET /v1/admin/runs/{id}` reads the outcome: succeeded, with the promoted version.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, request_run, run_status, wait_until};
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

const ADMIN: &str = "e2e-admin-token-run-requests";
const PARTITIONS: i32 = 2;

async fn post_run(platform: &Platform, cutover: i64) -> Result<(u16, Value)> {
    request_run(
        platform,
        ADMIN,
        Some(&json!({"cutover": format_rfc3339(cutover)})),
    )
    .await
}

async fn get_run(platform: &Platform, id: u64) -> Result<Value> {
    run_status(platform, ADMIN, id).await
}

/// Waits for run `id` to end; fails unless it succeeded.
async fn wait_succeeded(platform: &Platform, id: u64) -> Result<Value> {
    wait_until(
        Duration::from_secs(180),
        "the requested run to end",
        || async {
            get_run(platform, id)
                .await
                .is_ok_and(|run| run["state"] == "succeeded" || run["state"] == "failed")
        },
    )
    .await?;
    let run = get_run(platform, id).await?;
    ensure!(
        run["state"] == "succeeded",
        "run {id}: {run}\n{}",
        platform.log_tails(30)
    );
    Ok(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requested_run_survives_a_serving_restart_and_the_batch_layer_runs_it() -> Result<()> {
    let mut platform = Platform::new("admin_run_requests", PARTITIONS).await?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__ADMIN_TOKEN".into(), ADMIN.into()));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..40i64 {
        let event = json!({"event_id": format!("r{i}"), "event_type": "purchase",
                           "event_time": base + i * 20_000, "amount": 1.0, "schema_version": 2,
                           "country": "DE"});
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &event, &mut ends)
            .await?;
    }
    platform.wait_both_caught_up(&ends).await?;

    // Requested with no batch scheduler running: it waits.
    let t1 = base + 5 * MINUTE_MS;
    let (status, requested) = post_run(&platform, t1).await?;
    ensure!(
        status == 202 && requested["state"] == "requested",
        "{status} {requested}"
    );
    let id = requested["id"].as_u64().context("a run id")?;
    let (status, body) = post_run(&platform, t1).await?;
    ensure!(
        status == 409 && body["error"]["code"] == "run_in_progress",
        "one open request at a time: {status} {body}"
    );

    // The serving layer restarts; the request is still there.
    serving.kill9().await?;
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let run = get_run(&platform, id).await?;
    ensure!(run["state"] == "requested", "after the restart: {run}");

    // The batch layer's scheduler (no cron: requests only) runs it and reports back.
    let mut scheduler = platform.spawn("batch-layer", &["schedule"])?;
    let run = wait_succeeded(&platform, id).await?;
    let (version, cutover) = platform.served().await?;
    ensure!(
        run["version"] == version.as_str() && cutover == t1,
        "the run's version {run} is served: {version} at {cutover}"
    );
    ensure!(run["cutover"] == format_rfc3339(t1), "{run}");
    ensure!(
        run["started_at"].is_string() && run["finished_at"].is_string(),
        "{run}"
    );
    scheduler.kill9().await?;

    // For cron users: the one-shot runs what waits, then exits.
    let t2 = base + 10 * MINUTE_MS;
    let (status, requested) = post_run(&platform, t2).await?;
    ensure!(status == 202, "{status} {requested}");
    let second = requested["id"].as_u64().context("a run id")?;
    ensure!(second > id, "ids grow: {second} after {id}");
    let (ok, output) = platform.run("batch-layer", &["run", "--requested"]).await?;
    ensure!(ok, "batch-layer run --requested failed:\n{output}");
    let run = wait_succeeded(&platform, second).await?;
    ensure!(
        platform.served().await? == (run["version"].as_str().unwrap_or_default().to_string(), t2),
        "the one-shot's version is served: {run}"
    );
    serving.assert_running()?;
    Ok(())
}
