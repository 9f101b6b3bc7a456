//! Observability (issue 8): the speed layer, the lander, the batch scheduler and the serving
//! layer each serve Prometheus `/metrics` with every family `shared_io::observe` says they
//! export, with values that agree with what was sent and with Postgres; and the serving layer
//! echoes request ids and logs, in JSON, a line carrying the id of each request.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, Service, free_local_addr, wait_until};
use serde_json::{Value, json};
use shared_io::observe::{FAMILIES, Kind};
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const PARTITIONS: i32 = 2;
/// Events per partition, 30 s apart in event time.
const PER_PARTITION: i64 = 40;
const BAD: usize = 2;
const REQUEST_ID: &str = "abc";

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format: `name{label="value",...} value` lines, comments skipped.
/// Label values may hold braces (route templates) and escaped quotes.
fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').context(line.to_string())?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .with_context(|| format!("value of `{line}`"))?,
        };
        let (name, mut rest) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').context(line.to_string())?),
            None => (series, ""),
        };
        let mut labels = BTreeMap::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").context(line.to_string())?;
            let mut label = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => label.push(chars.next().map_or('\\', |(_, c)| c)),
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => label.push(c),
                }
            }
            let end = end.context(line.to_string())?;
            labels.insert(key.trim_start_matches(',').to_string(), label);
            rest = &after[end + 1..];
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The samples of `name` whose labels include `labels`.
fn matching<'a>(
    samples: &'a [Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == v))
    })
}

fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(samples, name, labels).map(|s| s.value).sum()
}

/// `GET /healthz` answers 200 (alive), and `GET /readyz` says ready or not, agreeing with its
/// status.
async fn assert_probes(platform: &Platform, addr: &str) -> Result<()> {
    let health = platform
        .http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await?;
    ensure!(
        health.status() == 200,
        "{addr}/healthz: {}",
        health.status()
    );
    let ready = platform
        .http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await?;
    let status = ready.status();
    let body: serde_json::Value = ready.json().await?;
    ensure!(
        body["ready"].as_bool() == Some(status == 200),
        "{addr}/readyz: {status} {body}"
    );
    Ok(())
}

async fn scrape(platform: &Platform, addr: &str) -> Result<String> {
    let response = platform
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "{addr}/metrics: {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{addr}/metrics: content type {content_type}"
    );
    Ok(response.text().await?)
}

/// Scrapes `addr` until `check` holds for its samples; returns the last scrape.
async fn scrape_until(
    platform: &Platform,
    addr: &str,
    what: &str,
    check: impl Fn(&[Sample]) -> bool,
) -> Result<Vec<Sample>> {
    let waited = wait_until(Duration::from_secs(120), what, || async {
        match scrape(platform, addr).await.and_then(|t| parse(&t)) {
            Ok(samples) => check(&samples),
            Err(_) => false,
        }
    })
    .await;
    if let Err(e) = waited {
        let last = scrape(platform, addr).await.unwrap_or_default();
        return Err(e.context(format!(
            "last scrape of {addr}:\n{last}\n{}",
            platform.log_tails(30)
        )));
    }
    parse(&scrape(platform, addr).await?)
}

fn event(id: &str, kind: &str, time: Millis, user: i64) -> Value {
    json!({"event_id": id, "event_type": kind, "event_time": time, "user_id": format!("u{user}"),
           "product_id": "p1", "country": "DE", "amount": 1.5, "schema_version": 2})
}

/// The consumer checks shared by the speed layer and the lander.
async fn check_consumer(
    platform: &Platform,
    addr: &str,
    consumer: &str,
    sent: &HashMap<i32, i64>,
) -> Result<Vec<Sample>> {
    let c = ("consumer", consumer);
    let samples = scrape_until(
        platform,
        addr,
        &format!("{consumer}: lag 0 everywhere"),
        |s| {
            (0..PARTITIONS).all(|p| {
                let p = p.to_string();
                matching(s, "lambda_consumer_lag_messages", &[c, ("partition", &p)])
                    .any(|s| s.value == 0.0)
            })
        },
    )
    .await?;
    for (partition, count) in sent {
        let p = partition.to_string();
        let read = total(
            &samples,
            "lambda_consumer_events_total",
            &[c, ("partition", &p)],
        );
        ensure!(
            read == *count as f64,
            "{consumer}: partition {partition}: {read} events counted, {count} sent"
        );
    }
    let quarantined = total(&samples, "lambda_consumer_quarantined_total", &[c]);
    ensure!(
        quarantined == BAD as f64,
        "{consumer}: {quarantined} quarantined, {BAD} bad messages sent"
    );
    Ok(samples)
}

