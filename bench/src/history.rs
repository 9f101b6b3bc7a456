//! Serving memory and latency against the length of history (issue 18): the same query mix over
//! a batch view of 2 days and of 60 days. The views are written as a batch run publishes them
//! (a segment per hour, then the manifest) and promoted by recording the version, so only the
//! serving layer runs. The 2-day view is the 60-day one's baseline.

use crate::load::rss_mib;
use crate::report::Figure;
use anyhow::{Context, Result, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_io::promotion::{self, Reason};
use shared_io::storage::Lake;
use shared_io::view::ViewRow;
use shared_io::view_segments::{publish_manifest, publish_segment};
use shared_schema::hll::Hll;
use shared_schema::metrics::Partial;
use shared_schema::query::BucketRow;
use shared_schema::time::{HOUR_MS, MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};
use std::time::Instant;

const COUNTRIES: usize = 20;
/// Distinct users per minute in `active_users`: a sparse sketch each.
const USERS_PER_MINUTE: usize = 40;
/// Queries in the mix, and how many run at once.
const QUERIES: usize = 400;
const CONCURRENCY: usize = 4;

/// One history length's figures.
struct Measured {
    rows: u64,
    rss_mib: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run() -> Result<Vec<Figure>> {
    let short = measure(2).await?;
    let long = measure(60).await?;
    let details = format!(
        "{QUERIES} queries, {CONCURRENCY} at a time: purchases by country and active_users, per minute over 24 hours \
         ending at random minutes of the last hour; view of {} rows (2 days) and {} rows (60 days), a segment per hour; \
         serving.view_cache_mb at its default; RSS of serving-layer after the mix",
        short.rows, long.rows
    );
    Ok(vec![
        Figure::new(
            "serving RSS, 60 days of history",
            (long.rss_mib, "MiB"),
            ("the same mix over 2 days", short.rss_mib),
            details.clone(),
        )
        .target(
            "at most 1.2x the 2-day RSS",
            long.rss_mib <= 1.2 * short.rss_mib,
        ),
        Figure::new(
            "serving 24-hour query p99, 60 days of history",
            (long.p99_ms, "ms"),
            ("the same query over 2 days", short.p99_ms),
            format!(
                "{details}; p50 {:.1} ms (60 days) against {:.1} ms (2 days)",
                long.p50_ms, short.p50_ms
            ),
        )
        .target(
            "independent of history (within 1.5x)",
            long.p99_ms <= 1.5 * short.p99_ms.max(1.0),
        ),
    ])
}

/// The view's rows of one hour: purchases and revenue per country, active users, per minute.
fn hour_rows(hour: Millis, rng: &mut StdRng) -> Vec<ViewRow> {
    let mut rows = Vec::new();
    for minute in 0..60 {
        let bucket = hour + minute * MINUTE_MS;
        for c in 0..COUNTRIES {
            let count = rng.random_range(1..50);
            let dims = format!("[\"C{c}\"]");
            for metric in ["purchases", "revenue"] {
                rows.push(ViewRow {
                    metric: metric.into(),
                    row: BucketRow {
                        bucket_start: bucket,
                        dims: dims.clone(),
                        partial: Partial {
                            count,
                            sum_micros: i128::from(count) * 9_990_000,
                            ..Partial::default()
                        },
                    },
                });
            }
        }
        let mut sketch = Hll::default();
        for _ in 0..USERS_PER_MINUTE {
            sketch.insert(&format!("u{}", rng.random_range(0..100_000)));
        }
        rows.push(ViewRow {
            metric: "active_users".into(),
            row: BucketRow {
                bucket_start: bucket,
                dims: "[]".into(),
                partial: Partial {
                    count: USERS_PER_MINUTE as i64,
                    sketch: Some(sketch),
                    ..Partial::default()
                },
            },
        });
    }
    rows
}

async fn measure(days: i64) -> Result<Measured> {
    let platform = crate::load::bench_platform(&format!("bench_history_{days}d"), 1).await?;
    let cutover = bucket_start(now_millis(), HOUR_MS) - HOUR_MS;
    // The services migrate at start; the version is recorded before any runs.
    shared_io::db::MIGRATOR.run(&platform.pool).await?;
    let lake = Lake::open(&platform.lake_dir)?;
    let version = format!("history-{days}d");
    let writing = Instant::now();
    let mut rng = StdRng::seed_from_u64(5);
    let mut segments = Vec::new();
    let mut rows = 0u64;
    for h in (1..=days * 24).rev() {
        let hour = cutover - h * HOUR_MS;
        let segment = publish_segment(&lake, &version, hour, hour_rows(hour, &mut rng)).await?;
        rows += segment.rows;
        segments.push(segment);
    }
    let (_, view_path) = publish_manifest(&lake, &version, segments).await?;
    let mut tx = platform.pool.begin().await?;
    sqlx::query(
        "INSERT INTO batch_versions (version, cutover, view_path, row_count, lake_files, lake_rows, started_at, promoted_at)
         VALUES ($1, $2, $3, $4, 0, 0, now(), now())",
    )
    .bind(&version)
    .bind(shared_schema::time::to_datetime(cutover))
    .bind(&view_path)
    .bind(rows as i64)
    .execute(&mut *tx)
    .await?;
    promotion::record(&mut tx, &version, cutover, Reason::Run).await?;
    tx.commit().await?;
    println!(
        "history: {days} days, {rows} view rows written in {:.1}s",
        writing.elapsed().as_secs_f64()
    );

    let serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let mut rng = StdRng::seed_from_u64(9);
    let paths: Vec<String> = (0..QUERIES)
        .map(|i| {
            // A dashboard's last 24 hours, asked over the last hour. The answer cache renders
            // whole chunks (a day at one-minute steps), so a query reads a day of segments
            // before its range too: ends spread over the last day would read 3 days, which the
            // 2-day history does not have, and compare different data.
            let end = cutover - rng.random_range(0..60) * MINUTE_MS;
            let metric = if i % 2 == 0 {
                "purchases?group_by=country&"
            } else {
                "active_users?"
            };
            format!(
                "http://{}/v1/metrics/{metric}from={}&to={}",
                platform.listen_addr,
                format_rfc3339(end - 24 * HOUR_MS),
                format_rfc3339(end)
            )
        })
        .collect();
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(QUERIES);
    for chunk in paths.chunks(CONCURRENCY) {
        let asked = chunk.iter().map(|url| {
            let client = client.clone();
            async move {
                let started = Instant::now();
                let response = client.get(url).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                ensure!(status.is_success(), "{url}: {status} {body:?}");
                anyhow::Ok(started.elapsed().as_secs_f64() * 1000.0)
            }
        });
        for latency in futures::future::join_all(asked).await {
            latencies.push(latency?);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let rss = rss_mib(serving.pid().context("serving-layer's pid")?)?;
    println!(
        "history: {days} days: p50 {:.1} ms, p99 {:.1} ms, serving RSS {rss:.0} MiB",
        at(0.5),
        at(0.99)
    );
    Ok(Measured {
        rows,
        rss_mib: rss,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}
