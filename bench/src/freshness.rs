//! Freshness: from an event being produced to it being visible in the HTTP answer, at a steady
//! rate, against a bare consumer's produce-to-receive latency measured on the same messages.
//!
//! Served visibility is read from counts: every event is a purchase in one bucket range, and the
//! i-th event produced counts as visible at the first poll whose total exceeds i. Partitions are
//! committed in batches, so this is the latency of the served count, which is what a user sees.

use crate::load::bulk_producer;
use crate::report::Figure;
use anyhow::Result;
use platform_tests::first_series_total;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use shared_schema::time::{MINUTE_MS, format_rfc3339, now_millis};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
/// Events of the first seconds are left out: the services are still warming up.
const WARMUP: Duration = Duration::from_secs(2);

pub async fn run(rate: f64, seconds: u64) -> Result<Vec<Figure>> {
    let platform = crate::load::bench_platform("bench_freshness", PARTITIONS).await?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    // Let the consumer group settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let origin = Instant::now();
    let total = (rate * seconds as f64) as usize;
    let sent_at: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..total).map(|_| Default::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));

    // Baseline: a bare consumer timing each message from its send.
    let bare = {
        let (brokers, topic) = (platform.brokers.clone(), platform.topic.clone());
        let (sent_at, stop) = (sent_at.clone(), stop.clone());
        tokio::task::spawn_blocking(move || -> Result<Vec<f64>> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "bench-bare")
                .set("fetch.wait.max.ms", "10")
                .create()?;
            let mut assignment = rdkafka::TopicPartitionList::new();
            for partition in 0..PARTITIONS {
                assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning)?;
            }
            consumer.assign(&assignment)?;
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let now = origin.elapsed().as_micros() as u64;
                let index = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.parse::<usize>().ok());
                if let Some(sent) = index.and_then(|i| sent_at.get(i)) {
                    let sent = sent.load(Ordering::Relaxed);
                    if sent >= WARMUP.as_micros() as u64 {
                        latencies.push((now.saturating_sub(sent)) as f64 / 1000.0);
                    }
                }
            }
            Ok(latencies)
        })
    };

    // Served counts, polled.
    let url = format!(
        "/v1/metrics/purchases?from={}&to={}&step=1h",
        format_rfc3339(now_millis() - 60 * MINUTE_MS),
        format_rfc3339(now_millis() + 60 * MINUTE_MS)
    );
    let poller = {
        let stop = stop.clone();
        let platform_http = platform.http.clone();
        let base = format!("http://{}{url}", platform.listen_addr);
        tokio::spawn(async move {
            let mut polls: Vec<(u64, f64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(response) = platform_http.get(&base).send().await
                    && let Ok(body) = response.json::<serde_json::Value>().await
                {
                    polls.push((
                        origin.elapsed().as_micros() as u64,
                        first_series_total(&body),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            polls
        })
    };

    let producer = bulk_producer(&platform.brokers)?;
    let mut sent = 0usize;
    while sent < total {
        let due = ((origin.elapsed().as_secs_f64() * rate) as usize).min(total);
        while sent < due {
            let payload = json!({"event_id": format!("f{sent}"), "event_type": "purchase",
                "event_time": now_millis(), "country": "FR", "amount": 1.0, "schema_version": 2})
            .to_string();
            let key = sent.to_string();
            let record = FutureRecord::to(&platform.topic)
                .partition((sent % PARTITIONS as usize) as i32)
                .key(&key)
                .payload(&payload);
            sent_at[sent].store(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
            if let Err((e, _)) = producer.send_result(record) {
                anyhow::bail!("enqueueing: {e}");
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let achieved = total as f64 / origin.elapsed().as_secs_f64();
    // Give the last events time to show before stopping the clocks.
    let drain_until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = platform.get(&url).await?;
        if first_series_total(&body) >= total as f64 || Instant::now() > drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let polls = poller.await?;
    let mut bare = bare.await??;

    let mut served: Vec<f64> = Vec::new();
    let mut poll = polls.iter().peekable();
    for (index, sent) in sent_at.iter().enumerate() {
        let sent = sent.load(Ordering::Relaxed);
        while poll.peek().is_some_and(|(_, seen)| *seen <= index as f64) {
            poll.next();
        }
        let Some((visible, _)) = poll.peek() else {
            break;
        };
        if sent >= WARMUP.as_micros() as u64 {
            served.push(visible.saturating_sub(sent) as f64 / 1000.0);
        }
    }
    // Events never seen served within the drain would otherwise drop out of the percentiles.
    let measured = sent_at
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) >= WARMUP.as_micros() as u64)
        .count();
    let all_seen = served.len() >= measured;
    let details = format!(
        "{total} events at {achieved:.0}/s achieved ({rate:.0}/s asked) over {seconds}s, {PARTITIONS} partitions; \
         served latency from counts polled every 20 ms; {} of the {measured} events sent after the {WARMUP:?} \
         warm-up seen served",
        served.len()
    );
    let (p50, p99) = (percentile(&mut served, 0.5), percentile(&mut served, 0.99));
    let (bare50, bare99) = (percentile(&mut bare, 0.5), percentile(&mut bare, 0.99));
    Ok(vec![
        Figure::new(
            "freshness p50",
            (p50, "ms"),
            ("bare consumer p50", bare50),
            details.clone(),
        ),
        Figure::new(
            "freshness p99",
            (p99, "ms"),
            ("bare consumer p99", bare99),
            details,
        )
        .target(
            "p99 <= 300 ms at 20000 events/s, every event seen served",
            p99 <= 300.0 && achieved >= 19_000.0 && all_seen,
        ),
    ])
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}
