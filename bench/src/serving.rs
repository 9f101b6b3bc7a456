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

/// What wrk measured for one query.
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
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

    let addr = &platform.listen_addr;
    let batch = paced(addr, &[batch_url.clone()], Encoding::Plain, rate, seconds).await?;
    let merged = paced(addr, &[merged_url.clone()], Encoding::Plain, rate, seconds).await?;
    let batch_gzip = paced(addr, &[batch_url], Encoding::Gzip, rate, seconds).await?;
    let merged_gzip = paced(addr, &[merged_url], Encoding::Gzip, rate, seconds).await?;
    // Every request a range of its own (the 24 hours shifted by up to 10 hours): no snapshot
    // is reused, so each answer reads Postgres and merges its speed hour afresh, while its
    // batch points still come from the rendered chunks.
    let distinct_urls: Vec<String> = (0..600)
        .map(|i| {
            let shift = (i * MINUTE_MS) % (10 * HOUR_MS);
            url(cutover - 23 * HOUR_MS - shift, cutover + HOUR_MS - shift)
        })
        .collect();
    let distinct = paced(addr, &distinct_urls, Encoding::Plain, rate, seconds).await?;
    let details = format!(
        "{events} events over 25 hours, purchases per minute by country over 24 hours ({points} points \
         per answer), wrk with {CONNECTIONS} connections paced to {rate:.0} req/s for {seconds}s each, \
         on loopback; merged: 23 hours of batch view and 1 hour of speed rows; batch-only: 24 hours \
         of batch view"
    );
    let p99_target = |load: &Load| load.p99_ms < 10.0 && load.requests_per_second >= 0.95 * rate;
    Ok(vec![
        Figure::new(
            "serving merged query p99",
            (merged.p99_ms, "ms"),
            ("batch-only query p99", batch.p99_ms),
            format!(
                "{details}; merged {:.0} req/s p50 {:.2} ms, batch-only {:.0} req/s p50 {:.2} ms",
                merged.requests_per_second, merged.p50_ms, batch.requests_per_second, batch.p50_ms
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
            format!("{details}; {:.0} req/s", batch.requests_per_second),
        )
        .target("p99 < 10 ms at the rate", p99_target(&batch)),
        Figure::new(
            "serving merged query p99, accepting gzip",
            (merged_gzip.p99_ms, "ms"),
            ("batch-only query p99, accepting gzip", batch_gzip.p99_ms),
            format!(
                "{details}; Accept-Encoding: gzip (a repeated answer goes out compressed); merged \
                 {:.0} req/s p50 {:.2} ms, batch-only {:.0} req/s p50 {:.2} ms",
                merged_gzip.requests_per_second,
                merged_gzip.p50_ms,
                batch_gzip.requests_per_second,
                batch_gzip.p50_ms
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
                "{details}; Accept-Encoding: gzip; {:.0} req/s",
                batch_gzip.requests_per_second
            ),
        )
        .target("p99 < 10 ms at the rate", p99_target(&batch_gzip)),
        Figure::new(
            "serving merged query p99, every request another range",
            (distinct.p99_ms, "ms"),
            ("batch-only query p99", batch.p99_ms),
            format!(
                "{details}; 600 ranges shifted minute by minute, so no query snapshot is reused; \
                 {:.0} req/s p50 {:.2} ms",
                distinct.requests_per_second, distinct.p50_ms
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

/// wrk at about `rate` requests a second for `seconds`. Each connection waits between a
/// response and its next request, so its cycle is that wait plus the latency: two 3-second
/// runs estimate the latency from the rate they reach and shorten the wait by it.
async fn paced(
    listen_addr: &str,
    urls: &[String],
    encoding: Encoding,
    rate: f64,
    seconds: u64,
) -> Result<Load> {
    let cycle_ms = CONNECTIONS as f64 * 1000.0 / rate;
    let mut delay_ms = cycle_ms;
    for _ in 0..2 {
        let calibration = wrk(listen_addr, urls, encoding, delay_ms, 3).await?;
        let reached_cycle_ms =
            CONNECTIONS as f64 * 1000.0 / calibration.requests_per_second.max(1.0);
        let latency_ms = (reached_cycle_ms - delay_ms).max(0.0);
        delay_ms = (cycle_ms - latency_ms).max(0.0);
    }
    // Short calibrations misjudge the latency now and then: a measured run that missed the
    // rate by more than 5% either way is run again with the wait corrected by what it reached.
    let mut load = wrk(listen_addr, urls, encoding, delay_ms, seconds).await?;
    for _ in 0..2 {
        if (load.requests_per_second - rate).abs() <= 0.05 * rate {
            break;
        }
        let reached_cycle_ms = CONNECTIONS as f64 * 1000.0 / load.requests_per_second.max(1.0);
        delay_ms = (cycle_ms - (reached_cycle_ms - delay_ms).max(0.0)).max(0.0);
        load = wrk(listen_addr, urls, encoding, delay_ms, seconds).await?;
    }
    Ok(load)
}

/// What the requests accept.
#[derive(Clone, Copy)]
enum Encoding {
    Plain,
    Gzip,
}

/// Runs wrk against `urls` for `seconds`, each connection waiting `delay_ms` between a
/// response and its next request. With several URLs, the requests go round them.
async fn wrk(
    listen_addr: &str,
    urls: &[String],
    encoding: Encoding,
    delay_ms: f64,
    seconds: u64,
) -> Result<Load> {
    let headers = match encoding {
        Encoding::Plain => "nil",
        Encoding::Gzip => "{[\"Accept-Encoding\"] = \"gzip\"}",
    };
    let script = std::env::temp_dir().join(format!("bench-pace-{}.lua", std::process::id()));
    let prefix = format!("http://{listen_addr}");
    let paths: Vec<String> = urls
        .iter()
        .map(|u| format!("{:?}", u.trim_start_matches(&prefix)))
        .collect();
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal next_path = 0\n\
             function request()\n  next_path = next_path % #paths + 1\n  \
             return wrk.format(nil, paths[next_path], {headers})\nend\n\
             function delay()\n  return {delay_ms:.3}\nend\n",
            paths.join(", ")
        ),
    )?;
    let url = urls.first().context("wrk needs a URL")?;
    let output = tokio::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
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

fn parse_wrk(text: &str) -> Option<Load> {
    let percentile = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        duration_ms(line.split_whitespace().nth(1)?)
    };
    let requests_per_second = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Load {
        requests_per_second,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`, `1.5m`.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_distribution() {
        let text = "Running 10s test @ http://127.0.0.1:1/x\n  2 threads and 16 connections\n  \
                    Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    2.00ms\n     \
                    99%    9.87ms\n  20000 requests in 10.00s, 1.00MB read\nRequests/sec:   1999.52\n";
        let load = parse_wrk(text).expect("parsed");
        assert!((load.p50_ms - 0.812).abs() < 1e-9);
        assert!((load.p99_ms - 9.87).abs() < 1e-9);
        assert!((load.requests_per_second - 1999.52).abs() < 1e-9);
    }
}
