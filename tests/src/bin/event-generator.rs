//! The demo event generator: a steady stream of e-commerce events in the contract's format, with
//! a configurable share of duplicates (half of them on another partition), late events and bad
//! messages, mixing schema versions 1 and 2 and both time formats.

use anyhow::Result;
use clap::Parser;
use platform_tests::{create_topic, producer, send};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "event-generator",
    version,
    about = "Produces demo events to the events topic"
)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, env = "EVENTS_TOPIC", default_value = "events")]
    topic: String,
    /// Create the topic first (an existing topic is kept).
    #[arg(long)]
    create_topic: bool,
    /// Partitions of a created topic; messages are spread over this many.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Events per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Share of messages that repeat an earlier event.
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Share of events whose event time lies 2 to 10 minutes in the past.
    #[arg(long, default_value_t = 0.05)]
    late: f64,
    /// Share of messages that are bad input.
    #[arg(long, default_value_t = 0.01)]
    bad: f64,
    /// Stop after this many messages (default: run until killed).
    #[arg(long)]
    count: Option<u64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Send this one message (an event as JSON, in the contract's format) to partition 0 and
    /// exit, instead of generating events.
    #[arg(long, value_name = "JSON")]
    event: Option<String>,
}

const EVENT_TYPES: [(&str, f64); 5] = [
    ("page_view", 0.6),
    ("purchase", 0.15),
    ("click", 0.15),
    ("error", 0.05),
    ("login_failed", 0.05),
];
const PLACES: [(&str, &str); 6] = [
    ("Berlin", "DE"),
    ("Paris", "FR"),
    ("Madrid", "ES"),
    ("Austin", "US"),
    ("Osaka", "JP"),
    ("Lagos", "NG"),
];

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.create_topic {
        create_topic(&args.brokers, &args.topic, args.partitions).await?;
    }
    let producer = producer(&args.brokers)?;
    if let Some(event) = &args.event {
        // Sent as given: the consumers judge it, and quarantine it if it is bad.
        let offset = send(&producer, &args.topic, 0, b"", event.as_bytes()).await?;
        println!("sent to {} partition 0 at offset {offset}", args.topic);
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut recent: Vec<(Vec<u8>, i32)> = Vec::new();
    let tick = Duration::from_millis(50);
    let per_tick = (args.rate * tick.as_secs_f64()).max(0.0);
    let mut interval = tokio::time::interval(tick);
    let mut owed = 0.0;
    let mut sent: u64 = 0;
    let run = uuid::Uuid::new_v4().simple().to_string();
    loop {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let (payload, partition) =
                if !recent.is_empty() && rng.random_bool(args.duplicates.clamp(0.0, 1.0)) {
                    let (payload, partition) = recent[rng.random_range(0..recent.len())].clone();
                    let partition = if rng.random_bool(0.5) {
                        rng.random_range(0..args.partitions)
                    } else {
                        partition
                    };
                    (payload, partition)
                } else if rng.random_bool(args.bad.clamp(0.0, 1.0)) {
                    (bad_message(&mut rng), rng.random_range(0..args.partitions))
                } else {
                    let payload = event(&mut rng, &format!("{run}-{sent}"), args.late);
                    let partition = rng.random_range(0..args.partitions);
                    if recent.len() < 1000 {
                        recent.push((payload.clone(), partition));
                    } else {
                        let slot = rng.random_range(0..recent.len());
                        recent[slot] = (payload.clone(), partition);
                    }
                    (payload, partition)
                };
            send(&producer, &args.topic, partition, b"", &payload).await?;
            sent += 1;
            if sent.is_multiple_of(1000) {
                eprintln!("sent {sent} messages");
            }
            if args.count.is_some_and(|c| sent >= c) {
                return Ok(());
            }
        }
    }
}

fn event(rng: &mut StdRng, id: &str, late_share: f64) -> Vec<u8> {
    let now = chrono::Utc::now().timestamp_millis();
    let time = if rng.random_bool(late_share.clamp(0.0, 1.0)) {
        now - rng.random_range(120_000..600_000)
    } else {
        now
    };
    let mut pick = rng.random::<f64>();
    let event_type = EVENT_TYPES
        .iter()
        .find(|(_, share)| {
            pick -= share;
            pick < 0.0
        })
        .map_or("page_view", |(t, _)| t);
    let (city, country) = PLACES[rng.random_range(0..PLACES.len())];
    let user = format!("u{}", rng.random_range(0..500));
    let mut value = json!({
        "event_id": id,
        "event_type": event_type,
        "user_id": user,
        "product_id": format!("p{}", rng.random_range(0..40)),
    });
    value["event_time"] = if rng.random_bool(0.5) {
        json!(time)
    } else {
        json!(shared_schema::time::format_rfc3339(time))
    };
    if rng.random_bool(0.5) {
        value["location"] = json!(format!("{city}, {country}"));
    } else {
        value["schema_version"] = json!(2);
        value["city"] = json!(city);
        value["country"] = json!(country);
    }
    if event_type == "purchase" {
        value["amount"] = json!(rng.random_range(100..50_000) as f64 / 100.0);
    }
    value.to_string().into_bytes()
}

fn bad_message(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => b"not json at all".to_vec(),
        1 => br#"{"event_type":"click","event_time":1}"#.to_vec(),
        2 => br#"{"event_id":"x","event_type":"click","event_time":"yesterday"}"#.to_vec(),
        _ => br#"[1,2,3]"#.to_vec(),
    }
}
