//! Which copy of an id the batch recompute keeps: the first the lander read, by (partition,
//! offset), whichever file it is in. Copies are the same event (CONTRACT §1), so this only shows
//! for malformed input, and it is what makes such input recompute the same way every time.

use batch_layer::lake::{events_to_batch, write_parquet_atomically};
use batch_layer::view_plan::{compute_view, session_context};
use shared_io::kafka::SourcedEvent;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use shared_schema::event::Event;
use shared_schema::time::{MINUTE_MS, Millis};

const BASE: Millis = 1_795_000_000_000 - 1_795_000_000_000 % MINUTE_MS;

fn purchase(id: &str, partition: i32, offset: i64, amount_micros: i64) -> SourcedEvent {
    SourcedEvent {
        partition,
        offset,
        event: Event {
            event_id: id.into(),
            event_type: "purchase".into(),
            event_time: BASE + 1_000,
            schema_version: 2,
            user_id: Some("u".into()),
            product_id: None,
            amount_micros: Some(amount_micros),
            city: None,
            country: Some("DE".into()),
            profile: None,
        },
    }
}

#[tokio::test]
async fn the_copy_with_the_lowest_partition_and_offset_is_kept() {
    let dir = std::env::temp_dir().join(format!("dedupe-{}", std::process::id()));
    let files = [
        // "a": its partition-0 copy is in the second file, at a higher offset than the first's.
        vec![
            purchase("a", 1, 5, 1_000_000),
            purchase("b", 0, 7, 20_000_000),
        ],
        vec![
            purchase("a", 0, 900, 3_000_000),
            purchase("b", 0, 8, 400_000_000),
            purchase("b", 2, 1, 500_000_000),
            purchase("c", 3, 2, 60_000_000),
        ],
    ];
    let paths: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, events)| {
            let refs: Vec<&SourcedEvent> = events.iter().collect();
            let path = dir.join(format!("events/part-{i}.parquet"));
            write_parquet_atomically(&path, &events_to_batch(&refs).expect("batch"))
                .expect("lake file");
            path.to_string_lossy().into_owned()
        })
        .collect();
    let catalog = MetricCatalog::load(None).expect("default catalogue");
    let ctx = session_context(&PlatformConfig::default()).expect("context");
    let view = compute_view(&ctx, &paths, &catalog, BASE + MINUTE_MS)
        .await
        .expect("recompute");
    let revenue: Vec<_> = view.iter().filter(|r| r.metric == "revenue").collect();
    assert_eq!(revenue.len(), 1, "{revenue:?}");
    let partial = &revenue[0].row.partial;
    // a: partition 0 offset 900 (3), b: partition 0 offset 7 (20), c: its only copy (60).
    assert_eq!(partial.count, 3);
    assert_eq!(partial.sum_micros, 83_000_000);
    assert_eq!(partial.min_micros, Some(3_000_000));
    assert_eq!(partial.max_micros, Some(60_000_000));
    let _ = std::fs::remove_dir_all(&dir);
}
