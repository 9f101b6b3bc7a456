//! The dashboard at `GET /`: one static page, its script and its style, compiled into the binary
//! from `serving-layer/assets/`. The script reads only the public JSON endpoints (the metric
//! query, `/v1/freshness`, `/v1/divergence`, `/v1/alerts`), so the page shows nothing a client
//! could not ask for itself.

use crate::state::AppState;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// Where the page loads its script and style from.
const SCRIPT_PATH: &str = "/dashboard/dashboard.js";
const STYLE_PATH: &str = "/dashboard/dashboard.css";

/// The page runs only its own script and talks only to this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            STYLE_PATH,
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small and compiled in: revalidating costs little and a new binary shows at once.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_the_assets_the_routes_serve() {
        assert!(PAGE.contains(&format!("src=\"{SCRIPT_PATH}\"")));
        assert!(PAGE.contains(&format!("href=\"{STYLE_PATH}\"")));
    }

    #[test]
    fn nothing_inline_that_the_content_security_policy_would_block() {
        // Inline scripts, handlers and style attributes would be refused by `script-src 'self'`
        // and `style-src 'self'`; the page must work without them.
        for forbidden in [
            "<script>",
            "onclick=",
            "onload=",
            "onchange=",
            "style=\"",
            "<style",
        ] {
            assert!(!PAGE.contains(forbidden), "the page has {forbidden}");
        }
        for forbidden in [
            "innerHTML",
            "eval(",
            "new Function",
            "setAttribute(\"style\"",
        ] {
            assert!(!SCRIPT.contains(forbidden), "the script uses {forbidden}");
        }
    }
}
