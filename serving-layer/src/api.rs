//! The HTTP API of CONTRACT §4.

use crate::snapshot::{Snapshot, SnapshotError, ViewCache, read_snapshot};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value, json};
use shared_schema::config::PlatformConfig;
use shared_schema::cutover::Source;
use shared_schema::db::MIGRATOR;
use shared_schema::metrics::{Dimension, MetricCatalog, MetricDef};
pub use shared_schema::query::{Group, MergedPoint};
use shared_schema::query::{SeriesQuery, finish_points, gaps, rows_in};
use shared_schema::time::{HumanDuration, Millis, format_rfc3339, parse_rfc3339};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<PlatformConfig>,
    pub catalog: Arc<MetricCatalog>,
    pub views: ViewCache,
}

impl AppState {
    pub fn new(pool: PgPool, config: PlatformConfig, catalog: MetricCatalog) -> Self {
        let views = ViewCache::new(&config.lake_dir);
        AppState {
            pool,
            config: Arc::new(config),
            catalog: Arc::new(catalog),
            views,
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/metrics", get(list_metrics))
        .route("/v1/metrics/{name}", get(query_metric))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/divergence", get(crate::divergence::get))
        .route("/v1/freshness", get(crate::freshness::get))
        .route("/metrics", get(crate::divergence::prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

/// `{"error":{"code":"...","message":"..."}}` with a 4xx or 503 status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> Self {
        tracing::warn!(error = %e, "query dependency failed");
        ApiError::unavailable(e.to_string())
    }
}

async fn list_metrics(State(state): State<AppState>) -> Json<Value> {
    let metrics: Vec<Value> = state
        .catalog
        .metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "description": m.description,
                "aggregation": m.aggregation.name(),
                "bucket": m.bucket.to_string(),
                "dimensions": m.dimensions.iter().map(|d| d.name()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "metrics": metrics }))
}

async fn list_alerts(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    crate::alerts::list(&state)
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(format!("alerts unavailable: {e}")))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&state.pool)
        .await
        .map_err(|e| {
            ApiError::unavailable(format!("database not reachable or not migrated: {e}"))
        })?;
    let expected = MIGRATOR.iter().count() as i64;
    if applied < expected {
        return Err(ApiError::unavailable(format!(
            "{applied} of {expected} migrations applied"
        )));
    }
    Ok(Json(json!({"status": "ready"})))
}

#[derive(Serialize)]
struct PointOut {
    t: String,
    value: f64,
    source: Source,
}

#[derive(Serialize)]
struct SeriesOut {
    group: Map<String, Value>,
    points: Vec<PointOut>,
}

async fn query_metric(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Some((_, metric)) = state.catalog.get(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_metric",
            format!("no metric named `{name}`"),
        ));
    };
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = parse_query(metric, &params, state.config.serving.max_points)?;
    let timeout = state.config.serving.query_timeout.as_std();
    match tokio::time::timeout(timeout, answer(&state, metric, &request)).await {
        Ok(answer) => answer.map(Json),
        Err(_) => Err(ApiError::unavailable(format!(
            "query took longer than {}",
            state.config.serving.query_timeout
        ))),
    }
}

struct Request {
    query: SeriesQuery,
    step: HumanDuration,
    window: HumanDuration,
    group_by: Option<Dimension>,
}

fn parse_query(
    metric: &MetricDef,
    params: &HashMap<String, String>,
    max_points: i64,
) -> Result<Request, ApiError> {
    let time = |key: &str| -> Result<Millis, ApiError> {
        let text = params
            .get(key)
            .ok_or_else(|| ApiError::bad_request(format!("`{key}` is required (RFC 3339)")))?;
        parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(format!("`{key}` = `{text}` is not RFC 3339 with an offset"))
        })
    };
    let (from, to) = (time("from")?, time("to")?);
    if from >= to {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    let bucket = metric.bucket.millis();
    let duration = |key: &str, default: HumanDuration| -> Result<HumanDuration, ApiError> {
        let Some(text) = params.get(key) else {
            return Ok(default);
        };
        let d = HumanDuration::parse(text)
            .map_err(|e| ApiError::bad_request(format!("`{key}`: {e}")))?;
        if d.millis() % bucket != 0 {
            return Err(ApiError::bad_request(format!(
                "`{key}` = {d} is not a multiple of the bucket {}",
                metric.bucket
            )));
        }
        Ok(d)
    };
    let step = duration("step", metric.bucket)?;
    let window = duration("window", step)?;
    let dimension = |key: &str, name: &str| -> Result<(Dimension, usize), ApiError> {
        Dimension::from_name(name)
            .and_then(|d| metric.dimension_index(d).map(|i| (d, i)))
            .ok_or_else(|| {
                let known: Vec<&str> = metric.dimensions.iter().map(|d| d.name()).collect();
                ApiError::bad_request(format!(
                    "`{key}`: `{}` has no dimension `{name}` (it has: {})",
                    metric.name,
                    known.join(", ")
                ))
            })
    };
    let group_by = params
        .get("group_by")
        .map(|name| dimension("group_by", name))
        .transpose()?;
    let filter = match params.get("filter") {
        None => None,
        Some(text) => {
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request("`filter` must be `<dimension>:<value>`"))?;
            Some((dimension("filter", name)?.1, value.to_string()))
        }
    };
    let query = SeriesQuery {
        from,
        to,
        step: step.millis(),
        window: window.millis(),
        group_by: group_by.map(|(_, i)| i),
        filter,
    };
    if query.point_count() > max_points {
        return Err(ApiError::bad_request(format!(
            "the range holds {} points at step {step}; at most {max_points} are allowed",
            query.point_count()
        )));
    }
    Ok(Request {
        query,
        step,
        window,
        group_by: group_by.map(|(d, _)| d),
    })
}

