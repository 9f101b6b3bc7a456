//! The HTTP API of CONTRACT §4.

use crate::answer_cache::{AnswerCache, ChunkKey, PointOut, RenderedSeries, chunk_span, render};
use crate::encoding::{CachedBody, accepts_gzip};
use crate::generation_cache::GenerationCache;
use crate::openapi::ErrorBody;
use crate::snapshot::{
    Snapshot, SnapshotError, SnapshotKey, ViewCache, read_snapshot, read_snapshot_cached,
};
use crate::state_changes::StateGeneration;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value, json};
use shared_schema::config::{PlatformConfig, ServingConfig};
use shared_schema::db::MIGRATOR;
use shared_schema::metrics::{Dimension, MetricCatalog, MetricDef};
use shared_schema::query::{
    BucketRow, SeriesQuery, check_budget, finish_points_within, gaps, rows_in,
};
pub use shared_schema::query::{Group, MergedPoint};
use shared_schema::sliding::{MergeBudget, MergeError};
use shared_schema::time::{HumanDuration, Millis, bucket_ceil, format_rfc3339, parse_rfc3339};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use utoipa::ToSchema;

/// Larger answers are not kept whole (their batch points still are, in `answers`).
const MAX_CACHED_BODY: usize = 16 << 20;

/// What a whole answer depends on besides the state generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    metric: String,
    /// The asked `from`, which the answer echoes; `query.from` is the first point.
    asked_from: Millis,
    query: SeriesQuery,
    /// As the answer spells them.
    step: String,
    window: String,
}

#[derive(Clone)]
pub struct AppState {
    /// What HTTP requests read through: `serving.database_url`, read-only (see `reader`).
    pub pool: PgPool,
    /// `DATABASE_URL`: the alert evaluator's writes and the admin endpoints.
    pub writer: PgPool,
    pub config: Arc<PlatformConfig>,
    pub catalog: Arc<MetricCatalog>,
    pub views: ViewCache,
    /// Tells when what Postgres holds changed, for the two caches below.
    pub changes: StateGeneration,
    pub snapshots: Arc<GenerationCache<SnapshotKey, Arc<Snapshot>>>,
    /// Whole answers of the latest state generation, by request.
    pub bodies: Arc<GenerationCache<AnswerKey, CachedBody>>,
    pub answers: AnswerCache,
    /// Answers being merged and rendered at once, off the async workers: one per core, so
    /// expensive queries queue (within their timeout) instead of starving `/healthz`.
    pub compute: Arc<Semaphore>,
}

