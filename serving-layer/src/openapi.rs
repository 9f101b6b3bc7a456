//! `GET /openapi.json`: the OpenAPI description of CONTRACT §4 and the serving layer's own
//! endpoints, generated from the handlers' `#[utoipa::path]` attributes and the response types.
//! The types below describe answers built as JSON values elsewhere (errors, alerts,
//! divergence); the e2e test `openapi` checks real answers against all of it.

use crate::api::Interval;
use axum::Json;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lambda metrics platform",
        description = "Per-minute metrics per dimension, merged from the batch view (before the cutover T) and the speed layer (from T on). Errors are `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}`; a request beyond a configured limit also names it in `error.limit`. When `serving.read_token` is set, the read endpoints under `/v1/` need `Authorization: Bearer <token>`; the admin endpoints always need `serving.admin_token`."
    ),
    paths(
        crate::api::list_metrics,
        crate::api::query_metric,
        crate::api::list_alerts,
        crate::divergence::get,
        crate::freshness::get,
        crate::versions::get,
        crate::admin::promote,
        crate::admin::rollback,
        crate::admin::start_run,
        crate::admin::list_runs,
        crate::admin::get_run,
        crate::api::healthz,
        crate::api::readyz,
        crate::http_metrics::metrics,
        serve,
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "metrics", description = "Queries (CONTRACT §4)"),
        (name = "admin", description = "Promotion, rollback and batch runs; need serving.admin_token"),
        (name = "health", description = "Probes, Prometheus and this description"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the paths name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The description as JSON, generated once.
pub fn document() -> &'static serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
}

/// This OpenAPI description.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1", body = Object, content_type = "application/json")))]
pub(crate) async fn serve() -> Json<&'static serde_json::Value> {
    Json(document())
}

/// `{"error":{"code":"...","message":"..."}}`.
#[derive(ToSchema)]
pub(crate) struct ErrorBody {
    #[allow(dead_code)]
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    /// Machine-readable, e.g. `bad_request`, `limit_exceeded`, `unknown_metric`, `unauthorized`.
    code: String,
    message: String,
    /// With `limit_exceeded`: the configuration key of the limit, e.g. `serving.max_points`.
    limit: Option<String>,
}

/// `{"status":"alive"}` or `{"status":"ready"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Status {
    status: String,
}

/// Which side answered a point.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum PointSource {
    /// Wholly before the cutover.
    Batch,
    /// Wholly at or after the cutover.
    Speed,
    /// A window spanning the cutover.
    Mixed,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AlertList {
    alerts: Vec<Alert>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum AlertState {
    Firing,
    Resolved,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct Alert {
    rule: String,
    metric: String,
    /// The rule's grouped dimension and its value, or `{}`.
    group: HashMap<String, Option<String>>,
    state: AlertState,
    value: f64,
    threshold: f64,
    window: Interval,
    #[schema(format = DateTime)]
    fired_at: String,
    #[schema(format = DateTime)]
    resolved_at: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DivergenceList {
    /// `batch.divergence_alert_ratio`.
    threshold: f64,
    metrics: Vec<MetricDivergence>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct MetricDivergence {
    metric: String,
    above_threshold: bool,
    latest: Option<Comparison>,
    /// Newest first, `latest` included.
    history: Vec<Comparison>,
}

/// One comparison of a promoted view with the speed layer (README, "Divergence").
#[derive(ToSchema)]
#[allow(dead_code)]
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
