//! `GET /metrics`, `GET /healthz` and `GET /readyz` over HTTP.

use super::{ObserveError, registry, render};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

/// The HTTP answer to `GET /metrics`: this process's registry as text.
pub fn exposition() -> Response {
    match render(registry()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// Serves `GET /metrics`, `GET /healthz` (alive) and `GET /readyz` (see `readiness`) on `addr`
/// in the background, for the services without an HTTP API; an empty `addr` serves nothing.
/// Returns the bound address (`addr` may ask for port 0).
pub async fn serve(addr: &str) -> Result<Option<SocketAddr>, ObserveError> {
    serve_with_readiness(addr, None).await
}

/// A service's answer to `GET /readyz`: ready or not, and a JSON body saying why.
pub type ReadinessCheck = std::sync::Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// [`serve`], and `GET /readyz` from `readiness` (200 when ready, else 503) if given.
pub async fn serve_with_readiness(
    addr: &str,
    readiness: Option<ReadinessCheck>,
) -> Result<Option<SocketAddr>, ObserveError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let bind_error = |source| ObserveError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    // `/readyz`: the problems parts of the process reported (see `readiness`), and the
    // service's own check where it has one; ready only when both are.
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { exposition() }))
        // Liveness: the process answers. A restart cures nothing `/readyz` reports (Postgres
        // away, partitions stalled), so probes that restart use this one.
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let check = readiness.clone();
                async move {
                    let (status, mut body) = crate::readiness::readiness().answer();
                    let mut ready = status == StatusCode::OK;
                    if let Some(check) = check {
                        let (own_ready, own) = check();
                        ready &= own_ready;
                        if let (Some(body), Some(own)) = (body.as_object_mut(), own.as_object()) {
                            body.extend(own.clone());
                        }
                    }
                    body["status"] = serde_json::json!(if ready { "ready" } else { "not ready" });
                    body["ready"] = serde_json::json!(ready);
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(body)).into_response()
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(addr = %local, "serving /metrics");
    Ok(Some(local))
}
