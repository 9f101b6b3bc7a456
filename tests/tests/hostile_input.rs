//! Hostile input (issue 15): values the contract's decoder must refuse, values Postgres refuses
//! at commit, and Postgres refusing commits for a while. Every service keeps running, every
//! normal event is counted exactly by both layers, and every bad one is in the quarantine with
//! a reason. (`hostile_sources.rs`: the clock of "from the future", batch bytes, the CDC
//! publisher.)

use anyhow::{Context, Result, ensure};
use platform_tests::truth::{Ledger, Sent};
use platform_tests::{Platform, free_local_addr, series_value, wait_until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const PARTITIONS: i32 = 2;

/// Every default metric with a hand-written truth.
const METRICS: [&str; 8] = [
    "purchases",
    "revenue",
    "page_views",
    "errors",
    "error_rate",
    "active_users",
    "failed_logins",
    "sessions",
];

fn normal_events(rng: &mut StdRng, prefix: &str, base: Millis, n: usize) -> Vec<Sent> {
    (0..n)
        .map(|i| {
            let t = base + rng.random_range(-30 * MINUTE_MS..10 * MINUTE_MS);
            Sent::random(rng, format!("{prefix}{i}"), t)
        })
        .collect()
}

/// Random letters and digits: incompressible enough that Postgres cannot squeeze it into a
/// btree key.
fn noise(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

/// (partition, offset) -> reason of every quarantined message of the scenario's topic.
async fn quarantined(platform: &Platform) -> Result<BTreeMap<(i32, i64), String>> {
    let rows: Vec<(i32, i64, String)> =
        sqlx::query_as("SELECT partition, kafka_offset, reason FROM quarantine WHERE topic = $1")
            .bind(&platform.topic)
            .fetch_all(&platform.pool)
            .await?;
    Ok(rows.into_iter().map(|(p, o, r)| ((p, o), r)).collect())
}

/// Sends each payload to a partition in turn; returns (partition, offset, what it is).
async fn send_hostile(
    platform: &Platform,
    payloads: &[(String, Value)],
    ends: &mut HashMap<i32, i64>,
) -> Result<Vec<(i32, i64, String)>> {
    let mut sent = Vec::new();
    for (i, (what, payload)) in payloads.iter().enumerate() {
        let partition = i as i32 % platform.partitions;
        let offset = platform
            .send(partition, payload.to_string().as_bytes())
            .await?;
        let end = ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
        sent.push((partition, offset, what.clone()));
    }
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_values_are_quarantined_and_both_layers_count_the_rest() -> Result<()> {
    let platform = Platform::new("hostile", PARTITIONS).await?;
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut rng = StdRng::seed_from_u64(15);
    let mut ledger = Ledger::default();
    let first = normal_events(&mut rng, "a", base, 150);
    ledger.send(&platform, &first, &mut rng, 0.1).await?;

    let event = |id: &str, kind: &str| {
        json!({"event_id": id, "event_type": kind, "event_time": base, "schema_version": 2,
               "user_id": "u1", "product_id": "p1", "country": "DE", "amount": 1.0})
    };
    let with = |id: &str, kind: &str, field: &str, value: Value| {
        let mut v = event(id, kind);
        v[field] = value;
        v
    };
    let big_user = noise(&mut rng, 8_000);
    let big_country = noise(&mut rng, 8_000);
    let big_product = noise(&mut rng, 8_000);
    let hostile: Vec<(String, Value)> = vec![
        ("NUL in event_id", event("h-nul\u{0}id", "purchase")),
        (
            "NUL in user_id",
            with("h1", "login_failed", "user_id", json!("u\u{0}1")),
        ),
        (
            "NUL in country",
            with("h2", "purchase", "country", json!("D\u{0}E")),
        ),
        (
            "NUL in product_id",
            with("h3", "page_view", "product_id", json!("p\u{0}1")),
        ),
        ("NUL in event_type", event("h4", "purch\u{0}ase")),
        (
            "control character in city",
            with("h5", "purchase", "city", json!("Ber\u{1}lin")),
        ),
        (
            "8 KB user_id",
            with("h6", "login_failed", "user_id", json!(big_user)),
        ),
        (
            "8 KB country",
            with("h7", "purchase", "country", json!(big_country)),
        ),
        (
            "8 KB product_id",
            with("h8", "page_view", "product_id", json!(big_product)),
        ),
        (
            "event_time i64::MIN",
            with("h9", "purchase", "event_time", json!(i64::MIN)),
        ),
        (
            "event_time i64::MAX",
            with("h10", "purchase", "event_time", json!(i64::MAX)),
        ),
        (
            "event_time year 0",
            with(
                "h11",
                "purchase",
                "event_time",
                json!(-62_167_219_200_000i64),
            ),
        ),
        (
            "event_time year 10000",
            with(
                "h12",
                "purchase",
                "event_time",
                json!(253_402_300_800_000i64),
            ),
        ),
        (
            "event_time before 1970",
            with("h13", "purchase", "event_time", json!(-1)),
        ),
        (
            "event_time 0000-01-01 as text",
            with(
                "h14",
                "purchase",
                "event_time",
                json!("0000-01-01T00:00:00Z"),
            ),
        ),
        (
            "NUL in an unparseable event_time",
            with("h15", "purchase", "event_time", json!("2026\u{0}")),
        ),
    ]
    .into_iter()
    .map(|(what, v)| (what.to_string(), v))
    .collect();
    let bad = send_hostile(&platform, &hostile, &mut ledger.ends).await?;
    // Normal traffic goes on behind the hostile messages, in the same partitions.
    let second = normal_events(&mut rng, "b", base, 150);
    ledger.send(&platform, &second, &mut rng, 0.1).await?;

    for (name, service) in [
        ("speed layer", &mut speed),
        ("lander", &mut lander),
        ("serving layer", &mut serving),
    ] {
        service
            .assert_running()
            .with_context(|| format!("the {name} stopped"))?;
    }
    let kept = quarantined(&platform).await?;
    for (partition, offset, what) in &bad {
        let reason = kept
            .get(&(*partition, *offset))
            .with_context(|| format!("{what} (p{partition}@{offset}) is not in quarantine"))?;
        ensure!(!reason.is_empty(), "{what}: empty reason");
    }
    ensure!(
        kept.len() == bad.len(),
        "only the hostile messages are quarantined: {kept:?}"
    );
    let reasons: Vec<&String> = kept.values().collect();
    for words in ["control character U+0000", "over its limit", "outside 1970"] {
        ensure!(
            reasons.iter().any(|r| r.contains(words)),
            "no reason says {words:?}: {reasons:?}"
        );
    }

    let range = (base - 40 * MINUTE_MS, base + 20 * MINUTE_MS);
    ledger
        .check(&platform, "before any promotion", &METRICS, range)
        .await?;
    // The lander landed every normal event: the batch side equals the truth before T.
    let t = base + 5 * MINUTE_MS;
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t)])
        .await?;
    ensure!(ok, "batch run failed:\n{output}");
    ledger.promoted();
    ledger
        .check(&platform, "after the promotion", &METRICS, range)
        .await?;
    speed.assert_running()?;
    lander.assert_running()?;
    Ok(())
}

