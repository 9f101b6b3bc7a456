//! Every metric kind end to end through a promotion (issue 3), with a definitions file that adds
//! metrics the default dashboard lacks: a definition change reaches both layers with no code
//! edited.
//!
//! The truth for each metric is written out here by hand from what was sent, independently of
//! the definitions, and compared with what is served before and after a promotion, and after
//! late events and the next batch run.

use anyhow::{Context, Result, ensure};
use platform_tests::Platform;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shared_schema::metrics::DEFAULT_METRICS;
use shared_schema::time::{
    MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis, parse_rfc3339,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const PARTITIONS: i32 = 3;

const EXTRA_METRICS: &str = r#"
[[metric]]
name = "average_purchase"
description = "Mean amount of a purchase"
event_type = "purchase"
aggregation = "avg"
field = "amount"
dimensions = ["country"]

[[metric]]
name = "largest_purchase"
event_type = "purchase"
aggregation = "max"
field = "amount"
dimensions = ["country"]

[[metric]]
name = "smallest_purchase"
event_type = "purchase"
aggregation = "min"
field = "amount"
dimensions = ["country"]
"#;

#[derive(Debug, Clone)]
struct Sent {
    id: String,
    kind: &'static str,
    time: Millis,
    user: Option<String>,
    product: Option<String>,
    country: Option<String>,
    cents: Option<i64>,
}

impl Sent {
    fn payload(&self) -> Vec<u8> {
        let mut v = json!({"event_id": self.id, "event_type": self.kind, "event_time": self.time, "schema_version": 2});
        if let Some(user) = &self.user {
            v["user_id"] = json!(user);
        }
        if let Some(product) = &self.product {
            v["product_id"] = json!(product);
        }
        if let Some(country) = &self.country {
            v["country"] = json!(country);
        }
        if let Some(cents) = self.cents {
            v["amount"] = json!(cents as f64 / 100.0);
        }
        v.to_string().into_bytes()
    }
}

type Key = (Millis, Option<String>);

/// The hand-written truth of one metric over distinct events: value per bucket and group.
fn truth(metric: &str, events: &[&Sent]) -> BTreeMap<Key, f64> {
    let minute = |e: &Sent| bucket_start(e.time, MINUTE_MS);
    let count_by = |kind: &str, group: fn(&Sent) -> Option<String>| {
        let mut out: BTreeMap<Key, f64> = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == kind) {
            *out.entry((minute(e), group(e))).or_default() += 1.0;
        }
        out
    };
    let purchases_with_amount = || {
        events
            .iter()
            .filter(|e| e.kind == "purchase" && e.cents.is_some())
    };
    let micros = |e: &Sent| e.cents.unwrap_or(0) as i128 * 10_000;
    match metric {
        "purchases" => count_by("purchase", |e| e.country.clone()),
        "page_views" => count_by("page_view", |e| e.product.clone()),
        "errors" => count_by("error", |e| e.product.clone()),
        "failed_logins" => count_by("login_failed", |e| e.user.clone()),
        "revenue" | "average_purchase" | "largest_purchase" | "smallest_purchase" => {
            let mut parts: BTreeMap<Key, Vec<i128>> = BTreeMap::new();
            for e in purchases_with_amount() {
                parts
                    .entry((minute(e), e.country.clone()))
                    .or_default()
                    .push(micros(e));
            }
            parts
                .into_iter()
                .map(|(k, v)| {
                    let value = match metric {
                        "revenue" => v.iter().sum::<i128>() as f64 / 1e6,
                        "average_purchase" => v.iter().sum::<i128>() as f64 / 1e6 / v.len() as f64,
                        "largest_purchase" => {
                            v.iter().copied().max().unwrap_or_default() as f64 / 1e6
                        }
                        _ => v.iter().copied().min().unwrap_or_default() as f64 / 1e6,
                    };
                    (k, value)
                })
                .collect()
        }
        "error_rate" => {
            let errors = count_by("error", |e| e.product.clone());
            count_by("page_view", |e| e.product.clone())
                .into_iter()
                .map(|(k, views)| (k.clone(), errors.get(&k).copied().unwrap_or(0.0) / views))
                .collect()
        }
        "active_users" => {
            let mut users: BTreeMap<Millis, BTreeSet<&str>> = BTreeMap::new();
            for e in events {
                if let Some(user) = &e.user {
                    users.entry(minute(e)).or_default().insert(user);
                }
            }
            users
                .into_iter()
                .map(|(b, u)| ((b, None), u.len() as f64))
                .collect()
        }
        "sessions" => {
            let mut times: BTreeMap<&str, Vec<Millis>> = BTreeMap::new();
            for e in events {
                if let Some(user) = &e.user {
                    times.entry(user).or_default().push(e.time);
                }
            }
            let mut out: BTreeMap<Key, f64> = BTreeMap::new();
            for mut user_times in times.into_values() {
                user_times.sort_unstable();
                let mut previous: Option<Millis> = None;
                for t in user_times {
                    if previous.is_none_or(|p| t - p >= 30 * MINUTE_MS) {
                        *out.entry((bucket_start(t, MINUTE_MS), None)).or_default() += 1.0;
                    }
                    previous = Some(t);
                }
            }
            out
        }
        other => panic!("no truth written for {other}"),
    }
}

