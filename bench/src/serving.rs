//! Query speed: wrk on loopback against a 24-hour, per-minute query grouped by country, once
//! merged across the cutover and once wholly from the batch view, paced at the same request
//! rate in the same run. The batch-only query is the merged one's baseline. Each is asked plain
//! and again accepting gzip, as browsers and most HTTP clients do.

use crate::load::{EventMaker, preload};
use crate::report::Figure;
use anyhow::{Context, Result, bail};
use shared_schema::time::{HOUR_MS, MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};

const PARTITIONS: i32 = 4;
/// Connections wrk holds open; each paces its requests so that together they ask `rate`.
const CONNECTIONS: u32 = 16;

/// What one load measured, its slices added up.
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Answers the serving layer computed (the rest were found cached, or shared).
    computed: f64,
}

pub async fn run(events: u64, rate: f64, seconds: u64) -> Result<Vec<Figure>> {
    let platform = crate::load::bench_platform("bench_serving", PARTITIONS).await?;
    // The batch view covers the 24 hours before T, the speed layer the hour after it.
    let cutover = bucket_start(now_millis(), HOUR_MS) - HOUR_MS;
    let mut maker = EventMaker::new(3, 100_000, now_millis()).with_span(25 * HOUR_MS);
    let ends = preload(
        &platform.brokers,
        &platform.topic,
        PARTITIONS,
        "s",
        events,
        &mut maker,
    )
    .await?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    platform.wait_both_caught_up(&ends).await?;
    let (ok, output) = platform
        .run(
            "batch-layer",
            &["run", "--cutover", &format_rfc3339(cutover)],
        )
        .await?;
    if !ok {
        bail!("batch run failed: {output}");
    }
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let url = |from: Millis, to: Millis| {
        format!(
            "http://{}/v1/metrics/purchases?from={}&to={}&group_by=country",
            platform.listen_addr,
            format_rfc3339(from),
            format_rfc3339(to)
        )
    };
    let merged_url = url(cutover - 23 * HOUR_MS, cutover + HOUR_MS);
    let batch_url = url(cutover - 24 * HOUR_MS, cutover);
    let (status, body) = platform
        .get(merged_url.trim_start_matches(&format!("http://{}", platform.listen_addr)))
        .await?;
    let points: usize = body["series"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|g| g["points"].as_array())
                .map(Vec::len)
                .sum()
        })
        .unwrap_or(0);
    let sources: std::collections::BTreeSet<String> = body["series"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["points"].as_array())
        .flatten()
        .filter_map(|p| p["source"].as_str().map(str::to_string))
        .collect();
    if status != 200 || !sources.contains("batch") || !sources.contains("speed") {
        bail!("the merged query is not merged: status {status}, sources {sources:?}");
    }

    // Every request a range of its own (the 24 hours shifted by up to 10 hours): no snapshot
    // is reused, so each answer reads Postgres and merges its speed hour afresh, while its
    // batch points still come from the rendered chunks.
    let distinct_urls: Vec<String> = (0..600)
        .map(|i| {
            let shift = (i * MINUTE_MS) % (10 * HOUR_MS);
            url(cutover - 23 * HOUR_MS - shift, cutover + HOUR_MS - shift)
        })
        .collect();
    let mut loads = [
        Pacer::new(vec![batch_url.clone()], Encoding::Plain, rate),
        Pacer::new(vec![merged_url.clone()], Encoding::Plain, rate),
        Pacer::new(vec![batch_url], Encoding::Gzip, rate),
        Pacer::new(vec![merged_url], Encoding::Gzip, rate),
        Pacer::new(distinct_urls, Encoding::Plain, rate),
    ];
    let [batch, merged, batch_gzip, merged_gzip, distinct] =
        interleaved(&platform, &mut loads, seconds).await?;
    let details = format!(
        "{events} events over 25 hours, purchases per minute by country over 24 hours ({points} points \
         per answer), wrk with {CONNECTIONS} connections paced to {rate:.0} req/s for {seconds}s each, \
         the loads taking turns in {SLICES} slices, on loopback; merged: 23 hours of batch view and 1 hour of speed rows; batch-only: 24 hours \
         of batch view"
    );
    let p99_target = |load: &Load| load.p99_ms < 10.0 && load.requests_per_second >= 0.95 * rate;
    Ok(vec![
        Figure::new(
            "serving merged query p99",
            (merged.p99_ms, "ms"),
            ("batch-only query p99", batch.p99_ms),
            format!(
                "{details}; merged {:.0} req/s p50 {:.2} ms, {:.0} answers computed; batch-only \
                 {:.0} req/s p50 {:.2} ms, {:.0} answers computed",
                merged.requests_per_second,
                merged.p50_ms,
                merged.computed,
                batch.requests_per_second,
                batch.p50_ms,
                batch.computed
            ),
        )
        .target(
            "p99 < 10 ms at the rate, and at most 1.5x the batch-only query",
            p99_target(&merged) && merged.p99_ms <= 1.5 * batch.p99_ms,
        ),
        Figure::new(
            "serving batch-only query p99",
            (batch.p99_ms, "ms"),
            ("10 ms target", 10.0),
            format!(
                "{details}; {:.0} req/s, {:.0} answers computed",
                batch.requests_per_second, batch.computed
            ),
        )
        .target("p99 < 10 ms at the rate", p99_target(&batch)),
        Figure::new(
            "serving merged query p99, accepting gzip",
            (merged_gzip.p99_ms, "ms"),
            ("batch-only query p99, accepting gzip", batch_gzip.p99_ms),
            format!(
                "{details}; Accept-Encoding: gzip (a repeated answer goes out compressed); merged \
                 {:.0} req/s p50 {:.2} ms, {:.0} answers computed; batch-only {:.0} req/s p50 \
                 {:.2} ms, {:.0} answers computed",
                merged_gzip.requests_per_second,
                merged_gzip.p50_ms,
                merged_gzip.computed,
                batch_gzip.requests_per_second,
                batch_gzip.p50_ms,
                batch_gzip.computed
            ),
        )
        .target(
            "p99 < 10 ms at the rate, and at most 1.5x the batch-only query",
            p99_target(&merged_gzip) && merged_gzip.p99_ms <= 1.5 * batch_gzip.p99_ms,
        ),
        Figure::new(
            "serving batch-only query p99, accepting gzip",
            (batch_gzip.p99_ms, "ms"),
            ("10 ms target", 10.0),
            format!(
                "{details}; Accept-Encoding: gzip; {:.0} req/s, {:.0} answers computed",
                batch_gzip.requests_per_second, batch_gzip.computed
            ),
        )
        .target("p99 < 10 ms at the rate", p99_target(&batch_gzip)),
        Figure::new(
            "serving merged query p99, every request another range",
            (distinct.p99_ms, "ms"),
            ("batch-only query p99", batch.p99_ms),
            format!(
                "{details}; 600 ranges shifted minute by minute, so no query snapshot is reused; \
                 {:.0} req/s p50 {:.2} ms, {:.0} answers computed",
                distinct.requests_per_second, distinct.p50_ms, distinct.computed
            ),
        )
        .target(
            "p99 < 10 ms at the rate, and at most 1.5x the batch-only query",
            p99_target(&distinct) && distinct.p99_ms <= 1.5 * batch.p99_ms,
        ),
        Figure::new(
            "serving merged query req/s",
            (merged.requests_per_second, "req/s"),
            ("batch-only query req/s", batch.requests_per_second),
            "the rates wrk reached while paced; below the asked rate means the server could not keep up".into(),
        ),
    ])
}

