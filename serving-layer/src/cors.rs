//! Cross-origin calls from browsers, by `serving.cors_allowed_origins`. With no origin listed
//! there is no CORS layer at all, so a browser on another origin is refused by its own rules.

use axum::http::{HeaderValue, Method, header};
use shared_schema::config::ServingConfig;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// `None` when no origin is allowed; an origin that is not a valid header value is skipped
/// with a warning.
pub fn layer(config: &ServingConfig) -> Option<CorsLayer> {
    let origins = &config.cors_allowed_origins;
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|origin| match HeaderValue::from_str(origin) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::warn!(
                        origin,
                        "serving.cors_allowed_origins: not a valid origin, ignored"
                    );
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    )
}
