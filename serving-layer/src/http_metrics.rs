//! What the HTTP API tells about itself: a request id on every request (an incoming
//! `x-request-id` is kept, otherwise a UUID is made; either is echoed in the response and is a
//! field of the request's span, so every log line of the request carries it), one access log
//! line and one latency observation per request by route template and status, and
//! `GET /metrics`.

use crate::state::AppState;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use chrono::{DateTime, Utc};
use shared_io::observe::{self, ServedVersion};
use sqlx::PgPool;
use std::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

const REQUEST_ID: &str = "x-request-id";
/// The route label of requests no route matched, so that random paths add no series.
const UNMATCHED: &str = "unmatched";

/// Wraps every route of `router`, and its fallback, in the request id and the measurement.
pub fn instrument(router: Router) -> Router {
    // The last layer added runs first: the id is set, then propagated, then seen by `track`.
    router
        .layer(middleware::from_fn(track))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_string();
    let method = method_label(request.method());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let span = tracing::info_span!("http_request", %request_id, method, %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    observe::serving().observe_request(method, &route, status, seconds);
    span.in_scope(|| tracing::info!(status, latency_ms = seconds * 1000.0, "request"));
    response
}

/// The `method` label: a standard method by name, anything else `other`, so that methods a
/// client makes up add no series.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

/// `GET /metrics`: this process's families, with the gauges read from Postgres refreshed
/// first. When Postgres cannot tell, those gauges are left out rather than kept stale, and the
/// rest is still served.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    ))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Err(e) = crate::divergence::refresh_gauges(&state).await {
        tracing::warn!(error = %e, "divergence gauges unavailable");
        observe::serving().set_divergence([]);
    }
    match served_version(&state.pool).await {
        Ok(served) => observe::serving().set_served(served.as_ref()),
        Err(e) => {
            tracing::warn!(error = %e, "served version gauges unavailable");
            observe::serving().set_served(None);
        }
    }
    observe::exposition()
}

/// The version served now, `None` before the first promotion.
async fn served_version(pool: &PgPool) -> Result<Option<ServedVersion>, sqlx::Error> {
    // version, cutover, run started, run finished, rows
    #[allow(clippy::type_complexity)]
    let row: Option<(String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT v.version, s.cutover, v.started_at, v.finished_at, v.row_count
         FROM serving_state s JOIN batch_versions v ON v.version = s.version
         WHERE s.id = 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(version, cutover, started_at, finished_at, rows)| ServedVersion {
            version,
            cutover: cutover.timestamp_millis(),
            started_at: started_at.timestamp_millis(),
            finished_at: finished_at.timestamp_millis(),
            rows,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> Router {
        instrument(
            Router::new()
                .route("/test/items/{id}", get(|| async { "item" }))
                // Its own route, so the counting test is not thrown off when both run at once.
                .route("/test/ids/{id}", get(|| async { "id" }))
                .fallback(|| async { StatusCode::NOT_FOUND }),
        )
    }

    async fn get_with(path: &str, request_id: Option<&str>) -> Response {
        let mut request = Request::builder().uri(path);
        if let Some(id) = request_id {
            request = request.header(REQUEST_ID, id);
        }
        let request = request.body(Body::empty()).expect("a valid request");
        app().oneshot(request).await.expect("infallible")
    }

    fn count(route: &str, status: &str) -> u64 {
        let text = observe::render(observe::registry()).expect("encodes");
        let prefix = format!(
            "lambda_http_request_duration_seconds_count{{method=\"GET\",route=\"{route}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_request_id_is_kept_or_made_and_echoed() {
        let response = get_with("/test/ids/1", Some("abc")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[REQUEST_ID], "abc");
        let response = get_with("/test/ids/2", None).await;
        let made = response.headers()[REQUEST_ID]
            .to_str()
            .expect("ASCII")
            .to_string();
        assert!(
            uuid_like(&made),
            "a request without an id gets a UUID: {made}"
        );
    }

    fn uuid_like(text: &str) -> bool {
        text.len() == 36 && text.chars().filter(|c| *c == '-').count() == 4
    }

    #[tokio::test]
    async fn requests_are_measured_by_route_template_and_status() {
        let before = (count("/test/items/{id}", "200"), count(UNMATCHED, "404"));
        get_with("/test/items/7", None).await;
        get_with("/test/items/8", None).await;
        get_with("/no/such/path", None).await;
        assert_eq!(count("/test/items/{id}", "200"), before.0 + 2);
        assert_eq!(count(UNMATCHED, "404"), before.1 + 1);
        let text = observe::render(observe::registry()).expect("encodes");
        assert!(!text.contains("/test/items/7"), "raw paths are no labels");
    }

    #[tokio::test]
    async fn made_up_methods_share_one_label() {
        let made_up = |name: &str| {
            let request = Request::builder()
                .method(Method::from_bytes(name.as_bytes()).expect("a token"))
                .uri("/test/methods/1")
                .body(Body::empty())
                .expect("a valid request");
            app().oneshot(request)
        };
        made_up("FOOBAR").await.expect("infallible");
        made_up("X-SCAN-1234").await.expect("infallible");
        let text = observe::render(observe::registry()).expect("encodes");
        assert!(
            !text.contains("FOOBAR") && !text.contains("X-SCAN"),
            "{text}"
        );
        assert!(text.contains("method=\"other\""), "{text}");
        assert_eq!(method_label(&Method::GET), "GET");
    }
}