impl AppState {
    pub fn new(
        pool: PgPool,
        writer: PgPool,
        config: PlatformConfig,
        catalog: MetricCatalog,
        changes: StateGeneration,
    ) -> Self {
        let views = ViewCache::new(&config.lake_dir);
        let max_age = config.serving.snapshot_cache_max_age.as_std();
        let mb = |n: usize| n.saturating_mul(1 << 20);
        let snapshots = Arc::new(GenerationCache::new(
            "snapshot",
            max_age,
            mb(config.serving.snapshot_cache_mb),
        ));
        let bodies = Arc::new(GenerationCache::new(
            "body",
            max_age,
            mb(config.serving.body_cache_mb),
        ));
        let answers = AnswerCache::new(config.serving.answer_cache_mb);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AppState {
            pool,
            writer,
            config: Arc::new(config),
            catalog: Arc::new(catalog),
            views,
            changes,
            snapshots,
            bodies,
            answers,
            compute: Arc::new(Semaphore::new(cores)),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/admin/promote", post(crate::admin::promote))
        .route("/v1/admin/rollback", post(crate::admin::rollback))
        .route(
            "/v1/admin/runs",
            post(crate::admin::start_run).get(crate::admin::list_runs),
        )
        .route("/v1/admin/runs/{id}", get(crate::admin::get_run))
        .route_layer(from_fn_with_state(
            state.clone(),
            crate::auth::require_admin,
        ));
    let router = Router::new()
        .route("/v1/metrics", get(list_metrics))
        .route("/v1/metrics/{name}", get(query_metric))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/divergence", get(crate::divergence::get))
        .route("/v1/freshness", get(crate::freshness::get))
        .route("/v1/versions", get(crate::versions::get))
        // Everything above: behind `serving.read_token` when one is set.
        .route_layer(from_fn_with_state(state.clone(), crate::auth::require_read))
        .merge(admin)
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/metrics", get(crate::http_metrics::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        });
    // Outermost, so a preflight is answered before authentication.
    match crate::cors::layer(&state.config.serving) {
        Some(cors) => router.layer(cors),
        None => router,
    }
    .with_state(state)
}

/// `{"error":{"code":"...","message":"..."}}` with a 4xx or 503 status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The configuration key of the limit a request went beyond.
    limit: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            limit: None,
        }
    }
    pub(crate) fn limit_exceeded(limit: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            limit: Some(limit),
            ..ApiError::new(StatusCode::BAD_REQUEST, "limit_exceeded", message)
        }
    }
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
    #[cfg(test)]
    pub(crate) fn limit(&self) -> Option<&'static str> {
        self.limit
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// A 503 saying which dependency is down; the driver's own text (hosts, roles, SQL) goes
    /// to the log only.
    pub(crate) fn dependency_down(what: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %error, dependency = what, "dependency unavailable");
        ApiError::unavailable(format!("{what} unavailable"))
    }
    /// A fault of the server's own, never of the request.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(limit) = self.limit {
            error["limit"] = json!(limit);
        }
        let body = json!({ "error": error });
        (self.status, Json(body)).into_response()
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> Self {
        let what = match &e {
            SnapshotError::Db(_) => "Postgres",
            SnapshotError::View(_) | SnapshotError::Join(_) => "the batch view",
            SnapshotError::Sketch(_) => "the speed layer's state",
        };
        ApiError::dependency_down(what, &e)
    }
}

/// A merge refused by its budget (CONTRACT §4: 400 `limit_exceeded`) or stopped by its deadline.
pub(crate) fn merge_refused(e: MergeError, limits: &ServingConfig) -> ApiError {
    match e {
        MergeError::Groups { max } => ApiError::limit_exceeded(
            "serving.max_groups",
            format!(
                "the answer holds more than {max} groups (serving.max_groups): narrow it with `filter`"
            ),
        ),
        MergeError::Points { points, max } => ApiError::limit_exceeded(
            "serving.max_answer_points",
            format!(
                "the answer may hold {points} points over its series; at most {max} are allowed (serving.max_answer_points): narrow it with `filter`, a shorter range or a longer step"
            ),
        ),
        MergeError::Deadline => took_too_long(limits),
    }
}

fn took_too_long(limits: &ServingConfig) -> ApiError {
    ApiError::unavailable(format!("query took longer than {}", limits.query_timeout))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MetricList {
    metrics: Vec<MetricInfo>,
}

#[derive(Serialize, ToSchema)]
struct MetricInfo {
    #[schema(example = "revenue")]
    name: String,
    description: String,
    #[schema(example = "sum")]
    aggregation: String,
    #[schema(example = "1m")]
    bucket: String,
    dimensions: Vec<String>,
}

/// The metric definitions.
#[utoipa::path(get, path = "/v1/metrics", tag = "metrics",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Every metric of the catalogue", body = MetricList),
        (status = 401, description = "serving.read_token is set and was not presented", body = ErrorBody),
    ))]
pub(crate) async fn list_metrics(State(state): State<AppState>) -> Json<MetricList> {
    let metrics = state
        .catalog
        .metrics
        .iter()
        .map(|m| MetricInfo {
            name: m.name.clone(),
            description: m.description.clone(),
            aggregation: m.aggregation.name().to_string(),
            bucket: m.bucket.to_string(),
            dimensions: m.dimensions.iter().map(|d| d.name().to_string()).collect(),
        })
        .collect();
    Json(MetricList { metrics })
}

