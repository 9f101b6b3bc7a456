//! The dashboard's product panels (issue 19, item 8) against the real serving layer: each Infinity
//! query of the row "Metrics (merged answers)" is sent as Grafana would send it, its jq root
//! selector is applied with jq (Infinity's `jq-backend` parser), and the rows it yields must carry
//! every column the panel declares, with its type, and the numbers that were produced, split at T.
//!
//! No Grafana runs here (no Docker); what this cannot see is the drawing itself.

use anyhow::{Context, Result, ensure};
use platform_tests::Platform;
use platform_tests::grafana::{PRODUCT_ROW, dashboard, infinity_targets, render_time_macros};
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis, parse_rfc3339};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// What Infinity's jq parser makes of `body`: jq's output, which must be one JSON value.
fn apply_root_selector(selector: &str, body: &Value) -> Result<Value> {
    let jq = std::env::var_os("E2E_JQ")
        .context("E2E_JQ is unset: run through scripts/test.sh, which installs jq")?;
    let mut child = std::process::Command::new(jq)
        .args(["-c", selector])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("jq's stdin")?;
        stdin.write_all(body.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "jq {selector}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Whether `value` is what Infinity reads as a column of `kind`.
fn has_column_type(value: &Value, kind: &str) -> bool {
    match kind {
        "timestamp" => value.as_str().is_some_and(|t| parse_rfc3339(t).is_some()),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        _ => false,
    }
}

/// The sums of `value_column` per value of `key_column`.
fn sums_by(rows: &[Value], key_column: &str, value_column: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for row in rows {
        let key = row[key_column].as_str().unwrap_or_default().to_string();
        *sums.entry(key).or_insert(0.0) += row[value_column].as_f64().unwrap_or_default();
    }
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_product_panels_read_the_merged_answers_split_at_t() -> Result<()> {
    let platform = Platform::new("grafana_panels", 1).await?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // 40 minutes: purchases from two countries, page views and errors of one product.
    let from = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let to = from + 40 * MINUTE_MS;
    let mut ends = HashMap::new();
    let (mut purchases, mut revenue) = (BTreeMap::new(), BTreeMap::new());
    for i in 0..80i64 {
        let country = if i % 2 == 0 { "DE" } else { "FR" };
        let amount = (i % 5 + 1) as f64;
        *purchases.entry(country.to_string()).or_insert(0.0) += 1.0;
        *revenue.entry(country.to_string()).or_insert(0.0) += amount;
        let at = from + i * 30_000;
        let purchase = json!({"event_id": format!("p{i}"), "event_type": "purchase",
                              "event_time": format_rfc3339(at), "user_id": format!("u{}", i % 7),
                              "country": country, "amount": amount, "schema_version": 2});
        platform.send_tracked(0, &purchase, &mut ends).await?;
        let kind = if i % 4 == 0 { "error" } else { "page_view" };
        let other = json!({"event_id": format!("o{i}"), "event_type": kind,
                           "event_time": format_rfc3339(at), "user_id": format!("u{}", i % 7),
                           "product_id": "sku-1", "schema_version": 2});
        platform.send_tracked(0, &other, &mut ends).await?;
    }
    platform.wait_both_caught_up(&ends).await?;
    let cutover = from + 20 * MINUTE_MS;
    platform.run_batch(cutover).await?;
    let (version, _) = platform.served().await?;

    let dashboard = dashboard()?;
    let targets = infinity_targets(&dashboard, PRODUCT_ROW);
    ensure!(!targets.is_empty(), "no Infinity query in `{PRODUCT_ROW}`");
    let mut panels = BTreeMap::new();
    for (title, target) in &targets {
        let url = render_time_macros(target["url"].as_str().unwrap_or_default(), from, to)?;
        // The served answer moves to the new version once the serving layer has seen it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let body = loop {
            let (status, answer) = platform.get(&url).await?;
            if status == 200 && answer["batch_version"] == version.as_str() {
                break answer;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{title}: {url} answers {status} {answer}, not version {version}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let selector = target["root_selector"].as_str().unwrap_or_default();
        let rows = apply_root_selector(selector, &body)?;
        let rows = rows
            .as_array()
            .with_context(|| format!("{title}: the selector yields {rows}, not rows"))?
            .clone();
        ensure!(!rows.is_empty(), "{title}: no rows from {url}");
        for column in target["columns"].as_array().into_iter().flatten() {
            let (name, kind) = (
                column["selector"].as_str().unwrap_or_default(),
                column["type"].as_str().unwrap_or_default(),
            );
            for row in &rows {
                ensure!(
                    has_column_type(&row[name], kind),
                    "{title}: column `{name}` ({kind}) is {} in {row}",
                    row[name]
                );
            }
        }
        if target["format"] == "timeseries" {
            let times: Vec<i64> = rows
                .iter()
                .filter_map(|r| parse_rfc3339(r["time"].as_str()?))
                .collect();
            ensure!(
                times.is_sorted() && times.iter().all(|t| (from..to).contains(t)),
                "{title}: times out of order or outside the range: {times:?}"
            );
        }
        panels.insert(title.clone(), rows);
    }

    let panel = |title: &str| {
        panels
            .get(title)
            .with_context(|| format!("no panel `{title}` in {:?}", panels.keys()))
    };
    // The numbers are those produced, per country, whichever side answered them.
    let counted = sums_by(
        panel("Purchases per minute by country")?,
        "country",
        "purchases",
    );
    ensure!(
        counted == purchases,
        "purchases {counted:?}, sent {purchases:?}"
    );
    let summed = sums_by(
        panel("Revenue per minute by country")?,
        "country",
        "revenue",
    );
    ensure!(summed == revenue, "revenue {summed:?}, sent {revenue:?}");
    // The panels split their points at T: batch before it, speed from it on.
    for title in ["Active users per minute", "Error rate"] {
        let rows = panel(title)?;
        let sides: BTreeSet<&str> = rows.iter().filter_map(|r| r["side"].as_str()).collect();
        ensure!(
            sides == BTreeSet::from(["batch", "speed"]),
            "{title}: sides {sides:?}"
        );
        for row in rows {
            let at = parse_rfc3339(row["time"].as_str().unwrap_or_default())
                .with_context(|| format!("{title}: no time in {row}"))?;
            let want = if at < cutover { "batch" } else { "speed" };
            ensure!(
                row["side"] == want,
                "{title}: {row} is on the wrong side of T"
            );
        }
    }
    let error_rate = panel("Error rate")?;
    ensure!(
        error_rate.iter().all(|r| r["error_rate"]
            .as_f64()
            .is_some_and(|v| (0.0..=1.0).contains(&v))),
        "an error rate out of [0, 1]: {error_rate:?}"
    );
    let table = panel("The answers' cutover T")?;
    ensure!(
        table.len() == 1
            && table[0]["cutover"]
                .as_str()
                .is_some_and(|t| parse_rfc3339(t) == Some(cutover))
            && table[0]["batch_version"] == version.as_str(),
        "the cutover table {table:?}, T {}, version {version}",
        format_rfc3339(cutover)
    );
    Ok(())
}
