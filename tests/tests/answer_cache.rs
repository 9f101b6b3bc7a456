//! The serving layer caches (issue 8): batch points rendered once per version, and query
//! snapshots and whole answers until Postgres notifies a change. With the snapshot cache's age limit set to an
//! hour, only the notifications can make a change visible: a speed-layer commit, a promotion
//! and a rollback must each show in the next answers within a moment, and a restart of
//! Postgres (which drops the notification connection) must not leave a stale answer behind.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path, stack, wait_until};
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

const PARTITIONS: i32 = 2;
/// How long a notification may take to arrive; far below the hour of the age limit.
const DELIVERY: Duration = Duration::from_secs(3);

async fn batch(platform: &Platform, args: &[&str]) -> Result<()> {
    let (ok, output) = platform.run("batch-layer", args).await?;
    ensure!(ok, "batch-layer {args:?} failed:\n{output}");
    Ok(())
}

/// Polls `url` until `accept` holds, for at most `DELIVERY`.
async fn answer_soon(
    platform: &Platform,
    url: &str,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = platform.get(url).await?;
        ensure!(status == 200, "{url}: {status} {body}");
        if accept(&body) {
            return Ok(body);
        }
        if started.elapsed() > DELIVERY {
            anyhow::bail!("after {DELIVERY:?} the answer still misses {what}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request that accepts gzip: the response's `Content-Encoding` and its raw body.
async fn get_accepting_gzip(platform: &Platform, path: &str) -> Result<(Option<String>, Vec<u8>)> {
    let response = platform
        .http
        .get(format!("http://{}{path}", platform.listen_addr))
        .header("accept-encoding", "gzip")
        .send()
        .await?;
    let encoding = response
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((encoding, response.bytes().await?.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_answers_follow_every_change_at_once() -> Result<()> {
    let mut platform = Platform::new("answer_cache", PARTITIONS).await?;
    platform.extra_env.push((
        "PLATFORM_SERVING__SNAPSHOT_CACHE_MAX_AGE".into(),
        "1h".into(),
    ));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let purchase = |i: i64, time: i64| {
        json!({"event_id": format!("c{i}"), "event_type": "purchase", "event_time": time,
               "country": if i % 2 == 0 { "DE" } else { "FR" }, "amount": 1.0, "schema_version": 2})
    };
    for i in 0..60i64 {
        platform
            .send_tracked((i % 2) as i32, &purchase(i, base + i * 30_000), &mut ends)
            .await?;
    }
    platform.wait_both_caught_up(&ends).await?;
    let (t1, t2) = (base + 10 * MINUTE_MS, base + 20 * MINUTE_MS);
    batch(&platform, &["run", "--cutover", &format_rfc3339(t1)]).await?;
    let (v1, _) = platform.served().await?;

    let url = purchases_path(base, base + 45 * MINUTE_MS);
    let grouped = format!("{url}&group_by=country");
    for path in [&url, &grouped, &url, &grouped] {
        let (status, body) = platform.get(path).await?;
        ensure!(
            status == 200 && body["batch_version"] == json!(v1),
            "{body}"
        );
    }
    ensure!(first_series_total(&platform.get(&url).await?.1) == 60.0);
    // A cached answer goes out gzip to a client that accepts it, and decodes to the same JSON
    // (an answer computed anew is sent plain, so a change meanwhile takes one more request).
    let mut gzip_body = Vec::new();
    for _ in 0..5 {
        let (encoding, body) = get_accepting_gzip(&platform, &grouped).await?;
        if encoding.as_deref() == Some("gzip") {
            gzip_body = body;
            break;
        }
    }
    ensure!(!gzip_body.is_empty(), "no gzip answer in five requests");
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gzip_body[..]).read_to_end(&mut decoded)?;
    let decoded: serde_json::Value = serde_json::from_slice(&decoded)?;
    ensure!(decoded == platform.get(&grouped).await?.1, "{decoded}");
    // Another range of the same shape reuses the rendered batch points.
    let shifted = purchases_path(base + MINUTE_MS, base + 45 * MINUTE_MS);
    ensure!(first_series_total(&platform.get(&shifted).await?.1) == 58.0);
    // Each cache answered some of these, or this scenario proves nothing: the repeats (whole
    // answers), the grouped query over the same range (its snapshot) and the shifted one.
    for (cache, at_least) in [("body", 3.0), ("snapshot", 1.0), ("answer", 1.0)] {
        let hits = platform.cache_hits(cache).await?;
        ensure!(hits >= at_least, "{hits} {cache} cache hits");
    }

    // A speed-layer commit: visible as soon as it is in Postgres.
    let committed = platform.speed_offset_sum().await?;
    for i in 60..65i64 {
        platform
            .send_tracked(0, &purchase(i, base + 30 * MINUTE_MS), &mut ends)
            .await?;
    }
    wait_until(Duration::from_secs(30), "the speed commit", || async {
        platform
            .speed_offset_sum()
            .await
            .is_ok_and(|sum| sum >= committed + 5)
    })
    .await?;
    answer_soon(&platform, &url, "the speed commit", |body| {
        first_series_total(body) == 65.0
    })
    .await?;

    // A promotion, then a rollback: each answer names the version served and counts by it.
    platform.wait_both_caught_up(&ends).await?;
    batch(&platform, &["run", "--cutover", &format_rfc3339(t2)]).await?;
    let (v2, _) = platform.served().await?;
    ensure!(v2 != v1, "the second run should promote a new version");
    let body = answer_soon(&platform, &grouped, "the promotion", |body| {
        body["batch_version"] == json!(v2)
    })
    .await?;
    ensure!(
        body["cutover"] == json!(format_rfc3339(t2)),
        "cutover of {body}"
    );
    batch(&platform, &["rollback"]).await?;
    answer_soon(&platform, &grouped, "the rollback", |body| {
        body["batch_version"] == json!(v1) && body["cutover"] == json!(format_rfc3339(t1))
    })
    .await?;
    ensure!(first_series_total(&platform.get(&url).await?.1) == 65.0);

    // Postgres restarts: the notification connection is lost and re-established, and a change
    // made right after is still seen.
    stack("stop_postgres").context("stopping Postgres")?;
    stack("start_postgres").context("starting Postgres")?;
    wait_until(
        Duration::from_secs(60),
        "answers after the restart",
        || async {
            platform
                .get(&url)
                .await
                .is_ok_and(|(status, _)| status == 200)
        },
    )
    .await?;
    let committed = platform.speed_offset_sum().await?;
    platform
        .send_tracked(1, &purchase(65, base + 31 * MINUTE_MS), &mut ends)
        .await?;
    wait_until(Duration::from_secs(60), "the speed commit", || async {
        platform
            .speed_offset_sum()
            .await
            .is_ok_and(|sum| sum > committed)
    })
    .await?;
    answer_soon(&platform, &url, "the commit after the restart", |body| {
        first_series_total(body) == 66.0
    })
    .await?;
    Ok(())
}
