//! Divergence (issue 7): after each promotion the batch layer compares the new view with what
//! the speed layer held for the newly covered buckets. When both layers saw the same events,
//! every metric agrees exactly; a speed row the lake never had is reported, raises the alert,
//! shows on /metrics; buckets the speed layer did not cover are left out; and a later agreeing
//! comparison resolves the alert.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, wait_until};
use serde_json::{Value, json};
use shared_schema::time::{
    MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis, parse_rfc3339, to_datetime,
};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;
const RULE: &str = "divergence:purchases";

/// Event `i` of a steady stream: every 15 s, cycling purchase, page view, error and failed
/// login, so each minute holds exactly one purchase.
fn event(base: Millis, i: i64) -> Value {
    let kind = ["purchase", "page_view", "error", "login_failed"][(i % 4) as usize];
    json!({"event_id": format!("d{i}"), "event_type": kind, "event_time": base + i * 15_000,
           "user_id": format!("u{}", i % 5), "product_id": format!("p{}", i % 3),
           "country": if i % 8 == 0 { "DE" } else { "FR" }, "amount": 2.5, "schema_version": 2})
}

async fn divergence(platform: &Platform, query: &str) -> Result<Value> {
    let (status, body) = platform.get(&format!("/v1/divergence{query}")).await?;
    ensure!(status == 200, "/v1/divergence{query}: {status} {body}");
    Ok(body)
}

fn metric<'a>(body: &'a Value, name: &str) -> Result<&'a Value> {
    body["metrics"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["metric"] == name))
        .with_context(|| format!("{name} in {body}"))
}

fn interval(from: Millis, to: Millis) -> Value {
    json!({"from": format_rfc3339(from), "to": format_rfc3339(to)})
}

/// Every metric of the catalogue compared `range` and agreed to the last bucket. Each has
/// values there, except sessions after the first minutes (every user's session starts then).
fn assert_all_agree(body: &Value, range: (Millis, Millis), first_minutes: bool) -> Result<()> {
    let metrics = body["metrics"].as_array().context("metrics")?;
    ensure!(
        metrics.len() == shared_schema::MetricCatalog::default().metrics.len(),
        "every default metric is listed: {body}"
    );
    for m in metrics {
        let latest = &m["latest"];
        ensure!(
            latest["range"] == interval(range.0, range.1)
                && latest["compared"] == latest["range"]
                && latest["uncovered"] == json!([]),
            "{}: the whole range is compared: {latest}",
            m["metric"]
        );
        ensure!(
            latest["ratio"] == 0.0
                && latest["difference"] == 0.0
                && latest["differing_buckets"] == 0
                && latest["batch_total"] == latest["speed_total"]
                && (latest["buckets"].as_i64().is_some_and(|b| b > 0)
                    || (m["metric"] == "sessions" && !first_minutes))
                && m["above_threshold"] == false,
            "{}: both layers saw the same events: {latest}",
            m["metric"]
        );
    }
    Ok(())
}

