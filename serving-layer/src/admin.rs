//! Admin endpoints, behind `serving.admin_token` (see `auth`): promote a view version, roll the
//! latest promotion back, and start a batch run. They are the batch layer's own operations
//! (`batch-layer promote|rollback|run`), called in-process on the serving layer's writing
//! connection (`DATABASE_URL`), never on the read-only one HTTP reads use. Like the commands,
//! they take the batch run lock, so a promotion waits for a run in progress.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use batch_layer::BatchError;
use batch_layer::recompute::{RunOptions, run_once};
use batch_layer::versions;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shared_schema::time::{format_rfc3339, now_millis, parse_rfc3339};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;
use utoipa::ToSchema;

/// Runs started over HTTP that are remembered for `GET /v1/admin/runs` (in memory only).
const KEPT_RUNS: usize = 100;

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

impl From<versions::Served> for Served {
    fn from(served: versions::Served) -> Self {
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
    Running,
    Succeeded,
    Failed,
}

/// A batch run started over HTTP.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunStatus {
    pub id: u64,
    pub state: RunState,
    #[schema(format = DateTime)]
    pub started_at: String,
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

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunStatus>,
}

/// The runs started over HTTP, newest last, and the tasks that finish them.
#[derive(Clone, Default)]
pub struct Runs(Arc<Mutex<RunsInner>>);

#[derive(Default)]
struct RunsInner {
    runs: VecDeque<RunStatus>,
    /// The watcher task of each running run.
    tasks: HashMap<u64, AbortHandle>,
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunsInner> {
        // A panic while holding the lock leaves plain data behind; it stays usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers the task that will finish run `id`.
    pub(crate) fn track(&self, id: u64, task: AbortHandle) {
        self.lock().tasks.insert(id, task);
    }

    /// Records a new running run, unless one is running already. A run still marked running
    /// whose task has ended without finishing it is marked failed first: it never blocks.
    pub(crate) fn start(&self) -> Result<RunStatus, ApiError> {
        let mut runs = self.lock();
        let inner = &mut *runs;
        let ended: Vec<u64> = inner
            .tasks
            .iter()
            .filter(|(_, task)| task.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            inner.tasks.remove(&id);
            if let Some(run) = inner
                .runs
                .iter_mut()
                .find(|r| r.id == id && r.state == RunState::Running)
            {
                run.state = RunState::Failed;
                run.finished_at = Some(format_rfc3339(now_millis()));
                run.error = Some("the run's task ended without a result".into());
            }
        }
        if let Some(running) = inner.runs.iter().find(|r| r.state == RunState::Running) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "run_in_progress",
                format!("batch run {} is still running", running.id),
            ));
        }
        let status = RunStatus {
            id: inner.runs.back().map_or(1, |r| r.id + 1),
            state: RunState::Running,
            started_at: format_rfc3339(now_millis()),
            finished_at: None,
            version: None,
            cutover: None,
            error: None,
        };
        if inner.runs.len() == KEPT_RUNS {
            inner.runs.pop_front();
        }
        inner.runs.push_back(status.clone());
        Ok(status)
    }

    pub(crate) fn finish(&self, id: u64, outcome: Result<(String, i64), String>) {
        let mut runs = self.lock();
        runs.tasks.remove(&id);
        let Some(run) = runs.runs.iter_mut().find(|r| r.id == id) else {
            return;
        };
        run.finished_at = Some(format_rfc3339(now_millis()));
        match outcome {
            Ok((version, cutover)) => {
                run.state = RunState::Succeeded;
                run.version = Some(version);
                run.cutover = Some(format_rfc3339(cutover));
            }
            Err(error) => {
                run.state = RunState::Failed;
                run.error = Some(error);
            }
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<RunStatus> {
        self.lock().runs.iter().find(|r| r.id == id).cloned()
    }

    fn newest_first(&self) -> Vec<RunStatus> {
        self.lock().runs.iter().rev().cloned().collect()
    }
}

/// A JSON body; an empty one is `T::default()` where `default` is given.
fn parse_body<T: DeserializeOwned>(body: &Bytes, default: Option<T>) -> Result<T, ApiError> {
    match default {
        Some(default) if body.iter().all(u8::is_ascii_whitespace) => Ok(default),
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("request body: {e}"))),
    }
}

/// A refusal of the batch layer (no such version, nothing to roll back) is the client's 409;
/// anything else is a dependency failing.
fn batch_error(e: BatchError) -> ApiError {
    match e {
        BatchError::Versions(message) => ApiError::new(StatusCode::CONFLICT, "refused", message),
        e => ApiError::dependency_down("the batch layer's state (Postgres or the lake)", &e),
    }
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
    let served = versions::pin(&state.config, &request.version)
        .await
        .map_err(batch_error)?;
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
    let served = versions::rollback(&state.config)
        .await
        .map_err(batch_error)?;
    tracing::info!(version = %served.version, "rolled back over HTTP");
    Ok(Json(served.into()))
}

/// Start one batch run (`batch-layer run [--cutover T]`) in the background; its progress is at
/// `GET /v1/admin/runs/{id}`. One at a time per serving instance.
#[utoipa::path(post, path = "/v1/admin/runs", tag = "admin",
    request_body(content = Option<RunRequest>, description = "Optional; empty means no `--cutover`"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Started", body = RunStatus),
        (status = 400, description = "Malformed body or cutover", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
        (status = 409, description = "A run started over HTTP is still running", body = crate::openapi::ErrorBody),
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
    let status = state.runs.start()?;
    let id = status.id;
    let runs = state.runs.clone();
    // The run is a task of its own, so a panic in it ends that task only; its watcher marks
    // the run failed (`run_watch`). The watcher itself is tracked too, in case it is aborted.
    let run = tokio::spawn(async move {
        let options = RunOptions {
            cutover,
            ..RunOptions::default()
        };
        run_once(&state.writer, &state.config, &state.catalog, &options).await
    });
    let watcher = tokio::spawn(crate::run_watch::watch(runs.clone(), id, run));
    runs.track(id, watcher.abort_handle());
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// The batch runs this serving instance started, newest first.
#[utoipa::path(get, path = "/v1/admin/runs", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Runs started over HTTP since this instance started", body = RunList),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn list_runs(State(state): State<AppState>) -> Json<RunList> {
    Json(RunList {
        runs: state.runs.newest_first(),
    })
}

/// One batch run started over HTTP.
#[utoipa::path(get, path = "/v1/admin/runs/{id}", tag = "admin",
    params(("id" = String, Path, description = "The run's id, as `POST /v1/admin/runs` answered")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run", body = RunStatus),
        (status = 401, description = "Missing or wrong admin token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Admin endpoints disabled (no serving.admin_token)", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such run", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunStatus>, ApiError> {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    id.parse()
        .ok()
        .and_then(|id| state.runs.get(id))
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_run",
                format!("no batch run `{id}`"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_at_a_time_and_ids_grow() {
        let runs = Runs::default();
        let first = runs.start().unwrap();
        assert_eq!(first.id, 1);
        let refused = runs.start().unwrap_err();
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        runs.finish(1, Err("lake incomplete".into()));
        let second = runs.start().unwrap();
        assert_eq!(second.id, 2);
        runs.finish(2, Ok(("v2".into(), 0)));
        let listed = runs.newest_first();
        assert_eq!(listed[0].state, RunState::Succeeded);
        assert_eq!(listed[0].version.as_deref(), Some("v2"));
        assert_eq!(listed[1].error.as_deref(), Some("lake incomplete"));
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
