//! `GET /v1/metrics`: the metric definitions of the catalogue.

use crate::error::ErrorBody;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

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
