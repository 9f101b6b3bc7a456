//! The outage scenario (issue 4): for a while 35% of events arrive more than 30 minutes late,
//! as during a mobile network outage. The late count shows it, each metric's speed side
//! behaves as its late policy says, and after the next batch run every bucket is exact.

use anyhow::{Context, Result, ensure};
use platform_tests::Platform;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shared_schema::catalog::DEFAULT_METRICS;
use shared_schema::time::{
    MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis, parse_rfc3339,
};
use std::collections::{BTreeMap, HashMap};

const PARTITIONS: i32 = 3;

const POLICY_METRICS: &str = r#"
[[metric]]
name = "purchases_dropping_late"
event_type = "purchase"
aggregation = "count"
dimensions = ["country"]
late_policy = "drop"

[[metric]]
name = "purchases_late_to_side"
event_type = "purchase"
aggregation = "count"
dimensions = ["country"]
late_policy = "side_output"
"#;

#[derive(Clone)]
struct Purchase {
    id: String,
    time: Millis,
    country: &'static str,
    late: bool,
}

type Cells = BTreeMap<(Millis, String), f64>;

fn cells<'a>(purchases: impl Iterator<Item = &'a Purchase>) -> Cells {
    let mut out = Cells::new();
    for p in purchases {
        *out.entry((bucket_start(p.time, MINUTE_MS), p.country.to_string()))
            .or_default() += 1.0;
    }
    out
}