/// Slices each load's time is cut into. The loads take turns slice by slice, so a burst of
/// noise on the machine (these run on two shared cores) falls on all of them alike rather than
/// on whichever happened to run then.
const SLICES: u64 = 5;

/// One load and the wait between a response and a connection's next request that paces it.
struct Pacer {
    urls: Vec<String>,
    encoding: Encoding,
    rate: f64,
    delay_ms: f64,
}

impl Pacer {
    fn new(urls: Vec<String>, encoding: Encoding, rate: f64) -> Pacer {
        Pacer {
            urls,
            encoding,
            rate,
            delay_ms: Self::cycle_ms(rate),
        }
    }

    /// Each connection's time from one request to the next at `rate`.
    fn cycle_ms(rate: f64) -> f64 {
        CONNECTIONS as f64 * 1000.0 / rate
    }

    /// A connection's cycle is the wait plus the latency: shorten the wait by the latency the
    /// last run showed, from the rate it reached.
    fn correct(&mut self, reached: &Run) {
        let reached_cycle_ms = Self::cycle_ms(reached.requests_per_second().max(1.0));
        let latency_ms = (reached_cycle_ms - self.delay_ms).max(0.0);
        self.delay_ms = (Self::cycle_ms(self.rate) - latency_ms).max(0.0);
    }
}

/// Runs `loads` for `seconds` each, taking turns in slices (ABBA order, so none always goes
/// first), each pacer corrected after every slice by the rate it reached. Two 3-second
/// calibrations per load come first. Also counts the answers computed (body-cache misses)
/// during each load.
async fn interleaved<const N: usize>(
    platform: &platform_tests::Platform,
    loads: &mut [Pacer; N],
    seconds: u64,
) -> Result<[Load; N]> {
    let addr = &platform.listen_addr;
    for load in loads.iter_mut() {
        for _ in 0..2 {
            let calibration = wrk(addr, load, 3).await?;
            load.correct(&calibration);
        }
    }
    let slice = (seconds / SLICES).max(1);
    let mut runs: [Run; N] = std::array::from_fn(|_| Run::default());
    let mut computed = [0.0; N];
    for round in 0..SLICES {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..N).collect()
        } else {
            (0..N).rev().collect()
        };
        for i in order {
            let before = platform.cache_lookups("body", "miss").await?;
            let run = wrk(addr, &loads[i], slice).await?;
            computed[i] += platform.cache_lookups("body", "miss").await? - before;
            loads[i].correct(&run);
            runs[i].add(&run);
        }
    }
    Ok(std::array::from_fn(|i| runs[i].load(computed[i])))
}

