//! Security of the serving layer (issue 8): requests read through the read-only role of
//! migration 0011, which cannot write; SQL-looking input is a 4xx and changes nothing; the
//! limits on range, points and groups answer 400 naming the limit; and the admin endpoints
//! promote, roll back and request batch runs (which `batch-layer schedule` runs) only with the
//! admin token.

use anyhow::{Context, Result, bail, ensure};
use platform_tests::{Platform, READER_ROLE};
use reqwest::{Method, Url};
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};
use sqlx::Connection;
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;
const ADMIN: &str = "e2e-admin-token";
const READ: &str = "e2e-read-token";

/// `method path?query` with an optional bearer token and JSON body: status and JSON answer.
async fn call(
    platform: &Platform,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut url = Url::parse(&format!("http://{}", platform.listen_addr))?;
    // Each segment is percent-encoded, so a name like `a/b` or `x' --` stays one segment.
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("base URL"))?
        .extend(path.trim_start_matches('/').split('/'));
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let mut request = platform.http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// `GET /v1/metrics/purchases?query` without a token.
async fn purchases(platform: &Platform, query: &[(&str, &str)]) -> Result<(u16, Value)> {
    call(
        platform,
        Method::GET,
        "/v1/metrics/purchases",
        query,
        None,
        None,
    )
    .await
}

