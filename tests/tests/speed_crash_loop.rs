//! A speed side that stops is never a silent gap (issue 15): `speed-layer run` is SIGKILLed three
//! times a few seconds apart while events flow, each replacement started a few seconds after the
//! previous kill. At every moment each answer either counts every event acknowledged more than
//! a grace ago, or reports the buckets it may be missing as `complete:false` with those
//! intervals in `gaps` (and the alert `speed_stalled` fires); and within a bounded time the last
//! instance owns partitions and counts every event exactly once.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, Service, free_local_addr, wait_until};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, now_millis, parse_rfc3339};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
/// `speed.stall_timeout` of this scenario.
const STALL: Duration = Duration::from_secs(2);
/// How long a healthy platform may take to count an acknowledged event, or to report it
/// missing: the stall timeout, plus a batch, a commit and a liveness check.
const GRACE: Duration = Duration::from_secs(4);
/// The last instance owns partitions and has counted everything within this.
const BOUND: Duration = Duration::from_secs(90);

/// Event time and acknowledgement instant of every event sent; `None` while in flight.
type Sent = Arc<Mutex<Vec<(Millis, Option<Instant>)>>>;

/// Per bucket: the events sent (`acked_before` None, in flight included), or those acknowledged
/// before the instant.
fn per_bucket(
    sent: &[(Millis, Option<Instant>)],
    acked_before: Option<Instant>,
) -> BTreeMap<Millis, f64> {
    let mut counts = BTreeMap::new();
    for (time, acked) in sent {
        let counts_here = match (acked_before, acked) {
            (None, _) => true,
            (Some(limit), Some(acked)) => *acked < limit,
            (Some(_), None) => false,
        };
        if counts_here {
            *counts.entry(bucket_start(*time, MINUTE_MS)).or_insert(0.0) += 1.0;
        }
    }
    counts
}