/// What the requests accept.
#[derive(Clone, Copy)]
enum Encoding {
    Plain,
    Gzip,
}

/// What wrk measured for one load: the latency histogram in microseconds, and the requests
/// completed over the time taken.
#[derive(Default)]
struct Run {
    latency_us: std::collections::BTreeMap<u64, u64>,
    requests: u64,
    duration_us: u64,
}

impl Run {
    fn add(&mut self, other: &Run) {
        for (latency, count) in &other.latency_us {
            *self.latency_us.entry(*latency).or_default() += count;
        }
        self.requests += other.requests;
        self.duration_us += other.duration_us;
    }

    fn requests_per_second(&self) -> f64 {
        self.requests as f64 * 1e6 / self.duration_us.max(1) as f64
    }

    /// The smallest latency at or under which `share` of the requests completed, in ms.
    fn percentile_ms(&self, share: f64) -> f64 {
        let total: u64 = self.latency_us.values().sum();
        let goal = (share * total as f64).ceil() as u64;
        let mut seen = 0;
        for (latency, count) in &self.latency_us {
            seen += count;
            if seen >= goal {
                return *latency as f64 / 1000.0;
            }
        }
        f64::NAN
    }

    fn load(&self, computed: f64) -> Load {
        Load {
            requests_per_second: self.requests_per_second(),
            p50_ms: self.percentile_ms(0.50),
            p99_ms: self.percentile_ms(0.99),
            computed,
        }
    }
}

/// Runs wrk for `seconds` with `load`'s pacing. With several URLs, the requests go round them.
async fn wrk(listen_addr: &str, load: &Pacer, seconds: u64) -> Result<Run> {
    let headers = match load.encoding {
        Encoding::Plain => "nil",
        Encoding::Gzip => "{[\"Accept-Encoding\"] = \"gzip\"}",
    };
    let script = std::env::temp_dir().join(format!("bench-pace-{}.lua", std::process::id()));
    let prefix = format!("http://{listen_addr}");
    let paths: Vec<String> = load
        .urls
        .iter()
        .map(|u| format!("{:?}", u.trim_start_matches(&prefix)))
        .collect();
    // done() prints the whole latency histogram, so slices can be added up.
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal next_path = 0\n\
             function request()\n  next_path = next_path % #paths + 1\n  \
             return wrk.format(nil, paths[next_path], {headers})\nend\n\
             function delay()\n  return {:.3}\nend\n\
             function done(summary, latency, requests)\n  \
             io.write(string.format(\"completed %d %d\\n\", summary.requests, summary.duration))\n  \
             for i = 1, #latency do\n    local value, count = latency(i)\n    \
             if count > 0 then io.write(string.format(\"latency %d %d\\n\", value, count)) end\n  \
             end\nend\n",
            paths.join(", "),
            load.delay_ms
        ),
    )?;
    let url = load.urls.first().context("wrk needs a URL")?;
    let output = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s")])
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .await
        .context("running wrk (Debian's `wrk` package; scripts/bench.sh installs it)")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if text.contains("Non-2xx") {
        bail!("wrk saw errors: {text}");
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output: {text}"))
}

/// The histogram and totals that the script's `done` prints.
fn parse_wrk(text: &str) -> Option<Run> {
    let mut run = Run::default();
    let mut completed = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("completed") => {
                run.requests = fields.next()?.parse().ok()?;
                run.duration_us = fields.next()?.parse().ok()?;
                completed = true;
            }
            Some("latency") => {
                let latency = fields.next()?.parse().ok()?;
                let count: u64 = fields.next()?.parse().ok()?;
                *run.latency_us.entry(latency).or_default() += count;
            }
            _ => {}
        }
    }
    (completed && !run.latency_us.is_empty()).then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_histogram_and_adds_slices() {
        let text = "Running 3s test @ http://127.0.0.1:1/x\n  2 threads and 16 connections\n\
                    completed 6000 3000000\nlatency 400 5900\nlatency 2500 60\nlatency 9000 40\n";
        let mut total = parse_wrk(text).expect("parsed");
        assert_eq!(total.percentile_ms(0.5), 0.4);
        assert_eq!(total.percentile_ms(0.99), 2.5);
        assert!((total.requests_per_second() - 2000.0).abs() < 1e-9);
        let slow = parse_wrk("completed 2000 1000000\nlatency 9000 2000\n").expect("parsed");
        total.add(&slow);
        assert_eq!(total.percentile_ms(0.5), 0.4);
        assert_eq!(total.percentile_ms(0.99), 9.0);
        assert!((total.requests_per_second() - 2000.0).abs() < 1e-9);
        assert!(parse_wrk("Requests/sec: 1.0\n").is_none());
    }
}
