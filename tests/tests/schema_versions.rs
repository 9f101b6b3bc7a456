//! Schema evolution (issue 7), end to end on the real binaries, Postgres and broker.
//!
//! 1. A mix of version 1 (`location`) and version 2 (`city`, `country`) events, the same event
//!    sometimes sent in both shapes, gives the truth on the speed side, and the batch view
//!    computed from the same events gives exactly the answers the speed layer gave.
//!    (`walking_platform` mixes the shapes too, for `purchases` and `revenue` only; this covers
//!    every default metric and a metric grouped by the upcast `city`.)
//! 2. The registry: a service whose metric definitions differ from the promoted view's refuses
//!    to start naming the metric and field, until `batch-layer run --accept-definitions` rolls
//!    the new definitions out; then the old ones are refused, a running old speed layer stops,
//!    and the new ones start.

use anyhow::{Context, Result, bail, ensure};
use platform_tests::truth::{Sent, check_served, default_metrics, group_by};
use platform_tests::{Platform, Service};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shared_schema::catalog::{DEFAULT_METRICS, MetricCatalog};
use shared_schema::event::SCHEMA_VERSIONS;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A metric over the upcast fields themselves, beside the default dashboard.
const CITY_METRIC: &str = r#"
[[metric]]
name = "purchases_by_city"
description = "Number of purchase events per city and country"
event_type = "purchase"
aggregation = "count"
dimensions = ["city", "country"]
"#;

/// The city of an event of `country`; `Washington, D.C.` holds a comma, which a v1
/// `location` must survive (it is split at the last comma).
fn city_of(country: &str) -> &'static str {
    match country {
        "DE" => "Berlin",
        "FR" => "Paris",
        _ => "Washington, D.C.",
    }
}

/// `event` in one of the accepted shapes: 0 is version 2, 1 is version 1 without
/// `schema_version`, 2 is version 1 saying so.
fn payload(event: &Sent, shape: u8) -> Vec<u8> {
    let mut v = json!({"event_id": event.id, "event_type": event.kind, "event_time": event.time});
    if let Some(user) = &event.user {
        v["user_id"] = json!(user);
    }
    if let Some(product) = &event.product {
        v["product_id"] = json!(product);
    }
    if let Some(cents) = event.cents {
        v["amount"] = json!(cents as f64 / 100.0);
    }
    let country = event.country.as_deref();
    match shape {
        0 => {
            v["schema_version"] = json!(2);
            if let Some(country) = country {
                v["city"] = json!(city_of(country));
                v["country"] = json!(country);
            }
        }
        _ => {
            if shape == 2 {
                v["schema_version"] = json!(1);
            }
            if let Some(country) = country {
                v["location"] = json!(format!("{}, {country}", city_of(country)));
            }
        }
    }
    v.to_string().into_bytes()
}

/// The truth of `purchases_by_city` grouped by city: purchases per minute and city.
fn city_truth(sent: &BTreeMap<String, Sent>) -> BTreeMap<(Millis, Option<String>), f64> {
    let mut out = BTreeMap::new();
    for e in sent.values().filter(|e| e.kind == "purchase") {
        let city = e.country.as_deref().map(|c| city_of(c).to_string());
        *out.entry((bucket_start(e.time, MINUTE_MS), city))
            .or_default() += 1.0;
    }
    out
}

/// Every point served for `metric` in `[from, to)`: value and source per (bucket, group).
async fn served(
    platform: &Platform,
    metric: &str,
    group: Option<&str>,
    (from, to): (Millis, Millis),
) -> Result<BTreeMap<(Millis, Option<String>), (f64, String)>> {
    let mut url = format!(
        "/v1/metrics/{metric}?from={}&to={}",
        format_rfc3339(from),
        format_rfc3339(to)
    );
    if let Some(dim) = group {
        url.push_str(&format!("&group_by={dim}"));
    }
    let (status, body) = platform.get(&url).await?;
    ensure!(status == 200, "{metric}: {status} {body}");
    let mut out = BTreeMap::new();
    for series in body["series"].as_array().context("series")? {
        let value_of = group.and_then(|d| series["group"][d].as_str().map(str::to_string));
        for point in series["points"].as_array().context("points")? {
            let t = shared_schema::time::parse_rfc3339(point["t"].as_str().context("t")?)
                .context("t")?;
            out.insert(
                (t, value_of.clone()),
                (
                    point["value"].as_f64().context("value")?,
                    point["source"].as_str().context("source")?.to_string(),
                ),
            );
        }
    }
    Ok(out)
}

