//! The router's answers that need no database: authentication, CORS and the OpenAPI
//! description. Queries themselves are tested end to end (tests/tests/security.rs, openapi.rs).

use crate::router;
use crate::state::test_state;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use shared_schema::config::{PlatformConfig, ServingConfig};
use tower::ServiceExt;

fn serving() -> ServingConfig {
    PlatformConfig::default().serving
}

async fn call(
    config: ServingConfig,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = router(test_state(config)).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), 1 << 22).await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn request(method: Method, path: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn without_an_admin_token_admin_endpoints_are_disabled() {
    for (method, path) in [
        (Method::POST, "/v1/admin/rollback"),
        (Method::POST, "/v1/admin/promote"),
        (Method::POST, "/v1/admin/runs"),
        (Method::GET, "/v1/admin/runs/1"),
    ] {
        let (status, _, body) = call(serving(), request(method, path, Some("anything"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body["error"]["code"], "admin_disabled", "{path}");
    }
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let mut config = serving();
    config.admin_token = Some("admin-s3cret".into());
    config.read_token = Some("read-s3cret".into());
    for token in [
        None,
        Some("read-s3cret"),
        Some("admin-s3cre"),
        Some("admin-s3cret2"),
    ] {
        let (status, headers, body) = call(
            config.clone(),
            request(Method::POST, "/v1/admin/rollback", token),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    // Past authentication, an unknown run is the handler's own 404 (an id that is no number
    // is unknown without asking Postgres, which this router has none of).
    let (status, _, body) = call(
        config,
        request(Method::GET, "/v1/admin/runs/seven", Some("admin-s3cret")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_run");
}

#[tokio::test]
async fn a_read_token_guards_the_reads_but_not_the_probes() {
    let mut config = serving();
    config.read_token = Some("read-s3cret".into());
    config.admin_token = Some("admin-s3cret".into());
    let (status, _, body) = call(config.clone(), request(Method::GET, "/v1/metrics", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _, _) = call(
        config.clone(),
        request(Method::GET, "/v1/metrics/revenue", Some("wrong")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for token in ["read-s3cret", "admin-s3cret"] {
        let (status, _, body) = call(
            config.clone(),
            request(Method::GET, "/v1/metrics", Some(token)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{token}");
        let defaults = shared_schema::catalog::MetricCatalog::default()
            .metrics
            .len();
        assert_eq!(body["metrics"].as_array().map(Vec::len), Some(defaults));
    }
    for path in ["/healthz", "/openapi.json"] {
        let (status, _, _) = call(config.clone(), request(Method::GET, path, None)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // Without a read token the reads are open.
    let (status, _, _) = call(serving(), request(Method::GET, "/v1/metrics", None)).await;
    assert_eq!(status, StatusCode::OK);
}

fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/metrics/revenue")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn cors_admits_only_the_configured_origins() {
    let mut config = serving();
    config.cors_allowed_origins = vec!["https://dash.example".into()];
    config.read_token = Some("read-s3cret".into());
    let (status, headers, _) = call(config.clone(), preflight("https://dash.example")).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example"
    );
    let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let (_, headers, _) = call(config.clone(), preflight("https://evil.example")).await;
    assert!(
        !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "{headers:?}"
    );
    // A simple request from an allowed origin carries the header too.
    let mut get = request(Method::GET, "/healthz", None);
    get.headers_mut()
        .insert(header::ORIGIN, "https://dash.example".parse().unwrap());
    let (_, headers, _) = call(config, get).await;
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example"
    );
    // By default no origin is admitted.
    let (_, headers, _) = call(serving(), preflight("https://dash.example")).await;
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

#[tokio::test]
async fn the_description_names_every_endpoint_parameter_and_status() {
    let (status, _, doc) = call(serving(), request(Method::GET, "/openapi.json", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let statuses = |path: &str, method: &str| -> Vec<String> {
        let mut codes: Vec<String> = doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is described"))
            .keys()
            .cloned()
            .collect();
        codes.sort();
        codes
    };
    assert_eq!(
        statuses("/v1/metrics/{name}", "get"),
        ["200", "400", "401", "404", "503"]
    );
    assert_eq!(statuses("/v1/metrics", "get"), ["200", "401"]);
    assert_eq!(statuses("/v1/alerts", "get"), ["200", "401", "503"]);
    assert_eq!(statuses("/healthz", "get"), ["200"]);
    assert_eq!(statuses("/readyz", "get"), ["200", "503"]);
    assert_eq!(
        statuses("/v1/divergence", "get"),
        ["200", "400", "401", "503"]
    );
    for path in ["/v1/admin/promote", "/v1/admin/rollback", "/v1/admin/runs"] {
        let codes = statuses(path, "post");
        assert!(
            ["401", "403", "409"]
                .iter()
                .all(|c| codes.iter().any(|x| x == c)),
            "{path}: {codes:?}"
        );
    }
    let mut params: Vec<(String, bool)> = doc["paths"]["/v1/metrics/{name}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["required"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    params.sort();
    let expected: Vec<(String, bool)> = [
        ("filter", false),
        ("from", true),
        ("group_by", false),
        ("name", true),
        ("step", false),
        ("to", true),
        ("window", false),
    ]
    .iter()
    .map(|(n, r)| (n.to_string(), *r))
    .collect();
    assert_eq!(params, expected);
    // The answer's fields are the contract's.
    let answer = &doc["components"]["schemas"]["MetricAnswer"];
    let mut required: Vec<&str> = answer["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort();
    for field in [
        "batch_version",
        "complete",
        "cutover",
        "from",
        "gaps",
        "metric",
        "series",
        "speed_watermark",
        "step",
        "to",
    ] {
        assert!(required.contains(&field), "{field} in {required:?}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