/// The finished points of `metric` under `query`, read from one snapshot, and the snapshot.
pub async fn merged_points(
    state: &AppState,
    metric: &MetricDef,
    query: &SeriesQuery,
) -> Result<(Snapshot, BTreeMap<(Group, Millis), MergedPoint>), ApiError> {
    // A ratio is read as its two stored parts; anything else as itself.
    let parts = state
        .catalog
        .parts(metric)
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let names: Vec<&str> = parts.iter().map(|m| m.name.as_str()).collect();
    let range = query.bucket_range();
    let mut snapshot =
        read_snapshot(&state.pool, &state.config.events_topic, &names, range).await?;
    let view = match (&snapshot.batch_version, &snapshot.view_path) {
        (Some(version), Some(path)) => Some(state.views.get(version, path).await?),
        _ => None,
    };
    let batch_end = snapshot
        .cutover
        .map_or(range.0, |t| t.clamp(range.0, range.1));
    let inputs = parts
        .iter()
        .map(|part| {
            let batch_rows = view
                .as_ref()
                .and_then(|v| v.get(&part.name))
                .map(|rows| rows_in(rows, range.0, batch_end))
                .unwrap_or_default();
            let speed_rows = snapshot.speed_rows.remove(&part.name).unwrap_or_default();
            (*part, batch_rows.iter().cloned(), speed_rows)
        })
        .collect();
    let points = finish_points(query, snapshot.cutover, inputs);
    Ok((snapshot, points))
}

async fn answer(
    state: &AppState,
    metric: &MetricDef,
    request: &Request,
) -> Result<Value, ApiError> {
    let (snapshot, points) = merged_points(state, metric, &request.query).await?;
    let mut series: BTreeMap<Option<Option<String>>, Vec<PointOut>> = BTreeMap::new();
    if request.group_by.is_none() {
        // Without group_by there is always exactly one series, even an empty one.
        series.insert(None, Vec::new());
    }
    for ((group, t), point) in points {
        series.entry(group).or_default().push(PointOut {
            t: format_rfc3339(t),
            value: point.value,
            source: point.source,
        });
    }
    let series: Vec<SeriesOut> = series
        .into_iter()
        .map(|(group, points)| {
            let mut group_json = Map::new();
            if let (Some(dimension), Some(value)) = (request.group_by, group) {
                group_json.insert(
                    dimension.name().to_string(),
                    value.map_or(Value::Null, Value::String),
                );
            }
            SeriesOut {
                group: group_json,
                points,
            }
        })
        .collect();
    let gaps = gaps(
        request.query.from,
        request.query.to,
        snapshot.cutover,
        snapshot.speed_covered_from,
    );
    Ok(json!({
        "metric": metric.name,
        "from": format_rfc3339(request.query.from),
        "to": format_rfc3339(request.query.to),
        "step": request.step.to_string(),
        "window": request.window.to_string(),
        "cutover": snapshot.cutover.map(format_rfc3339),
        "batch_version": snapshot.batch_version,
        "speed_watermark": snapshot.speed_watermark.map(format_rfc3339),
        "late_events": snapshot.late_events,
        "late_rate": (snapshot.seen_events > 0).then(|| snapshot.late_events as f64 / snapshot.seen_events as f64),
        "complete": gaps.is_empty(),
        "gaps": gaps.iter().map(|(from, to)| json!({"from": format_rfc3339(*from), "to": format_rfc3339(*to)})).collect::<Vec<_>>(),
        "series": series,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn revenue() -> MetricDef {
        MetricCatalog::default()
            .get("revenue")
            .map(|(_, m)| m.clone())
            .unwrap()
    }

    #[test]
    fn parameters_are_validated_with_400s() {
        let m = revenue();
        let ok = [
            ("from", "2026-11-21T12:00:00Z"),
            ("to", "2026-11-21T13:00:00Z"),
        ];
        let request = parse_query(&m, &params(&ok), 1000).unwrap();
        assert_eq!(request.query.step, 60_000);
        assert_eq!(request.query.point_count(), 60);
        for bad in [
            vec![("from", "2026-11-21T12:00:00Z")],
            vec![("from", "yesterday"), ("to", "2026-11-21T13:00:00Z")],
            vec![ok[1], ("from", "2026-11-21T14:00:00Z")],
            vec![ok[0], ok[1], ("step", "90s")],
            vec![ok[0], ok[1], ("step", "1x")],
            vec![ok[0], ok[1], ("window", "30s")],
            vec![ok[0], ok[1], ("group_by", "city")],
            vec![ok[0], ok[1], ("filter", "country")],
            vec![ok[0], ok[1], ("filter", "product_id:1")],
        ] {
            let err = parse_query(&m, &params(&bad), 1000)
                .err()
                .expect("should be refused");
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let too_many = parse_query(&m, &params(&ok), 59)
            .err()
            .expect("60 points over a limit of 59");
        assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    }
}