/// The alerts: firing, and resolved in the last 24 hours.
#[utoipa::path(get, path = "/v1/alerts", tag = "metrics",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Alerts, newest first", body = crate::openapi::AlertList),
        (status = 401, description = "serving.read_token is set and was not presented", body = ErrorBody),
        (status = 503, description = "Postgres unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list_alerts(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    crate::alerts::list(&state)
        .await
        .map(Json)
        .map_err(|e| ApiError::dependency_down("alerts (Postgres)", &e))
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers", body = crate::openapi::Status)))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// Database reachable and migrated.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Status),
        (status = 503, description = "Postgres unreachable or not migrated", body = ErrorBody),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&state.pool)
        .await
        .map_err(|e| ApiError::dependency_down("Postgres", &e))?;
    let expected = MIGRATOR.iter().count() as i64;
    if applied < expected {
        return Err(ApiError::unavailable(format!(
            "Postgres is not migrated: {applied} of {expected} migrations applied"
        )));
    }
    Ok(Json(json!({"status": "ready"})))
}

#[derive(Serialize, ToSchema)]
struct SeriesOut {
    /// `{}` without `group_by`; else the grouped dimension and its value (`null`: absent).
    #[schema(value_type = HashMap<String, Option<String>>)]
    group: Map<String, Value>,
    points: Vec<PointOut>,
}

/// A range `[from, to)`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Interval {
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
}

/// One metric over a range, merged across the cutover (CONTRACT §4).
#[derive(Serialize, ToSchema)]
pub(crate) struct MetricAnswer {
    metric: String,
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    #[schema(example = "1m")]
    step: String,
    #[schema(example = "1m")]
    window: String,
    /// `null` before the first promotion.
    #[schema(format = DateTime, required = true)]
    cutover: Option<String>,
    /// `null` before the first promotion.
    #[schema(required = true)]
    batch_version: Option<String>,
    #[schema(format = DateTime, required = true)]
    speed_watermark: Option<String>,
    /// Events the speed layer saw after their bucket closed, over the range.
    late_events: i64,
    /// `late_events` over the events counted; `null` when none were.
    #[schema(required = true)]
    late_rate: Option<f64>,
    /// `false` when part of the range is covered by neither side; the parts are in `gaps`.
    complete: bool,
    gaps: Vec<Interval>,
    series: Vec<SeriesOut>,
}

/// One metric over `[from, to)`: buckets before the cutover from the batch view, from it on
/// from the speed layer, read as one snapshot.
#[utoipa::path(get, path = "/v1/metrics/{name}", tag = "metrics",
    params(
        ("name" = String, Path, description = "A metric of `GET /v1/metrics`", example = "revenue"),
        ("from" = String, Query, format = DateTime, description = "Range start (RFC 3339 with offset), inclusive", example = "2026-11-21T12:00:00Z"),
        ("to" = String, Query, format = DateTime, description = "Range end (RFC 3339 with offset), exclusive", example = "2026-11-21T13:00:00Z"),
        ("group_by" = Option<String>, Query, description = "One series per value of this dimension", example = "country"),
        ("filter" = Option<String>, Query, description = "`<dimension>:<value>`: only events with that value", example = "country:DE"),
        ("step" = Option<String>, Query, description = "Distance between points, a multiple of the bucket (`1m`, `15m`, `1h`, `1d`); default the bucket", example = "1m"),
        ("window" = Option<String>, Query, description = "What a point at `t` aggregates: `[t + step - window, t + step)`, a multiple of the bucket; default `step`", example = "1m"),
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The series", body = MetricAnswer),
        (status = 400, description = "Bad parameters, or beyond serving.max_range, serving.max_points, serving.max_rows, serving.max_groups or serving.max_answer_points (named in `error.limit`)", body = ErrorBody),
        (status = 401, description = "serving.read_token is set and was not presented", body = ErrorBody),
        (status = 404, description = "Unknown metric", body = ErrorBody),
        (status = 503, description = "Postgres or the batch view unavailable, or the query took longer than serving.query_timeout", body = ErrorBody),
    ))]
