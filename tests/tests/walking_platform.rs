//! The walking platform, end to end (issue 2): events through both layers to one merged, exact
//! answer, on the real binaries, Postgres and broker.
//!
//! After every step the served answer is compared with the truth computed here from what was
//! sent: for each bucket and country, the distinct events, split at the cutover into what the
//! promoted batch view saw and what the speed layer sees now.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, Service, purchases_path};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const PARTITIONS: i32 = 4;
const COUNTRIES: [Option<&str>; 4] = [Some("DE"), Some("FR"), Some("US"), None];

/// One purchase as the test knows it.
#[derive(Debug, Clone)]
struct Purchase {
    id: String,
    time: Millis,
    country: Option<String>,
    cents: i64,
}

impl Purchase {
    /// The contract's JSON, in one of the accepted shapes.
    fn payload(&self, shape: u8) -> Vec<u8> {
        let mut v = json!({"event_id": self.id, "event_type": "purchase", "user_id": "u1",
                           "amount": self.cents as f64 / 100.0});
        v["event_time"] = if shape & 1 == 0 {
            json!(self.time)
        } else {
            json!(format_rfc3339(self.time))
        };
        match (shape & 2 == 0, &self.country) {
            (true, Some(country)) => v["location"] = json!(format!("Somewhere, {country}")),
            (true, None) => {}
            (false, country) => {
                v["schema_version"] = json!(2);
                v["city"] = json!("Somewhere");
                if let Some(country) = country {
                    v["country"] = json!(country);
                }
            }
        }
        v.to_string().into_bytes()
    }
}

/// Distinct purchases by id; a resend of an id changes nothing.
#[derive(Debug, Clone, Default)]
struct Truth {
    purchases: BTreeMap<String, Purchase>,
}

type Cell = (Millis, Option<String>);

impl Truth {
    fn add(&mut self, p: &Purchase) {
        self.purchases
            .entry(p.id.clone())
            .or_insert_with(|| p.clone());
    }

    /// (count, revenue in cents) per minute bucket and country.
    fn cells(&self) -> BTreeMap<Cell, (i64, i64)> {
        let mut cells: BTreeMap<Cell, (i64, i64)> = BTreeMap::new();
        for p in self.purchases.values() {
            let cell = cells
                .entry((bucket_start(p.time, MINUTE_MS), p.country.clone()))
                .or_default();
            cell.0 += 1;
            cell.1 += p.cents;
        }
        cells
    }
}

/// What the platform must serve: buckets before T as the batch view saw them, the rest as the
/// speed layer sees them now.
fn expected(
    cutover: Option<Millis>,
    batch: &Truth,
    speed: &Truth,
) -> BTreeMap<Cell, (i64, i64, &'static str)> {
    let before_t = |b: Millis| cutover.is_some_and(|t| b < t);
    let mut out = BTreeMap::new();
    for (cell, (n, cents)) in batch.cells() {
        if before_t(cell.0) {
            out.insert(cell, (n, cents, "batch"));
        }
    }
    for (cell, (n, cents)) in speed.cells() {
        if !before_t(cell.0) {
            out.insert(cell, (n, cents, "speed"));
        }
    }
    out
}

struct Scenario {
    platform: Platform,
    rng: StdRng,
    base: Millis,
    next_id: u64,
    /// Everything sent so far.
    sent: Truth,
    /// What the promoted batch view was computed from.
    batch_saw: Truth,
    /// The next offset per partition after everything produced.
    ends: HashMap<i32, i64>,
    bad_sent: usize,
}

impl Scenario {
    fn purchase(&mut self, time: Millis) -> Purchase {
        self.next_id += 1;
        Purchase {
            id: format!("evt-{}", self.next_id),
            time,
            country: COUNTRIES[self.rng.random_range(0..COUNTRIES.len())].map(str::to_string),
            cents: self.rng.random_range(1..100_000),
        }
    }

    async fn send(&mut self, partition: i32, payload: &[u8]) -> Result<()> {
        let offset = self.platform.send(partition, payload).await?;
        let end = self.ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
        Ok(())
    }

    /// Sends `purchases` in the given order, each on a random partition, resending a share of
    /// them (half of those on another partition).
    async fn send_purchases(&mut self, purchases: &[Purchase], duplicate_share: f64) -> Result<()> {
        for p in purchases {
            let shape = self.rng.random_range(0..4u8);
            let partition = self.rng.random_range(0..PARTITIONS);
            self.send(partition, &p.payload(shape)).await?;
            self.sent.add(p);
            if self.rng.random_bool(duplicate_share) {
                let again = if self.rng.random_bool(0.5) {
                    (partition + 1) % PARTITIONS
                } else {
                    partition
                };
                self.send(again, &p.payload(shape ^ 1)).await?;
            }
        }
        Ok(())
    }