/// Every served point of every metric of the scenario.
type Answers = BTreeMap<String, BTreeMap<(Millis, Option<String>), (f64, String)>>;

async fn all_answers(platform: &Platform, range: (Millis, Millis)) -> Result<Answers> {
    let mut out = BTreeMap::new();
    for metric in default_metrics() {
        let answer = served(platform, &metric, group_by(&metric), range).await?;
        out.insert(metric, answer);
    }
    let city = served(platform, "purchases_by_city", Some("city"), range).await?;
    out.insert("purchases_by_city".into(), city);
    Ok(out)
}

fn write_definitions(platform: &mut Platform, file: &str, text: &str) -> Result<String> {
    let path = platform.lake_dir.with_file_name(file);
    std::fs::write(&path, text)?;
    let path = path.to_string_lossy().into_owned();
    platform.extra_env = vec![("PLATFORM_METRICS_FILE".into(), path.clone())];
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_and_v2_events_give_identical_metrics_in_both_layers() -> Result<()> {
    const PARTITIONS: i32 = 2;
    let mut platform = Platform::new("schemas", PARTITIONS).await?;
    write_definitions(
        &mut platform,
        "metrics.toml",
        &format!("{DEFAULT_METRICS}\n{CITY_METRIC}"),
    )?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut rng = StdRng::seed_from_u64(17);
    let mut events: Vec<Sent> = (0..500)
        .map(|i| {
            let t = base + rng.random_range(-30 * MINUTE_MS..10 * MINUTE_MS);
            Sent::random(&mut rng, format!("e{i}"), t)
        })
        .collect();
    // One event per partition past the cutover, so the lake is complete up to it everywhere.
    for p in 0..PARTITIONS {
        let mut fence = Sent::random(&mut rng, format!("fence{p}"), base + 12 * MINUTE_MS);
        fence.kind = "click";
        events.push(fence);
    }
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut shapes = [0usize; 3];
    for (i, e) in events.iter().enumerate() {
        let partition = if e.id.starts_with("fence") {
            i as i32 % PARTITIONS
        } else {
            rng.random_range(0..PARTITIONS)
        };
        let shape = rng.random_range(0..3u8);
        shapes[shape as usize] += 1;
        let offset = platform.send(partition, &payload(e, shape)).await?;
        let end = ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
        // A fifth is sent again in another version's shape: still one event.
        if rng.random_bool(0.2) {
            let again = rng.random_range(0..PARTITIONS);
            let offset = platform.send(again, &payload(e, (shape + 1) % 3)).await?;
            let end = ends.entry(again).or_default();
            *end = (*end).max(offset + 1);
        }
        sent.insert(e.id.clone(), e.clone());
    }
    ensure!(
        shapes.iter().all(|n| *n > 100),
        "every shape sent: {shapes:?}"
    );
    platform.wait_both_caught_up(&ends).await?;

    let range = (base - 40 * MINUTE_MS, base + 20 * MINUTE_MS);
    let metrics = default_metrics();
    let names: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let nothing = BTreeMap::new();
    check_served(&platform, "speed side", &names, range, &sent, &nothing).await?;
    let speed = all_answers(&platform, range).await?;
    let want_city: BTreeMap<_, _> = city_truth(&sent)
        .into_iter()
        .map(|(k, v)| (k, (v, "speed".to_string())))
        .collect();
    ensure!(
        speed["purchases_by_city"] == want_city,
        "purchases by city on the speed side:\nserved {:?}\ntruth {want_city:?}",
        speed["purchases_by_city"]
    );

    // The batch view over the same events: every bucket before T moves to the batch side with
    // exactly the value the speed layer served.
    let t = base + 10 * MINUTE_MS;
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t)])
        .await?;
    ensure!(ok, "batch run failed:\n{output}");
    check_served(&platform, "batch side", &names, range, &sent, &sent).await?;
    let batch = all_answers(&platform, range).await?;
    let mut moved = 0;
    for (metric, speed_points) in &speed {
        let batch_points = &batch[metric];
        let before_t = |k: &(Millis, Option<String>)| k.0 < t;
        let speed_keys: Vec<_> = speed_points.keys().filter(|k| before_t(k)).collect();
        let batch_keys: Vec<_> = batch_points.keys().filter(|k| before_t(k)).collect();
        ensure!(
            speed_keys == batch_keys,
            "{metric}: the layers serve different buckets before T"
        );
        for key in speed_keys {
            let (speed_value, speed_source) = &speed_points[key];
            let (batch_value, batch_source) = &batch_points[key];
            ensure!(
                speed_value == batch_value && speed_source == "speed" && batch_source == "batch",
                "{metric} {} {:?}: speed served {speed_value} ({speed_source}), batch {batch_value} ({batch_source})",
                format_rfc3339(key.0),
                key.1
            );
            moved += 1;
        }
    }
    ensure!(moved > 500, "only {moved} points compared");
    Ok(())
}