async fn divergence_alerts(platform: &Platform) -> Result<Vec<Value>> {
    let (status, body) = platform.get("/v1/alerts").await?;
    ensure!(status == 200, "alerts: {status} {body}");
    Ok(body["alerts"]
        .as_array()
        .context("alerts")?
        .iter()
        .filter(|a| {
            a["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("divergence:"))
        })
        .cloned()
        .collect())
}

async fn gauges(platform: &Platform) -> Result<String> {
    let response = platform
        .http
        .get(format!("http://{}/metrics", platform.listen_addr))
        .send()
        .await?;
    ensure!(response.status() == 200, "/metrics: {}", response.status());
    Ok(response.text().await?)
}

/// A speed row on a Kafka partition the topic does not have, so no speed layer write touches it.
async fn insert_speed_row(platform: &Platform, bucket: Millis, count: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO speed_aggregates (metric, bucket_start, dims, partition, event_count, sum_micros)
         VALUES ('purchases', $1, '[\"DE\"]', 99, $2, 0)",
    )
    .bind(to_datetime(bucket))
    .bind(count)
    .execute(&platform.pool)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn divergence_is_zero_when_both_saw_the_same_events_and_alerts_when_not() -> Result<()> {
    let mut platform = Platform::new("divergence", PARTITIONS).await?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__ALERT_INTERVAL".into(), "300ms".into()));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let at = |minutes: i64| base + minutes * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..120 {
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &event(base, i), &mut ends)
            .await?;
    }
    platform.wait_both_caught_up(&ends).await?;

    // Before any promotion there is nothing to report.
    let body = divergence(&platform, "").await?;
    ensure!(
        metric(&body, "purchases")?["latest"].is_null() && body["threshold"] == 0.01,
        "{body}"
    );

    // (1) The same events on both sides: every metric agrees, on the first promotion (which
    // newly covers everything from the first bucket) and on the next.
    platform.run_batch(at(10)).await?;
    assert_all_agree(&divergence(&platform, "").await?, (at(0), at(10)), true)?;
    platform.run_batch(at(20)).await?;
    let body = divergence(&platform, "").await?;
    assert_all_agree(&body, (at(10), at(20)), false)?;
    let purchases = metric(&body, "purchases")?;
    ensure!(
        purchases["latest"]["batch_total"] == 10.0
            && purchases["history"].as_array().map(Vec::len) == Some(2),
        "one purchase a minute, two comparisons kept: {purchases}"
    );
    ensure!(
        gauges(&platform)
            .await?
            .contains("lambda_divergence_ratio{metric=\"purchases\"} 0\n"),
        "the gauge shows no divergence"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raised = divergence_alerts(&platform).await?;
    ensure!(raised.is_empty(), "no divergence, no alert: {raised:?}");

    // (2) The speed layer holds 3 purchases the lake never had, at 25m.
    insert_speed_row(&platform, at(25), 3).await?;
    let output = platform.run_batch(at(28)).await?;
    ensure!(
        output.contains("the speed layer diverged from the new batch view"),
        "the batch run warns:\n{output}"
    );
    let body = divergence(&platform, "").await?;
    let purchases = metric(&body, "purchases")?;
    let latest = &purchases["latest"];
    let expected_ratio = 3.0 / 11.0;
    ensure!(
        latest["range"] == interval(at(20), at(28))
            && latest["batch_total"] == 8.0
            && latest["speed_total"] == 11.0
            && latest["difference"] == 3.0
            && latest["ratio"]
                .as_f64()
                .is_some_and(|r| (r - expected_ratio).abs() < 1e-9)
            && latest["buckets"] == 8
            && latest["differing_buckets"] == 1
            && purchases["above_threshold"] == true,
        "purchases diverged by 3 in one bucket: {purchases}"
    );
    for other in [
        "revenue",
        "page_views",
        "error_rate",
        "active_users",
        "sessions",
    ] {
        let m = metric(&body, other)?;
        ensure!(
            m["latest"]["ratio"] == 0.0 && m["above_threshold"] == false,
            "{other} did not diverge: {m}"
        );
    }
    wait_until(
        Duration::from_secs(20),
        "the divergence alert to fire",
        || async {
            divergence_alerts(&platform).await.is_ok_and(|a| {
                a.iter()
                    .any(|a| a["rule"] == RULE && a["state"] == "firing")
            })
        },
    )
    .await?;
    let raised = divergence_alerts(&platform).await?;
    ensure!(
        raised.len() == 1
            && raised[0]["metric"] == "purchases"
            && raised[0]["threshold"] == 0.01
            && [&raised[0]["window"]["from"], &raised[0]["window"]["to"]]
                .map(|t| t.as_str().and_then(parse_rfc3339))
                == [Some(at(20)), Some(at(28))]
            && raised[0]["value"]
                .as_f64()
                .is_some_and(|v| (v - expected_ratio).abs() < 1e-9),
        "one alert, for purchases only: {raised:?}"
    );
    let text = gauges(&platform).await?;
    ensure!(
        text.lines().any(|l| l
            .strip_prefix("lambda_divergence_ratio{metric=\"purchases\"} ")
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| (v - expected_ratio).abs() < 1e-9))
            && text.contains("lambda_divergence_ratio{metric=\"revenue\"} 0\n"),
        "gauges:\n{text}"
    );
    let (status, _) = platform.get("/v1/divergence?limit=0").await?;
    ensure!(status == 400, "limit=0 is refused: {status}");
    let body = divergence(&platform, "?limit=1").await?;
    ensure!(
        metric(&body, "purchases")?["history"]
            .as_array()
            .map(Vec::len)
            == Some(1),
        "limit=1: {body}"
    );

    // (3) Buckets the speed layer did not cover are not divergence: with its coverage starting
    // at 30m, a bogus row at 29m is left out, and the agreeing comparison resolves the alert.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 120..144 {
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &event(base, i), &mut ends)
            .await?;
    }
    platform.wait_both_caught_up(&ends).await?;
    sqlx::query("UPDATE speed_coverage SET covered_from = $1")
        .bind(to_datetime(at(30)))
        .execute(&platform.pool)
        .await?;
    insert_speed_row(&platform, at(29), 50).await?;
    platform.run_batch(at(33)).await?;
    let body = divergence(&platform, "").await?;
    let latest = &metric(&body, "purchases")?["latest"];
    ensure!(
        latest["range"] == interval(at(28), at(33))
            && latest["compared"] == interval(at(30), at(33))
            && latest["uncovered"] == json!([interval(at(28), at(30))])
            && latest["batch_total"] == 3.0
            && latest["speed_total"] == 3.0
            && latest["ratio"] == 0.0,
        "only [30m, 33m) is compared: {latest}"
    );
    wait_until(
        Duration::from_secs(20),
        "the divergence alert to resolve",
        || async {
            divergence_alerts(&platform)
                .await
                .is_ok_and(|a| a.len() == 1 && a[0]["state"] == "resolved")
        },
    )
    .await?;
    Ok(())
}