    async fn send_bad(&mut self) -> Result<()> {
        let bad: [&[u8]; 6] = [
            b"not json",
            b"[]",
            br#"{"event_type":"purchase","event_time":1}"#,
            br#"{"event_id":"b","event_type":"purchase","event_time":"noon"}"#,
            br#"{"event_id":"b","event_type":"purchase","event_time":1,"amount":-5}"#,
            br#"{"event_id":"b","event_type":"purchase","event_time":99999999999999}"#,
        ];
        for (i, payload) in bad.iter().enumerate() {
            self.send(i as i32 % PARTITIONS, payload).await?;
            self.bad_sent += 1;
        }
        Ok(())
    }

    async fn wait_caught_up(&self) -> Result<()> {
        self.platform.wait_both_caught_up(&self.ends).await
    }

    async fn cutover(&self) -> Result<Option<Millis>> {
        let t: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT cutover FROM serving_state")
                .fetch_one(&self.platform.pool)
                .await?;
        Ok(t.map(|t| t.timestamp_millis()))
    }

    async fn batch_run(&mut self, args: &[&str]) -> Result<()> {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let (ok, output) = self.platform.run("batch-layer", &full).await?;
        ensure!(ok, "batch-layer run {args:?} failed:\n{output}");
        self.batch_saw = self.sent.clone();
        Ok(())
    }

    /// Every served bucket of `purchases` and `revenue` equals the truth, with the right source.
    async fn assert_served(&self, step: &str) -> Result<()> {
        let cutover = self.cutover().await?;
        let want = expected(cutover, &self.batch_saw, &self.sent);
        let from = format_rfc3339(self.base - 60 * MINUTE_MS);
        let to = format_rfc3339(self.base + 60 * MINUTE_MS);
        for metric in ["purchases", "revenue"] {
            let (status, body) = self
                .platform
                .get(&format!(
                    "/v1/metrics/{metric}?from={from}&to={to}&group_by=country"
                ))
                .await?;
            ensure!(status == 200, "{step}: {metric} answered {status}: {body}");
            ensure!(
                body["cutover"] == json!(cutover.map(format_rfc3339)),
                "{step}: cutover {} != {cutover:?}",
                body["cutover"]
            );
            ensure!(
                body["complete"] == json!(true),
                "{step}: incomplete answer {body}"
            );
            let mut got: BTreeMap<Cell, (f64, String)> = BTreeMap::new();
            for series in body["series"].as_array().context("series")? {
                let country = series["group"]["country"].as_str().map(str::to_string);
                for point in series["points"].as_array().context("points")? {
                    let t = shared_schema::time::parse_rfc3339(point["t"].as_str().context("t")?)
                        .context("t format")?;
                    let value = point["value"].as_f64().context("value")?;
                    let source = point["source"].as_str().context("source")?.to_string();
                    got.insert((t, country.clone()), (value, source));
                }
            }
            let want_metric: BTreeMap<Cell, (f64, String)> = want
                .iter()
                .map(|(cell, (n, cents, source))| {
                    let value = if metric == "purchases" {
                        *n as f64
                    } else {
                        (*cents as i128 * 10_000) as f64 / 1e6
                    };
                    (cell.clone(), (value, source.to_string()))
                })
                .collect();
            if got != want_metric {
                let diff: Vec<String> = want_metric
                    .keys()
                    .chain(got.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| got.get(*k) != want_metric.get(*k))
                    .map(|k| {
                        format!(
                            "{} {:?}: served {:?}, truth {:?}",
                            format_rfc3339(k.0),
                            k.1,
                            got.get(k),
                            want_metric.get(k)
                        )
                    })
                    .collect();
                anyhow::bail!(
                    "{step}: {metric} differs from the truth (T = {cutover:?}):\n{}",
                    diff.join("\n")
                );
            }
        }
        Ok(())
    }
}