/// Purchases every 20 s over the 20 minutes before now, in three countries.
async fn send_purchases(platform: &Platform, prefix: &str) -> Result<(Millis, HashMap<i32, i64>)> {
    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut ends = HashMap::new();
    for i in 0..60i64 {
        let country = ["DE", "FR", "US"][(i % 3) as usize];
        let event = json!({"event_id": format!("{prefix}{i}"), "event_type": "purchase",
                           "event_time": base + i * 20_000, "amount": 1.0, "schema_version": 2,
                           "country": country});
        platform
            .send_tracked((i % PARTITIONS as i64) as i32, &event, &mut ends)
            .await?;
    }
    Ok((base, ends))
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_role_sql_looking_input_and_limits() -> Result<()> {
    let mut platform = Platform::new("security", PARTITIONS).await?;
    for (key, value) in [
        ("PLATFORM_SERVING__MAX_RANGE", "1d"),
        ("PLATFORM_SERVING__MAX_POINTS", "200"),
        ("PLATFORM_SERVING__MAX_GROUPS", "2"),
    ] {
        platform.extra_env.push((key.into(), value.into()));
    }
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let (base, ends) = send_purchases(&platform, "s").await?;
    platform.wait_caught_up("speed_offsets", &ends).await?;
    let (from, to) = (format_rfc3339(base), format_rfc3339(base + 20 * MINUTE_MS));
    let range = [("from", from.as_str()), ("to", to.as_str())];

    // One country is within every limit.
    let filtered = [range[0], range[1], ("filter", "country:DE")];
    let (status, body) = purchases(&platform, &filtered).await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(
        platform_tests::first_series_total(&body) == 20.0,
        "20 purchases in DE: {body}"
    );

    // Serving's request connections are the read-only role's...
    let readers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = $1",
    )
    .bind(READER_ROLE)
    .fetch_one(&platform.pool)
    .await?;
    ensure!(
        readers > 0,
        "the serving layer holds no connection as {READER_ROLE}"
    );
    // ...which reads everything and writes nothing.
    let mut reader = sqlx::PgConnection::connect(&platform.reader_database_url).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM speed_cells")
        .fetch_one(&mut reader)
        .await?;
    ensure!(rows > 0, "the reader sees the speed rows");
    for write in [
        "UPDATE serving_state SET cutover = now()",
        "DELETE FROM speed_cells",
        "INSERT INTO alerts (rule, metric, group_key, state, value, threshold, window_start, window_end)
         VALUES ('x', 'x', '', 'firing', 1, 1, now(), now())",
        "CREATE TABLE intruder (x int)",
    ] {
        match sqlx::query(write).execute(&mut reader).await {
            Ok(_) => bail!("{READER_ROLE} could write: {write}"),
            Err(e) => ensure!(
                sqlstate(&e).as_deref() == Some("42501"),
                "{write}: refused for another reason: {e}"
            ),
        }
    }
    reader.close().await?;

    // SQL-looking names, dimensions and durations are refused as such.
    let injections = [
        "revenue'; DROP TABLE speed_aggregates; --",
        "revenue\" OR \"1\"=\"1",
        "purchases; SELECT pg_sleep(10)",
        "purchases' UNION SELECT * FROM serving_state --",
    ];
    for name in injections {
        let (status, body) = call(
            &platform,
            Method::GET,
            &format!("/v1/metrics/{name}"),
            &range,
            None,
            None,
        )
        .await?;
        ensure!(
            status == 404 && body["error"]["code"] == "unknown_metric",
            "{name}: {status} {body}"
        );
    }
    for (key, value) in [
        ("group_by", "country; DROP TABLE speed_aggregates; --"),
        ("group_by", "country' OR '1'='1"),
        ("filter", "country' OR 1=1 --:DE"),
        ("step", "1m; DELETE FROM alerts"),
        ("window", "1m' --"),
        ("from", "2026-11-21T12:00:00Z' OR '1'='1"),
    ] {
        let mut query: Vec<(&str, &str)> =
            range.iter().filter(|(k, _)| *k != key).copied().collect();
        query.push((key, value));
        let (status, body) = purchases(&platform, &query).await?;
        ensure!(
            status == 400 && body["error"]["code"] == "bad_request",
            "{key}={value}: {status} {body}"
        );
    }
    // A filter value is data, bound as a parameter: it matches no event.
    let injected = [range[0], range[1], ("filter", "country:DE' OR '1'='1")];
    let (status, body) = purchases(&platform, &injected).await?;
    ensure!(
        status == 200 && platform_tests::first_series_total(&body) == 0.0,
        "{status} {body}"
    );
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM speed_cells")
        .fetch_one(&platform.pool)
        .await?;
    ensure!(
        after == rows,
        "the speed rows are untouched: {rows} then {after}"
    );

    // Each limit answers 400 naming its key.
    let day_ago = format_rfc3339(base - 2 * 24 * 60 * MINUTE_MS);
    let four_hours_ago = format_rfc3339(base - 4 * 60 * MINUTE_MS);
    for (query, limit) in [
        (
            vec![("from", day_ago.as_str()), range[1]],
            "serving.max_range",
        ),
        (
            vec![("from", four_hours_ago.as_str()), range[1]],
            "serving.max_points",
        ),
        (
            vec![range[0], range[1], ("window", "2d")],
            "serving.max_range",
        ),
        (
            vec![range[0], range[1], ("group_by", "country")],
            "serving.max_groups",
        ),
    ] {
        let (status, body) = purchases(&platform, &query).await?;
        ensure!(
            status == 400
                && body["error"]["code"] == "limit_exceeded"
                && body["error"]["limit"] == limit
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(limit)),
            "{query:?}: {status} {body}"
        );
    }
    Ok(())
}

/// `POST path` with the admin token.
async fn admin_post(platform: &Platform, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    call(platform, Method::POST, path, &[], Some(ADMIN), body).await
}