pub(crate) async fn query_metric(
    State(state): State<AppState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    // A name that does not decode (not UTF-8) names no metric either.
    let Path(name) =
        name.map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "unknown_metric", e.body_text()))?;
    let Some((_, metric)) = state.catalog.get(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_metric",
            format!("no metric named `{name}`"),
        ));
    };
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = parse_query(metric, &params, &state.config.serving)?;
    let timeout = state.config.serving.query_timeout.as_std();
    // The merge itself stops here too: dropping the future cannot stop work off the runtime.
    let deadline = Instant::now() + timeout;
    let gzip = accepts_gzip(&headers);
    match tokio::time::timeout(timeout, answer(&state, metric, &request, gzip, deadline)).await {
        Ok(answer) => answer.map(|(body, encoded)| {
            let json = [
                (CONTENT_TYPE, "application/json"),
                (VARY, "accept-encoding"),
            ];
            if encoded {
                (json, [(CONTENT_ENCODING, "gzip")], body).into_response()
            } else {
                (json, body).into_response()
            }
        }),
        Err(_) => Err(took_too_long(&state.config.serving)),
    }
}

#[derive(Clone)]
struct Request {
    /// As asked; the answer echoes it. `query.from` is the first point.
    from: Millis,
    query: SeriesQuery,
    step: HumanDuration,
    window: HumanDuration,
    group_by: Option<Dimension>,
}

fn parse_query(
    metric: &MetricDef,
    params: &HashMap<String, String>,
    limits: &ServingConfig,
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
        // CONTRACT §4: the points start at the first bucket boundary at or after `from`.
        from: bucket_ceil(from, bucket),
        to,
        step: step.millis(),
        window: window.millis(),
        group_by: group_by.map(|(_, i)| i),
        filter,
    };
    crate::limits::check_query(&query, step, limits)?;
    Ok(Request {
        from,
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
        .map_err(|e| ApiError::dependency_down("the metric catalogue", &e))?;
    let names: Vec<&str> = parts.iter().map(|m| m.name.as_str()).collect();
    let range = query.bucket_range();
    let snapshot = read_snapshot(
        &state.pool,
        &state.config.events_topic,
        &names,
        range,
        state.config.speed.stall_timeout.millis(),
    )
    .await?;
    let view = match (&snapshot.batch_version, &snapshot.view_path) {
        (Some(version), Some(path)) => Some(state.views.get(version, path).await?),
        _ => None,
    };
    let points = merge_sides(
        &parts,
        &snapshot,
        view.as_deref(),
        query,
        &MergeBudget::default(),
    )
    .map_err(|e| merge_refused(e, &state.config.serving))?;
    Ok((snapshot, points))
}

/// The answer's body, and whether it is gzip (only ever for a cached answer, when `gzip`).
async fn answer(
    state: &AppState,
    metric: &MetricDef,
    request: &Request,
    gzip: bool,
    deadline: Instant,
) -> Result<(Bytes, bool), ApiError> {
    // Read before anything the answer is made of: a change committed meanwhile files it under
    // a generation no later request asks for.
    let generation = state.changes.current();
    let key = AnswerKey {
        metric: metric.name.clone(),
        asked_from: request.from,
        query: request.query.clone(),
        step: request.step.to_string(),
        window: request.window.to_string(),
    };
    let (body, computed_here) = state
        .bodies
        .lookup_or_compute(generation, &key, || async {
            let body = render_answer(state, generation, metric, request, deadline).await?;
            Ok::<_, ApiError>(CachedBody::new(Bytes::from(body)))
        })
        .await?;
    if body.plain().len() > MAX_CACHED_BODY {
        state.bodies.forget(generation, &key);
    }
    // The request that computed the answer is not kept waiting on compression; any other
    // asked for it again, and compression pays off.
    if gzip
        && !computed_here
        && let Some(compressed) = body.gzip().await
    {
        return Ok((compressed, true));
    }
    Ok((body.plain(), false))
}

async fn render_answer(
    state: &AppState,
    generation: Option<u64>,
    metric: &MetricDef,
    request: &Request,
    deadline: Instant,
) -> Result<Vec<u8>, ApiError> {
    let parts = state
        .catalog
        .parts(metric)
        .map_err(|e| ApiError::dependency_down("the metric catalogue", &e))?;
    let names: Vec<&str> = parts.iter().map(|m| m.name.as_str()).collect();
    let snapshot = read_snapshot_cached(
        &state.snapshots,
        generation,
        &state.pool,
        &state.config.events_topic,
        &names,
        request.query.bucket_range(),
        state.config.speed.stall_timeout.millis(),
    )
    .await?;
    let view = match (&snapshot.batch_version, &snapshot.view_path) {
        (Some(version), Some(path)) => Some(state.views.get(version, path).await?),
        _ => None,
    };
    crate::limits::check_rows(
        &parts,
        &snapshot,
        view.as_deref(),
        request.query.bucket_range(),
        &state.config.serving,
    )?;
    // Merging and rendering is CPU work: it runs on the blocking pool, a core at a time per
    // answer, so the async workers keep answering (`/healthz` among them).
    let _permit = state
        .compute
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("the serving layer is shutting down"))?;
    let (catalog, name, request) = (state.catalog.clone(), metric.name.clone(), request.clone());
    let (answers, limits) = (state.answers.clone(), state.config.clone());
    tokio::task::spawn_blocking(move || {
        let Some((_, metric)) = catalog.get(&name) else {
            return Err(ApiError::internal("the metric left the catalogue"));
        };
        let parts = catalog
            .parts(metric)
            .map_err(|e| ApiError::dependency_down("the metric catalogue", &e))?;
        let answer = AnswerInputs {
            metric,
            parts: &parts,
            request: &request,
            snapshot: &snapshot,
            view: view.as_deref(),
        };
        answer.render(&answers, &limits.serving, Some(deadline))
    })
    .await
    .map_err(|e| ApiError::internal(format!("rendering the answer failed: {e}")))?
}