/// One answer against the truth at the moment it was asked (`asked`): no bucket above what was
/// sent, and every bucket outside `gaps` holding at least what was acknowledged a grace before.
fn check_answer(
    body: &serde_json::Value,
    sent: &[(Millis, Option<Instant>)],
    asked: Instant,
) -> Result<()> {
    let gaps: Vec<(Millis, Millis)> = body["gaps"]
        .as_array()
        .context("gaps")?
        .iter()
        .map(|g| {
            let at = |k: &str| g[k].as_str().and_then(parse_rfc3339).context("gap bound");
            Ok((at("from")?, at("to")?))
        })
        .collect::<Result<_>>()?;
    ensure!(
        (body["complete"] == true) == gaps.is_empty(),
        "complete and gaps disagree: {body}"
    );
    let served = platform_tests::first_series_points(body)?;
    let all = per_bucket(sent, None);
    let Some(owed_before) = asked.checked_sub(GRACE) else {
        return Ok(());
    };
    let owed = per_bucket(sent, Some(owed_before));
    for (bucket, value) in &served {
        let most = all.get(bucket).copied().unwrap_or(0.0);
        ensure!(
            *value <= most,
            "bucket {bucket} overcounted: {value} > {most}: {body}"
        );
    }
    for (bucket, least) in owed {
        let value = served.get(&bucket).copied().unwrap_or(0.0);
        let in_gap = gaps
            .iter()
            .any(|(lo, hi)| *lo < bucket + MINUTE_MS && bucket < *hi);
        ensure!(
            value >= least || in_gap,
            "bucket {bucket} undercounted in silence: {value} < {least} acknowledged {GRACE:?} \
             before the request, and no gap covers it: {body}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_looping_speed_layer_is_exact_or_loudly_incomplete_and_recovers() -> Result<()> {
    let mut platform = Platform::new("crash_loop", PARTITIONS).await?;
    // One instance runs at a time, each on this address (a SIGKILLed one frees it at once).
    let metrics = free_local_addr()?;
    for (k, v) in [
        ("PLATFORM_SPEED__METRICS_ADDR", metrics.clone()),
        (
            "PLATFORM_SPEED__STALL_TIMEOUT",
            format!("{}s", STALL.as_secs()),
        ),
        ("PLATFORM_SPEED__LIVENESS_INTERVAL", "500ms".to_string()),
        // Every answer read afresh, so that the check sees each moment.
        (
            "PLATFORM_SERVING__SNAPSHOT_CACHE_MAX_AGE",
            "100ms".to_string(),
        ),
        ("PLATFORM_SERVING__ALERT_INTERVAL", "500ms".to_string()),
    ] {
        platform.extra_env.push((k.to_string(), v));
    }
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let mut speed: Service = platform.spawn_as("speed-0", "speed-layer", &["run"])?;
    let platform = Arc::new(platform);
    let from = bucket_start(now_millis(), MINUTE_MS) - MINUTE_MS;

    // Events flow throughout: one per partition every 200 ms, timed now.
    let sent: Sent = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));
    let ends: Arc<Mutex<HashMap<i32, i64>>> = Arc::default();
    let producer = {
        let (platform, sent, producing, ends) = (
            platform.clone(),
            sent.clone(),
            producing.clone(),
            ends.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while producing.load(Ordering::Relaxed) {
                for partition in 0..PARTITIONS {
                    let time = now_millis();
                    let payload = json!({"event_id": format!("c{i}"), "event_type": "purchase",
                        "event_time": time, "country": "DE", "amount": 1.0, "schema_version": 2});
                    i += 1;
                    let index = {
                        let mut sent = sent.lock().expect("sent");
                        sent.push((time, None));
                        sent.len() - 1
                    };
                    let offset = platform
                        .send(partition, payload.to_string().as_bytes())
                        .await?;
                    sent.lock().expect("sent")[index].1 = Some(Instant::now());
                    let mut ends = ends.lock().expect("ends");
                    let end = ends.entry(partition).or_default();
                    *end = (*end).max(offset + 1);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        })
    };
    // Every answer, all along, is checked against the truth of its moment.
    let checking = Arc::new(AtomicBool::new(true));
    let checker = {
        let (platform, sent, checking) = (platform.clone(), sent.clone(), checking.clone());
        tokio::spawn(async move {
            let mut answers = 0u32;
            let mut incomplete = 0u32;
            while checking.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let to = bucket_start(now_millis(), MINUTE_MS) + 2 * MINUTE_MS;
                let (status, body) = platform
                    .get(&platform_tests::purchases_path(from, to))
                    .await?;
                ensure!(status == 200, "{status}: {body}");
                let snapshot = sent.lock().expect("sent").clone();
                let asked_at = shared_schema::time::format_rfc3339(now_millis());
                check_answer(&body, &snapshot, asked)
                    .with_context(|| format!("answer asked at about {asked_at}"))?;
                answers += 1;
                incomplete += u32::from(body["complete"] == false);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::Ok((answers, incomplete))
        })
    };

    speed.wait_for_partitions(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Three SIGKILLs, each replacement a few seconds after the previous kill.
    for round in 1..=3 {
        speed.kill9().await?;
        // Longer than the grace: the partitions go unconsumed for longer than it takes a
        // healthy platform to count an event.
        tokio::time::sleep(Duration::from_secs(5)).await;
        speed = platform.spawn_as(&format!("speed-{round}"), "speed-layer", &["run"])?;
        if round < 3 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let last_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    producing.store(false, Ordering::Relaxed);
    producer.await??;

    // Within the bound the last instance owns partitions and has counted everything.
    let ends = ends.lock().expect("ends").clone();
    let left = BOUND.saturating_sub(last_started.elapsed());
    platform
        .wait_caught_up_within("speed_offsets", &ends, left)
        .await
        .with_context(|| format!("the last instance's assignments: {:?}", speed.assignments()))?;
    ensure!(
        speed.got_partitions(),
        "the last instance owns nothing: {}",
        speed.log()
    );
    wait_until(
        Duration::from_secs(15),
        "an exact, complete answer",
        || async {
            let to = bucket_start(now_millis(), MINUTE_MS) + 2 * MINUTE_MS;
            let Ok((200, body)) = platform
                .get(&platform_tests::purchases_path(from, to))
                .await
            else {
                return false;
            };
            let truth: f64 = sent.lock().map(|s| s.len() as f64).unwrap_or(-1.0);
            body["complete"] == true && platform_tests::first_series_total(&body) == truth
        },
    )
    .await?;
    checking.store(false, Ordering::Relaxed);
    let (answers, incomplete) = checker.await??;
    println!("{answers} answers checked, {incomplete} of them incomplete");

    // The stalls were reported as an alert, and the last instance says what it owns.
    let (_, alerts) = platform.get("/v1/alerts").await?;
    ensure!(
        alerts.to_string().contains("speed_stalled"),
        "the stalls raised no alert: {alerts}"
    );
    let readyz: serde_json::Value = reqwest::get(format!("http://{metrics}/readyz"))
        .await?
        .json()
        .await?;
    ensure!(
        readyz["ready"] == true
            && readyz["owned_partitions"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
        "the last instance's /readyz: {readyz}"
    );
    speed.assert_running()?;
    Ok(())
}
