//! `GET /v1/metrics/{name}` (CONTRACT §4): one metric over a range, the batch view's buckets
//! before the cutover T and the speed layer's from it on, read as one snapshot.
//!
//! * `params`: the request, validated against the limits;
//! * `read`: the snapshot and the view it names, read once for every use;
//! * `merge`: both sides merged and finished, with the split at T;
//! * `render`: the answer's JSON, spliced from cached batch chunks and fresh points;
//! * `answer`: the answer's types, which the renderer's bytes must equal.

mod answer;
mod merge;
mod params;
mod read;
mod render;
#[cfg(test)]
mod tests;

pub(crate) use answer::MetricAnswer;
pub use merge::{PointsError, merged_points};

use crate::encoding::{CachedBody, accepts_gzip};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use params::{Request, parse_query};
use shared_schema::metrics::MetricDef;
use shared_schema::query::SeriesQuery;
use shared_schema::time::Millis;
use std::collections::HashMap;
use std::time::Instant;

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
        Err(_) => Err(ApiError::took_too_long(&state.config.serving)),
    }
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
            let body = render::render_answer(state, generation, metric, request, deadline).await?;
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
