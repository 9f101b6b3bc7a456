//! Reading answers: query paths, totals, and waiting for a condition.

use anyhow::{Context, Result, bail};
use shared_schema::time::{Millis, format_rfc3339, parse_rfc3339};
use std::collections::BTreeMap;
use std::time::Duration;

/// The path of a `purchases` query over `[from, to)`; a caller appends `&step=...` and the like.
pub fn purchases_path(from: Millis, to: Millis) -> String {
    format!(
        "/v1/metrics/purchases?from={}&to={}",
        format_rfc3339(from),
        format_rfc3339(to)
    )
}

/// The sum of the values of an answer's first series.
pub fn first_series_total(body: &serde_json::Value) -> f64 {
    body["series"][0]["points"]
        .as_array()
        .map_or(0.0, |points| {
            points.iter().filter_map(|p| p["value"].as_f64()).sum()
        })
}

/// The points of an answer's first series, by bucket start; an answer without them is an error.
pub fn first_series_points(body: &serde_json::Value) -> Result<BTreeMap<Millis, f64>> {
    let mut points = BTreeMap::new();
    for point in body["series"][0]["points"].as_array().context("points")? {
        let t = point["t"].as_str().and_then(parse_rfc3339).context("t")?;
        points.insert(t, point["value"].as_f64().context("value")?);
    }
    Ok(points)
}

pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}
