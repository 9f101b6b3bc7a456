//! The consumer both layers share, against the real broker: a `next_batch` call dropped part
//! way (as `tokio::select!` or a timeout drops it) must not lose the messages it had taken.
//! Before this was made safe, a speed-layer timer that interrupted batches lost a few events
//! every 30 seconds of traffic.

use anyhow::{Result, ensure};
use platform_tests::{Cluster, create_topic, producer, send};
use serde_json::json;
use shared_io::kafka::EventSource;
use shared_schema::time::now_millis;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const MESSAGES: i64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_batch_loses_nothing() -> Result<()> {
    let cluster = Cluster::from_env();
    let topic = format!("source_{}", uuid::Uuid::new_v4().simple());
    create_topic(&cluster.brokers, &topic, 1).await?;
    // Messages trickle in while batches are read, so a cut-short call has some in hand.
    let producer = producer(&cluster.brokers)?;
    let sending = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                let payload = json!({"event_id": format!("s{i}"), "event_type": "view", "event_time": now_millis(), "schema_version": 2});
                send(&producer, &topic, 0, b"k", payload.to_string().as_bytes()).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        })
    };

    let mut source = EventSource::connect(
        &shared_schema::kafka_access::KafkaAccess::plain(&cluster.brokers),
        &format!("{topic}-reader"),
        &topic,
        &BTreeMap::new(),
        60_000,
        Duration::from_secs(30),
    )
    .await?;
    let mut seen = BTreeSet::new();
    let (mut returned, mut dropped) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        // Every other call is cut short while it is reading; the others wait long enough for a
        // rewound partition to be fetched again.
        let (limit, max_wait) = if (returned + dropped) % 2 == 0 {
            (Duration::from_millis(40), Duration::from_millis(100))
        } else {
            (Duration::from_secs(5), Duration::from_millis(700))
        };
        match tokio::time::timeout(limit, source.next_batch(1000, max_wait)).await {
            Err(_) => dropped += 1,
            Ok(batch) => {
                let batch = batch?;
                returned += 1;
                seen.extend(batch.events.iter().map(|e| e.offset));
                let next = batch.positions.get(&0).map_or(0, |p| p.next_offset);
                if next >= MESSAGES {
                    break;
                }
            }
        }
    }
    sending.await??;
    let missing: Vec<i64> = (0..MESSAGES).filter(|o| !seen.contains(o)).collect();
    ensure!(
        dropped > 0,
        "no call was cut short, so the test proved nothing"
    );
    ensure!(
        missing.is_empty(),
        "{} offsets never handed out ({returned} batches returned, {dropped} dropped): {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    Ok(())
}
