//! `GET /openapi.json`: the OpenAPI description of CONTRACT §4 and the serving layer's own
//! endpoints, generated from the handlers' `#[utoipa::path]` attributes and the types their
//! answers serialize; the e2e test `openapi` checks real answers against all of it.

pub(crate) use crate::error::ErrorBody;
use axum::Json;
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
        crate::metric_list::list_metrics,
        crate::metric_query::query_metric,
        crate::alert_list::list_alerts,
        crate::divergence::get,
        crate::freshness::get,
        crate::versions::get,
        crate::admin::promote,
        crate::admin::rollback,
        crate::admin::start_run,
        crate::admin::list_runs,
        crate::admin::get_run,
        crate::health::healthz,
        crate::health::readyz,
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

/// Which side answered a point: how `shared_schema::cutover::Source`, which knows nothing of
/// OpenAPI, serializes (the test below holds them together).
#[derive(ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::cutover::Source;

    #[test]
    fn point_sources_are_described_as_they_serialize() {
        let described = &document()["components"]["schemas"]["PointSource"]["enum"];
        let served: Vec<serde_json::Value> = [Source::Batch, Source::Speed, Source::Mixed]
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(described, &serde_json::Value::from(served));
    }
}
