//! The OpenAPI description (issue 8): schemathesis, from PyPI, generates requests for every
//! operation of the served `/openapi.json` against the real stack holding data on both sides
//! of the cutover, and finds no 5xx and no answer that departs from the described schema.

use anyhow::{Context, Result, bail, ensure};
use platform_tests::Platform;
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;
/// Cases per operation: enough for every phase to reach each parameter, under a minute in all.
const MAX_EXAMPLES: &str = "20";

/// The schemathesis executable scripts/test.sh installs (`ensure_schemathesis`).
fn schemathesis() -> Result<String> {
    let path = std::env::var("E2E_SCHEMATHESIS").context(
        "E2E_SCHEMATHESIS is not set: run through scripts/test.sh, which installs schemathesis \
         into .local/ (ensure_schemathesis in scripts/lib.sh) and points it there",
    )?;
    ensure!(
        std::path::Path::new(&path).exists(),
        "E2E_SCHEMATHESIS = {path} does not exist: run scripts/test.sh to install schemathesis"
    );
    Ok(path)
}

/// Sets the example of query parameter `name` of `GET path`, which schemathesis's examples
/// phase sends, so that it also asks for ranges that hold data.
fn set_example(doc: &mut Value, path: &str, name: &str, example: &str) -> Result<()> {
    let params = doc["paths"][path]["get"]["parameters"]
        .as_array_mut()
        .with_context(|| format!("{path} has parameters"))?;
    let param = params
        .iter_mut()
        .find(|p| p["name"] == name)
        .with_context(|| format!("{path} has parameter {name}"))?;
    param["example"] = json!(example);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() -> Result<()> {
    let schemathesis = schemathesis()?;
    let mut platform = Platform::new("openapi", PARTITIONS).await?;
    // Admin endpoints are enabled, and schemathesis, without the token, gets their 401s.
    platform.extra_env.push((
        "PLATFORM_SERVING__ADMIN_TOKEN".into(),
        "openapi-admin-token".into(),
    ));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // 30 minutes of every event type, some without the grouped fields (grouped under null).
    let base = bucket_start(now_millis(), MINUTE_MS) - 30 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..240i64 {
        let kind = ["purchase", "page_view", "error", "login_failed", "click"][(i % 5) as usize];
        let mut event = json!({"event_id": format!("o{i}"), "event_type": kind,
                               "event_time": base + i * 7_500, "user_id": format!("u{}", i % 7),
                               "amount": (i % 9) as f64 * 1.5, "schema_version": 2});
        if i % 4 != 0 {
            event["country"] = json!(["DE", "FR", "US"][(i % 3) as usize]);
            event["product_id"] = json!(format!("p{}", i % 4));
        }
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &event, &mut ends)
            .await?;
    }
    platform.wait_both_caught_up(&ends).await?;
    let cutover = base + 15 * MINUTE_MS;
    platform.run_batch(cutover).await?;
    // Divergence and alerts have something to describe once the evaluator ran.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, mut doc) = platform.get("/openapi.json").await?;
    ensure!(status == 200, "/openapi.json: {status}");
    let query = "/v1/metrics/{name}";
    set_example(&mut doc, query, "from", &format_rfc3339(base))?;
    set_example(
        &mut doc,
        query,
        "to",
        &format_rfc3339(base + 40 * MINUTE_MS),
    )?;
    let schema_file = platform.lake_dir.with_file_name("openapi.json");
    std::fs::write(&schema_file, serde_json::to_vec_pretty(&doc)?)?;

    let har = platform.lake_dir.with_file_name("schemathesis.har");
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(&schema_file)
        .args(["--url", &format!("http://{}", platform.listen_addr)])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--seed", "8"])
        .args(["--request-timeout", "20"])
        .args(["--warnings", "off"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .env("NO_COLOR", "1")
        .current_dir(platform.lake_dir.parent().context("lake has a parent")?)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {schemathesis}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("schemathesis took {:?}:\n{report}", started.elapsed());
    if !output.status.success() {
        bail!(
            "schemathesis found problems ({}):\n{report}\n{}",
            output.status,
            platform.log_tails(40)
        );
    }
    // It reached every operation, and the query answered with data at least once.
    let operations: usize = doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .values()
                .filter_map(|p| p.as_object())
                .map(|p| p.len())
                .sum()
        })
        .unwrap_or(0);
    ensure!(
        operations >= 14 && report.contains(&format!("Tested: {operations}\n")),
        "schemathesis did not test every operation:\n{report}"
    );
    let har: Value = serde_json::from_slice(&std::fs::read(&har).context("the HAR report")?)?;
    let entries = har["log"]["entries"].as_array().context("HAR entries")?;
    let answered_with_data = entries.iter().any(|e| {
        e["request"]["url"]
            .as_str()
            .is_some_and(|u| u.contains("/v1/metrics/"))
            && e["response"]["status"] == 200
            && e["response"]["content"]["text"]
                .as_str()
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .is_some_and(|body| platform_tests::first_series_total(&body) > 0.0)
    });
    ensure!(
        answered_with_data,
        "none of the {} requests got a query answer with data",
        entries.len()
    );
    println!("{} requests", entries.len());
    Ok(())
}
