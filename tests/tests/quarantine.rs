//! The quarantine's lifecycle (issue 15, "state that grows without bound") on the real stack:
//! `speed-layer quarantine list` shows what is kept and why; `replay` produces again what the
//! decoder accepts now (an event that was from the future, once it no longer is) and the speed
//! layer counts it, exactly once, while what is still bad stays; retention deletes past
//! `quarantine.max_mb`, oldest first, and past `quarantine.max_age`, and counts both.

use anyhow::{Context, Result, ensure};
use platform_tests::{
    Platform, first_series_total, free_local_addr, purchases_path, series_value, wait_until,
};
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::time::Duration;

const SKEW_SECONDS: i64 = 3;

async fn list(platform: &Platform, extra: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut args = vec!["quarantine", "list"];
    args.extend_from_slice(extra);
    let (ok, text) = platform.run("speed-layer", &args).await?;
    ensure!(ok, "quarantine list failed:\n{text}");
    text.lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).with_context(|| line.to_string()))
        .collect()
}

fn purchase(id: &str, time: i64) -> serde_json::Value {
    serde_json::json!({"event_id": id, "event_type": "purchase", "event_time": format_rfc3339(time),
                       "user_id": "u1", "country": "DE", "amount": 2.0, "schema_version": 2})
}

async fn purchases(platform: &Platform, from: i64) -> Result<f64> {
    let (status, body) = platform
        .get(&purchases_path(from, from + 10 * MINUTE_MS))
        .await?;
    ensure!(status == 200, "{status}: {body}");
    Ok(first_series_total(&body))
}

async fn dropped(platform: &Platform, metrics_addr: &str, cause: &str) -> Result<f64> {
    let text = platform.scrape(metrics_addr).await?;
    let series = format!("lambda_quarantine_dropped_total{{cause=\"{cause}\"}}");
    series_value(&text, &series)?.with_context(|| format!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_is_listed_replayed_once_fixed_and_bounded() -> Result<()> {
    let mut platform = Platform::new("quarantine", 1).await?;
    let metrics_addr = free_local_addr()?;
    platform.extra_env.extend(
        [
            ("PLATFORM_MAX_EVENT_SKEW", format!("{SKEW_SECONDS}s")),
            ("PLATFORM_QUARANTINE__MAX_MB", "1".to_string()),
            ("PLATFORM_QUARANTINE__MAX_AGE", "1d".to_string()),
            ("PLATFORM_QUARANTINE__RETENTION_INTERVAL", "1s".to_string()),
            ("PLATFORM_SPEED__METRICS_ADDR", metrics_addr.clone()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // One good purchase, one from the future (10 s ahead, past the 3 s skew), one not JSON.
    let now = now_millis();
    let future_time = now + 10_000;
    let from = bucket_start(now, MINUTE_MS) - MINUTE_MS;
    let mut ends = HashMap::new();
    platform
        .send_tracked(0, &purchase("good-1", now - 1_000), &mut ends)
        .await?;
    platform
        .send_tracked(0, &purchase("future-1", future_time), &mut ends)
        .await?;
    let garbage_offset = platform.send(0, b"{not json").await?;
    ends.insert(0, garbage_offset + 1);
    platform.wait_caught_up("speed_offsets", &ends).await?;

    let kept = list(&platform, &[]).await?;
    ensure!(kept.len() == 2, "two messages kept: {kept:?}");
    ensure!(
        kept.iter().any(|k| k["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ms ahead of the message"))),
        "the future event is kept with its reason: {kept:?}"
    );
    ensure!(
        kept.iter()
            .any(|k| k["payload"] == "{not json" && k["detected_by"] == "speed-layer"),
        "the garbage is kept as sent: {kept:?}"
    );
    let only_json = list(&platform, &["--reason", "not a JSON object"]).await?;
    ensure!(only_json.len() == 1, "--reason selects: {only_json:?}");
    ensure!(
        purchases(&platform, from).await? == 1.0,
        "one good purchase"
    );

    // Still from the future: replay produces nothing.
    let (ok, text) = platform
        .run("speed-layer", &["quarantine", "replay"])
        .await?;
    ensure!(
        ok && text.contains("0 replayed, 2 still refused"),
        "early replay:\n{text}"
    );

    // Once its time is within the skew, the future event decodes and is replayed.
    let wait_ms = (future_time - SKEW_SECONDS * 1_000 - now_millis() + 1_000).max(0);
    tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    let (ok, text) = platform
        .run("speed-layer", &["quarantine", "replay", "--dry-run"])
        .await?;
    ensure!(
        ok && text.contains("1 replayed, 1 still refused"),
        "dry run:\n{text}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        platform.speed_offset_sum().await? == garbage_offset + 1,
        "a dry run produces nothing"
    );
    let (ok, text) = platform
        .run("speed-layer", &["quarantine", "replay"])
        .await?;
    ensure!(
        ok && text.contains("1 replayed, 1 still refused"),
        "replay:\n{text}"
    );
    ends.insert(0, garbage_offset + 2);
    platform.wait_caught_up("speed_offsets", &ends).await?;
    ensure!(
        purchases(&platform, from).await? == 2.0,
        "the replayed purchase is counted"
    );
    let replayed = list(&platform, &["--include-replayed", "--reason", "ahead"]).await?;
    ensure!(
        replayed.len() == 1 && replayed[0]["replayed_to"] == format!("0:{}", garbage_offset + 1),
        "the replayed message says where it went: {replayed:?}"
    );
    let (ok, text) = platform
        .run("speed-layer", &["quarantine", "replay"])
        .await?;
    ensure!(
        ok && text.contains("0 replayed, 1 still refused"),
        "a second replay produces nothing again:\n{text}"
    );

    // Size: three bad payloads of 600 KB pass 1 MiB; the oldest go first, the newest stays.
    let big = vec![b'x'; 600 * 1024];
    let mut last = 0;
    for _ in 0..3 {
        last = platform.send(0, &big).await?;
    }
    ends.insert(0, last + 1);
    platform.wait_caught_up("speed_offsets", &ends).await?;
    wait_until(
        Duration::from_secs(30),
        "size retention to keep the quarantine under 1 MiB",
        || async {
            let kept: Option<i64> =
                sqlx::query_scalar("SELECT sum(kept_bytes)::bigint FROM quarantine")
                    .fetch_one(&platform.pool)
                    .await
                    .unwrap_or(None);
            kept.is_some_and(|k| k <= 1024 * 1024)
        },
    )
    .await?;
    let left = list(&platform, &["--include-replayed", "--preview-bytes", "4"]).await?;
    ensure!(
        left.len() == 1 && left[0]["offset"] == last && left[0]["truncated"] == true,
        "only the newest is left: {left:?}"
    );
    ensure!(dropped(&platform, &metrics_addr, "size").await? >= 4.0);

    // Age: a message received two days ago is past the one-day bound.
    sqlx::query("UPDATE quarantine SET received_at = now() - interval '2 days'")
        .execute(&platform.pool)
        .await?;
    wait_until(
        Duration::from_secs(30),
        "age retention to empty the quarantine",
        || async {
            list(&platform, &["--include-replayed"])
                .await
                .is_ok_and(|l| l.is_empty())
        },
    )
    .await?;
    ensure!(dropped(&platform, &metrics_addr, "age").await? >= 1.0);
    speed.assert_running()?;
    Ok(())
}
