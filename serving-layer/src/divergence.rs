//! What the batch layer found when it compared each promoted view with the speed layer (see
//! `batch_layer::divergence` for what is compared and how): `GET /v1/divergence`, the
//! `lambda_divergence_ratio` gauges of `GET /metrics`, and what the alert
//! `divergence:<metric>` follows (`divergence_alert`).

use crate::error::{ApiError, ErrorBody};
use crate::interval::Interval;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared_io::observe;
use shared_schema::time::format_rfc3339;
use sqlx::PgExecutor;
use std::collections::HashMap;
use utoipa::ToSchema;

/// Most comparisons `?limit=` may ask for per metric (the table keeps fewer anyway).
const MAX_LIMIT: i64 = 1000;

/// One stored comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub version: String,
    pub computed_at: DateTime<Utc>,
    pub range: (DateTime<Utc>, DateTime<Utc>),
    pub compared: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub batch_total: Option<f64>,
    pub speed_total: Option<f64>,
    pub difference: Option<f64>,
    /// `None` when nothing was compared.
    pub ratio: Option<f64>,
    pub buckets: i64,
    pub differing_buckets: i64,
}

/// `GET /v1/divergence`'s answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct DivergenceList {
    /// `batch.divergence_alert_ratio`.
    threshold: f64,
    metrics: Vec<MetricDivergence>,
}

#[derive(Serialize, ToSchema)]
struct MetricDivergence {
    metric: String,
    above_threshold: bool,
    latest: Option<Comparison>,
    /// Newest first, `latest` included.
    history: Vec<Comparison>,
}

/// One comparison of a promoted view with the speed layer (README, "Divergence").
#[derive(Serialize, ToSchema)]
struct Comparison {
    version: String,
    #[schema(format = DateTime)]
    computed_at: String,
    range: Interval,
    /// `null` when the speed layer covered none of the range.
    compared: Option<Interval>,
    uncovered: Vec<Interval>,
    batch_total: Option<f64>,
    speed_total: Option<f64>,
    difference: Option<f64>,
    ratio: Option<f64>,
    buckets: i64,
    differing_buckets: i64,
}

impl Entry {
    fn comparison(&self) -> Comparison {
        let interval = |(from, to)| Interval::between(from, to);
        // The parts of the range left out because the speed layer did not cover them.
        let uncovered = match self.compared {
            None => vec![interval(self.range)],
            Some((start, end)) => [(self.range.0, start), (end, self.range.1)]
                .into_iter()
                .filter(|(from, to)| from < to)
                .map(interval)
                .collect(),
        };
        Comparison {
            version: self.version.clone(),
            computed_at: format_rfc3339(self.computed_at.timestamp_millis()),
            range: interval(self.range),
            compared: self.compared.map(interval),
            uncovered,
            batch_total: self.batch_total,
            speed_total: self.speed_total,
            difference: self.difference,
            ratio: self.ratio,
            buckets: self.buckets,
            differing_buckets: self.differing_buckets,
        }
    }

    #[cfg(test)]
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.comparison()).unwrap_or_default()
    }
}

/// The newest `limit` comparisons of every metric, newest first.
pub async fn read<'e>(
    db: impl PgExecutor<'e>,
    limit: i64,
) -> Result<HashMap<String, Vec<Entry>>, sqlx::Error> {
    type Row = (
        String,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        i64,
        i64,
        DateTime<Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT version, metric, range_start, range_end, compared_start, compared_end, batch_total,
                speed_total, difference, ratio, buckets, differing_buckets, computed_at
         FROM (SELECT *, row_number() OVER (PARTITION BY metric ORDER BY computed_at DESC, version DESC) AS n
               FROM divergence) ranked
         WHERE n <= $1 ORDER BY metric, n",
    )
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut by_metric: HashMap<String, Vec<Entry>> = HashMap::new();
    for (
        version,
        metric,
        start,
        end,
        c_start,
        c_end,
        batch,
        speed,
        difference,
        ratio,
        buckets,
        differing,
        at,
    ) in rows
    {
        by_metric.entry(metric).or_default().push(Entry {
            version,
            computed_at: at,
            range: (start, end),
            compared: c_start.zip(c_end),
            batch_total: batch,
            speed_total: speed,
            difference,
            ratio,
            buckets,
            differing_buckets: differing,
        });
    }
    Ok(by_metric)
}

