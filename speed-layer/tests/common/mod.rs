//! Helpers of the middle test tier: a speed layer on a fresh migrated database of the test
//! Postgres (`test_postgres`, started by scripts/test.sh), batches built by hand, and the speed
//! tables read back as plain tuples.

#![allow(dead_code)] // Each test file uses a part.

use shared_io::{
    kafka::{Batch, SourcedEvent},
    positions::PartitionPosition,
};
use shared_schema::catalog::{DEFAULT_METRICS, MetricCatalog};
use shared_schema::config::PlatformConfig;
use shared_schema::event::Event;
use shared_schema::metrics::Partial;
use shared_schema::time::{MINUTE_MS, Millis};
use speed_layer::SpeedLayer;
use sqlx::PgPool;
use std::collections::BTreeMap;
use test_postgres::TestDatabase;

pub const TOPIC: &str = "events";
/// 2026-01-01T00:00:00Z, a minute boundary.
pub const T0: Millis = 1_767_225_600_000;
pub const M: Millis = MINUTE_MS;

/// The default catalogue plus one metric per other late policy (`purchases` is `update`).
pub const POLICY_METRICS: &str = r#"
[[metric]]
name = "purchases_dropping_late"
event_type = "purchase"
aggregation = "count"
dimensions = ["country"]
late_policy = "drop"

[[metric]]
name = "purchases_late_to_side"
event_type = "purchase"
aggregation = "count"
dimensions = ["country"]
late_policy = "side_output"
"#;

pub fn catalog() -> MetricCatalog {
    MetricCatalog::from_toml(&format!("{DEFAULT_METRICS}\n{POLICY_METRICS}"))
        .expect("the test catalogue is valid")
}

/// A speed layer on a database of its own, named after `hint`.
pub async fn speed_layer(hint: &str) -> (TestDatabase, SpeedLayer) {
    let db = TestDatabase::new(hint)
        .await
        .expect("a test database (run through scripts/test.sh, which starts Postgres)");
    let config = PlatformConfig {
        events_topic: TOPIC.into(),
        ..PlatformConfig::default()
    };
    let layer = SpeedLayer::new(db.pool.clone(), config, catalog());
    (db, layer)
}

pub fn purchase(id: &str, time: Millis, user: &str, country: &str, amount_micros: i64) -> Event {
    Event {
        event_id: id.into(),
        event_type: "purchase".into(),
        event_time: time,
        schema_version: 1,
        user_id: Some(user.into()),
        product_id: None,
        amount_micros: Some(amount_micros),
        city: None,
        country: Some(country.into()),
        profile: None,
    }
}

pub fn page_view(id: &str, time: Millis, user: &str) -> Event {
    Event {
        event_id: id.into(),
        event_type: "page_view".into(),
        event_time: time,
        schema_version: 1,
        user_id: Some(user.into()),
        product_id: Some("p1".into()),
        amount_micros: None,
        city: None,
        country: None,
        profile: None,
    }
}

/// A batch of `(partition, offset, event)`, with the positions a source reports after it:
/// per partition the next offset and the newest event time.
pub fn batch(events: Vec<(i32, i64, Event)>) -> Batch {
    let mut batch = Batch {
        advanced: true,
        ..Batch::default()
    };
    for (partition, offset, event) in events {
        let position = batch
            .positions
            .entry(partition)
            .or_insert(PartitionPosition {
                next_offset: 0,
                max_event_time: None,
                caught_up: false,
            });
        position.next_offset = position.next_offset.max(offset + 1);
        position.max_event_time = position.max_event_time.max(Some(event.event_time));
        batch.events.push(SourcedEvent {
            partition,
            offset,
            event,
        });
    }
    batch
}

/// Later than any bucket a test writes.
const YEAR_2100: Millis = 4_102_444_800_000;

/// The speed cells of `metric`, as the readers see them (packed rows summed per bucket and
/// dimensions), sorted.
pub async fn cells(pool: &PgPool, metric: &str) -> Vec<(Millis, String, Partial)> {
    let mut connection = pool.acquire().await.expect("a connection");
    let rows = shared_io::speed_state::read_rows(&mut connection, &[metric], 0, YEAR_2100)
        .await
        .expect("reading the speed cells");
    let mut merged: BTreeMap<(Millis, String), Partial> = BTreeMap::new();
    for row in rows.into_values().flatten() {
        merged
            .entry((row.bucket_start, row.dims))
            .or_default()
            .merge(&row.partial);
    }
    merged.into_iter().map(|((b, d), p)| (b, d, p)).collect()
}

/// `(bucket start, dims, count, sum in micro-units)` of `metric`, sorted.
pub async fn aggregates(pool: &PgPool, metric: &str) -> Vec<(Millis, String, i64, i64)> {
    cells(pool, metric)
        .await
        .into_iter()
        .map(|(b, d, p)| (b, d, p.count, p.sum_micros as i64))
        .collect()
}

/// `(partition, next offset, watermark)` of the topic, by partition.
pub async fn offsets(pool: &PgPool) -> Vec<(i32, i64, Option<Millis>)> {
    let rows: Vec<(i32, i64, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT partition, next_offset, watermark FROM speed_offsets WHERE topic = $1
         ORDER BY partition",
    )
    .bind(TOPIC)
    .fetch_all(pool)
    .await
    .expect("reading speed_offsets");
    rows.into_iter()
        .map(|(p, o, w)| (p, o, w.map(|w| w.timestamp_millis())))
        .collect()
}

/// The ids the log holds: what `speed_dedupe` rows were before issue 17.
pub const LOGGED_IDS: &str = "SELECT coalesce(sum(entries), 0)::bigint FROM speed_log";

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The dimension key of one `country`, as the catalogue encodes it.
pub fn country(code: &str) -> String {
    shared_schema::metrics::encode_dims(&[Some(code)])
}

pub fn no_dims() -> String {
    shared_schema::metrics::encode_dims(&[])
}
