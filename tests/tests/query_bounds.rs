//! Queries whose cost is not bounded by their answer (issue 15): `step=1m&window=31d` walked
//! 44 640 window steps per stored row, synchronously on the async workers where the request
//! timeout could not stop it, and a wide `group_by` was merged and rendered whole before the
//! group limit refused it; a few such requests stopped `/healthz` from answering.
//!
//! Hostile requests go out from several clients at once while `/healthz` is polled: every one
//! is refused with 400 `limit_exceeded` or answered within its timeout (a distinct count may
//! instead stop at the timeout with a 503), the ones that are answered are right, and `/healthz`
//! answers promptly throughout.

use anyhow::{Context, Result, ensure};
use platform_tests::Platform;
use serde_json::{Value, json};
use shared_schema::time::{DAY_MS, HOUR_MS, MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const USERS: i64 = 2500;
const BUYERS: i64 = 50;
const PURCHASES: i64 = 300;
const PAGE_VIEWS: i64 = 300;
/// `/healthz` must always answer within this.
const HEALTHZ_BOUND: Duration = Duration::from_secs(1);

/// `(path, the limit it must be refused by, or None if it must be answered)` for the range
/// ending at `end`; `end` varies by milliseconds so the answer caches cannot take the work away.
fn hostile(end: i64) -> Vec<(String, Option<&'static str>)> {
    let path = |metric: &str, span: i64, window: &str, extra: &str| {
        format!(
            "/v1/metrics/{metric}?from={}&to={}&step=1m&window={window}{extra}",
            format_rfc3339(end - span),
            format_rfc3339(end)
        )
    };
    let month = 31 * DAY_MS;
    vec![
        // One point per minute over a month, each with a month-long window.
        (path("purchases", month, "31d", ""), None),
        (path("active_users", month, "31d", ""), None),
        // 2 500 stored rows: beyond serving.max_rows.
        (
            path("failed_logins", month, "31d", "&group_by=user_id"),
            Some("serving.max_rows"),
        ),
        // Within the rows, but a thousand groups: beyond serving.max_groups.
        (
            path("failed_logins", 8 * HOUR_MS, "1m", "&group_by=user_id"),
            Some("serving.max_groups"),
        ),
        // Four groups, each reaching 44 640 points: beyond serving.max_answer_points.
        (
            path("page_views", month, "31d", "&group_by=product_id"),
            Some("serving.max_answer_points"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_queries_are_refused_or_bounded_and_healthz_stays_prompt() -> Result<()> {
    let mut platform = Platform::new("query_bounds", 1).await?;
    for (key, value) in [
        ("PLATFORM_SERVING__MAX_ROWS", "2000"),
        ("PLATFORM_SERVING__MAX_GROUPS", "100"),
        ("PLATFORM_SERVING__MAX_ANSWER_POINTS", "100000"),
        ("PLATFORM_SERVING__QUERY_TIMEOUT", "5s"),
    ] {
        platform.extra_env.push((key.into(), value.into()));
    }
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // Spread over the last 20 hours: failed logins of 2 500 users, purchases of 50 buyers,
    // page views of four products.
    let start = bucket_start(now_millis(), MINUTE_MS) - 20 * HOUR_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let spread = |i: i64, n: i64| start + i * (20 * HOUR_MS - MINUTE_MS) / n;
    for i in 0..USERS {
        let e = json!({"event_id": format!("l{i}"), "event_type": "login_failed",
                       "event_time": spread(i, USERS), "user_id": format!("user-{i}")});
        platform.send_tracked(0, &e, &mut ends).await?;
    }
    for i in 0..PURCHASES {
        let e = json!({"event_id": format!("p{i}"), "event_type": "purchase", "event_time": spread(i, PURCHASES),
                       "user_id": format!("buyer-{}", i % BUYERS), "country": "DE", "amount": 1.0});
        platform.send_tracked(0, &e, &mut ends).await?;
    }
    for i in 0..PAGE_VIEWS {
        let e = json!({"event_id": format!("v{i}"), "event_type": "page_view", "event_time": spread(i, PAGE_VIEWS),
                       "product_id": format!("product-{}", i % 4)});
        platform.send_tracked(0, &e, &mut ends).await?;
    }
    platform.wait_caught_up("speed_offsets", &ends).await?;

    // /healthz, polled throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, http, addr) = (
            stop.clone(),
            platform.http.clone(),
            platform.listen_addr.clone(),
        );
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut polls = 0;
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let answered = http
                    .get(format!("http://{addr}/healthz"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                let took = if answered {
                    asked.elapsed()
                } else {
                    Duration::MAX
                };
                slowest = slowest.max(took);
                polls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (slowest, polls)
        })
    };

    // Four clients, each sending the hostile requests again and again for 20 seconds.
    let end = bucket_start(now_millis(), MINUTE_MS);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..4i64 {
        let (http, addr) = (platform.http.clone(), platform.listen_addr.clone());
        clients.spawn(async move {
            let mut outcomes: Vec<(String, u16, Value, Duration)> = Vec::new();
            let began = Instant::now();
            let mut round = 0i64;
            while began.elapsed() < Duration::from_secs(20) {
                // A different minute per client and round: every answer is computed afresh.
                for (path, _) in hostile(end + client * 1000 + round) {
                    let asked = Instant::now();
                    let response = http
                        .get(format!("http://{addr}{path}"))
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await;
                    let (status, body) = match response {
                        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
                        Err(e) => (0, json!(e.to_string())),
                    };
                    outcomes.push((path, status, body, asked.elapsed()));
                }
                round += 1;
            }
            outcomes
        });
    }
    let outcomes: Vec<_> = clients.join_all().await.into_iter().flatten().collect();
    stop.store(true, Ordering::Relaxed);
    let (slowest, polls) = poller.await.context("the /healthz poller")?;

    let expected: HashMap<String, Option<&str>> =
        (0..4000).flat_map(|i| hostile(end + i)).collect();
    let mut wrong = Vec::new();
    for (path, status, body, took) in &outcomes {
        let limit = expected.get(path).copied().flatten();
        let fine = match limit {
            Some(limit) => {
                *status == 400
                    && body["error"]["code"] == "limit_exceeded"
                    && body["error"]["limit"] == limit
            }
            None => {
                (*status == 200 && answered_right(path, body))
                    // A month of distinct-count points merges 16 KiB sketches per point: in a
                    // debug build, queued behind the other clients' on two cores, it may reach
                    // the timeout, where it must stop (503), not run on.
                    || (path.contains("/active_users?")
                        && *status == 503
                        && body["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("took longer than")))
            }
        };
        // Within the 5 s timeout, with room for a loaded machine.
        if !fine || *took > Duration::from_secs(8) {
            wrong.push(format!("{path}: {status} after {took:?}: {body:.300}"));
        }
    }
    let answered = |metric: &str| {
        outcomes
            .iter()
            .filter(|(path, status, ..)| path.contains(metric) && *status == 200)
            .count()
    };
    ensure!(
        answered("/active_users?") >= 1 && answered("/purchases?") >= 4,
        "month-long windows are answered: {} distinct counts, {} counts",
        answered("/active_users?"),
        answered("/purchases?")
    );
    ensure!(
        slowest <= HEALTHZ_BOUND,
        "/healthz took {slowest:?} at worst over {polls} polls while hostile queries ran"
    );
    ensure!(
        wrong.is_empty() && outcomes.len() >= 10,
        "{} hostile requests, {} wrong:\n{}",
        outcomes.len(),
        wrong.len(),
        wrong.join("\n")
    );
    Ok(())
}

/// A month-long window over all the data: its largest point counts every purchase, or every
/// user (within the sketch's 2%).
fn answered_right(path: &str, body: &Value) -> bool {
    let most = body["series"][0]["points"]
        .as_array()
        .map_or(0.0, |points| {
            points
                .iter()
                .filter_map(|p| p["value"].as_f64())
                .fold(0.0, f64::max)
        });
    if path.contains("/purchases?") {
        most == PURCHASES as f64
    } else {
        let users = (USERS + BUYERS) as f64;
        (most - users).abs() <= 0.02 * users
    }
}
