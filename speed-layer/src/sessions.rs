//! Session starts from the in-memory state: for each claimed event of a `sessions` metric, the
//! starts it creates or removes among its key's counted events (see `shared_schema::sessions`)
//! are added to the metric's partials, and the event's (metric, key) goes into its log entry so
//! that every instance learns the new event times.

use crate::cells::Cells;
use crate::state::log::key_hash;
use crate::state::{SessionKey, SpeedState};
use shared_io::kafka::SourcedEvent;
use shared_schema::sessions;
use shared_schema::time::{Millis, bucket_start};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{Aggregation, encode_dims},
};
use std::collections::HashMap;

/// Per claimed event (by `event_id`), the (metric hash, key hash) of each `sessions` metric it
/// was applied to: what its log entry carries.
pub(crate) type Memberships<'a> = HashMap<&'a str, Vec<(u64, u64)>>;

/// Adds the session starts that the claimed events create or remove. `state` holds every
/// counted event of every partition up to this checkpoint, so the starts are those a single
/// consumer of the whole topic would find.
pub(crate) fn apply_sessions<'a>(
    state: &SpeedState,
    catalog: &MetricCatalog,
    applied: &[Vec<&'a SourcedEvent>],
    cells: &mut Cells,
) -> Memberships<'a> {
    let mut memberships: Memberships<'a> = HashMap::new();
    for (index, metric) in catalog.stored() {
        let Aggregation::Sessions { key, gap } = &metric.aggregation else {
            continue;
        };
        let gap = gap.millis();
        let metric_hash = key_hash(&metric.name);
        // key -> its event times in this batch
        let mut added: HashMap<&str, Vec<Millis>> = HashMap::new();
        for sourced in &applied[index] {
            let Some(value) = key.value(&sourced.event) else {
                continue;
            };
            added
                .entry(value)
                .or_default()
                .push(sourced.event.event_time);
            memberships
                .entry(sourced.event.event_id.as_str())
                .or_default()
                .push((metric_hash, key_hash(value)));
        }
        let width = metric.bucket.millis();
        for (value, times) in &added {
            let (Some(low), Some(high)) = (times.iter().min(), times.iter().max()) else {
                continue;
            };
            let session_key = SessionKey {
                metric: metric_hash,
                key: key_hash(value),
            };
            let known = state.session_times(
                &session_key,
                low.saturating_sub(gap),
                high.saturating_add(gap),
            );
            for (t, change) in sessions::start_changes(known, times, gap) {
                cells
                    .entry((index, bucket_start(t, width)))
                    .or_default()
                    .entry(encode_dims(&[]))
                    .or_default()
                    .count += change;
            }
        }
    }
    memberships
}