/// Every family `service` exports is there, of its kind, with its labels and sane values, but
/// those named in `may_be_empty`, which have a series only once something happened.
fn assert_families(service: &str, text: &str, may_be_empty: &[&str]) -> Result<()> {
    let samples = parse(text)?;
    let families = FAMILIES
        .iter()
        .filter(|f| f.exported_by.contains(&service) && !may_be_empty.contains(&f.name));
    for family in families {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        ensure!(
            text.contains(&format!("# TYPE {} {kind}\n", family.name)),
            "{service} does not export {} as a {kind}:\n{text}",
            family.name
        );
        let sample_name = match family.kind {
            Kind::Histogram => format!("{}_count", family.name),
            _ => family.name.to_string(),
        };
        for sample in samples.iter().filter(|s| s.name == sample_name) {
            ensure!(
                sample.value.is_finite() && sample.value >= 0.0,
                "{service}: {sample:?}"
            );
            let mut expected: Vec<&str> = family.labels.to_vec();
            expected.sort_unstable();
            let have: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
            ensure!(have == expected, "{service}: labels of {sample:?}");
        }
    }
    Ok(())
}

fn log_lines(service: &Service) -> Vec<Value> {
    service
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_exports_its_families_and_serving_logs_carry_request_ids() -> Result<()> {
    let mut platform = Platform::new("observability", PARTITIONS).await?;
    let speed_addr = free_local_addr()?;
    let lander_addr = free_local_addr()?;
    let batch_addr = free_local_addr()?;
    platform.extra_env.extend(
        [
            ("PLATFORM_LOG_FORMAT", "json"),
            ("PLATFORM_SPEED__METRICS_ADDR", speed_addr.as_str()),
            ("PLATFORM_LANDER__METRICS_ADDR", lander_addr.as_str()),
            ("PLATFORM_BATCH__METRICS_ADDR", batch_addr.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    let mut serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // Two hours ago, for 20 minutes: old enough for the lake to be complete past a cutover.
    let base = bucket_start(now_millis() - 120 * MINUTE_MS, MINUTE_MS);
    let mut ends = HashMap::new();
    let mut sent: HashMap<i32, i64> = HashMap::new();
    let kinds = ["purchase", "page_view", "error", "login_failed"];
    for i in 0..PER_PARTITION {
        for partition in 0..PARTITIONS {
            let id = format!("o{partition}-{i}");
            let payload = event(&id, kinds[i as usize % 4], base + i * 30_000, i % 7);
            platform
                .send_tracked(partition, &payload, &mut ends)
                .await?;
            *sent.entry(partition).or_default() += 1;
        }
    }
    // Duplicates are read (and counted as read) again; the speed layer drops them later.
    for i in 0..3 {
        let payload = event(
            &format!("o1-{i}"),
            kinds[i as usize % 4],
            base + i * 30_000,
            i % 7,
        );
        platform.send_tracked(1, &payload, &mut ends).await?;
        *sent.entry(1).or_default() += 1;
    }
    for n in 0..BAD {
        let offset = platform.send(n as i32 % PARTITIONS, b"not json").await?;
        let end = ends.entry(n as i32 % PARTITIONS).or_default();
        *end = (*end).max(offset + 1);
    }
    platform.wait_both_caught_up(&ends).await?;
    // After the watermark passed its bucket: late for every metric a purchase counts in.
    let late = event("o0-late", "purchase", base + 30_000, 1);
    platform.send_tracked(0, &late, &mut ends).await?;
    *sent.entry(0).or_default() += 1;
    platform.wait_both_caught_up(&ends).await?;

    // The speed layer: events, quarantine, lag, late events and the watermark delay.
    let samples = check_consumer(&platform, &speed_addr, "speed-layer", &sent).await?;
    let late_in_db: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(l), 0)::bigint FROM speed_cells, UNNEST(late) AS l",
    )
    .fetch_one(&platform.pool)
    .await?;
    let late_counted = total(&samples, "lambda_speed_late_events_total", &[]);
    ensure!(
        late_in_db > 0 && late_counted == late_in_db as f64,
        "late events: {late_counted} on /metrics, {late_in_db} in speed_cells"
    );
    ensure!(
        total(
            &samples,
            "lambda_speed_late_events_total",
            &[("metric", "purchases")]
        ) == 1.0,
        "the one late purchase is late for `purchases`"
    );
    let newest = base + (PER_PARTITION - 1) * 30_000;
    let expected_delay = (now_millis() - (newest - 5_000)) as f64 / 1000.0;
    let delay = total(
        &samples,
        "lambda_speed_watermark_delay_seconds",
        &[("topic", &platform.topic)],
    );
    ensure!(
        (delay - expected_delay).abs() < 30.0,
        "watermark delay {delay} s, expected about {expected_delay} s"
    );

    // The lander: the same consumer families.
    check_consumer(&platform, &lander_addr, "batch-lander", &sent).await?;

    // The batch scheduler: a promoted run, its duration and rows.
    let mut scheduler = platform.spawn_as(
        "batch-layer-schedule",
        "batch-layer",
        &["schedule", "--cron", "*/5 * * * * *"],
    )?;
    let samples = scrape_until(&platform, &batch_addr, "a promoted scheduled run", |s| {
        total(
            s,
            "lambda_batch_run_duration_seconds_count",
            &[("outcome", "promoted")],
        ) >= 1.0
    })
    .await?;
    let batch_text = scrape(&platform, &batch_addr).await?;
    assert_probes(&platform, &batch_addr).await?;
    scheduler.kill9().await?;
    let duration = total(
        &samples,
        "lambda_batch_run_duration_seconds_sum",
        &[("outcome", "promoted")],
    );
    ensure!(
        duration > 0.0 && duration < 600.0,
        "run duration {duration} s"
    );
    let (version, row_count): (String, i64) = sqlx::query_as(
        "SELECT v.version, v.row_count FROM serving_state s JOIN batch_versions v USING (version)",
    )
    .fetch_one(&platform.pool)
    .await?;
    let view_rows = total(&samples, "lambda_batch_run_rows", &[("kind", "view")]);
    ensure!(
        view_rows == row_count as f64 && view_rows > 0.0,
        "the run's view rows {view_rows}, the promoted version's {row_count}"
    );
    let lake_rows = total(&samples, "lambda_batch_run_rows", &[("kind", "lake")]);
    let good: i64 = sent.values().sum();
    ensure!(
        lake_rows == good as f64,
        "the run read {lake_rows} lake rows; {good} events were sent (duplicates land too)"
    );

    // The serving layer: a request id echoed, kept or made.
    let response = platform
        .http
        .get(format!("http://{}/healthz", platform.listen_addr))
        .header("x-request-id", REQUEST_ID)
        .send()
        .await?;
    ensure!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            == Some(REQUEST_ID),
        "x-request-id not echoed: {:?}",
        response.headers()
    );
    let response = platform
        .http
        .get(format!("http://{}/healthz", platform.listen_addr))
        .send()
        .await?;
    let made = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        made.len() == 36,
        "a request without an id gets a UUID, got `{made}`"
    );
    // Queries, an unknown metric and an unknown path, for the latency histogram.
    let range = format!(
        "from={}&to={}",
        shared_schema::time::format_rfc3339(base),
        shared_schema::time::format_rfc3339(base + 60 * MINUTE_MS)
    );
    for _ in 0..2 {
        let (status, body) = platform
            .get(&format!("/v1/metrics/purchases?{range}"))
            .await?;
        ensure!(status == 200, "{status} {body}");
    }
    ensure!(platform.get(&format!("/v1/metrics/nope?{range}")).await?.0 == 404);
    ensure!(platform.get("/no/such/path").await?.0 == 404);

    let serving_text = scrape(&platform, &platform.listen_addr).await?;
    let samples = parse(&serving_text)?;
    let http = "lambda_http_request_duration_seconds_count";
    let route = ("route", "/v1/metrics/{name}");
    for (labels, at_least) in [
        (vec![("method", "GET"), route, ("status", "200")], 2.0),
        (vec![route, ("status", "404")], 1.0),
        (vec![("route", "unmatched"), ("status", "404")], 1.0),
        (vec![("route", "/healthz"), ("status", "200")], 2.0),
    ] {
        let count = total(&samples, http, &labels);
        ensure!(
            count >= at_least,
            "{http} {labels:?}: {count}\n{serving_text}"
        );
    }
    ensure!(
        !serving_text.contains("/v1/metrics/purchases"),
        "routes are templates, not paths"
    );
    // The served version is an info series; the rest carry no version label, so a promotion
    // continues their series rather than starting new ones.
    let info = total(
        &samples,
        "lambda_promoted_version_info",
        &[("version", version.as_str())],
    );
    ensure!(
        info == 1.0,
        "promoted version {version}: info {info}\n{serving_text}"
    );
    let now_seconds = now_millis() as f64 / 1000.0;
    let age = now_seconds - total(&samples, "lambda_promoted_timestamp_seconds", &[]);
    ensure!(
        (0.0..600.0).contains(&age),
        "promoted version {version}: age {age}\n{serving_text}"
    );
    let rows = total(&samples, "lambda_promoted_version_rows", &[]);
    ensure!(
        rows == row_count as f64,
        "promoted rows {rows}, {row_count} in Postgres"
    );
    let run_seconds = total(&samples, "lambda_promoted_version_run_seconds", &[]);
    ensure!(
        (0.0..600.0).contains(&run_seconds),
        "run seconds {run_seconds}"
    );
    let cutover: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT cutover FROM serving_state")
            .fetch_one(&platform.pool)
            .await?;
    let exported = total(&samples, "lambda_cutover_timestamp_seconds", &[]);
    ensure!(
        exported == cutover.timestamp_millis() as f64 / 1000.0,
        "cutover {exported}, {cutover} in Postgres"
    );
    // The divergence gauges say what GET /v1/divergence says.
    let (status, divergence) = platform.get("/v1/divergence").await?;
    ensure!(status == 200, "{divergence}");
    for metric in divergence["metrics"].as_array().context("metrics")? {
        let name = metric["metric"].as_str().context("name")?;
        let gauge: Vec<f64> = matching(&samples, "lambda_divergence_ratio", &[("metric", name)])
            .map(|s| s.value)
            .collect();
        let ratio = metric["latest"]["ratio"].as_f64();
        ensure!(
            gauge == ratio.into_iter().collect::<Vec<_>>(),
            "{name}: gauge {gauge:?}, /v1/divergence {ratio:?}"
        );
    }

    // Beside /metrics, each long-running service answers the probes (the scheduler's above).
    for addr in [&speed_addr, &lander_addr] {
        assert_probes(&platform, addr).await?;
    }

    // Every family, in every service that exports it.
    let speed_text = scrape(&platform, &speed_addr).await?;
    let lander_text = scrape(&platform, &lander_addr).await?;
    for (service, text) in [
        ("speed-layer", &speed_text),
        ("lander", &lander_text),
        ("batch-scheduler", &batch_text),
        ("serving-layer", &serving_text),
    ] {
        for family in FAMILIES
            .iter()
            .filter(|f| !f.exported_by.contains(&service))
        {
            ensure!(
                !text.contains(&format!("# TYPE {} ", family.name)),
                "{service} exports {}, which is not its own",
                family.name
            );
        }
        // A divergence gauge exists only for a metric whose latest comparison compared
        // something, checked against /v1/divergence above.
        assert_families(service, text, &["lambda_divergence_ratio"])?;
        // Which build runs, and the standard process families beside the platform's.
        let binary = match service {
            "lander" | "batch-scheduler" => "batch-layer",
            other => other,
        };
        let build = format!(
            "lambda_build_info{{binary=\"{binary}\",version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        ensure!(text.contains(&build), "{service}: no `{build}` in\n{text}");
        for family in ["process_resident_memory_bytes", "process_cpu_seconds_total"] {
            ensure!(
                text.contains(&format!("# TYPE {family} ")),
                "{service}: no {family}"
            );
        }
    }

    // The serving log is JSON, and the request's line carries its id.
    let found = wait_until(
        Duration::from_secs(10),
        "the request's log line",
        || async {
            log_lines(&serving).iter().any(|line| {
                line["span"]["request_id"] == REQUEST_ID
                    && line["fields"]["message"] == "request"
                    && line["fields"]["status"] == 200
                    && line["span"]["route"] == "/healthz"
            })
        },
    )
    .await;
    found.with_context(|| serving.log())?;
    let log = serving.log();
    let lines = log.lines().filter(|l| !l.trim().is_empty()).count();
    ensure!(
        lines > 0 && log_lines(&serving).len() == lines,
        "every serving log line is JSON:\n{log}"
    );

    for service in [&mut speed, &mut lander, &mut serving] {
        service.assert_running()?;
        // Reaching a partition's end is no error.
        let eof_errors = log_lines(service)
            .into_iter()
            .filter(|l| l["level"] == "ERROR" && l.to_string().contains("PartitionEOF"))
            .count();
        ensure!(
            eof_errors == 0,
            "{eof_errors} partition ends logged as errors"
        );
    }
    Ok(())
}
