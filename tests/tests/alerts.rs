//! Alerts end to end (issue 4): the default rules fire on a sliding window per group, are
//! listed with their window, resolve when the window moves past the trouble, and each
//! transition reaches the webhook once, even when its first delivery fails; and (issue 19)
//! transitions wait in Postgres while the receiver is down, across a restart of the serving
//! layer, and reach it in Alertmanager's format once it is back.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, wait_until};
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, now_millis};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARTITIONS: i32 = 3;

/// A webhook receiver on loopback that refuses every first delivery with a 500.
async fn webhook() -> Result<(String, Arc<Mutex<Vec<Value>>>)> {
    receiver(None).await
}

/// A webhook receiver on loopback; with `down`, it answers 503 while that is set, else it
/// refuses every first delivery of a body with a 500. Returns its URL and the bodies accepted.
async fn receiver(down: Option<Arc<AtomicBool>>) -> Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        let mut seen_bodies: HashMap<String, usize> = HashMap::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            let body = loop {
                let Ok(n) = socket.read(&mut chunk).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buffer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buffer).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body[..length].to_string());
                    }
                }
            };
            let Some(body) = body else { continue };
            let attempt = seen_bodies.entry(body.clone()).or_default();
            *attempt += 1;
            let refuse = match &down {
                Some(down) => down.load(Ordering::SeqCst),
                None => *attempt == 1,
            };
            let status = if refuse {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            if !refuse
                && let Ok(value) = serde_json::from_str(&body)
                && let Ok(mut received) = store.lock()
            {
                received.push(value);
            }
            let _ = socket
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    Ok((url, received))
}

struct Sender<'a> {
    platform: &'a Platform,
    next: u64,
    ends: HashMap<i32, i64>,
}

impl Sender<'_> {
    async fn event(
        &mut self,
        kind: &str,
        time: Millis,
        user: &str,
        product: &str,
        partition: i32,
    ) -> Result<()> {
        self.next += 1;
        let payload = json!({"event_id": format!("a{}", self.next), "event_type": kind, "event_time": time,
                             "user_id": user, "product_id": product, "schema_version": 2});
        self.platform
            .send_tracked(partition, &payload, &mut self.ends)
            .await
    }

    /// Moves every partition's event time, and so the watermark, to `time`.
    async fn tick(&mut self, time: Millis) -> Result<()> {
        for partition in 0..PARTITIONS {
            self.event("click", time, "clock", "none", partition)
                .await?;
        }
        self.platform
            .wait_caught_up("speed_offsets", &self.ends)
            .await
    }
}

async fn alerts(platform: &Platform) -> Result<Vec<Value>> {
    let (status, body) = platform.get("/v1/alerts").await?;
    ensure!(status == 200, "alerts: {status} {body}");
    Ok(body["alerts"].as_array().context("alerts")?.clone())
}

