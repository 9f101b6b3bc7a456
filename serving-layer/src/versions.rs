//! `GET /v1/versions`: the view versions, as `batch-layer versions` lists them.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

/// Every view version, newest first, with which one is served and which a rollback would serve.
#[utoipa::path(get, path = "/v1/versions", tag = "metrics",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "`{\"versions\": [{version, cutover, created_at, promoted_at, rows, lake_rows, definitions_fingerprint, served, rollback_target}]}`, newest first", body = Object),
        (status = 401, description = "serving.read_token is set and was not presented", body = crate::openapi::ErrorBody),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorBody),
    ))]
pub async fn get(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let versions = shared_io::versions::list(&state.pool)
        .await
        .map_err(|e| ApiError::dependency_down("versions (Postgres)", &e))?;
    Ok(Json(json!({ "versions": versions })))
}
