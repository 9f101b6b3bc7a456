//! The dashboard at `GET /` (issue 8), in a real headless Chromium against the real stack.
//!
//! Purchases over 20 minutes, promoted to the batch view up to minute 12, so the chart holds
//! batch points before the cutover and speed points after it; one late purchase, and a speed row
//! the lake never had, so the late count, a divergence and its alert are there to show. The page
//! is opened with a query string naming metric, range and group, its DOM dumped once the page
//! says every panel has settled, and what it drew compared with the HTTP API's own answers:
//! every point with its group, time, value and source, the cutover line between the batch and
//! the speed points, and the figures of the side panels. A screenshot goes to
//! `target/e2e/dashboard.png`.
//!
//! Chromium is Debian's `chromium`, found through `E2E_CHROMIUM` (scripts/test.sh sets it with
//! `ensure_chromium` from scripts/lib.sh).

use anyhow::{Context, Result, bail, ensure};
use platform_tests::{Platform, target_dir, wait_until};
use serde_json::{Value, json};
use shared_schema::time::{
    MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis, to_datetime,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const PARTITIONS: i32 = 2;
const MINUTES: i64 = 20;
const CUTOVER_MINUTE: i64 = 12;
/// Where the screenshot is written, under the workspace's `target/`.
const SCREENSHOT: &str = "e2e/dashboard.png";
const SCREEN: (u32, u32) = (1280, 1300);

fn purchase(id: String, time: Millis, country: Option<&str>) -> Value {
    let mut event = json!({"event_id": id, "event_type": "purchase", "event_time": time,
                           "user_id": "u1", "amount": 4.0, "schema_version": 2});
    if let Some(country) = country {
        event["country"] = json!(country);
    }
    event
}

/// Headless Chromium, one fresh profile per run so parallel runs never share one.
struct Browser {
    binary: PathBuf,
    profiles: PathBuf,
    runs: AtomicU32,
}

impl Browser {
    fn from_env(profiles: PathBuf) -> Result<Browser> {
        let binary = std::env::var_os("E2E_CHROMIUM").map(PathBuf::from).context(
            "E2E_CHROMIUM is not set: run through scripts/test.sh, whose ensure_chromium installs \
             Debian's chromium and exports its path",
        )?;
        ensure!(
            binary.exists(),
            "E2E_CHROMIUM = {} does not exist",
            binary.display()
        );
        Ok(Browser {
            binary,
            profiles,
            runs: AtomicU32::new(0),
        })
    }

    /// Runs Chromium on `url` with `args` and returns what it printed on stdout.
    async fn run(&self, args: &[String], url: &str) -> Result<String> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let profile = self.profiles.join(format!("profile-{run}"));
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args([
                "--headless",
                // The test runs as root in CI, where Chromium's sandbox refuses to start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
                // Nothing but the page: no component or update fetches on a loaded CI machine.
                "--disable-background-networking",
                "--disable-component-update",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(180), command.output())
            .await
            .context("Chromium did not finish within 180 s")??;
        ensure!(
            output.status.success(),
            "Chromium failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The DOM of `url` once the page marked `<body data-state="ready">`. Virtual time stands
    /// still while a fetch is in flight, so the budget only bounds the page's own timers; a
    /// page not ready yet is dumped again with a larger budget rather than after a sleep.
    async fn rendered_dom(&self, url: &str) -> Result<String> {
        let mut last = String::new();
        for budget in [10_000, 30_000, 90_000] {
            let dom = self
                .run(
                    &[
                        format!("--virtual-time-budget={budget}"),
                        "--dump-dom".into(),
                    ],
                    url,
                )
                .await?;
            if start_tag(&dom, "<body").and_then(|t| attribute(t, "data-state")) == Some("ready") {
                return Ok(dom);
            }
            last = dom;
        }
        bail!("the page never became ready:\n{last}")
    }

    async fn screenshot(&self, url: &str, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        self.run(
            &[
                "--virtual-time-budget=10000".into(),
                format!("--window-size={},{}", SCREEN.0, SCREEN.1),
                format!("--screenshot={}", path.display()),
            ],
            url,
        )
        .await?;
        let png =
            std::fs::read(path).with_context(|| format!("{} was not written", path.display()))?;
        ensure!(
            png.len() > 10_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a screenshot ({} bytes)",
            path.display(),
            png.len()
        );
        let width = png
            .get(16..20)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        ensure!(width == Some(SCREEN.0), "screenshot width {width:?}");
        Ok(())
    }
}

/// The start tag (`<name ...>`) around the first occurrence of `needle` in `dom`.
fn start_tag<'a>(dom: &'a str, needle: &str) -> Option<&'a str> {
    let at = dom.find(needle)?;
    let open = dom[..=at].rfind('<')?;
    let close = at + dom[at..].find('>')?;
    Some(&dom[open..=close])
}

/// Every start tag of `dom` that contains `needle`.
fn start_tags<'a>(dom: &'a str, needle: &str) -> Vec<&'a str> {
    let mut tags = Vec::new();
    let mut rest = 0;
    while let Some(found) = dom[rest..].find(needle) {
        let at = rest + found;
        if let Some(tag) = start_tag(&dom[rest..], needle) {
            tags.push(tag);
        }
        rest = at + needle.len();
    }
    tags
}