/// Whether `entry` is above the alert threshold (`batch.divergence_alert_ratio`).
pub(crate) fn above(entry: &Entry, threshold: f64) -> bool {
    entry.ratio.is_some_and(|r| r > threshold)
}

/// `GET /v1/divergence[?limit=N]`: per metric of the catalogue, the latest comparison and the
/// newest `N` (default: all kept), newest first.
#[utoipa::path(get, path = "/v1/divergence", tag = "metrics",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Comparisons per metric, newest first; default all kept")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Every metric's latest comparison and history", body = DivergenceList),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 401, description = "serving.read_token is set and was not presented", body = ErrorBody),
        (status = 503, description = "Postgres unavailable", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<DivergenceList>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = match params.get("limit") {
        None => MAX_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`limit` = `{text}` is not a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let mut entries = read(&state.pool, limit)
        .await
        .map_err(|e| ApiError::dependency_down("divergence (Postgres)", &e))?;
    let threshold = state.config.batch.divergence_alert_ratio;
    let metrics = state
        .catalog
        .metrics
        .iter()
        .map(|metric| {
            let history = entries.remove(&metric.name).unwrap_or_default();
            MetricDivergence {
                metric: metric.name.clone(),
                above_threshold: history.first().is_some_and(|e| above(e, threshold)),
                latest: history.first().map(Entry::comparison),
                history: history.iter().map(Entry::comparison).collect(),
            }
        })
        .collect();
    Ok(Json(DivergenceList { threshold, metrics }))
}

/// Sets the `lambda_divergence_ratio` gauges of `GET /metrics`: one per metric whose latest
/// comparison compared something.
pub async fn refresh_gauges(state: &AppState) -> Result<(), sqlx::Error> {
    let latest = read(&state.pool, 1).await?;
    observe::serving().set_divergence(state.catalog.metrics.iter().filter_map(|metric| {
        let ratio = latest.get(&metric.name)?.first()?.ratio?;
        Some((metric.name.as_str(), ratio))
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn at(minute: i64) -> DateTime<Utc> {
        shared_schema::time::to_datetime(minute * 60_000)
    }

    fn entry(compared: Option<(i64, i64)>, ratio: Option<f64>) -> Entry {
        Entry {
            version: "v".into(),
            computed_at: at(100),
            range: (at(10), at(20)),
            compared: compared.map(|(a, b)| (at(a), at(b))),
            batch_total: Some(1.0),
            speed_total: Some(1.0),
            difference: Some(0.0),
            ratio,
            buckets: 1,
            differing_buckets: 0,
        }
    }

    #[test]
    fn uncovered_is_the_range_outside_the_compared_part() {
        let json = entry(Some((12, 15)), Some(0.0)).to_json();
        assert_eq!(
            json["uncovered"],
            json!([
                {"from": "1970-01-01T00:10:00Z", "to": "1970-01-01T00:12:00Z"},
                {"from": "1970-01-01T00:15:00Z", "to": "1970-01-01T00:20:00Z"}
            ])
        );
        assert_eq!(
            entry(Some((10, 20)), Some(0.0)).to_json()["uncovered"],
            json!([])
        );
        let nothing = entry(None, None).to_json();
        assert_eq!(nothing["compared"], Value::Null);
        assert_eq!(nothing["uncovered"], json!([nothing["range"].clone()]));
    }

    #[test]
    fn the_threshold_is_strict_and_nothing_compared_is_never_above() {
        assert!(above(&entry(Some((10, 20)), Some(0.02)), 0.01));
        assert!(!above(&entry(Some((10, 20)), Some(0.01)), 0.01));
        assert!(!above(&entry(None, None), 0.0));
    }
}