async fn served(
    platform: &Platform,
    metric: &str,
    from: Millis,
    to: Millis,
) -> Result<(Cells, BTreeMap<(Millis, String), String>, i64)> {
    let url = format!(
        "/v1/metrics/{metric}?from={}&to={}&group_by=country",
        format_rfc3339(from),
        format_rfc3339(to)
    );
    let (status, body) = platform.get(&url).await?;
    ensure!(status == 200, "{metric}: {status} {body}");
    let (mut values, mut sources) = (Cells::new(), BTreeMap::new());
    for series in body["series"].as_array().context("series")? {
        let country = series["group"]["country"]
            .as_str()
            .context("country")?
            .to_string();
        for point in series["points"].as_array().context("points")? {
            let t = parse_rfc3339(point["t"].as_str().context("t")?).context("t")?;
            values.insert(
                (t, country.clone()),
                point["value"].as_f64().context("value")?,
            );
            sources.insert(
                (t, country.clone()),
                point["source"].as_str().context("source")?.to_string(),
            );
        }
    }
    let late = body["late_events"].as_i64().context("late_events")?;
    if metric == "purchases" {
        // Every purchase counts once: the rate is the late share of all that the speed side saw.
        let rate = body["late_rate"].as_f64().context("late_rate")?;
        let seen: f64 = values.values().sum();
        ensure!(
            (rate - late as f64 / seen).abs() < 1e-9,
            "late_rate {rate} for {late} late of {seen}"
        );
    }
    Ok((values, sources, late))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_of_late_events_follows_each_policy_and_heals_in_the_batch() -> Result<()> {
    let mut platform = Platform::new("outage", PARTITIONS).await?;
    let definitions = platform.lake_dir.with_file_name("metrics.toml");
    std::fs::write(&definitions, format!("{DEFAULT_METRICS}\n{POLICY_METRICS}"))?;
    platform.extra_env.push((
        "PLATFORM_METRICS_FILE".into(),
        definitions.to_string_lossy().into_owned(),
    ));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let now = bucket_start(now_millis(), MINUTE_MS);
    let mut rng = StdRng::seed_from_u64(3);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut sent: Vec<Purchase> = Vec::new();
    let countries = ["DE", "FR", "US"];
    let send = |p: Purchase, partition: i32, copies: usize| {
        let payload = json!({"event_id": p.id, "event_type": "purchase", "event_time": p.time,
                             "country": p.country, "schema_version": 2, "amount": 1.5})
        .to_string();
        (p, partition, copies, payload)
    };

    // Normal traffic first, so that every partition's watermark stands near the present.
    let mut batches = Vec::new();
    let mut normal: Vec<Millis> = (0..150)
        .map(|_| now - 8 * MINUTE_MS + rng.random_range(0..8 * MINUTE_MS))
        .collect();
    normal.sort_unstable();
    for (i, time) in normal.into_iter().enumerate() {
        let p = Purchase {
            id: format!("on-{i}"),
            time,
            country: countries[i % 3],
            late: false,
        };
        batches.push(send(p, (i % 3) as i32, 1));
    }
    // The outage: 35% of the events are more than 30 minutes late; some arrive twice.
    let mut outage = Vec::new();
    for i in 0..200 {
        let late = rng.random_bool(0.35);
        let time = if late {
            now - rng.random_range(31 * MINUTE_MS..40 * MINUTE_MS)
        } else {
            now - rng.random_range(0..MINUTE_MS)
        };
        let p = Purchase {
            id: format!("out-{i}"),
            time,
            country: countries[rng.random_range(0..3)],
            late,
        };
        outage.push(send(
            p,
            rng.random_range(0..PARTITIONS),
            if rng.random_bool(0.1) { 2 } else { 1 },
        ));
    }
    for (round, messages) in [batches, outage].into_iter().enumerate() {
        for (p, partition, copies, payload) in messages {
            for copy in 0..copies {
                let offset = platform
                    .send((partition + copy as i32) % PARTITIONS, payload.as_bytes())
                    .await?;
                let end = ends
                    .entry((partition + copy as i32) % PARTITIONS)
                    .or_default();
                *end = (*end).max(offset + 1);
            }
            sent.push(p);
        }
        platform.wait_both_caught_up(&ends).await?;
        if round == 0 {
            // Let the watermark settle past the normal traffic before the outage begins.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    let (from, to) = (now - 60 * MINUTE_MS, now + 5 * MINUTE_MS);
    let late_sent = sent.iter().filter(|p| p.late).count() as i64;
    ensure!(
        late_sent > 40,
        "the scenario needs late events, got {late_sent}"
    );
    let everything = cells(sent.iter());
    let on_time_only = cells(sent.iter().filter(|p| !p.late));

    // Before the batch run: the late count shows the outage, and each policy holds.
    for (metric, want) in [
        ("purchases", &everything),
        ("purchases_dropping_late", &on_time_only),
        ("purchases_late_to_side", &on_time_only),
    ] {
        let (values, _, late_events) = served(&platform, metric, from, to).await?;
        ensure!(
            late_events == late_sent,
            "{metric}: late_events {late_events}, sent {late_sent} late"
        );
        ensure!(
            &values == want,
            "{metric} before the batch run:\nserved {values:?}\nwant   {want:?}"
        );
    }
    let side: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM speed_late_events WHERE metric = 'purchases_late_to_side'",
    )
    .fetch_one(&platform.pool)
    .await?;
    ensure!(
        side == late_sent,
        "side output holds {side} of {late_sent} late events"
    );

    // The next batch run counts every late event, whatever the speed side's policy.
    let (ok, output) = platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "batch run failed:\n{output}");
    let t: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT cutover FROM serving_state")
        .fetch_one(&platform.pool)
        .await?;
    let t = t.timestamp_millis();
    ensure!(
        t > now - 30 * MINUTE_MS,
        "the cutover {t} should lie past the late events"
    );
    for metric in [
        "purchases",
        "purchases_dropping_late",
        "purchases_late_to_side",
    ] {
        let (values, sources, _) = served(&platform, metric, from, to).await?;
        // Before T the batch view has everything; after T only on-time events exist.
        ensure!(
            values == everything,
            "{metric} after the batch run:\nserved {values:?}\nwant   {everything:?}"
        );
        for ((bucket, country), source) in sources {
            let want = if bucket < t { "batch" } else { "speed" };
            ensure!(
                source == want,
                "{metric} {bucket} {country}: source {source}, want {want}"
            );
        }
    }
    Ok(())
}