/// The view's rows of `part` with a bucket in `[start, end)`.
fn batch_rows<'a>(
    view: Option<&'a HashMap<String, Vec<BucketRow>>>,
    part: &MetricDef,
    (start, end): (Millis, Millis),
) -> &'a [BucketRow] {
    view.and_then(|view| view.get(&part.name))
        .map(|rows| rows_in(rows, start, end))
        .unwrap_or_default()
}

/// Both sides' rows of `parts` under `query`, merged and finished, with the split at T.
fn merge_sides(
    parts: &[&MetricDef],
    snapshot: &Snapshot,
    view: Option<&HashMap<String, Vec<BucketRow>>>,
    query: &SeriesQuery,
    budget: &MergeBudget,
) -> Result<BTreeMap<(Group, Millis), MergedPoint>, MergeError> {
    let range = query.bucket_range();
    let batch_end = snapshot
        .cutover
        .map_or(range.0, |t| t.clamp(range.0, range.1));
    let inputs = parts
        .iter()
        .map(|part| {
            let speed = snapshot.speed_rows.get(&part.name).into_iter().flatten();
            let batch = batch_rows(view, part, (range.0, batch_end));
            (*part, batch.iter().cloned(), speed.cloned())
        })
        .collect();
    finish_points_within(query, snapshot.cutover, inputs, budget)
}

/// What one answer is made of, once read.
struct AnswerInputs<'a> {
    metric: &'a MetricDef,
    /// The stored metrics it is finished from (see `MetricCatalog::parts`).
    parts: &'a [&'a MetricDef],
    request: &'a Request,
    snapshot: &'a Snapshot,
    view: Option<&'a HashMap<String, Vec<BucketRow>>>,
}

/// Without `group_by` there is always exactly one series, under this group, even an empty one.
const WHOLE: Group = None;

