//! A soak of hostile producers and clients beside normal traffic (issue 15): messages built to
//! break a consumer (NUL characters, keys past the btree limit, times no calendar holds, broken
//! encodings, oversized payloads) and requests built to break the API (absurd ranges, windows and
//! groupings, broken parameters, unknown methods) arrive for a while with ordinary events and
//! queries. Afterwards every service is still up, both consumers have read everything, no
//! request was answered with a 5xx, `/healthz` answered promptly throughout, and every bucket of
//! the ordinary events is exact on both sides of a promotion.

use anyhow::{Context, Result, ensure};
use platform_tests::Platform;
use platform_tests::truth::{Ledger, Sent, default_metrics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 2;
const SOAK: Duration = Duration::from_secs(20);
/// `/healthz` must answer within this, however busy the API is with hostile requests.
const HEALTHZ_BOUND: Duration = Duration::from_secs(2);

/// Messages that pass no decoder, or pass it and hit a limit of Postgres, Parquet or the bucket
/// arithmetic further on. Those the platform may accept are dated `outside`, before the range
/// the ordinary events are checked in.
fn hostile_messages(outside: i64) -> Vec<Vec<u8>> {
    let big = "x".repeat(5 * 1024);
    let event = |fields: serde_json::Value| -> Vec<u8> {
        let mut v = json!({"event_id": format!("hostile-{}", uuid()), "event_type": "purchase",
                           "event_time": outside, "user_id": "u-hostile", "country": "DE",
                           "amount": 1.0, "schema_version": 2});
        if let (Some(v), Some(fields)) = (v.as_object_mut(), fields.as_object()) {
            for (k, f) in fields {
                v.insert(k.clone(), f.clone());
            }
        }
        v.to_string().into_bytes()
    };
    let mut messages = vec![
        event(json!({"event_id": "nul\u{0}id"})),
        event(json!({"user_id": "nul\u{0}user"})),
        event(json!({"country": "D\u{0}E"})),
        event(json!({"product_id": "p\u{0}", "event_type": "page_view"})),
        event(json!({"event_type": "purch\u{0}ase"})),
        event(json!({"country": big})),
        event(json!({"user_id": big})),
        event(json!({"product_id": big, "event_type": "error"})),
        event(json!({"city": big})),
        event(json!({"event_time": i64::MIN})),
        event(json!({"event_time": i64::MAX})),
        event(json!({"event_time": i64::MIN + 1})),
        event(json!({"event_time": -62_135_596_800_001_i64})),
        event(json!({"event_time": 253_402_300_800_000_i64})),
        event(json!({"event_time": "0000-01-01T00:00:00Z"})),
        event(json!({"event_time": "9999-12-31T23:59:59.999Z"})),
        event(json!({"event_time": "1970-01-01T00:00:00Z"})),
        event(json!({"event_time": 1})),
        event(json!({"amount": 1e308})),
        event(json!({"amount": -0.0})),
        event(json!({"schema_version": i64::MAX})),
        event(json!({"event_id": "é".repeat(64)})),
        event(json!({"event_id": "é".repeat(65)})),
        b"{\"event_id\":\"lone\\ud800\",\"event_type\":\"click\",\"event_time\":1}".to_vec(),
        b"{\"event_id\":\"\xff\xfe\",\"event_type\":\"click\",\"event_time\":1}".to_vec(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        // As large as a broker with default limits takes; the decoder's own 1 MiB bound is a
        // unit test, since such a broker refuses a larger message before any consumer sees it.
        vec![b'{'; 900 * 1024],
        Vec::new(),
        b"null".to_vec(),
    ];
    // The same event id twice with different contents: one event, whatever the order.
    messages.push(event(json!({"event_id": "hostile-twin", "country": "FR"})));
    messages.push(event(json!({"event_id": "hostile-twin", "country": "US"})));
    messages
}

fn uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Requests built to be expensive, malformed or both.
fn hostile_requests(now: i64) -> Vec<(reqwest::Method, String)> {
    let (from, to) = (
        format_rfc3339(now - 30 * 24 * 60 * MINUTE_MS),
        format_rfc3339(now),
    );
    let get = |path: String| (reqwest::Method::GET, path);
    vec![
        get(format!(
            "/v1/metrics/active_users?from={from}&to={to}&step=1m&window=31d"
        )),
        get(format!(
            "/v1/metrics/sessions?from={from}&to={to}&step=1m&window=30d"
        )),
        get(format!(
            "/v1/metrics/failed_logins?from={from}&to={to}&group_by=user_id"
        )),
        get(format!("/v1/metrics/revenue?from={from}&to={to}&step=1m")),
        get("/v1/metrics/revenue?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z".into()),
        get(format!("/v1/metrics/revenue?from={to}&to={from}")),
        get(format!("/v1/metrics/revenue?from={from}&to={to}&step=0m")),
        get(format!(
            "/v1/metrics/revenue?from={from}&to={to}&window=-1m"
        )),
        get(format!(
            "/v1/metrics/revenue?from={from}&to={to}&step=99999999999999999999d"
        )),
        get(format!(
            "/v1/metrics/revenue?from={from}&to={to}&filter=country:%00"
        )),
        get(format!(
            "/v1/metrics/revenue?from={from}&to={to}&group_by=%FF"
        )),
        get(format!("/v1/metrics/%00?from={from}&to={to}")),
        get(format!(
            "/v1/metrics/revenue?from={from}&to={to}&filter={}",
            "a".repeat(8 * 1024)
        )),
        get("/v1/metrics/revenue?from=yesterday&to=today".into()),
        get("/v1/divergence?limit=99999999999".into()),
        get("/v1/alerts?x=%FF%FE".into()),
        (
            reqwest::Method::from_bytes(b"FOO").expect("a method"),
            "/v1/metrics".into(),
        ),
        (reqwest::Method::PATCH, "/v1/metrics/revenue".into()),
        (reqwest::Method::DELETE, "/healthz".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_producers_and_clients_leave_every_service_up_and_normal_buckets_exact()
-> Result<()> {
    let platform = Arc::new(Platform::new("hostile_soak", PARTITIONS).await?);
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let stop = Arc::new(AtomicBool::new(false));
    // Hostile clients, and a prober of /healthz beside them.
    let clients = {
        let (platform, stop) = (platform.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answered = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for (method, path) in hostile_requests(now_millis()) {
                    let url = format!("http://{}{path}", platform.listen_addr);
                    let response = platform.http.request(method.clone(), &url).send().await;
                    let status = response
                        .with_context(|| format!("{method} {path}: no answer"))?
                        .status();
                    ensure!(
                        !status.is_server_error(),
                        "{method} {path} answered {status}"
                    );
                    answered += 1;
                }
            }
            anyhow::Ok(answered)
        })
    };
    let prober = {
        let (platform, stop) = (platform.clone(), stop.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, _) = tokio::time::timeout(HEALTHZ_BOUND * 5, platform.get("/healthz"))
                    .await
                    .context("/healthz did not answer at all")??;
                ensure!(status == 200, "/healthz answered {status}");
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(slowest)
        })
    };

    // Ordinary events and hostile messages, interleaved, for the length of the soak.
    let mut rng = StdRng::seed_from_u64(15);
    let mut ledger = Ledger::default();
    let started = Instant::now();
    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut n = 0;
    while started.elapsed() < SOAK {
        let now = now_millis();
        let normal: Vec<Sent> = (0..40)
            .map(|i| {
                let time = rng.random_range(base..now);
                Sent::random(&mut rng, format!("soak-{n}-{i}"), time)
            })
            .collect();
        for e in &normal {
            let partition = rng.random_range(0..PARTITIONS);
            let offset = platform.send(partition, &e.payload()).await?;
            let end = ledger.ends.entry(partition).or_default();
            *end = (*end).max(offset + 1);
            ledger.sent.entry(e.id.clone()).or_insert_with(|| e.clone());
        }
        for payload in hostile_messages(base - 3 * 60 * MINUTE_MS) {
            let partition = rng.random_range(0..PARTITIONS);
            let offset = platform.send(partition, &payload).await?;
            let end = ledger.ends.entry(partition).or_default();
            *end = (*end).max(offset + 1);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    platform.wait_both_caught_up(&ledger.ends).await?;
    stop.store(true, Ordering::Relaxed);
    let answered = clients.await??;
    let slowest = prober.await??;
    ensure!(answered > 0, "no hostile request was sent");
    ensure!(
        slowest <= HEALTHZ_BOUND,
        "/healthz took {slowest:?} beside the hostile requests"
    );
    for service in [&mut speed, &mut lander, &mut serving] {
        service.assert_running()?;
    }

    // The ordinary events are exact on the speed side, then on the batch side of a promotion.
    let metrics = default_metrics();
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let range = (base, bucket_start(now_millis(), MINUTE_MS) + MINUTE_MS);
    let hostile_only = |e: &Sent| e.id.starts_with("hostile");
    ensure!(!ledger.sent.values().any(hostile_only));
    ledger
        .check(&platform, "speed side after the soak", &metrics, range)
        .await?;
    let (ok, text) = platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "the batch run failed after the soak:\n{text}");
    ledger.promoted();
    ledger
        .check(&platform, "after a promotion", &metrics, range)
        .await?;
    for service in [&mut speed, &mut lander, &mut serving] {
        service.assert_running()?;
    }
    Ok(())
}