/// The metric's grouping dimension in these checks.
fn group_by(metric: &str) -> Option<&'static str> {
    match metric {
        "page_views" | "errors" | "error_rate" => Some("product_id"),
        "failed_logins" => Some("user_id"),
        "active_users" | "sessions" => None,
        _ => Some("country"),
    }
}

const METRICS: [&str; 11] = [
    "sessions",
    "purchases",
    "revenue",
    "page_views",
    "errors",
    "error_rate",
    "active_users",
    "failed_logins",
    "average_purchase",
    "largest_purchase",
    "smallest_purchase",
];

struct Run {
    platform: Platform,
    base: Millis,
    sent: BTreeMap<String, Sent>,
    batch_saw: BTreeMap<String, Sent>,
    ends: HashMap<i32, i64>,
}

impl Run {
    async fn send(&mut self, events: &[Sent], rng: &mut StdRng) -> Result<()> {
        for e in events {
            let copies = if rng.random_bool(0.15) { 2 } else { 1 };
            for _ in 0..copies {
                let partition = rng.random_range(0..PARTITIONS);
                let offset = self.platform.send(partition, &e.payload()).await?;
                let end = self.ends.entry(partition).or_default();
                *end = (*end).max(offset + 1);
            }
            self.sent.entry(e.id.clone()).or_insert_with(|| e.clone());
        }
        self.platform
            .wait_caught_up("speed_offsets", &self.ends)
            .await?;
        self.platform
            .wait_caught_up("lake_progress", &self.ends)
            .await
    }

