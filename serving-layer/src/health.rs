//! The probes: `/healthz` (the process answers) and `/readyz` (Postgres reachable and
//! migrated).

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use shared_io::db::MIGRATOR;
use utoipa::ToSchema;

/// `{"status":"alive"}` or `{"status":"ready"}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Status {
    #[schema(value_type = String)]
    status: &'static str,
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers", body = Status)))]
pub(crate) async fn healthz() -> Json<Status> {
    Json(Status { status: "alive" })
}

/// Database reachable and migrated.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Postgres unreachable or not migrated", body = ErrorBody),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
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
    Ok(Json(Status { status: "ready" }))
}
