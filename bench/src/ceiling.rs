//! The speed layer's own ceiling, with the broker and Postgres out of the way: decoding
//! contract-shaped messages and planning their checkpoints (dedupe, session starts, every default
//! metric's fold, the log entries) from memory, on one core. Beside it, the fold before issue 17
//! (a 16 KiB sketch built per distinct-count event and merged into its cell) against the fold in
//! place, on the same events.

use crate::load::EventMaker;
use crate::report::Figure;
use anyhow::Result;
use shared_io::kafka::{Batch, SourcedEvent};
use shared_schema::catalog::MetricCatalog;
use shared_schema::event::decode;
use shared_schema::metrics::{Partial, PartialKey};
use shared_schema::time::now_millis;
use std::collections::HashMap;
use std::time::Instant;

const PARTITIONS: i32 = 4;
/// `speed.batch_max_events`.
const BATCH: usize = 20_000;
/// What Flink's Nexmark q0 (a pass-through) implies per 2 cores.
const NEXMARK_Q0_PER_2_CORES: f64 = 300_000.0;

pub fn run(events: u64) -> Result<Vec<Figure>> {
    let catalog = MetricCatalog::load(None)?;
    let now = now_millis();
    let mut maker = EventMaker::new(3, 1_000_000, now);
    let payloads: Vec<Vec<u8>> = (0..events)
        .map(|i| {
            let time = maker.time();
            maker.payload(&format!("c{i}"), time).1
        })
        .collect();

    let decoding = Instant::now();
    let mut decoded = Vec::with_capacity(payloads.len());
    for (i, payload) in payloads.iter().enumerate() {
        let event = decode(Some(payload), now, 60_000)?;
        decoded.push(SourcedEvent {
            partition: i as i32 % PARTITIONS,
            offset: i as i64,
            event,
        });
    }
    let decode_seconds = decoding.elapsed().as_secs_f64();
    let batches: Vec<Batch> = decoded
        .chunks(BATCH)
        .map(|chunk| Batch {
            events: chunk.to_vec(),
            advanced: true,
            ..Batch::default()
        })
        .collect();
    let planning = Instant::now();
    let folding = speed_layer::fold_without_postgres(&catalog, &batches);
    let plan_seconds = planning.elapsed().as_secs_f64();
    let rate = events as f64 / (decode_seconds + plan_seconds);

    // The fold alone, before and after, over the stored metrics each event matches.
    let fold = |in_place: bool| -> f64 {
        let started = Instant::now();
        let mut table: HashMap<PartialKey, Partial> = HashMap::new();
        for sourced in &decoded {
            for (index, metric) in catalog.stored().filter(|(_, m)| m.folds_per_event()) {
                if !metric.matches(&sourced.event) {
                    continue;
                }
                if in_place {
                    MetricCatalog::fold_one(index, metric, &sourced.event, &mut table);
                } else {
                    let key = PartialKey {
                        metric: index,
                        bucket_start: metric.bucket_of(&sourced.event),
                        dims: metric.dims_key(&sourced.event),
                    };
                    table
                        .entry(key)
                        .or_default()
                        .merge(&Partial::of_event(metric, &sourced.event));
                }
            }
        }
        std::hint::black_box(table.len());
        events as f64 / started.elapsed().as_secs_f64()
    };
    let before = fold(false);
    let after = fold(true);
    println!(
        "ceiling: decode {:.0}/s, plan {:.0}/s, {} counted, {} cells, {:.1} log bytes per event",
        events as f64 / decode_seconds,
        events as f64 / plan_seconds,
        folding.counted,
        folding.cells,
        folding.log_bytes as f64 / events as f64
    );
    Ok(vec![
        Figure::new(
            "speed-layer ceiling without broker or Postgres (decode + plan, one core)",
            (rate, "events/s"),
            ("Nexmark q0 per 2 cores (Flink)", NEXMARK_Q0_PER_2_CORES),
            format!(
                "{events} events, 1M users, every default metric, batches of {BATCH}; decode {:.0}/s, plan {:.0}/s; {:.1} log bytes per event",
                events as f64 / decode_seconds,
                events as f64 / plan_seconds,
                folding.log_bytes as f64 / events as f64
            ),
        )
        .target(
            ">= 150000 events/s on one core (300000 per 2 cores)",
            rate >= NEXMARK_Q0_PER_2_CORES / 2.0,
        ),
        Figure::new(
            "fold in place (after issue 17)",
            (after, "events/s"),
            ("a sketch per event, merged (before)", before),
            format!("{events} events, every stored metric that folds per event"),
        ),
    ])
}