impl AnswerInputs<'_> {
    fn merge(
        &self,
        query: &SeriesQuery,
        budget: &MergeBudget,
    ) -> Result<BTreeMap<(Group, Millis), MergedPoint>, MergeError> {
        merge_sides(self.parts, self.snapshot, self.view, query, budget)
    }

    /// The answer's JSON. Points whose window ends by T come from rendered chunks of the batch
    /// view (`answer_cache`); the rest are merged and rendered here. Every merge is refused
    /// past `serving.max_groups`, `serving.max_answer_points` or `deadline` before its windows
    /// are computed or rendered.
    fn render(
        &self,
        answers: &AnswerCache,
        limits: &ServingConfig,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ApiError> {
        let query = &self.request.query;
        let cutover = self.snapshot.cutover;
        let budget = MergeBudget {
            max_groups: Some(limits.max_groups),
            max_points: Some(limits.max_answer_points),
            deadline,
        };
        let refused = |e| merge_refused(e, limits);
        // The whole answer's groups and points, before any part of it is merged.
        let range = query.bucket_range();
        for part in self.parts {
            let speed = self
                .snapshot
                .speed_rows
                .get(&part.name)
                .into_iter()
                .flatten();
            let batch_end = cutover.map_or(range.0, |t| t.clamp(range.0, range.1));
            let batch = batch_rows(self.view, part, (range.0, batch_end));
            check_budget(query, cutover, batch, speed, &budget).map_err(refused)?;
        }
        // The points whose window ends by T, on the query's grid (points at `from + k * step`).
        let batch_points_end = match cutover {
            Some(t) if t > query.from && query.from < query.to => query.grid_floor(t).min(query.to),
            _ => query.from,
        };
        let span = chunk_span(query.step, query.window);
        let mut chunks: Vec<(Millis, Arc<RenderedSeries>)> = Vec::new();
        if let (Some(version), Some(t)) = (&self.snapshot.batch_version, cutover) {
            // Chunks lie on the grid's phase, so `start` names the grid as well as the chunk.
            let mut start =
                query.from - (query.from - query.from.rem_euclid(query.step)).rem_euclid(span);
            while start < batch_points_end {
                let key = ChunkKey {
                    version: version.clone(),
                    cutover: t,
                    metric: self.metric.name.clone(),
                    step: query.step,
                    window: query.window,
                    group_by: query.group_by,
                    filter: query.filter.clone(),
                    start,
                };
                let chunk = answers.get_or_render(key, || {
                    let chunk_query = SeriesQuery {
                        from: start,
                        to: (start + span).min(query.grid_floor(t)),
                        ..query.clone()
                    };
                    let range = chunk_query.bucket_range();
                    let inputs = self
                        .parts
                        .iter()
                        .map(|part| {
                            let rows = batch_rows(self.view, part, (range.0, t.min(range.1)));
                            (*part, rows.iter().cloned(), std::iter::empty())
                        })
                        .collect();
                    finish_points_within(&chunk_query, Some(t), inputs, &budget)
                        .map(|points| render(&points))
                        .map_err(refused)
                })?;
                chunks.push((start, chunk));
                start += span;
            }
        }
        let fresh = if batch_points_end < query.to {
            let fresh_query = SeriesQuery {
                from: batch_points_end,
                ..query.clone()
            };
            render(&self.merge(&fresh_query, &budget).map_err(refused)?)
        } else {
            RenderedSeries::new()
        };

        let mut series: BTreeMap<&Group, Vec<&[u8]>> = BTreeMap::new();
        if self.request.group_by.is_none() {
            series.insert(&WHOLE, Vec::new());
        }
        for (start, chunk) in &chunks {
            let (from, to) = (query.from.max(*start), batch_points_end.min(start + span));
            for (group, points) in chunk.iter() {
                let slice = points.slice(from, to);
                if !slice.is_empty() {
                    series.entry(group).or_default().push(slice);
                }
            }
        }
        for (group, points) in &fresh {
            series
                .entry(group)
                .or_default()
                .push(points.slice(Millis::MIN, Millis::MAX));
        }
        crate::limits::check_groups(series.len(), limits)?;

        // The head is the answer with no series; the series are spliced in from their pieces.
        let head = self.answer_with(Vec::new());
        let mut body = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
        if !body.ends_with(b"[]}") {
            return Err(ApiError::internal("an answer's series are not last"));
        }
        body.truncate(body.len() - 3);
        let points_bytes: usize = series.values().flatten().map(|p| p.len() + 1).sum();
        body.reserve(points_bytes + series.len() * 64 + 4);
        body.push(b'[');
        for (i, (group, pieces)) in series.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"group\":");
            serde_json::to_writer(&mut body, &self.group_json(group))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            body.extend_from_slice(b",\"points\":[");
            for (j, piece) in pieces.iter().enumerate() {
                if j > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(piece);
            }
            body.extend_from_slice(b"]}");
        }
        body.extend_from_slice(b"]}");
        Ok(body)
    }

    fn group_json(&self, group: &Group) -> Map<String, Value> {
        let mut json = Map::new();
        if let (Some(dimension), Some(value)) = (self.request.group_by, group) {
            json.insert(
                dimension.name().to_string(),
                value.clone().map_or(Value::Null, Value::String),
            );
        }
        json
    }

    fn answer_with(&self, series: Vec<SeriesOut>) -> MetricAnswer {
        let (query, snapshot) = (&self.request.query, self.snapshot);
        let gaps = shared_schema::liveness::with_stall_gap(
            gaps(
                self.request.from,
                query.to,
                snapshot.cutover,
                snapshot.speed_covered_from,
            ),
            self.request.from,
            query.to,
            snapshot.cutover,
            snapshot.speed_stalled_from,
        );
        MetricAnswer {
            metric: self.metric.name.clone(),
            from: format_rfc3339(self.request.from),
            to: format_rfc3339(query.to),
            step: self.request.step.to_string(),
            window: self.request.window.to_string(),
            cutover: snapshot.cutover.map(format_rfc3339),
            batch_version: snapshot.batch_version.clone(),
            speed_watermark: snapshot.speed_watermark.map(format_rfc3339),
            late_events: snapshot.late_events,
            late_rate: (snapshot.seen_events > 0)
                .then(|| snapshot.late_events as f64 / snapshot.seen_events as f64),
            complete: gaps.is_empty(),
            gaps: gaps
                .iter()
                .map(|(from, to)| Interval {
                    from: format_rfc3339(*from),
                    to: format_rfc3339(*to),
                })
                .collect(),
            series,
        }
    }

    /// The answer rendered point by point from one merge over the whole range: what `render`
    /// must equal.
    #[cfg(test)]
    fn reference(&self) -> MetricAnswer {
        let points = self
            .merge(&self.request.query, &MergeBudget::default())
            .unwrap_or_default();
        let mut series: BTreeMap<Group, Vec<PointOut>> = BTreeMap::new();
        if self.request.group_by.is_none() {
            series.insert(None, Vec::new());
        }
        for ((group, t), point) in points {
            series.entry(group).or_default().push(PointOut {
                t: format_rfc3339(t),
                value: point.value,
                source: point.source,
            });
        }
        let series = series
            .into_iter()
            .map(|(group, points)| SeriesOut {
                group: self.group_json(&group),
                points,
            })
            .collect();
        self.answer_with(series)
    }
}