/// The value of `name="..."` in one start tag (the values checked here need no unescaping).
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(&tag[start..end])
}

/// `data-value` of the figure named `figure` in a panel.
fn figure<'a>(dom: &'a str, figure: &str) -> Option<&'a str> {
    start_tag(dom, &format!("data-figure=\"{figure}\"")).and_then(|t| attribute(t, "data-value"))
}

/// A drawn or served point: group label, time, value, source.
type Point = (String, Millis, String, String);

/// The group label the page shows: `country=DE`, `country=(none)`, or `all`.
fn group_label(group: &Value) -> String {
    match group.as_object() {
        Some(fields) if !fields.is_empty() => fields
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("(none)")))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "all".into(),
    }
}

fn parse_time(text: &str) -> Result<Millis> {
    shared_schema::time::parse_rfc3339(text).with_context(|| format!("`{text}` is not RFC 3339"))
}

/// The points of an API answer.
fn served_points(answer: &Value) -> Result<BTreeSet<Point>> {
    let mut points = BTreeSet::new();
    for series in answer["series"].as_array().context("series")? {
        let label = group_label(&series["group"]);
        for p in series["points"].as_array().context("points")? {
            points.insert((
                label.clone(),
                parse_time(p["t"].as_str().context("t")?)?,
                p["value"].as_f64().context("value")?.to_string(),
                p["source"].as_str().context("source")?.to_string(),
            ));
        }
    }
    Ok(points)
}

/// The points the chart drew, and the x of each.
fn drawn_points(dom: &str) -> Result<Vec<(Point, f64)>> {
    start_tags(dom, " data-source=\"")
        .into_iter()
        .map(|tag| {
            let get = |name: &str| attribute(tag, name).with_context(|| format!("{name} in {tag}"));
            // A circle has its centre; a diamond is a square rotated about its centre.
            let x = match attribute(tag, "cx") {
                Some(cx) => cx.parse::<f64>()?,
                None => get("x")?.parse::<f64>()? + get("width")?.parse::<f64>()? / 2.0,
            };
            let value: f64 = get("data-value")?.parse()?;
            Ok((
                (
                    get("data-group")?.to_string(),
                    parse_time(get("data-t")?)?,
                    value.to_string(),
                    get("data-source")?.to_string(),
                ),
                x,
            ))
        })
        .collect()
}

fn by_source(points: impl IntoIterator<Item = Point>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, _, source) in points {
        *counts.entry(source).or_default() += 1;
    }
    counts
}