/// Starts a batch run over HTTP and waits for it to end: its final status.
async fn run_over_http(platform: &Platform, cutover: Millis) -> Result<Value> {
    let body = json!({"cutover": format_rfc3339(cutover)});
    let (status, started) = admin_post(platform, "/v1/admin/runs", Some(body)).await?;
    ensure!(
        status == 202 && started["state"] == "requested",
        "{status} {started}"
    );
    let id = started["id"].as_u64().context("a run id")?.to_string();
    let path = format!("/v1/admin/runs/{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let (status, run) = call(platform, Method::GET, &path, &[], Some(ADMIN), None).await?;
        ensure!(status == 200, "{path}: {status} {run}");
        if run["state"] != "requested" && run["state"] != "running" {
            ensure!(
                run["state"] == "succeeded",
                "run {id}: {run}\n{}",
                platform.log_tails(30)
            );
            return Ok(run);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "run {id} still running: {run}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_endpoints_need_the_token_then_run_promote_and_roll_back() -> Result<()> {
    let mut platform = Platform::new("admin", PARTITIONS).await?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__ADMIN_TOKEN".into(), ADMIN.into()));
    platform
        .extra_env
        .push(("PLATFORM_SERVING__READ_TOKEN".into(), READ.into()));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    // Runs the batch runs requested over HTTP.
    let _scheduler = platform.spawn("batch-layer", &["schedule"])?;
    platform.wait_for_http().await?;
    let (base, ends) = send_purchases(&platform, "a").await?;
    platform.wait_both_caught_up(&ends).await?;

    // Reads need the read (or admin) token; probes do not.
    for (token, expected) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some(READ), 200),
        (Some(ADMIN), 200),
    ] {
        let (status, body) = call(&platform, Method::GET, "/v1/metrics", &[], token, None).await?;
        ensure!(status == expected, "{token:?}: {status} {body}");
    }
    let (status, _) = call(&platform, Method::GET, "/healthz", &[], None, None).await?;
    ensure!(status == 200, "/healthz is open: {status}");

    // Admin endpoints need the admin token; the read token is not enough.
    for token in [None, Some(READ), Some("e2e-admin-token-")] {
        let (status, body) = call(
            &platform,
            Method::POST,
            "/v1/admin/rollback",
            &[],
            token,
            None,
        )
        .await?;
        ensure!(
            status == 401 && body["error"]["code"] == "unauthorized",
            "{token:?}: {status} {body}"
        );
    }
    let (status, body) = admin_post(&platform, "/v1/admin/rollback", None).await?;
    ensure!(status == 409, "nothing to roll back yet: {status} {body}");
    let (status, body) = admin_post(
        &platform,
        "/v1/admin/runs",
        Some(json!({"cutover": "yesterday"})),
    )
    .await?;
    ensure!(status == 400, "a bad cutover: {status} {body}");

    let (t1, t2) = (base + 5 * MINUTE_MS, base + 10 * MINUTE_MS);
    let first = run_over_http(&platform, t1).await?;
    let v1 = first["version"].as_str().context("version")?.to_string();
    ensure!(first["cutover"] == format_rfc3339(t1), "{first}");
    ensure!(
        platform.served().await? == (v1.clone(), t1),
        "run 1 is served"
    );
    let second = run_over_http(&platform, t2).await?;
    let v2 = second["version"].as_str().context("version")?.to_string();
    ensure!(
        platform.served().await? == (v2.clone(), t2),
        "run 2 is served"
    );
    let (status, runs) = call(
        &platform,
        Method::GET,
        "/v1/admin/runs",
        &[],
        Some(ADMIN),
        None,
    )
    .await?;
    ensure!(
        status == 200
            && runs["runs"][0]["version"] == v2.as_str()
            && runs["runs"][1]["version"] == v1.as_str(),
        "{status} {runs}"
    );

    let (status, body) =
        admin_post(&platform, "/v1/admin/promote", Some(json!({"version": v1}))).await?;
    ensure!(
        status == 200 && body["version"] == v1.as_str() && body["cutover"] == format_rfc3339(t1),
        "{status} {body}"
    );
    ensure!(
        platform.served().await? == (v1.clone(), t1),
        "v1 is served again"
    );
    let (status, body) = admin_post(
        &platform,
        "/v1/admin/promote",
        Some(json!({"version": "no-such-version"})),
    )
    .await?;
    ensure!(
        status == 409 && body["error"]["code"] == "refused",
        "{status} {body}"
    );
    let (status, body) = admin_post(&platform, "/v1/admin/rollback", None).await?;
    ensure!(
        status == 200 && body["version"] == v2.as_str(),
        "the rollback undoes the promotion of v1: {status} {body}"
    );
    ensure!(
        platform.served().await? == (v2, t2),
        "v2 is served after the rollback"
    );
    Ok(())
}