/// A state over a pool that never connects, for tests of what answers before any query.
#[cfg(test)]
pub(crate) fn test_state(serving: ServingConfig) -> AppState {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("a well-formed URL");
    let config = PlatformConfig {
        serving,
        ..PlatformConfig::default()
    };
    AppState::new(
        pool.clone(),
        pool,
        config,
        MetricCatalog::default(),
        StateGeneration::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared_schema::metrics::{Partial, encode_dims};
    use shared_schema::time::MINUTE_MS;

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

    fn rows_strategy() -> impl Strategy<Value = Vec<(i64, usize, i64)>> {
        // (minute, dimension value index, count)
        proptest::collection::vec((0i64..200, 0usize..3, 0i64..4), 0..120)
    }

    fn to_rows(rows: &[(i64, usize, i64)], sum_micros: bool) -> Vec<BucketRow> {
        let values = [Some("a"), Some("b"), None];
        let mut rows: Vec<BucketRow> = rows
            .iter()
            .map(|&(minute, value, count)| BucketRow {
                bucket_start: minute * MINUTE_MS,
                dims: encode_dims(&[values[value]]),
                partial: Partial {
                    count,
                    sum_micros: if sum_micros { count as i128 * 7 } else { 0 },
                    ..Partial::default()
                },
            })
            .collect();
        rows.sort_by_key(|r| r.bucket_start);
        rows
    }

    proptest! {
        /// Splicing cached chunks of batch points with freshly merged ones gives the answer a
        /// single merge over the whole range gives, for any T, range, step, window and grouping,
        /// cold or from a warm cache.
        #[test]
        fn rendered_answers_equal_one_merge_over_the_range(
            batch in rows_strategy(),
            speed in rows_strategy(),
            cutover in proptest::option::of(0i64..220),
            from in 0i64..200,
            length in 1i64..200,
            step in 1i64..4,
            window_steps in 1i64..3,
            grouping in 0usize..3,
            ratio in any::<bool>(),
        ) {
            let catalog = MetricCatalog::default();
            let name = if ratio { "error_rate" } else { "purchases" };
            let metric = catalog.get(name).unwrap().1.clone();
            let parts = catalog.parts(&metric).unwrap();
            let dimension = metric.dimensions[0].name();
            let step = if step == 3 { 5 } else { step };
            let mut pairs = vec![
                ("from", format_rfc3339(from * MINUTE_MS)),
                ("to", format_rfc3339((from + length) * MINUTE_MS)),
                ("step", format!("{step}m")),
                ("window", format!("{}m", step * window_steps)),
            ];
            match grouping {
                1 => pairs.push(("group_by", dimension.to_string())),
                2 => pairs.push(("filter", format!("{dimension}:a"))),
                _ => {}
            }
            let params: HashMap<String, String> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let request = parse_query(&metric, &params, &PlatformConfig::default().serving).unwrap();
            let mut view = HashMap::new();
            let mut snapshot = Snapshot {
                cutover: cutover.map(|t| t * MINUTE_MS),
                batch_version: cutover.map(|_| "v1".to_string()),
                ..Snapshot::default()
            };
            for (i, part) in parts.iter().enumerate() {
                view.insert(part.name.clone(), to_rows(&batch, i == 0));
                snapshot.speed_rows.insert(part.name.clone(), to_rows(&speed, i == 1));
            }
            let inputs = AnswerInputs {
                metric: &metric,
                parts: &parts,
                request: &request,
                snapshot: &snapshot,
                view: Some(&view),
            };
            let expected = serde_json::to_value(inputs.reference()).unwrap();
            let cache = AnswerCache::new(16);
            let limits = PlatformConfig::default().serving;
            for attempt in ["cold", "warm"] {
                let body = inputs.render(&cache, &limits, None).unwrap();
                let rendered: Value = serde_json::from_slice(&body).unwrap();
                prop_assert_eq!(&rendered, &expected, "{}", attempt);
            }
        }
    }

    #[test]
    fn parameters_are_validated_with_400s() {
        let m = revenue();
        let ok = [
            ("from", "2026-11-21T12:00:00Z"),
            ("to", "2026-11-21T13:00:00Z"),
        ];
        let mut limits = PlatformConfig::default().serving;
        limits.max_points = 1000;
        let request = parse_query(&m, &params(&ok), &limits).unwrap();
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
            let err = parse_query(&m, &params(&bad), &limits)
                .err()
                .expect("should be refused");
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        limits.max_points = 59;
        let too_many = parse_query(&m, &params(&ok), &limits)
            .err()
            .expect("60 points over a limit of 59");
        assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
        assert_eq!(too_many.limit, Some("serving.max_points"));
    }
}
