//! `batch.memory_limit_mb` (issue 7): a recompute whose aggregates need more memory than the limit
//! completes by spilling, with the same view as an unlimited one; without anywhere to spill,
//! the same limit fails, which shows that the limit binds for this input.

use batch_layer::lake::{events_to_batch, write_parquet_atomically};
use batch_layer::view_plan::{compute_view, session_context};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use shared_io::kafka::SourcedEvent;
use shared_io::view::ViewRow;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use shared_schema::event::Event;
use shared_schema::time::{MINUTE_MS, Millis};

const BASE: Millis = 1_795_000_000_000 - 1_795_000_000_000 % MINUTE_MS;
const EVENTS: usize = 160_000;
// Low enough to bind: 12 MB did until session starts and the dedupe became hash aggregates
// without a global sort (issue 18), and this input now fits in 12 MB.
const LIMIT_MB: u64 = 4;

fn lake(dir: &std::path::Path) -> Vec<String> {
    // A small deterministic generator: the test needs volume, not randomness.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let kinds = ["purchase", "page_view", "error", "login_failed", "click"];
    let events: Vec<SourcedEvent> = (0..EVENTS)
        .map(|i| {
            let r = next();
            // Every tenth event is a copy of an earlier one, as redeliveries are.
            let id = if i % 10 == 9 { i - 5 } else { i };
            SourcedEvent {
                partition: (r % 4) as i32,
                offset: i as i64,
                event: Event {
                    event_id: format!("event-{id:08}"),
                    event_type: kinds[id % kinds.len()].to_string(),
                    event_time: BASE + (id as i64 * 7_919) % (120 * MINUTE_MS),
                    schema_version: 2,
                    user_id: Some(format!("user-{}", id % 40_000)),
                    product_id: Some(format!("product-{}", id % 50)),
                    amount_micros: Some((id as i64 % 1_000) * 10_000),
                    city: Some("Berlin".into()),
                    country: Some(["DE", "FR", "US"][id % 3].into()),
                    profile: None,
                },
            }
        })
        .collect();
    events
        .chunks(EVENTS / 4)
        .enumerate()
        .map(|(i, chunk)| {
            let refs: Vec<&SourcedEvent> = chunk.iter().collect();
            let path = dir.join(format!("events/part-{i}.parquet"));
            let batch = events_to_batch(&refs).expect("lake batch");
            write_parquet_atomically(&path, &batch).expect("lake file");
            path.to_string_lossy().into_owned()
        })
        .collect()
}

fn sorted(mut rows: Vec<ViewRow>) -> Vec<String> {
    rows.sort_by(|a, b| {
        (&a.metric, a.row.bucket_start, &a.row.dims).cmp(&(
            &b.metric,
            b.row.bucket_start,
            &b.row.dims,
        ))
    });
    rows.iter().map(|r| format!("{r:?}")).collect()
}

#[test]
fn a_recompute_larger_than_its_memory_limit_spills_and_completes() {
    let dir = std::env::temp_dir().join(format!("memory-limit-{}", std::process::id()));
    let spill = dir.join("spill");
    std::fs::create_dir_all(&spill).expect("spill dir");
    let paths = lake(&dir);
    let catalog = MetricCatalog::default();
    let cutover = BASE + 180 * MINUTE_MS;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let unlimited = runtime
        .block_on(compute_view(
            &SessionContext::new(),
            &paths,
            &catalog,
            cutover,
        ))
        .expect("unlimited recompute");

    let mut config = PlatformConfig::default();
    config.batch.memory_limit_mb = Some(LIMIT_MB);
    config.batch.spill_dir = Some(spill.clone());
    let limited = session_context(&config).expect("limited context");
    // A real limit holds many 8192-row batches per operator; this small one holds many of
    // these, so that whether a sort fits never hangs on how the partitions interleave.
    let limited = SessionContext::new_with_config_rt(
        limited.copied_config().with_batch_size(1024),
        limited.runtime_env(),
    );
    let spilled = runtime
        .block_on(compute_view(&limited, &paths, &catalog, cutover))
        .expect("a limited recompute completes by spilling");
    assert_eq!(sorted(spilled), sorted(unlimited.clone()));

    let no_disk = RuntimeEnvBuilder::new()
        .with_memory_pool(std::sync::Arc::new(FairSpillPool::new(
            LIMIT_MB as usize * 1024 * 1024,
        )))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .expect("runtime without disk");
    let same_settings = limited.copied_config();
    let cannot_spill = SessionContext::new_with_config_rt(same_settings, no_disk);
    let refused = runtime.block_on(compute_view(&cannot_spill, &paths, &catalog, cutover));
    assert!(
        refused.is_err(),
        "the same limit without a disk should not fit this input, so the test would prove nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