/// Opens the dashboard for `query` and checks the chart against the API's answer for the same
/// choices; returns the DOM and the answer.
async fn check_chart(
    platform: &Platform,
    browser: &Browser,
    page_query: &str,
    api_query: &str,
) -> Result<(String, Value)> {
    let (status, answer) = platform
        .get(&format!("/v1/metrics/purchases?{api_query}"))
        .await?;
    ensure!(status == 200, "{status} {answer}");
    let url = format!("http://{}/?{page_query}", platform.listen_addr);
    let dom = browser.rendered_dom(&url).await?;
    let chart = start_tag(&dom, "id=\"chart\"").context("the chart")?;
    ensure!(
        attribute(chart, "data-state") == Some("ready"),
        "the chart did not render: {chart}\n{dom}"
    );

    let served = served_points(&answer)?;
    let drawn = drawn_points(&dom)?;
    let drawn_set: BTreeSet<Point> = drawn.iter().map(|(p, _)| p.clone()).collect();
    ensure!(
        drawn.len() == served.len() && drawn_set == served,
        "the chart drew {} points, the API answered {}:\nonly drawn: {:?}\nonly served: {:?}",
        drawn.len(),
        served.len(),
        drawn_set.difference(&served).collect::<Vec<_>>(),
        served.difference(&drawn_set).collect::<Vec<_>>()
    );
    ensure!(
        by_source(drawn_set) == by_source(served.clone()),
        "batch/speed split differs"
    );

    // One cutover line, at the API's T, with every batch point left of it and every speed
    // point at or right of it.
    let lines = start_tags(&dom, "data-role=\"cutover\"");
    ensure!(lines.len() == 1, "one cutover line: {lines:?}");
    let cutover = answer["cutover"].as_str().context("a promoted cutover")?;
    ensure!(
        attribute(lines[0], "data-t") == Some(cutover),
        "the line marks {cutover}: {}",
        lines[0]
    );
    let line_x: f64 = attribute(lines[0], "x1").context("x1")?.parse()?;
    for ((group, t, _, source), x) in &drawn {
        let side_ok = match source.as_str() {
            "batch" => *x < line_x,
            "speed" => *x >= line_x,
            _ => true,
        };
        ensure!(
            side_ok,
            "{source} point {group} {} drawn at x={x}, the cutover at x={line_x}",
            format_rfc3339(*t)
        );
    }
    ensure!(
        attribute(chart, "data-points") == Some(served.len().to_string().as_str()),
        "the chart's own count: {chart}"
    );
    Ok((dom, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_draws_the_merged_answer_and_the_side_panels() -> Result<()> {
    let mut platform = Platform::new("dashboard", PARTITIONS).await?;
    let browser = Browser::from_env(platform.lake_dir.with_file_name("chromium"))?;
    platform.extra_env.extend([
        ("PLATFORM_SERVING__ALERT_INTERVAL".into(), "300ms".into()),
        // No partition may go idle and stop holding the watermark before the late purchase
        // is judged against it, however slow the machine.
        ("PLATFORM_SPEED__IDLE_TIMEOUT".into(), "1h".into()),
    ]);
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // Every minute one to three purchases from DE; every second minute one from FR; every
    // fifth one without a country.
    let base = bucket_start(now_millis(), MINUTE_MS) - 30 * MINUTE_MS;
    let at = |minute: i64| base + minute * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for minute in 0..MINUTES {
        let partition = (minute % PARTITIONS as i64) as i32;
        let mut events: Vec<Value> = (0..=minute % 3)
            .map(|n| {
                purchase(
                    format!("de{minute}-{n}"),
                    at(minute) + 10_000 + n,
                    Some("DE"),
                )
            })
            .collect();
        if minute % 2 == 0 {
            events.push(purchase(
                format!("fr{minute}"),
                at(minute) + 20_000,
                Some("FR"),
            ));
        }
        if minute % 5 == 0 {
            events.push(purchase(format!("none{minute}"), at(minute) + 30_000, None));
        }
        for event in &events {
            platform.send_tracked(partition, event, &mut ends).await?;
        }
    }
    platform.wait_both_caught_up(&ends).await?;
    // Minute 14 closed long before the watermark (minute 19): this purchase is late.
    let late = purchase("late14".into(), at(14) + 40_000, Some("DE"));
    platform.send_tracked(1, &late, &mut ends).await?;
    platform.wait_both_caught_up(&ends).await?;
    // Three purchases the lake never had, on a partition the topic does not have: the first
    // promotion finds the layers diverged.
    sqlx::query(
        "INSERT INTO speed_aggregates (metric, bucket_start, dims, partition, event_count, sum_micros)
         VALUES ('purchases', $1, '[\"DE\"]', 99, 3, 0)",
    )
    .bind(to_datetime(at(5)))
    .execute(&platform.pool)
    .await?;
    let (ok, output) = platform
        .run(
            "batch-layer",
            &["run", "--cutover", &format_rfc3339(at(CUTOVER_MINUTE))],
        )
        .await?;
    ensure!(ok, "batch-layer run failed:\n{output}");
    wait_until(
        Duration::from_secs(30),
        "the divergence alert to fire",
        || async {
            platform.get("/v1/alerts").await.is_ok_and(|(_, body)| {
                body["alerts"].as_array().is_some_and(|alerts| {
                    alerts
                        .iter()
                        .any(|a| a["rule"] == "divergence:purchases" && a["state"] == "firing")
                })
            })
        },
    )
    .await?;

    let (from, to) = (format_rfc3339(at(0)), format_rfc3339(at(MINUTES)));
    let choices = format!("from={from}&to={to}&group_by=country");

    // (1) Each bucket on its own: batch points before T, speed points from T on.
    let (dom, answer) = check_chart(
        &platform,
        &browser,
        &format!("metric=purchases&{choices}"),
        &choices,
    )
    .await?;
    let split = by_source(served_points(&answer)?);
    // DE every minute, FR every second, no country every fifth: 12+6+3 before minute 12,
    // 8+4+1 after.
    ensure!(
        split == BTreeMap::from([("batch".to_string(), 21), ("speed".to_string(), 13)]),
        "both layers answer part of the range: {split:?}"
    );

    // The side panels show what their endpoints say.
    ensure!(
        answer["late_events"].as_i64().is_some_and(|n| n >= 1)
            && figure(&dom, "late-events") == Some(answer["late_events"].to_string().as_str())
            && figure(&dom, "late-rate").and_then(|r| r.parse::<f64>().ok())
                == answer["late_rate"].as_f64(),
        "late events and rate: {answer}"
    );
    let (status, freshness) = platform.get("/v1/freshness").await?;
    ensure!(status == 200, "{status} {freshness}");
    let cutover = format_rfc3339(at(CUTOVER_MINUTE));
    ensure!(
        freshness["batch"]["cutover"] == cutover.as_str()
            && figure(&dom, "cutover") == Some(cutover.as_str())
            && freshness["batch"]["version"] == answer["batch_version"]
            && figure(&dom, "batch-version") == answer["batch_version"].as_str()
            && freshness["batch"]["lag_seconds"]
                .as_f64()
                .is_some_and(|lag| lag >= ((MINUTES + 10 - CUTOVER_MINUTE) * 60) as f64),
        "freshness of the batch side: {freshness}"
    );
    ensure!(
        freshness["speed"]["partitions"].as_array().map(Vec::len) == Some(PARTITIONS as usize)
            && freshness["lake"]["partitions"].as_array().map(Vec::len)
                == Some(PARTITIONS as usize)
            && start_tags(&dom, " data-partition=\"").len() == PARTITIONS as usize
            && figure(&dom, "speed-watermark").is_some(),
        "freshness per partition: {freshness}"
    );
    let (_, divergence) = platform.get("/v1/divergence?limit=1").await?;
    let above: Vec<&str> = divergence["metrics"]
        .as_array()
        .context("metrics")?
        .iter()
        .filter(|m| m["above_threshold"] == true)
        .filter_map(|m| m["metric"].as_str())
        .collect();
    let shown_above: Vec<&str> = start_tags(&dom, " data-above=\"true\"")
        .into_iter()
        .filter_map(|t| attribute(t, "data-metric"))
        .collect();
    ensure!(
        above == ["purchases"] && shown_above == above,
        "divergence above the threshold: served {above:?}, shown {shown_above:?}"
    );
    let (_, alerts) = platform.get("/v1/alerts").await?;
    let firing = alerts["alerts"]
        .as_array()
        .context("alerts")?
        .iter()
        .filter(|a| a["state"] == "firing")
        .count();
    ensure!(
        firing >= 1
            && figure(&dom, "alerts-firing") == Some(firing.to_string().as_str())
            && start_tags(&dom, "data-alert-state=\"firing\"").len() == firing,
        "firing alerts: {alerts}"
    );

    // (2) A window of 3 minutes slides across T: the points whose window spans it are mixed.
    let sliding = format!("{choices}&window=3m");
    let (_, answer) = check_chart(
        &platform,
        &browser,
        &format!("metric=purchases&{sliding}"),
        &sliding,
    )
    .await?;
    let split = by_source(served_points(&answer)?);
    ensure!(
        split.get("mixed").is_some_and(|n| *n > 0),
        "windows spanning T: {split:?}"
    );

    // (3) A screenshot of view (1), for people.
    let path = target_dir()?.join(SCREENSHOT);
    browser
        .screenshot(
            &format!(
                "http://{}/?metric=purchases&{choices}",
                platform.listen_addr
            ),
            &path,
        )
        .await?;
    Ok(())
}

/// With `serving.read_token` set, the page itself stays open and its requests carry the token
/// given in the URL's fragment; without it, every panel says how to give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_sends_the_read_token_from_its_fragment() -> Result<()> {
    const TOKEN: &str = "dashboard-read-token";
    let mut platform = Platform::new("dashboard_token", PARTITIONS).await?;
    let browser = Browser::from_env(platform.lake_dir.with_file_name("chromium"))?;
    platform
        .extra_env
        .push(("PLATFORM_SERVING__READ_TOKEN".into(), TOKEN.into()));
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let (status, _) = platform.get("/v1/metrics").await?;
    ensure!(status == 401, "the read endpoints need the token: {status}");

    let page = format!("http://{}/?metric=purchases&range=1h", platform.listen_addr);
    let without = browser.rendered_dom(&page).await?;
    let chart = start_tag(&without, "id=\"chart\"").context("the chart")?;
    ensure!(
        attribute(chart, "data-state") == Some("error") && without.contains("#token="),
        "without the token: {chart}\n{without}"
    );
    let with = browser
        .rendered_dom(&format!("{page}#token={TOKEN}"))
        .await?;
    for panel in ["chart", "freshness", "late", "divergence", "alerts"] {
        let tag = start_tag(&with, &format!("id=\"{panel}\"")).context("a panel")?;
        ensure!(
            attribute(tag, "data-state") == Some("ready"),
            "with the token, {panel}: {tag}\n{with}"
        );
    }
    Ok(())
}