fn find<'a>(alerts: &'a [Value], rule: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["rule"] == rule)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_rules_fire_list_resolve_and_call_the_webhook_once_per_transition() -> Result<()> {
    let (url, received) = webhook().await?;
    let mut platform = Platform::new("alerts", PARTITIONS).await?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__ALERT_INTERVAL".into(), "300ms".into()));
    platform
        .extra_env
        .push(("PLATFORM_SERVING__WEBHOOK_URL".into(), url));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let mut send = Sender {
        platform: &platform,
        next: 0,
        ends: HashMap::new(),
    };

    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    // p1: 40 page views and 10 errors (25%); p2: 40 page views and 1 error (2.5%); p3: 4 page
    // views and 4 errors, above 5% but under the 20 page views the rule needs.
    for i in 0..40 {
        let t = base + 2 * MINUTE_MS + i * 3_000;
        send.event("page_view", t, "viewer", "p1", (i % 3) as i32)
            .await?;
        send.event("page_view", t, "viewer", "p2", (i % 3) as i32)
            .await?;
    }
    for i in 0..10 {
        send.event(
            "error",
            base + 2 * MINUTE_MS + i * 9_000,
            "viewer",
            "p1",
            (i % 3) as i32,
        )
        .await?;
    }
    send.event("error", base + 3 * MINUTE_MS, "viewer", "p2", 0)
        .await?;
    for i in 0..4 {
        send.event("page_view", base + 3 * MINUTE_MS, "viewer", "p3", i % 3)
            .await?;
        send.event("error", base + 3 * MINUTE_MS, "viewer", "p3", i % 3)
            .await?;
    }
    // mallory: 7 failed logins in 4 minutes; alice: 3.
    for i in 0..7 {
        send.event(
            "login_failed",
            base + MINUTE_MS + i * 30_000,
            "mallory",
            "login",
            (i % 3) as i32,
        )
        .await?;
    }
    for i in 0..3 {
        send.event(
            "login_failed",
            base + MINUTE_MS + i * 30_000,
            "alice",
            "login",
            i as i32,
        )
        .await?;
    }
    send.tick(base + 5 * MINUTE_MS + 30_000).await?;

    wait_until(Duration::from_secs(30), "both rules to fire", || async {
        alerts(&platform).await.is_ok_and(|a| {
            find(&a, "error_rate_high").is_some() && find(&a, "failed_logins_burst").is_some()
        })
    })
    .await?;
    let listed = alerts(&platform).await?;
    ensure!(
        listed.len() == 2,
        "only p1 and mallory should alert: {listed:?}"
    );
    let rate = find(&listed, "error_rate_high").context("error rate alert")?;
    ensure!(
        rate["group"] == json!({"product_id": "p1"}) && rate["state"] == "firing",
        "{rate}"
    );
    ensure!(
        (rate["value"].as_f64().unwrap_or_default() - 0.25).abs() < 1e-9,
        "p1 error rate: {rate}"
    );
    ensure!(
        rate["window"]["from"].is_string() && rate["window"]["to"].is_string(),
        "window: {rate}"
    );
    let logins = find(&listed, "failed_logins_burst").context("failed logins alert")?;
    ensure!(
        logins["group"] == json!({"user_id": "mallory"}) && logins["value"] == 7.0,
        "{logins}"
    );

    // Twenty minutes later both windows hold nothing: both resolve.
    send.tick(base + 25 * MINUTE_MS).await?;
    wait_until(
        Duration::from_secs(30),
        "both alerts to resolve",
        || async {
            alerts(&platform)
                .await
                .is_ok_and(|a| a.len() == 2 && a.iter().all(|x| x["state"] == "resolved"))
        },
    )
    .await?;

    wait_until(
        Duration::from_secs(30),
        "four webhook deliveries",
        || async { received.lock().map(|r| r.len() >= 4).unwrap_or(false) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    let mut transitions: Vec<(String, String)> = received
        .iter()
        .map(|v| {
            (
                v["rule"].as_str().unwrap_or("?").to_string(),
                v["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    transitions.sort();
    ensure!(
        transitions
            == vec![
                ("error_rate_high".to_string(), "firing".to_string()),
                ("error_rate_high".to_string(), "resolved".to_string()),
                ("failed_logins_burst".to_string(), "firing".to_string()),
                ("failed_logins_burst".to_string(), "resolved".to_string()),
            ],
        "each transition once: {received:?}"
    );
    Ok(())
}

/// The serving layer's delivery attempts with `outcome`, and the transitions pending.
async fn deliveries(platform: &Platform, outcome: &str) -> Option<(f64, f64)> {
    let text = platform.scrape(&platform.listen_addr).await.ok()?;
    let series = format!("lambda_alert_deliveries_total{{outcome=\"{outcome}\"}}");
    let attempts = platform_tests::series_value(&text, &series).ok()??;
    let pending = platform_tests::series_value(&text, "lambda_alert_deliveries_pending").ok()??;
    Some((attempts, pending))
}

/// Issue 19: a transition the receiver refuses waits in Postgres (counted as failed and
/// pending), survives a SIGKILL of the serving layer, and is delivered once the receiver is
/// back, in Alertmanager's format (labels `alertname`, `metric` and the group's dimension).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transitions_wait_for_a_receiver_that_is_down_across_a_restart() -> Result<()> {
    let down = Arc::new(AtomicBool::new(true));
    let (url, received) = receiver(Some(down.clone())).await?;
    let mut platform = Platform::new("alert_outbox", PARTITIONS).await?;
    for (key, value) in [
        ("PLATFORM_SERVING__ALERT_INTERVAL", "300ms".to_string()),
        ("PLATFORM_SERVING__WEBHOOK_URL", url),
        (
            "PLATFORM_SERVING__WEBHOOK_FORMAT",
            "alertmanager".to_string(),
        ),
    ] {
        platform.extra_env.push((key.into(), value));
    }
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let mut send = Sender {
        platform: &platform,
        next: 0,
        ends: HashMap::new(),
    };
    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    for i in 0..7 {
        send.event(
            "login_failed",
            base + MINUTE_MS + i * 30_000,
            "mallory",
            "login",
            (i % 3) as i32,
        )
        .await?;
    }
    send.tick(base + 5 * MINUTE_MS + 30_000).await?;
    wait_until(Duration::from_secs(30), "the alert to fire", || async {
        alerts(&platform)
            .await
            .is_ok_and(|a| find(&a, "failed_logins_burst").is_some())
    })
    .await?;
    wait_until(
        Duration::from_secs(30),
        "a failed delivery, still pending",
        || async {
            deliveries(&platform, "failed")
                .await
                .is_some_and(|(failed, pending)| failed >= 1.0 && pending >= 1.0)
        },
    )
    .await?;
    ensure!(
        received.lock().map(|r| r.is_empty()).unwrap_or(false),
        "delivered while down"
    );

    // The serving layer dies with the transition undelivered; its successor delivers it.
    serving.kill9().await?;
    let serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    down.store(false, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(60),
        "the queued transition delivered",
        || async { received.lock().map(|r| !r.is_empty()).unwrap_or(false) },
    )
    .await?;
    let first = received.lock().map(|r| r[0].clone()).unwrap_or_default();
    let alert = &first[0];
    ensure!(
        alert["labels"]["alertname"] == "failed_logins_burst"
            && alert["labels"]["metric"] == "failed_logins"
            && alert["labels"]["user_id"] == "mallory"
            && alert["annotations"]["value"] == "7"
            && alert["startsAt"].is_string()
            && alert["endsAt"].is_string(),
        "not an Alertmanager alert: {first}"
    );
    wait_until(
        Duration::from_secs(30),
        "nothing pending, one delivered",
        || async {
            deliveries(&platform, "delivered")
                .await
                .is_some_and(|(delivered, pending)| delivered >= 1.0 && pending == 0.0)
        },
    )
    .await?;
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alert_deliveries WHERE delivered_at IS NOT NULL")
            .fetch_one(&platform.pool)
            .await?;
    ensure!(kept == 1, "{kept} transitions delivered, one queued");
    drop(serving);
    Ok(())
}
