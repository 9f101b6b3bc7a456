//! Which handler answers which path, and the layers in front of them: authentication per
//! group of endpoints, and CORS outermost.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/v1/metrics", get(crate::metric_list::list_metrics))
        .route("/v1/metrics/{name}", get(crate::metric_query::query_metric))
        .route("/v1/alerts", get(crate::alert_list::list_alerts))
        .route("/v1/divergence", get(crate::divergence::get))
        .route("/v1/freshness", get(crate::freshness::get))
        .route("/v1/versions", get(crate::versions::get))
        // Everything above: behind `serving.read_token` when one is set.
        .route_layer(from_fn_with_state(state.clone(), crate::auth::require_read))
        .merge(admin_routes(&state))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/metrics", get(crate::http_metrics::metrics))
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
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

/// `/v1/admin/...`, always behind `serving.admin_token`.
fn admin_routes(state: &AppState) -> Router<AppState> {
    Router::new()
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
        ))
}
