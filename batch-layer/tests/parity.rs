//! The parity property: the batch layer's DataFusion plans and the speed layer's incremental
//! folds, both driven by the same definitions, produce identical partials, and a merged query
//! across the cutover equals a batch-only recomputation of the whole range.
//!
//! Events are random, with duplicates (on other partitions too), arrival out of event-time
//! order, instants on and just before bucket boundaries, and every metric kind.

use batch_layer::lake::{events_to_batch, write_parquet_atomically};
use batch_layer::view_plan::compute_view;
use proptest::prelude::*;
use shared_io::kafka::SourcedEvent;
use shared_io::view::ViewRow;
use shared_schema::event::Event;
use shared_schema::query::{BucketRow, SeriesQuery, assemble};
use shared_schema::sessions::start_changes;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start};
use shared_schema::{
    catalog::{DEFAULT_METRICS, MetricCatalog},
    metrics::{Aggregation, Partial, PartialKey},
};
use std::collections::{BTreeMap, HashMap, HashSet};

const BASE: Millis = 1_795_000_000_000 - 1_795_000_000_000 % MINUTE_MS;
const SPAN_MINUTES: i64 = 12;
const EVENT_TYPES: [&str; 5] = ["purchase", "page_view", "error", "login_failed", "click"];

/// The default dashboard plus one metric of each kind it lacks.
fn catalog() -> MetricCatalog {
    let extra = r#"
[[metric]]
name = "smallest_purchase"
event_type = "purchase"
aggregation = "min"
field = "amount"
dimensions = ["country"]

[[metric]]
name = "largest_purchase"
event_type = "purchase"
aggregation = "max"
field = "amount"
dimensions = ["city", "country"]

[[metric]]
name = "average_purchase"
aggregation = "avg"
field = "amount"

[[metric]]
name = "short_sessions"
aggregation = "sessions"
field = "user_id"
gap = "2m"

[[metric]]
name = "buyers_by_product"
aggregation = "distinct"
field = "user_id"
dimensions = ["product_id"]
"#;
    MetricCatalog::from_toml(&format!("{DEFAULT_METRICS}\n{extra}")).expect("test catalogue")
}

#[derive(Debug, Clone)]
struct Generated {
    event: Event,
    /// Resend an earlier event instead, on this partition.
    duplicate_of: Option<(usize, i32)>,
    partition: i32,
}

fn time() -> impl Strategy<Value = Millis> {
    prop_oneof![
        (0..SPAN_MINUTES).prop_map(|k| BASE + k * MINUTE_MS),
        (1..SPAN_MINUTES).prop_map(|k| BASE + k * MINUTE_MS - 1),
        (0..SPAN_MINUTES * MINUTE_MS).prop_map(|dt| BASE + dt),
    ]
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        0..EVENT_TYPES.len(),
        time(),
        proptest::option::of(0..30u32),
        proptest::option::of(0..4u32),
        proptest::option::of(0..3u32),
        proptest::option::of(0..5_000_000i64),
        proptest::option::weighted(0.2, (0..1000usize, 0..4i32)),
        0..4i32,
    )
        .prop_map(
            |(kind, time, user, product, place, amount, duplicate_of, partition)| Generated {
                event: Event {
                    event_id: String::new(),
                    event_type: EVENT_TYPES[kind].to_string(),
                    event_time: time,
                    schema_version: 2,
                    user_id: user.map(|u| format!("u{u}")),
                    product_id: product.map(|p| format!("p{p}")),
                    amount_micros: amount,
                    city: place.map(|c| ["Berlin", "Paris", "Lyon"][c as usize].to_string()),
                    country: place.map(|c| ["DE", "FR", "FR"][c as usize].to_string()),
                    profile: None,
                },
                duplicate_of,
                partition,
            },
        )
}

/// The arrival sequence: each message with its partition and offset.
fn arrivals(generated: &[Generated]) -> Vec<SourcedEvent> {
    let mut sent: Vec<SourcedEvent> = Vec::new();
    let mut next_offset: HashMap<i32, i64> = HashMap::new();
    for (i, g) in generated.iter().enumerate() {
        let (event, partition) = match g.duplicate_of {
            Some((earlier, partition)) if !sent.is_empty() => {
                (sent[earlier % sent.len()].event.clone(), partition)
            }
            _ => (
                Event {
                    event_id: format!("e{i}"),
                    ..g.event.clone()
                },
                g.partition,
            ),
        };
        let offset = next_offset.entry(partition).or_default();
        sent.push(SourcedEvent {
            partition,
            offset: *offset,
            event,
        });
        *offset += 1;
    }
    sent
}

