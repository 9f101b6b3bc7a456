//! The checkpoint's in-memory half: which events of a batch are new, what they fold into,
//! and the log entries that tell every instance about them. Nothing here touches Postgres,
//! which is also what the speed layer's own ceiling is measured on (bench `ceiling`).

use crate::cells::Cells;
use crate::late_events::LateEvents;
use crate::sessions::apply_sessions;
use crate::state::SpeedState;
use crate::state::log::{LogEntry, encode, id_hash};
use shared_io::kafka::{Batch, SourcedEvent};
use shared_schema::time::Millis;
use shared_schema::watermark;
use shared_schema::{catalog::MetricCatalog, metrics::LatePolicy};
use std::collections::{HashMap, HashSet};

/// What a checkpoint writes, before it writes it.
pub(crate) struct Plan<'a> {
    /// Events whose id no instance had counted: the first copy of each.
    pub claimed: Vec<&'a SourcedEvent>,
    pub late: LateEvents<'a>,
    /// Changed cells, whichever partitions their events came from.
    pub cells: Cells,
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
        mut cells,
    } = fold(catalog, &claimed, watermark);
    let mut memberships = apply_sessions(state, catalog, &applied, &mut cells);
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
        cells,
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
        done.cells += plan.cells.values().map(HashMap::len).sum::<usize>();
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
    /// The partials of the metrics that fold per event.
    cells: Cells,
}

/// The claimed events per stored metric: late ones recorded (under every policy) and applied
/// only under `update`; the applied ones folded into partials, except for
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
    let mut cells = Cells::new();
    // One key buffer for the whole batch: a cell already there costs no allocation.
    let mut key = Vec::new();
    for (index, metric) in catalog.stored().filter(|(_, m)| m.folds_per_event()) {
        for sourced in &applied[index] {
            let event = &sourced.event;
            metric.write_dims_key(event, &mut key);
            let bucket = cells.entry((index, metric.bucket_of(event))).or_default();
            // Serialised JSON is UTF-8.
            let dims = String::from_utf8_lossy(&key);
            match bucket.get_mut(dims.as_ref()) {
                Some(partial) => partial.add_event(metric, event),
                None => bucket
                    .entry(dims.into_owned())
                    .or_default()
                    .add_event(metric, event),
            }
        }
    }
    Folded {
        late,
        applied,
        cells,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::event::Event;

    fn sourced(partition: i32, id: &str, time: Millis, user: &str) -> SourcedEvent {
        SourcedEvent {
            partition,
            offset: 0,
            event: Event {
                event_id: id.into(),
                event_type: "page_view".into(),
                event_time: time,
                schema_version: 2,
                user_id: Some(user.into()),
                product_id: Some("p1".into()),
                amount_micros: None,
                city: None,
                country: None,
                profile: None,
            },
        }
    }

    fn batch(events: Vec<SourcedEvent>) -> Batch {
        Batch {
            events,
            advanced: true,
            ..Batch::default()
        }
    }

    #[test]
    fn copies_in_later_batches_and_on_other_partitions_count_once() {
        let catalog = MetricCatalog::load(None).expect("the default catalog");
        let t = 1_767_225_600_000;
        let batches = vec![
            batch(vec![sourced(0, "a", t, "u1"), sourced(1, "a", t, "u1")]),
            batch(vec![sourced(2, "a", t, "u1"), sourced(0, "b", t + 1, "u2")]),
        ];
        assert_eq!(fold_without_postgres(&catalog, &batches).counted, 2);
    }

    #[test]
    fn a_log_entry_carries_the_session_key_of_each_sessions_metric() {
        let catalog = MetricCatalog::load(None).expect("the default catalog");
        let state = SpeedState::default();
        let one = batch(vec![sourced(0, "a", 1_767_225_600_000, "u1")]);
        let plan = plan(&state, &catalog, &one, None);
        assert_eq!(plan.entries.len(), 1);
        assert_eq!(
            plan.entries[0].sessions,
            vec![(
                crate::state::log::key_hash("sessions"),
                crate::state::log::key_hash("u1")
            )]
        );
        // A first event of a user starts a session in its bucket.
        let starts: i64 = plan
            .cells
            .iter()
            .filter(|((metric, _), _)| catalog.metrics[*metric].name == "sessions")
            .flat_map(|(_, cells)| cells.values())
            .map(|partial| partial.count)
            .sum();
        assert_eq!(starts, 1);
    }
}
