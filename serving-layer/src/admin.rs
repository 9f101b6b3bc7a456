//! Admin endpoints, behind `serving.admin_token` (see `auth`): promote a view version, roll the
//! latest promotion back, and request a batch run. Promotion and rollback are the shared code
//! `batch-layer promote|rollback` also call (`shared_io::promotion`), on the serving
//! layer's writing connection (`DATABASE_URL`), never on the read-only one HTTP reads use; they
//! take the batch run lock, so a promotion waits for a run in progress. A run is only recorded
//! here (`shared_io::run_requests`): the batch layer's scheduler runs it and reports back,
//! so no recompute ever competes with the queries this process answers.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shared_io::promotion::{self, PromotionError};
use shared_io::run_requests::{self, RunRequestError};
use shared_schema::time::{format_rfc3339, parse_rfc3339};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// An existing view version, e.g. `20261121T134500Z-1a2b3c4d`.
    pub version: String,
}

/// The version now served, and its cutover T.
#[derive(Debug, Serialize, ToSchema)]
pub struct Served {
    pub version: String,
    #[schema(format = DateTime)]
    pub cutover: String,
}

impl From<promotion::Served> for Served {
    fn from(served: promotion::Served) -> Self {
        Served {
            version: served.version,
            cutover: format_rfc3339(served.cutover),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The cutover T (RFC 3339), as `batch-layer run --cutover`. Absent: the latest boundary at
    /// which the lake is complete.
    #[schema(format = DateTime)]
    pub cutover: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for the batch layer's scheduler (`batch-layer schedule`, `run --requested`).
    Requested,
    Running,
    Succeeded,
    Failed,
}

impl From<run_requests::RunState> for RunState {
    fn from(state: run_requests::RunState) -> Self {
        match state {
            run_requests::RunState::Requested => RunState::Requested,
            run_requests::RunState::Running => RunState::Running,
            run_requests::RunState::Succeeded => RunState::Succeeded,
            run_requests::RunState::Failed => RunState::Failed,
        }
    }
}

/// A batch run requested over HTTP, as the batch layer reported it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunStatus {
    pub id: i64,
    pub state: RunState,
    #[schema(format = DateTime)]
    pub requested_at: String,
    /// When the batch layer started it.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// The promoted version, once succeeded.
    pub version: Option<String>,
    /// Its cutover T, once succeeded.
    #[schema(format = DateTime)]
    pub cutover: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<run_requests::RunRequest> for RunStatus {
    fn from(run: run_requests::RunRequest) -> Self {
        RunStatus {
            id: run.id,
            state: run.state.into(),
            requested_at: format_rfc3339(run.requested_at),
            started_at: run.started_at.map(format_rfc3339),
            finished_at: run.finished_at.map(format_rfc3339),
            version: run.version,
            cutover: run.promoted_cutover.map(format_rfc3339),
            error: run.error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunStatus>,
}

/// A JSON body; an empty one is `T::default()` where `default` is given.
fn parse_body<T: DeserializeOwned>(body: &Bytes, default: Option<T>) -> Result<T, ApiError> {
    match default {
        Some(default) if body.iter().all(u8::is_ascii_whitespace) => Ok(default),
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("request body: {e}"))),
    }
}

/// A refusal (no such version, its view is gone, nothing to roll back) is the client's 409;
/// anything else is a dependency failing.
fn promotion_error(e: PromotionError) -> ApiError {
    match e.is_refusal() {
        true => ApiError::new(StatusCode::CONFLICT, "refused", e.to_string()),
        false => ApiError::dependency_down("the batch layer's state (Postgres or the lake)", &e),
    }
}

fn run_request_error(e: RunRequestError) -> ApiError {
    match e {
        RunRequestError::InProgress { .. } => {
            ApiError::new(StatusCode::CONFLICT, "run_in_progress", e.to_string())
        }
        e => ApiError::dependency_down("Postgres", &e),
    }
}

/// `DATABASE_URL`, which promotions take the run lock on.
fn database_url(state: &AppState) -> Result<&str, ApiError> {
    state
        .config
        .database_url()
        .map_err(|e| ApiError::dependency_down("Postgres", &e))
}

/// Serve an existing view version, and its cutover (`batch-layer promote --version V`).
#[utoipa::path(post, path = "/v1/admin/promote", tag = "admin",
    request_body = PromoteRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Now served", body = Served),
        (status = 400, description = "Malformed body", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
        (status = 409, description = "No such version, or its view is gone", body = crate::openapi::ErrorBody),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn promote(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Served>, ApiError> {
    let request: PromoteRequest = parse_body(&body, None)?;
    let served = promotion::pin(
        database_url(&state)?,
        &state.config.lake_dir,
        &request.version,
    )
    .await
    .map_err(promotion_error)?;
    tracing::info!(version = %served.version, "promoted over HTTP");
    Ok(Json(served.into()))
}

/// Undo the latest promotion, serving the previous version and its cutover again
/// (`batch-layer rollback`).
#[utoipa::path(post, path = "/v1/admin/rollback", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Now served", body = Served),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
        (status = 409, description = "No earlier promotion to roll back to", body = crate::openapi::ErrorBody),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn rollback(State(state): State<AppState>) -> Result<Json<Served>, ApiError> {
    let served = promotion::rollback(database_url(&state)?, &state.config.lake_dir)
        .await
        .map_err(promotion_error)?;
    tracing::info!(version = %served.version, "rolled back over HTTP");
    Ok(Json(served.into()))
}

/// Request one batch run (`batch-layer run [--cutover T]`). It is recorded in Postgres, so it
/// survives a restart of this process; the batch layer's scheduler (`batch-layer schedule`, or
/// `batch-layer run --requested`) runs it and reports its progress at `GET /v1/admin/runs/{id}`.
/// One open request at a time.
#[utoipa::path(post, path = "/v1/admin/runs", tag = "admin",
    request_body(content = Option<RunRequest>, description = "Optional; empty means no `--cutover`"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Requested", body = RunStatus),
        (status = 400, description = "Malformed body or cutover", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
        (status = 409, description = "A requested run has not finished yet", body = crate::openapi::ErrorBody),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn start_run(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunStatus>), ApiError> {
    let request: RunRequest = parse_body(&body, Some(RunRequest::default()))?;
    let cutover = request
        .cutover
        .map(|text| {
            parse_rfc3339(&text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`cutover` = `{text}` is not RFC 3339 with an offset"
                ))
            })
        })
        .transpose()?;
    let run = run_requests::request(&state.writer, cutover)
        .await
        .map_err(run_request_error)?;
    tracing::info!(id = run.id, "batch run requested over HTTP");
    Ok((StatusCode::ACCEPTED, Json(run.into())))
}

/// The latest batch runs requested over HTTP, newest first.
#[utoipa::path(get, path = "/v1/admin/runs", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The latest 100 runs requested over HTTP", body = RunList),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn list_runs(State(state): State<AppState>) -> Result<Json<RunList>, ApiError> {
    let runs = run_requests::list(&state.writer)
        .await
        .map_err(run_request_error)?;
    Ok(Json(RunList {
        runs: runs.into_iter().map(RunStatus::from).collect(),
    }))
}

/// One batch run requested over HTTP.
#[utoipa::path(get, path = "/v1/admin/runs/{id}", tag = "admin",
    params(("id" = String, Path, description = "The run's id, as `POST /v1/admin/runs` answered")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run", body = RunStatus),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such run", body = crate::openapi::ErrorBody),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunStatus>, ApiError> {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no batch run `{id}`"),
        )
    };
    let Ok(number) = id.parse::<i64>() else {
        return Err(unknown());
    };
    run_requests::get(&state.writer, number)
        .await
        .map_err(run_request_error)?
        .map(|run| Json(run.into()))
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_conflicts_and_failures_unavailable() {
        let open = run_request_error(RunRequestError::InProgress {
            id: 3,
            state: run_requests::RunState::Running,
        });
        assert_eq!(open.status(), StatusCode::CONFLICT);
        for refused in [
            PromotionError::NothingToRollBack,
            PromotionError::NoSuchVersion {
                version: "v9".into(),
            },
        ] {
            assert_eq!(promotion_error(refused).status(), StatusCode::CONFLICT);
        }
        let down = promotion_error(PromotionError::LockServingState(sqlx::Error::PoolTimedOut));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn bodies_are_json_and_an_empty_run_request_is_the_default() {
        let empty: RunRequest =
            parse_body(&Bytes::from_static(b" "), Some(RunRequest::default())).unwrap();
        assert!(empty.cutover.is_none());
        assert!(parse_body::<PromoteRequest>(&Bytes::from_static(b""), None).is_err());
        assert!(
            parse_body::<PromoteRequest>(&Bytes::from_static(b"{\"versio\":1}"), None).is_err()
        );
        let ok: PromoteRequest =
            parse_body(&Bytes::from_static(b"{\"version\":\"v1\"}"), None).unwrap();
        assert_eq!(ok.version, "v1");
    }
}
