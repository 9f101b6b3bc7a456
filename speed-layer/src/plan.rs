//! The checkpoint's in-memory half: which events of a batch are new, what they fold into,
//! and the log entries that tell every instance about them. Nothing here touches Postgres,
//! which is also what the speed layer's own ceiling is measured on (bench `ceiling`).

use crate::late_events::LateEvents;
use crate::sessions::apply_sessions;
use crate::state::SpeedState;
use crate::state::log::{LogEntry, encode, id_hash};
use shared_io::kafka::{Batch, SourcedEvent};
use shared_schema::time::Millis;
use shared_schema::watermark;
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{LatePolicy, Partial, PartialKey},
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What a checkpoint writes, before it writes it.
pub(crate) struct Plan<'a> {
    /// Events whose id no instance had counted: the first copy of each.
    pub claimed: Vec<&'a SourcedEvent>,
    pub late: LateEvents<'a>,
    /// Changed cells, per Kafka partition.
    pub per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>>,
    /// The claimed events as the log keeps them.
    pub entries: Vec<LogEntry>,
}

/// Plans the checkpoint of `batch` against what `state` knows; `watermark` is the one before
/// the batch.
pub(crate) fn plan<'a>(
    state: &SpeedState,
    catalog: &MetricCatalog,
    batch: &'a Batch,
    watermark: Option<Millis>,
) -> Plan<'a> {
    let (claimed, ids): (Vec<&SourcedEvent>, Vec<_>) = first_copies(batch)
        .into_iter()
        .map(|i| &batch.events[i])
        .map(|sourced| (sourced, id_hash(&sourced.event.event_id)))
        .filter(|(_, id)| !state.contains(id))
        .unzip();
    let Folded {
        late,
        applied,
        mut per_partition,
    } = fold(catalog, &claimed, watermark);
    let mut memberships = apply_sessions(state, catalog, &applied, &mut per_partition);
    let entries = claimed
        .iter()
        .zip(ids)
        .map(|(sourced, id)| LogEntry {
            id,
            event_time: sourced.event.event_time,
            sessions: memberships
                .remove(sourced.event.event_id.as_str())
                .unwrap_or_default(),
        })
        .collect();
    Plan {
        claimed,
        late,
        per_partition,
        entries,
    }
}

/// What [`fold_without_postgres`] produced.
#[derive(Debug, Default, Clone, Copy)]
pub struct Folding {
    pub counted: usize,
    pub cells: usize,
    pub log_bytes: usize,
}

/// Plans the checkpoints of `batches` one after the other, as one instance would, with the
/// state in memory and no Postgres: the speed layer's own ceiling (bench `ceiling`).
pub fn fold_without_postgres(catalog: &MetricCatalog, batches: &[Batch]) -> Folding {
    let mut state = SpeedState::default();
    let mut done = Folding::default();
    for batch in batches {
        let plan = plan(&state, catalog, batch, None);
        done.counted += plan.claimed.len();
        done.cells += plan.per_partition.values().map(HashMap::len).sum::<usize>();
        done.log_bytes += encode(&plan.entries).len();
        for entry in &plan.entries {
            state.apply(entry);
        }
    }
    done
}

/// The index of the first copy of each id in the batch, in batch order.
fn first_copies(batch: &Batch) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(batch.events.len());
    (0..batch.events.len())
        .filter(|&i| seen.insert(batch.events[i].event.event_id.as_str()))
        .collect()
}

/// What the claimed events of a batch come to before anything is written.
struct Folded<'a> {
    late: LateEvents<'a>,
    /// Per stored metric (by index), the events it applies.
    applied: Vec<Vec<&'a SourcedEvent>>,
    /// The partials of the metrics that fold per event, per Kafka partition.
    per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>>,
}

/// The claimed events per stored metric: late ones recorded (under every policy) and applied
/// only under `update`; the applied ones folded into partials per Kafka partition, except for
/// sessions, whose starts need the stored events (`sessions`).
fn fold<'a>(
    catalog: &MetricCatalog,
    claimed: &[&'a SourcedEvent],
    watermark: Option<Millis>,
) -> Folded<'a> {
    let mut late = LateEvents::default();
    let mut applied: Vec<Vec<&SourcedEvent>> = vec![Vec::new(); catalog.metrics.len()];
    for (index, metric) in catalog.stored() {
        for sourced in claimed.iter().filter(|s| metric.matches(&s.event)) {
            let is_late = watermark::is_late(metric, sourced.event.event_time, watermark);
            late.record(index, metric, sourced, is_late);
            if is_late && metric.late_policy != LatePolicy::Update {
                continue;
            }
            applied[index].push(sourced);
        }
    }
    let mut per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>> = BTreeMap::new();
    for (index, metric) in catalog.stored().filter(|(_, m)| m.folds_per_event()) {
        for sourced in &applied[index] {
            let table = per_partition.entry(sourced.partition).or_default();
            MetricCatalog::fold_one(index, metric, &sourced.event, table);
        }
    }
    Folded {
        late,
        applied,
        per_partition,
    }
}