async fn restart_after_kill(
    platform: &Platform,
    service: &mut Service,
    binary: &str,
    args: &[&str],
) -> Result<()> {
    service.kill9().await?;
    if binary == "speed-layer" {
        platform_tests::wait_out_group_session().await;
    }
    *service = platform.spawn(binary, args)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_through_both_layers_to_one_exact_answer() -> Result<()> {
    let platform = Platform::new("walking", PARTITIONS).await?;
    let base = bucket_start(now_millis(), MINUTE_MS) - 40 * MINUTE_MS;
    let mut s = Scenario {
        platform,
        rng: StdRng::seed_from_u64(7),
        base,
        next_id: 0,
        sent: Truth::default(),
        batch_saw: Truth::default(),
        ends: HashMap::new(),
        bad_sent: 0,
    };
    let mut speed = s.platform.spawn("speed-layer", &["run"])?;
    let mut lander = s.platform.spawn("batch-layer", &["land"])?;
    let serving = s.platform.spawn("serving-layer", &["run"])?;
    s.platform.wait_for_http().await?;

    // 1. Before any promotion: shuffled times over ten minutes, every minute boundary and the
    //    future T exactly, duplicates (some on another partition), bad messages.
    let t = base + 5 * MINUTE_MS;
    let mut first: Vec<Purchase> = (0..300)
        .map(|_| s.rng.random_range(0..10 * MINUTE_MS))
        .map(|dt| base + dt)
        .collect::<Vec<_>>()
        .into_iter()
        .map(|time| s.purchase(time))
        .collect();
    for k in 0..10 {
        let boundary = s.purchase(base + k * MINUTE_MS);
        first.push(boundary);
    }
    let at_t = s.purchase(t);
    let just_before_t = s.purchase(t - 1);
    first.extend([at_t.clone(), just_before_t.clone()]);
    first.shuffle(&mut s.rng);
    s.send_purchases(&first, 0.2).await?;
    s.send_bad().await?;
    s.wait_caught_up().await?;
    s.assert_served("before any promotion").await?;

    // The API's own errors.
    let (status, body) = s
        .platform
        .get("/v1/metrics/nope?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z")
        .await?;
    ensure!(
        status == 404 && body["error"]["code"].is_string(),
        "unknown metric: {status} {body}"
    );
    let (status, body) = s
        .platform
        .get("/v1/metrics/revenue?from=later&to=2026-01-02T00:00:00Z")
        .await?;
    ensure!(
        status == 400 && body["error"]["message"].is_string(),
        "bad from: {status} {body}"
    );
    let (status, body) = s.platform.get("/v1/metrics").await?;
    ensure!(
        status == 200 && body["metrics"].as_array().is_some_and(|m| m.len() >= 2),
        "metric list: {body}"
    );

    // 2. A cutover past what the lake holds is refused, and nothing is promoted.
    let (ok, output) = s
        .platform
        .run(
            "batch-layer",
            &["run", "--cutover", &format_rfc3339(base + 60 * MINUTE_MS)],
        )
        .await?;
    ensure!(
        !ok && output.contains("complete"),
        "an incomplete cutover must be refused:\n{output}"
    );
    ensure!(
        s.cutover().await?.is_none(),
        "a refused run promoted something"
    );

    // 3. The first promotion at T; the event exactly at T is on the speed side.
    s.batch_run(&["--cutover", &format_rfc3339(t + 1234)])
        .await?;
    ensure!(
        s.cutover().await? == Some(t),
        "T must be rounded down to the bucket boundary"
    );
    s.assert_served("after the first promotion").await?;
    let (_, body) = s.platform.get(&purchases_path(t, t + MINUTE_MS)).await?;
    ensure!(
        body["series"][0]["points"][0]["source"] == "speed",
        "the bucket at T must be served by the speed layer: {body}"
    );
    let (_, body) = s.platform.get(&purchases_path(t - MINUTE_MS, t)).await?;
    ensure!(
        body["series"][0]["points"][0]["source"] == "batch",
        "the bucket before T must be served by the batch view: {body}"
    );

    // A cutover before the promoted one is refused.
    let (ok, output) = s
        .platform
        .run(
            "batch-layer",
            &["run", "--cutover", &format_rfc3339(t - MINUTE_MS)],
        )
        .await?;
    ensure!(
        !ok && output.contains("backwards"),
        "moving T backwards must be refused:\n{output}"
    );

    // 4. Late events on both sides of T: before the next run only the speed side shows them.
    let late: Vec<Purchase> = [
        base + 2 * MINUTE_MS + 5,
        base + 4 * MINUTE_MS + 59_999,
        base + 7 * MINUTE_MS,
        t,
    ]
    .into_iter()
    .map(|time| s.purchase(time))
    .collect();
    s.send_purchases(&late, 0.5).await?;
    s.wait_caught_up().await?;
    s.assert_served("late events, before the next batch run")
        .await?;

    // 5. The next run, with T chosen from the lake's completeness, counts them.
    s.batch_run(&[]).await?;
    let t2 = s.cutover().await?.context("promoted")?;
    ensure!(t2 >= t && t2 % MINUTE_MS == 0, "T moved from {t} to {t2}");
    s.assert_served("late events, after the next batch run")
        .await?;

    // 6. SIGKILL the speed layer and the lander while events flow, and restart them.
    let flowing: Vec<Purchase> = (0..1500)
        .map(|i| base + 10 * MINUTE_MS + (i * 211) % (5 * MINUTE_MS))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|time| s.purchase(time))
        .collect();
    for (i, chunk) in flowing.chunks(250).enumerate() {
        s.send_purchases(chunk, 0.1).await?;
        tokio::time::sleep(Duration::from_millis(s.rng.random_range(50..400))).await;
        match i % 3 {
            0 => restart_after_kill(&s.platform, &mut speed, "speed-layer", &["run"]).await?,
            1 => restart_after_kill(&s.platform, &mut lander, "batch-layer", &["land"]).await?,
            _ => {}
        }
    }
    s.wait_caught_up().await?;
    speed.assert_running()?;
    lander.assert_running()?;
    s.assert_served("after SIGKILLs of the speed layer and the lander")
        .await?;

    // 7. Two runs at once both succeed, one after the other.
    let (a, b) = tokio::join!(
        s.platform.run("batch-layer", &["run"]),
        s.platform.run("batch-layer", &["run"])
    );
    let (a, b) = (a?, b?);
    ensure!(
        a.0 && b.0,
        "concurrent runs must both succeed:\n{}\n{}",
        a.1,
        b.1
    );
    s.batch_saw = s.sent.clone();
    s.assert_served("after two concurrent runs").await?;

    // 8. A run killed half way leaves the previous version served, or promoted whole.
    let before: (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT version, cutover FROM serving_state")
            .fetch_one(&s.platform.pool)
            .await?;
    let late_again = [s.purchase(base + 3 * MINUTE_MS)];
    s.send_purchases(&late_again, 0.0).await?;
    s.wait_caught_up().await?;
    let mut doomed = s.platform.spawn("batch-layer", &["run"])?;
    tokio::time::sleep(Duration::from_millis(s.rng.random_range(100..900))).await;
    doomed.kill9().await?;
    let after: (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT version, cutover FROM serving_state")
            .fetch_one(&s.platform.pool)
            .await?;
    if after == before {
        // Not promoted: the batch side still shows what it saw before the late event.
        s.assert_served("after a killed run (not promoted)").await?;
    } else {
        s.batch_saw = s.sent.clone();
        s.assert_served("after a killed run (promoted whole before the kill)")
            .await?;
    }
    s.batch_run(&[]).await?;
    s.assert_served("after the run that followed the killed one")
        .await?;

    // 9. Every bad message is in quarantine once, with where it came from and why.
    let quarantined: Vec<(i32, i64, String)> =
        sqlx::query_as("SELECT partition, kafka_offset, reason FROM quarantine WHERE topic = $1")
            .bind(&s.platform.topic)
            .fetch_all(&s.platform.pool)
            .await?;
    ensure!(
        quarantined.len() == s.bad_sent,
        "quarantined {} of {} bad messages",
        quarantined.len(),
        s.bad_sent
    );
    ensure!(
        quarantined.iter().all(|(_, _, reason)| !reason.is_empty()),
        "a quarantine reason is empty"
    );

    drop(serving);
    Ok(())
}

#[test]
fn truth_model_dedupes_and_splits() {
    let p = |id: &str, time: Millis| Purchase {
        id: id.into(),
        time,
        country: Some("DE".into()),
        cents: 100,
    };
    let mut all = Truth::default();
    for purchase in [p("a", 0), p("a", 0), p("b", MINUTE_MS)] {
        all.add(&purchase);
    }
    let mut batch = Truth::default();
    batch.add(&p("a", 0));
    let want = expected(Some(MINUTE_MS), &batch, &all);
    assert_eq!(want.get(&(0, Some("DE".into()))), Some(&(1, 100, "batch")));
    assert_eq!(
        want.get(&(MINUTE_MS, Some("DE".into()))),
        Some(&(1, 100, "speed"))
    );
}