/// Waits for a service that must refuse to start, and returns what it said.
async fn refused(mut service: Service, what: &str) -> Result<String> {
    match service.exited_within(Duration::from_secs(90)).await? {
        Some(status) if !status.success() => Ok(service.log()),
        Some(status) => bail!(
            "{what} exited with {status} instead of refusing:\n{}",
            service.log()
        ),
        None => bail!("{what} started instead of refusing:\n{}", service.log()),
    }
}

async fn promoted_fingerprint(platform: &Platform) -> Result<(String, Option<String>)> {
    let row: (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT s.version, b.definitions_fingerprint
         FROM serving_state s LEFT JOIN batch_versions b USING (version)",
    )
    .fetch_one(&platform.pool)
    .await?;
    Ok((row.0.context("a version is promoted")?, row.1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_definitions_are_refused_until_a_batch_run_accepts_them() -> Result<()> {
    let mut platform = Platform::new("registry", 1).await?;
    let old_text = format!("{DEFAULT_METRICS}\n{CITY_METRIC}");
    let new_text = old_text.replace(
        "dimensions = [\"city\", \"country\"]",
        "dimensions = [\"city\"]",
    );
    ensure!(new_text != old_text);
    let (old, new) = (
        MetricCatalog::from_toml(&old_text)?,
        MetricCatalog::from_toml(&new_text)?,
    );
    let old_file = write_definitions(&mut platform, "old-metrics.toml", &old_text)?;
    let mut old_speed = platform.spawn_as("speed-old", "speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let mut old_serving = platform.spawn_as("serving-old", "serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 10 * MINUTE_MS;
    let mut ends = HashMap::new();
    for i in 0..30i64 {
        let payload = json!({"event_id": format!("r{i}"), "event_type": "purchase",
                             "event_time": base + i * 20_000, "location": "Berlin, DE", "amount": 1.0});
        platform.send_tracked(0, &payload, &mut ends).await?;
    }
    platform.wait_both_caught_up(&ends).await?;
    let t = base + 5 * MINUTE_MS;
    let (ok, output) = platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t)])
        .await?;
    ensure!(ok, "batch run failed:\n{output}");
    let (first_version, fingerprint) = promoted_fingerprint(&platform).await?;
    ensure!(
        fingerprint.as_deref() == Some(old.fingerprint().as_str()),
        "the view records the definitions it was computed with: {fingerprint:?}"
    );

    // The registry holds both event schema versions, and every start so far.
    let versions: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, fingerprint FROM event_schema_versions ORDER BY version")
            .fetch_all(&platform.pool)
            .await?;
    let known: Vec<(i32, String)> = SCHEMA_VERSIONS
        .iter()
        .map(|v| (v.version, v.fingerprint()))
        .collect();
    ensure!(
        versions == known,
        "registered schema versions: {versions:?}"
    );
    let starts: Vec<(String, String, String, i32)> = sqlx::query_as(
        "SELECT service, fingerprint, outcome, pid FROM service_instances ORDER BY service",
    )
    .fetch_all(&platform.pool)
    .await?;
    let services: Vec<&str> = starts.iter().map(|s| s.0.as_str()).collect();
    ensure!(
        services == ["batch-layer run", "serving-layer run", "speed-layer run"]
            && starts
                .iter()
                .all(|s| s.1 == old.fingerprint() && s.2 == "started" && s.3 > 0),
        "recorded starts: {starts:?}"
    );

    // With other definitions, each service refuses and says what differs.
    let new_file = write_definitions(&mut platform, "new-metrics.toml", &new_text)?;
    let difference = r#"metric `purchases_by_city`, field `dimensions`: ["city","country"] in the promoted view, ["city"] here"#;
    for (label, binary) in [
        ("speed-new-refused", "speed-layer"),
        ("serving-new-refused", "serving-layer"),
        ("batch-new-refused", "batch-layer"),
    ] {
        let service = platform.spawn_as(label, binary, &["run"])?;
        let said = refused(service, label).await?;
        ensure!(said.contains(difference), "{label} said:\n{said}");
        ensure!(
            said.contains("--accept-definitions"),
            "{label} said:\n{said}"
        );
    }
    ensure!(
        promoted_fingerprint(&platform).await?.0 == first_version,
        "a refused run promoted something"
    );
    let refusals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM service_instances WHERE outcome = 'refused' AND fingerprint = $1",
    )
    .bind(new.fingerprint())
    .fetch_one(&platform.pool)
    .await?;
    ensure!(refusals == 3, "{refusals} refused starts recorded");

    // The rollout: a batch run accepting the new definitions promotes a view computed with them.
    let (ok, output) = platform
        .run("batch-layer", &["run", "--accept-definitions"])
        .await?;
    ensure!(ok, "accepting run failed:\n{output}");
    let (_, fingerprint) = promoted_fingerprint(&platform).await?;
    ensure!(
        fingerprint.as_deref() == Some(new.fingerprint().as_str()),
        "the accepting run's view: {fingerprint:?}"
    );

    // The speed layer still running with the old definitions stops on its own...
    let reversed = r#"metric `purchases_by_city`, field `dimensions`: ["city"] in the promoted view, ["city","country"] here"#;
    match old_speed.exited_within(Duration::from_secs(90)).await? {
        Some(status) if !status.success() => {}
        other => bail!(
            "the old speed layer should stop after the rollout: {other:?}\n{}",
            old_speed.log()
        ),
    }
    ensure!(
        old_speed.log().contains(reversed),
        "old speed layer said:\n{}",
        old_speed.log()
    );
    // ...and old definitions are refused from now on.
    platform.extra_env = vec![("PLATFORM_METRICS_FILE".into(), old_file)];
    let said = refused(
        platform.spawn_as("speed-old-refused", "speed-layer", &["run"])?,
        "speed layer with the old definitions",
    )
    .await?;
    ensure!(said.contains(reversed), "old speed layer said:\n{said}");

    // The new definitions start and serve.
    platform.extra_env = vec![("PLATFORM_METRICS_FILE".into(), new_file)];
    old_serving.kill9().await?;
    let mut speed = platform.spawn_as("speed-new", "speed-layer", &["run"])?;
    let _serving = platform.spawn_as("serving-new", "serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let (status, body) = platform
        .get(&format!(
            "/v1/metrics/purchases_by_city?from={}&to={}&group_by=city",
            format_rfc3339(base),
            format_rfc3339(t)
        ))
        .await?;
    ensure!(
        status == 200 && platform_tests::first_series_total(&body) == 15.0,
        "purchases in Berlin before T under the new definitions: {status} {body}"
    );
    ensure!(
        body["series"][0]["group"]["city"] == "Berlin",
        "grouped by the upcast city: {body}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    speed.assert_running()?;
    let started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM service_instances
         WHERE outcome = 'started' AND fingerprint = $1 AND service IN ('speed-layer run', 'serving-layer run')",
    )
    .bind(new.fingerprint())
    .fetch_one(&platform.pool)
    .await?;
    ensure!(started == 2, "{started} new-definition starts recorded");
    Ok(())
}