    async fn check(&self, step: &str) -> Result<()> {
        let cutover: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT cutover FROM serving_state")
                .fetch_one(&self.platform.pool)
                .await?;
        let cutover = cutover.map(|t| t.timestamp_millis());
        let before_t = |b: Millis| cutover.is_some_and(|t| b < t);
        let (from, to) = (
            format_rfc3339(self.base - 60 * MINUTE_MS),
            format_rfc3339(self.base + 30 * MINUTE_MS),
        );
        for metric in METRICS {
            let batch_events: Vec<&Sent> = self.batch_saw.values().collect();
            let speed_events: Vec<&Sent> = self.sent.values().collect();
            let mut want: BTreeMap<Key, (f64, &str)> = BTreeMap::new();
            for (k, v) in truth(metric, &batch_events) {
                if before_t(k.0) {
                    want.insert(k, (v, "batch"));
                }
            }
            for (k, v) in truth(metric, &speed_events) {
                if !before_t(k.0) {
                    want.insert(k, (v, "speed"));
                }
            }
            let mut url = format!("/v1/metrics/{metric}?from={from}&to={to}");
            if let Some(dim) = group_by(metric) {
                url.push_str(&format!("&group_by={dim}"));
            }
            let (status, body) = self.platform.get(&url).await?;
            ensure!(status == 200, "{step}: {metric}: {status} {body}");
            let mut got: BTreeMap<Key, (f64, String)> = BTreeMap::new();
            for series in body["series"].as_array().context("series")? {
                let group =
                    group_by(metric).and_then(|d| series["group"][d].as_str().map(str::to_string));
                for point in series["points"].as_array().context("points")? {
                    let t = parse_rfc3339(point["t"].as_str().context("t")?).context("t")?;
                    got.insert(
                        (t, group.clone()),
                        (
                            point["value"].as_f64().context("value")?,
                            point["source"].as_str().context("source")?.to_string(),
                        ),
                    );
                }
            }
            let tolerance = |truth: f64| {
                if metric == "active_users" {
                    (truth * 0.02).max(0.5)
                } else {
                    1e-9 * truth.abs().max(1.0)
                }
            };
            let keys: BTreeSet<&Key> = want.keys().chain(got.keys()).collect();
            let wrong: Vec<String> = keys
                .into_iter()
                .filter(|k| match (want.get(*k), got.get(*k)) {
                    (Some((w, ws)), Some((g, gs))) => (w - g).abs() > tolerance(*w) || ws != gs,
                    _ => true,
                })
                .map(|k| {
                    format!(
                        "{} {:?}: served {:?}, truth {:?}",
                        format_rfc3339(k.0),
                        k.1,
                        got.get(k),
                        want.get(k)
                    )
                })
                .collect();
            ensure!(
                wrong.is_empty(),
                "{step}: {metric} differs (T = {cutover:?}):\n{}",
                wrong.join("\n")
            );
        }

        // Distinct users over a window spanning the cutover: sketches merged, never counts added.
        if let Some(t) = cutover {
            // The point at T with a 10-minute window covers [T - 9m, T + 1m).
            let (start, end) = (t - 9 * MINUTE_MS, t + MINUTE_MS);
            let url = format!(
                "/v1/metrics/active_users?from={}&to={}&step=1m&window=10m",
                format_rfc3339(t),
                format_rfc3339(end)
            );
            let (_, body) = self.platform.get(&url).await?;
            let point = &body["series"][0]["points"][0];
            let users: BTreeSet<&str> = self
                .batch_saw
                .values()
                .filter(|e| e.time >= start && e.time < t)
                .chain(self.sent.values().filter(|e| e.time >= t && e.time < end))
                .filter_map(|e| e.user.as_deref())
                .collect();
            let served = point["value"]
                .as_f64()
                .context("active_users window value")?;
            let want = users.len() as f64;
            ensure!(
                point["source"] == "mixed",
                "{step}: a window spanning T is mixed: {point}"
            );
            ensure!(
                (served - want).abs() <= (want * 0.02).max(0.5),
                "{step}: {served} distinct users served, {want} true"
            );
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_kind_through_a_promotion() -> Result<()> {
    let mut platform = Platform::new("metrics", PARTITIONS).await?;
    let definitions = platform.lake_dir.with_file_name("metrics.toml");
    std::fs::write(&definitions, format!("{DEFAULT_METRICS}\n{EXTRA_METRICS}"))?;
    platform.extra_env.push((
        "PLATFORM_METRICS_FILE".into(),
        definitions.to_string_lossy().into_owned(),
    ));
    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut run = Run {
        platform,
        base,
        sent: BTreeMap::new(),
        batch_saw: BTreeMap::new(),
        ends: HashMap::new(),
    };
    let _speed = run.platform.spawn("speed-layer", &["run"])?;
    let _lander = run.platform.spawn("batch-layer", &["land"])?;
    let _serving = run.platform.spawn("serving-layer", &["run"])?;
    run.platform.wait_for_http().await?;

    let (status, body) = run.platform.get("/v1/metrics").await?;
    let listed: Vec<&str> = body["metrics"]
        .as_array()
        .context("metrics")?
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    ensure!(
        status == 200 && METRICS.iter().all(|m| listed.contains(m)),
        "listed metrics: {listed:?}"
    );

    let mut rng = StdRng::seed_from_u64(11);
    let mut next = 0;
    let mut make = |rng: &mut StdRng, time: Millis| {
        next += 1;
        let kind = [
            "purchase",
            "page_view",
            "page_view",
            "error",
            "login_failed",
            "click",
        ][rng.random_range(0..6)];
        Sent {
            id: format!("m{next}"),
            kind,
            time,
            user: rng
                .random_bool(0.9)
                .then(|| format!("u{}", rng.random_range(0..40))),
            product: rng
                .random_bool(0.9)
                .then(|| format!("p{}", rng.random_range(0..4))),
            country: rng
                .random_bool(0.9)
                .then(|| ["DE", "FR", "US"][rng.random_range(0..3)].to_string()),
            cents: (kind == "purchase" && rng.random_bool(0.9))
                .then(|| rng.random_range(1..50_000)),
        }
    };
    let click = |id: &str, user: &str, minutes: i64| Sent {
        id: id.into(),
        kind: "click",
        time: base + minutes * MINUTE_MS,
        user: Some(user.into()),
        product: None,
        country: None,
        cents: None,
    };
    let mut first: Vec<Sent> = (0..600)
        .map(|_| {
            let t = base + rng.random_range(-50 * MINUTE_MS..10 * MINUTE_MS);
            make(&mut rng, t)
        })
        .collect();
    // Sessions with known shapes: 31 minutes apart is two sessions, 30 exactly too, 20 is one;
    // a later event will bridge the gap of `bridged`.
    first.extend([
        click("s1", "split", -45),
        click("s2", "split", -14),
        click("s3", "split", 6),
        click("s4", "exact", -40),
        click("s5", "exact", -10),
        click("s6", "bridged", -40),
        click("s7", "bridged", -5),
    ]);
    run.send(&first, &mut rng).await?;
    run.check("before any promotion").await?;

    let t = base + 5 * MINUTE_MS;
    let (ok, output) = run
        .platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t)])
        .await?;
    ensure!(ok, "batch run failed:\n{output}");
    run.batch_saw = run.sent.clone();
    run.check("after the promotion").await?;