/// The address the speed layer's `/metrics` (and `/readyz`) listener was given.
fn speed_metrics_addr(platform: &Platform) -> &str {
    platform
        .extra_env
        .iter()
        .find(|(k, _)| k == "PLATFORM_SPEED__METRICS_ADDR")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

fn metrics_url(platform: &Platform, path: &str) -> String {
    format!("http://{}{path}", speed_metrics_addr(platform))
}

/// A value of the speed layer's `/metrics`, 0 when the series is absent.
async fn scrape(platform: &Platform, series: &str) -> Result<f64> {
    let text = platform.scrape(speed_metrics_addr(platform)).await?;
    Ok(series_value(&text, series)?.unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_postgres_refuses_at_commit_are_isolated_and_an_outage_is_retried_loudly()
-> Result<()> {
    let mut platform = Platform::new("refused", PARTITIONS).await?;
    platform
        .extra_env
        .push(("PLATFORM_SPEED__METRICS_ADDR".into(), free_local_addr()?));
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let ready = || async {
        match platform
            .http
            .get(metrics_url(&platform, "/readyz"))
            .send()
            .await
        {
            Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
            Err(_) => None,
        }
    };
    wait_until(
        Duration::from_secs(30),
        "the speed layer's /readyz",
        || async { ready().await.is_some_and(|(status, _)| status == 200) },
    )
    .await?;

    // A rule the decoder does not know: Postgres refuses some values the decoder accepts (here
    // a product, which page views are grouped by). Their commit fails the same way on every
    // retry, as a NUL or a too-long key did.
    sqlx::query(
        "ALTER TABLE speed_cells ADD CONSTRAINT test_refuses_poison CHECK (position('poison'::bytea in body) = 0)",
    )
    .execute(&platform.pool)
    .await?;
    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut rng = StdRng::seed_from_u64(16);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut poison = Vec::new();
    for (i, e) in normal_events(&mut rng, "n", base, 200)
        .into_iter()
        .enumerate()
    {
        let partition = rng.random_range(0..PARTITIONS);
        let offset = platform.send(partition, &e.payload()).await?;
        *ends.entry(partition).or_default() = offset + 1;
        sent.insert(e.id.clone(), e);
        if i % 50 == 7 {
            let p = Sent {
                kind: "page_view",
                product: Some(format!("poison-{i}")),
                ..Sent::random(&mut rng, format!("poison-{i}"), base)
            };
            let offset = platform.send(partition, &p.payload()).await?;
            *ends.entry(partition).or_default() = offset + 1;
            poison.push((partition, offset));
        }
    }
    platform.wait_caught_up("speed_offsets", &ends).await?;
    speed.assert_running()?;
    let kept = quarantined(&platform).await?;
    for at in &poison {
        let reason = kept
            .get(at)
            .with_context(|| format!("{at:?} not quarantined"))?;
        ensure!(reason.contains("SQLSTATE 23514"), "{reason}");
    }
    ensure!(kept.len() == poison.len(), "{kept:?}");
    let ledger = Ledger {
        sent: sent.clone(),
        ..Ledger::default()
    };
    let range = (base - 40 * MINUTE_MS, base + 20 * MINUTE_MS);
    ledger
        .check(&platform, "poison isolated", &METRICS, range)
        .await?;
    let data_failures = scrape(
        &platform,
        "lambda_consumer_commit_failures_total{cause=\"data\",consumer=\"speed-layer\"}",
    )
    .await?;
    ensure!(
        data_failures >= 1.0,
        "data failures counted: {data_failures}"
    );

    // Postgres refuses every commit for a while (a table gone): retried, never quarantined,
    // and loud in /readyz and /metrics until it commits again.
    sqlx::query("ALTER TABLE speed_cells RENAME TO speed_cells_away")
        .execute(&platform.pool)
        .await?;
    let during = normal_events(&mut rng, "d", base, 40);
    for e in &during {
        let partition = rng.random_range(0..PARTITIONS);
        let offset = platform.send(partition, &e.payload()).await?;
        *ends.entry(partition).or_default() = offset + 1;
        sent.insert(e.id.clone(), e.clone());
    }
    wait_until(
        Duration::from_secs(30),
        "/readyz to report the failing commit",
        || async {
            ready()
                .await
                .is_some_and(|(status, body)| status == 503 && body.contains("Postgres"))
        },
    )
    .await?;
    let (_, body) = ready().await.context("readyz")?;
    ensure!(
        !body.contains("speed_cells"),
        "/readyz says what is down, not the driver's message: {body}"
    );
    let failing = scrape(
        &platform,
        "lambda_consumer_commit_failing{consumer=\"speed-layer\"}",
    )
    .await?;
    ensure!(failing == 1.0, "commit_failing {failing}");
    sqlx::query("ALTER TABLE speed_cells_away RENAME TO speed_cells")
        .execute(&platform.pool)
        .await?;
    platform.wait_caught_up("speed_offsets", &ends).await?;
    wait_until(Duration::from_secs(30), "/readyz to recover", || async {
        ready().await.is_some_and(|(status, _)| status == 200)
    })
    .await?;
    ensure!(
        scrape(
            &platform,
            "lambda_consumer_commit_failing{consumer=\"speed-layer\"}"
        )
        .await?
            == 0.0
    );
    ensure!(
        quarantined(&platform).await?.len() == poison.len(),
        "an outage quarantines nothing"
    );
    let ledger = Ledger {
        sent,
        ..Ledger::default()
    };
    ledger
        .check(&platform, "after the outage", &METRICS, range)
        .await?;
    speed.assert_running()?;
    Ok(())
}
