//! A batch run requested over HTTP that panics (issue 15, coordination) is recorded as failed
//! and does not block the next `POST /v1/admin/runs`. Since issue 16 the serving layer only
//! records the request; the batch layer's scheduler runs it, so the panic happens there, fails
//! that run only, and the scheduler goes on. The panic is injected with a failpoint read only
//! by debug builds.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, request_run, run_status, wait_until};
use std::time::Duration;

const ADMIN: &str = "e2e-admin-token-run-panic";

async fn post_run(platform: &Platform) -> Result<(u16, serde_json::Value)> {
    request_run(platform, ADMIN, None).await
}

async fn get_run(platform: &Platform, id: u64) -> Result<serde_json::Value> {
    run_status(platform, ADMIN, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_http_run_fails_and_does_not_block_the_next() -> Result<()> {
    let mut platform = Platform::new("admin_run_panic", 1).await?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__ADMIN_TOKEN".into(), ADMIN.into()));
    platform
        .extra_env
        .push(("LAMBDA_FAILPOINTS".into(), "batch.run.start=panic".into()));
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    // Runs requested runs only: no cron.
    let mut scheduler = platform.spawn("batch-layer", &["schedule"])?;
    platform.wait_for_http().await?;

    let (status, body) = post_run(&platform).await?;
    ensure!(
        status == 202 && body["state"] == "requested",
        "the run is requested: {status} {body}"
    );
    let id = body["id"].as_u64().context("a run id")?;
    wait_until(
        Duration::from_secs(30),
        "the run to be marked failed",
        || async {
            get_run(&platform, id)
                .await
                .is_ok_and(|run| run["state"] == "failed")
        },
    )
    .await?;
    let run = get_run(&platform, id).await?;
    ensure!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked")),
        "the failure says the run panicked: {run}"
    );
    ensure!(run["finished_at"].is_string(), "{run}");

    let (status, body) = post_run(&platform).await?;
    ensure!(
        status == 202,
        "the next run is not blocked: {status} {body}"
    );
    let (status, _) = platform.get("/healthz").await?;
    ensure!(status == 200, "the serving layer is alive: {status}");
    serving.assert_running()?;
    scheduler.assert_running()?;
    Ok(())
}
