//! The Grafana dashboard as the compose test and the panel scenario read it: its panels, rows and
//! the time macros of its Infinity queries (`deploy/grafana/dashboards/`).

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Grafana's plugin id of the Infinity data source, which reads JSON over HTTP.
pub const INFINITY: &str = "yesoreyeram-infinity-datasource";
/// The dashboard row whose panels show the metrics themselves, as clients get them (issue 19).
pub const PRODUCT_ROW: &str = "Metrics (merged answers)";
/// The dashboard compose provisions, relative to the workspace root.
pub const DASHBOARD_FILE: &str = "deploy/grafana/dashboards/lambda.json";

/// The provisioned dashboard, parsed.
pub fn dashboard() -> Result<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DASHBOARD_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// The Infinity queries of the row titled `row`: `(panel title, target)`.
pub fn infinity_targets<'a>(
    dashboard: &'a serde_json::Value,
    row: &str,
) -> Vec<(String, &'a serde_json::Value)> {
    row_panels(dashboard, row)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["datasource"]["type"] == INFINITY)
                .map(move |t| (title.clone(), t))
        })
        .collect()
}

/// `url` with each time macro rendered for a dashboard range `[from, to]` (Unix ms); an error
/// names a macro this harness does not know, which Grafana would leave in the URL.
pub fn render_time_macros(url: &str, from: i64, to: i64) -> Result<String> {
    let mut out = String::new();
    let mut rest = url;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|i| start + i + 1)
            .with_context(|| format!("an unclosed macro in {url}"))?;
        let text = &rest[start..end];
        let (is_start, _) = render_time_macro(text, from)
            .with_context(|| format!("{text} in {url} is no time macro of the range"))?;
        let (_, rendered) = render_time_macro(text, if is_start { from } else { to })
            .with_context(|| format!("{text} in {url}"))?;
        out.push_str(&rendered);
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What a time macro of the dashboard's range becomes when the range starts or ends at `at`
/// (Unix ms): whether it is the start, and the text. Grafana's `${__from}`/`${__to}` and
/// Infinity's `${__timeFrom}`/`${__timeTo}`, with the formats both document; `None` otherwise.
pub fn render_time_macro(value: &str, at: i64) -> Option<(bool, String)> {
    let inner = value.strip_prefix("${")?.strip_suffix('}')?;
    let (name, format) = match inner.split_once(':') {
        Some((name, format)) => (name, Some(format)),
        None => (inner, None),
    };
    let is_start = match name {
        "__from" | "__timeFrom" => true,
        "__to" | "__timeTo" => false,
        _ => return None,
    };
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at)?;
    let text = match format {
        None => at.to_string(),
        Some("date" | "date:iso") => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        Some("date:seconds") => (at / 1000).to_string(),
        Some(_) => return None,
    };
    Some((is_start, text))
}

/// A dashboard's panels in reading order (rows' own panels after their row), rows included.
pub fn panels_in_order(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut top: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    top.sort_by_key(|p| {
        (
            p["gridPos"]["y"].as_i64().unwrap_or_default(),
            p["gridPos"]["x"].as_i64().unwrap_or_default(),
        )
    });
    let mut all = Vec::new();
    for panel in top {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// The panels of the row titled `title`: those nested in it when it is collapsed, else the
/// ones below it up to the next row.
pub fn row_panels<'a>(
    dashboard: &'a serde_json::Value,
    title: &str,
) -> Option<Vec<&'a serde_json::Value>> {
    let panels = panels_in_order(dashboard);
    let start = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == title)?;
    let row = panels[start];
    let nested: Vec<&serde_json::Value> = row["panels"].as_array().into_iter().flatten().collect();
    if !nested.is_empty() {
        return Some(nested);
    }
    Some(
        panels[start + 1..]
            .iter()
            .take_while(|p| p["type"] != "row")
            .copied()
            .collect(),
    )
}