    let mut late: Vec<Sent> = (0..60)
        .map(|_| {
            let t = base + rng.random_range(-50 * MINUTE_MS..10 * MINUTE_MS);
            make(&mut rng, t)
        })
        .collect();
    late.push(click("s8", "bridged", -22));
    run.send(&late, &mut rng).await?;
    run.check("late events before the next run").await?;

    let (ok, output) = run.platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "second batch run failed:\n{output}");
    run.batch_saw = run.sent.clone();
    run.check("after the next run").await?;
    Ok(())
}

#[tokio::test]
async fn a_broken_definition_file_refuses_every_service_at_start() -> Result<()> {
    let dir = platform_tests::target_dir()?.join("e2e-broken-definitions");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("metrics.toml");
    std::fs::write(
        &path,
        "[[metric]]\nname = \"broken\"\naggregation = \"summ\"\n",
    )?;
    for (binary, args) in [
        ("speed-layer", vec!["run"]),
        ("batch-layer", vec!["run"]),
        ("serving-layer", vec!["run"]),
    ] {
        let output = tokio::process::Command::new(platform_tests::bin_path(binary)?)
            .args(&args)
            .env(
                "DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/never-reached",
            )
            .env("PLATFORM_METRICS_FILE", &path)
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success(),
            "{binary} started with a broken definition file"
        );
        ensure!(
            stderr.contains("metric `broken`, field `aggregation`"),
            "{binary} said: {stderr}"
        );
    }
    Ok(())
}
