//! The truth a scenario checks served answers against, written out by hand from what was sent,
//! independently of the metric definitions the layers run.

use crate::Platform;
use anyhow::{Context, Result, ensure};
use rand::Rng;
use serde_json::json;
use shared_schema::catalog::MetricCatalog;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, format_rfc3339, parse_rfc3339};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The names of the default catalogue's metrics (`config/metrics.toml`). [`truth`] panics for a
/// metric it has no truth for, so a new default metric cannot go unchecked.
pub fn default_metrics() -> Vec<String> {
    MetricCatalog::default()
        .metrics
        .into_iter()
        .map(|metric| metric.name)
        .collect()
}

/// One distinct event as sent, with the fields the default metrics read.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub kind: &'static str,
    pub time: Millis,
    pub user: Option<String>,
    pub product: Option<String>,
    pub country: Option<String>,
    pub cents: Option<i64>,
}

impl Sent {
    pub fn payload(&self) -> Vec<u8> {
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

/// A bucket start and the group value.
pub type Key = (Millis, Option<String>);

/// The hand-written truth of one metric over distinct events: value per bucket and group.
pub fn truth(metric: &str, events: &[&Sent]) -> BTreeMap<Key, f64> {
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
        // These scenarios keep no profiles, so every purchase is of an `unknown` tier
        // (tests/tests/enrichment.rs checks the join itself).
        "revenue_by_tier" => {
            let mut out: BTreeMap<Key, f64> = BTreeMap::new();
            for e in purchases_with_amount() {
                *out.entry((minute(e), Some("unknown".into()))).or_default() +=
                    micros(e) as f64 / 1e6;
            }
            out
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
pub fn group_by(metric: &str) -> Option<&'static str> {
    match metric {
        "page_views" | "errors" | "error_rate" => Some("product_id"),
        "failed_logins" => Some("user_id"),
        "revenue_by_tier" => Some("tier"),
        "active_users" | "sessions" => None,
        _ => Some("country"),
    }
}

impl Sent {
    /// A random event of a random type at `time`, some fields missing, as producers send them.
    pub fn random(rng: &mut impl Rng, id: String, time: Millis) -> Sent {
        let kind = [
            "purchase",
            "page_view",
            "page_view",
            "error",
            "login_failed",
            "click",
        ][rng.random_range(0..6)];
        Sent {
            id,
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
    }
}

/// Compares every bucket of every metric in `metrics` over `[from, to)` with the truth: buckets
/// before the promoted cutover T must equal the truth over `batch_saw` (what the last batch run
/// saw) and be served by the batch view; buckets from T on must equal the truth over `sent` and
/// be served by the speed layer.
/// Sends `events` to random partitions of the platform's topic, raising `ends` (see
/// [`Platform::wait_caught_up`]).
pub async fn send_all(
    platform: &Platform,
    events: &[&Sent],
    rng: &mut impl Rng,
    ends: &mut HashMap<i32, i64>,
) -> Result<()> {
    for event in events {
        let partition = rng.random_range(0..platform.partitions);
        let payload: serde_json::Value = serde_json::from_slice(&event.payload())?;
        platform.send_tracked(partition, &payload, ends).await?;
    }
    Ok(())
}

pub async fn check_served(
    platform: &Platform,
    step: &str,
    metrics: &[&str],
    (from, to): (Millis, Millis),
    sent: &BTreeMap<String, Sent>,
    batch_saw: &BTreeMap<String, Sent>,
) -> Result<()> {
    let cutover: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT cutover FROM serving_state")
            .fetch_one(&platform.pool)
            .await?;
    let cutover = cutover.map(|t| t.timestamp_millis());
    let before_t = |b: Millis| cutover.is_some_and(|t| b < t);
    let (from, to) = (format_rfc3339(from), format_rfc3339(to));
    for &metric in metrics {
        let batch_events: Vec<&Sent> = batch_saw.values().collect();
        let speed_events: Vec<&Sent> = sent.values().collect();
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
        let (status, body) = platform.get(&url).await?;
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
        let (_, body) = platform.get(&url).await?;
        let point = &body["series"][0]["points"][0];
        let users: BTreeSet<&str> = batch_saw
            .values()
            .filter(|e| e.time >= start && e.time < t)
            .chain(sent.values().filter(|e| e.time >= t && e.time < end))
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

/// What a scenario sent, by id, and what its last promoted batch run saw: the two sides of
/// [`check_served`].
#[derive(Debug, Default)]
pub struct Ledger {
    pub sent: BTreeMap<String, Sent>,
    pub batch_saw: BTreeMap<String, Sent>,
    /// The next offset after the last message sent, per partition.
    pub ends: HashMap<i32, i64>,
}

impl Ledger {
    /// Sends each of `events` to a random one of `partitions`, a `duplicates` share of them
    /// twice (a copy changes no answer), and waits for both layers to have read them.
    pub async fn send(
        &mut self,
        platform: &Platform,
        events: &[Sent],
        rng: &mut impl Rng,
        duplicates: f64,
    ) -> Result<()> {
        for e in events {
            let copies = if rng.random_bool(duplicates) { 2 } else { 1 };
            for _ in 0..copies {
                let partition = rng.random_range(0..platform.partitions);
                let offset = platform.send(partition, &e.payload()).await?;
                let end = self.ends.entry(partition).or_default();
                *end = (*end).max(offset + 1);
            }
            self.sent.entry(e.id.clone()).or_insert_with(|| e.clone());
        }
        platform.wait_both_caught_up(&self.ends).await
    }

    /// A batch run promoted after everything sent so far had landed.
    pub fn promoted(&mut self) {
        self.batch_saw = self.sent.clone();
    }

    /// [`check_served`] over `metrics` in `range`.
    pub async fn check(
        &self,
        platform: &Platform,
        step: &str,
        metrics: &[&str],
        range: (Millis, Millis),
    ) -> Result<()> {
        check_served(platform, step, metrics, range, &self.sent, &self.batch_saw).await
    }
}
