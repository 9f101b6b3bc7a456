//! The serving layer's own state and error text (issue 15): the snapshot and answer caches are
//! capped by bytes, not entries; the `method` label of the HTTP metrics takes only known
//! methods (and `other`); 503s and `/readyz` say what is down, never the driver's message.

use anyhow::{Result, ensure};
use platform_tests::{Platform, READER_ROLE};
use serde_json::{Value, json};
use shared_schema::time::{
    DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, bucket_start, format_rfc3339, now_millis,
};
use std::collections::HashMap;
use std::time::Duration;

const COUNTRIES: u8 = 30;
const VIEW_MINUTES: i64 = 24;
/// More than a sketch holds sparse (`hll::SPARSE_MAX`).
const VIEWERS_PER_MINUTE: usize = shared_schema::hll::SPARSE_MAX + 52;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caches_are_capped_by_bytes_and_methods_add_no_series() -> Result<()> {
    let mut platform = Platform::new("hygiene_caches", 1).await?;
    for (key, value) in [
        ("PLATFORM_SERVING__BODY_CACHE_MB", "1"),
        ("PLATFORM_SERVING__SNAPSHOT_CACHE_MB", "1"),
        ("PLATFORM_SERVING__SNAPSHOT_CACHE_MAX_AGE", "1h"),
    ] {
        platform.extra_env.push((key.into(), value.into()));
    }
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // A purchase per country 23 hours ago, each in a minute of its own; page views over the
    // last two hours: 24 minutes of 2 100 users each, past a sketch's sparse range, so each
    // minute holds a dense distinct-count sketch (64 KiB).
    let end = bucket_start(now_millis(), MINUTE_MS);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for i in 0..COUNTRIES {
        let country = format!("{}{}", (b'A' + i / 26) as char, (b'A' + i % 26) as char);
        let e = json!({"event_id": format!("p{i}"), "event_type": "purchase", "amount": 1.0,
                       "event_time": end - 23 * HOUR_MS + i as i64 * MINUTE_MS,
                       "country": country, "user_id": format!("buyer-{i}")});
        platform.send_tracked(0, &e, &mut ends).await?;
    }
    let views = (0..VIEW_MINUTES).flat_map(|minute| {
        (0..VIEWERS_PER_MINUTE).map(move |viewer| {
            let e = json!({"event_id": format!("v{minute}-{viewer}"), "event_type": "page_view",
                           "event_time": end - 2 * HOUR_MS + minute * MINUTE_MS,
                           "user_id": format!("viewer-{viewer}")});
            (0, viewer.to_string(), e.to_string())
        })
    });
    let view_ends = platform_tests::send_all(&platform.producer, &platform.topic, views).await?;
    ends.insert(0, view_ends[&0]);
    platform.wait_caught_up("speed_offsets", &ends).await?;

    let day = end - DAY_MS;
    // Each attempt asks for ranges of its own (ending a minute earlier each time), so nothing
    // of an earlier attempt is found. It counts only if the small controls were kept: then no
    // change of state emptied the caches meanwhile, and the large entries alone were not kept.
    let mut checked = false;
    for attempt in 0..10i64 {
        // Both ends move, so even hour-step ranges differ from the last attempt's.
        let to = end - attempt * MINUTE_MS;
        let day = day - attempt * MINUTE_MS;
        let range = |metric: &str, from: i64, extra: &str| {
            format!(
                "/v1/metrics/{metric}?from={}&to={}{extra}",
                format_rfc3339(from),
                format_rfc3339(to)
            )
        };
        // About 40 000 points (30 countries, a point per minute since each one's purchase):
        // over 2 MB of JSON, beyond the 1 MB body cache.
        let big_body = range("purchases", day, "&group_by=country&step=1m&window=1d");
        let small_body = range("purchases", day, "&step=1h");
        // 24 dense sketches of 64 KiB, about 1.6 MB: beyond the 1 MB snapshot cache. Asked with two
        // `from`s that round up to the same first point, the answers differ (each echoes its
        // `from`) and the snapshot is the same.
        let big_snapshot = |from: i64| range("active_users", from, "");
        let small_snapshot = |from: i64| range("page_views", from, "&step=1h");
        let (bodies, snapshots) = (
            platform.cache_hits("body").await?,
            platform.cache_hits("snapshot").await?,
        );
        for path in [
            small_body.clone(),
            big_body.clone(),
            // Its snapshot (30 rows) is kept: the one snapshot hit besides the control's.
            big_body,
            small_snapshot(day),
            big_snapshot(day),
            big_snapshot(day - 10 * SECOND_MS),
            small_snapshot(day - 10 * SECOND_MS),
            small_body,
        ] {
            let (status, body) = platform.get(&path).await?;
            ensure!(status == 200, "{path}: {status} {body}");
        }
        let body_hits = platform.cache_hits("body").await? - bodies;
        let snapshot_hits = platform.cache_hits("snapshot").await? - snapshots;
        if body_hits < 1.0 || snapshot_hits < 2.0 {
            eprintln!(
                "attempt {attempt}: caches emptied meanwhile ({body_hits} body, {snapshot_hits} snapshot hits)"
            );
            continue;
        }
        ensure!(
            body_hits == 1.0,
            "only the small answer is kept whole: {body_hits} body hits"
        );
        ensure!(
            snapshot_hits == 2.0,
            "the sketches' snapshot is not kept: {snapshot_hits} snapshot hits"
        );
        checked = true;
        break;
    }
    ensure!(checked, "the caches never kept even the small entries");

    // Made-up methods are counted under `other`.
    for method in ["FOOBAR", "X-SCAN-12345"] {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        platform
            .http
            .request(method, format!("http://{}/healthz", platform.listen_addr))
            .send()
            .await?;
    }
    let exposition = platform
        .http
        .get(format!("http://{}/metrics", platform.listen_addr))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        !exposition.contains("FOOBAR") && !exposition.contains("X-SCAN"),
        "a client's method became a label"
    );
    ensure!(
        exposition.contains("method=\"other\""),
        "made-up methods are counted as `other`"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_say_what_is_down_not_the_drivers_message() -> Result<()> {
    let mut platform = Platform::new("hygiene_errors", 1).await?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__QUERY_TIMEOUT".into(), "3s".into()));
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // The read-only role loses this database: every request's connection is refused with a
    // message naming the role and the database.
    let database = platform.name.clone();
    for statement in [
        format!("REVOKE CONNECT ON DATABASE {database} FROM PUBLIC"),
        format!("REVOKE CONNECT ON DATABASE {database} FROM {READER_ROLE}"),
    ] {
        sqlx::query(&statement).execute(&platform.pool).await?;
    }
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
    )
    .bind(&database)
    .bind(READER_ROLE)
    .execute(&platform.pool)
    .await?;

    let now = bucket_start(now_millis(), MINUTE_MS);
    let paths = [
        "/readyz".to_string(),
        format!(
            "/v1/metrics/purchases?from={}&to={}",
            format_rfc3339(now - HOUR_MS),
            format_rfc3339(now)
        ),
        "/v1/alerts".to_string(),
        "/v1/freshness".to_string(),
        "/v1/divergence".to_string(),
    ];
    let leaks = |message: &str| -> Vec<&str> {
        [
            READER_ROLE,
            database.as_str(),
            "permission denied",
            "error returned from database",
            "pool timed out",
            "SQLSTATE",
        ]
        .into_iter()
        .filter(|leak| message.contains(leak))
        .collect()
    };
    let mut wrong = Vec::new();
    for path in &paths {
        // The pool may hand out a connection that was open a moment longer.
        let mut answer: (u16, Value) = (0, Value::Null);
        for _ in 0..30 {
            answer = platform.get(path).await.unwrap_or((0, Value::Null));
            if answer.0 == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let message = answer.1["error"]["message"].as_str().unwrap_or_default();
        let leaked = leaks(message);
        if answer.0 != 503 || !leaked.is_empty() || !message.contains("Postgres") {
            wrong.push(format!(
                "{path}: {} {message:?} leaks {leaked:?} or names no dependency",
                answer.0
            ));
        }
    }
    for statement in [
        format!("GRANT CONNECT ON DATABASE {database} TO PUBLIC"),
        format!("GRANT CONNECT ON DATABASE {database} TO {READER_ROLE}"),
    ] {
        sqlx::query(&statement).execute(&platform.pool).await?;
    }
    ensure!(wrong.is_empty(), "503 bodies:\n{}", wrong.join("\n"));
    Ok(())
}