/// What the speed layer computes: first copy of each id, folded; session starts applied in
/// small batches of arrivals, each seeing only the known events near it, as in Postgres.
fn speed(catalog: &MetricCatalog, arrivals: &[SourcedEvent]) -> BTreeMap<PartialKey, Partial> {
    let mut seen = HashSet::new();
    let mut table = HashMap::new();
    let mut claimed = Vec::new();
    for sourced in arrivals {
        if seen.insert(sourced.event.event_id.clone()) {
            catalog.fold(&sourced.event, &mut table);
            claimed.push(&sourced.event);
        }
    }
    for (index, metric) in catalog.stored() {
        let Aggregation::Sessions { key, gap } = &metric.aggregation else {
            continue;
        };
        let gap = gap.millis();
        let mut known: HashMap<&str, Vec<Millis>> = HashMap::new();
        for chunk in claimed.chunks(13) {
            let mut added: BTreeMap<&str, Vec<Millis>> = BTreeMap::new();
            for event in chunk.iter().filter(|e| metric.matches(e)) {
                if let Some(value) = key.value(event) {
                    added.entry(value).or_default().push(event.event_time);
                }
            }
            for (value, times) in added {
                let (lo, hi) = (
                    times.iter().min().copied().unwrap_or_default() - gap,
                    times.iter().max().copied().unwrap_or_default() + gap,
                );
                let entry = known.entry(value).or_default();
                let nearby: Vec<Millis> = entry
                    .iter()
                    .copied()
                    .filter(|t| *t >= lo && *t <= hi)
                    .collect();
                for (t, change) in start_changes(&nearby, &times, gap) {
                    let cell = PartialKey {
                        metric: index,
                        bucket_start: bucket_start(t, metric.bucket.millis()),
                        dims: "[]".into(),
                    };
                    table.entry(cell).or_insert_with(Partial::default).count += change;
                }
                entry.extend(times);
            }
        }
    }
    // A bucket whose session starts were all retracted holds zero; serving leaves it out.
    table
        .into_iter()
        .filter(|(_, p)| p.count != 0 || p.sketch.is_some())
        .collect()
}

/// What the batch layer computes from a lake holding every message, up to `cutover`.
fn batch(
    catalog: &MetricCatalog,
    arrivals: &[SourcedEvent],
    cutover: Millis,
) -> BTreeMap<PartialKey, Partial> {
    let dir = std::env::temp_dir().join(format!("parity-{}-{}", std::process::id(), uuid_like()));
    let path = dir.join("events/part-0.parquet");
    let refs: Vec<&SourcedEvent> = arrivals.iter().collect();
    let record_batch = events_to_batch(&refs).expect("lake batch");
    write_parquet_atomically(&path, &record_batch).expect("lake file");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rows: Vec<ViewRow> = runtime
        .block_on(compute_view(
            &datafusion::prelude::SessionContext::new(),
            &[path.to_string_lossy().into_owned()],
            catalog,
            cutover,
        ))
        .expect("batch view");
    let _ = std::fs::remove_dir_all(&dir);
    rows.into_iter()
        .map(|r| {
            let (metric, _) = catalog.get(&r.metric).expect("view metric is defined");
            (
                PartialKey {
                    metric,
                    bucket_start: r.row.bucket_start,
                    dims: r.row.dims,
                },
                r.row.partial,
            )
        })
        .collect()
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn rows_of(table: &BTreeMap<PartialKey, Partial>, metric: usize) -> Vec<BucketRow> {
    table
        .iter()
        .filter(|(k, _)| k.metric == metric)
        .map(|(k, p)| BucketRow {
            bucket_start: k.bucket_start,
            dims: k.dims.clone(),
            partial: p.clone(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn batch_equals_speed_for_every_metric_bucket_and_group(events in proptest::collection::vec(generated(), 1..160)) {
        let catalog = catalog();
        let arrivals = arrivals(&events);
        let speed = speed(&catalog, &arrivals);
        let batch = batch(&catalog, &arrivals, Millis::MAX);
        prop_assert_eq!(batch, speed);
    }

    #[test]
    fn merged_query_across_the_cutover_equals_batch_only(
        events in proptest::collection::vec(generated(), 1..160),
        cut_minute in 0..SPAN_MINUTES,
        step_minutes in 1i64..4,
        window_steps in 1i64..4,
        grouped in any::<bool>(),
    ) {
        let catalog = catalog();
        let arrivals = arrivals(&events);
        let cutover = BASE + cut_minute * MINUTE_MS;
        let speed = speed(&catalog, &arrivals);
        let batch_until_t = batch(&catalog, &arrivals, cutover);
        let batch_everything = batch(&catalog, &arrivals, Millis::MAX);
        for (index, metric) in catalog.stored() {
            let step = step_minutes * MINUTE_MS;
            let query = SeriesQuery {
                from: BASE - 5 * MINUTE_MS,
                to: BASE + (SPAN_MINUTES + 5) * MINUTE_MS,
                step,
                window: window_steps * step,
                group_by: (grouped && !metric.dimensions.is_empty()).then_some(0),
                filter: None,
            };
            let merged = assemble(metric, &query, Some(cutover), rows_of(&batch_until_t, index), rows_of(&speed, index));
            let batch_only = assemble(metric, &query, Some(Millis::MAX), rows_of(&batch_everything, index), Vec::new());
            let strip = |series: Vec<shared_schema::query::Series>| -> Vec<(Option<Option<String>>, Millis, Partial)> {
                series.into_iter().flat_map(|s| {
                    let group = s.group;
                    s.points.into_iter().map(move |p| (group.clone(), p.t, p.partial))
                }).collect()
            };
            // Partials equal exactly, sketches included, so every finished value is equal too;
            // a distinct count is then exactly the batch-only estimate, within its 2% of truth.
            prop_assert_eq!(strip(merged), strip(batch_only), "metric {}", metric.name);
        }
    }
}
