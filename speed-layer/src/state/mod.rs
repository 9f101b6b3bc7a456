//! The speed layer's dedupe and session state, in memory (issue 17).
//!
//! Every instance holds the ids counted within the dedupe horizon and, per `sessions` metric and
//! key, the event times a session start can still depend on, for every partition: it builds
//! them from the id log (`log`), which each checkpoint appends to and reads the others' rows
//! from (`store`). So a duplicate is recognised whichever partition or instance counted its
//! first copy, and a partition moves to another instance without moving any state.
//!
//! What the cells add up to stays in Postgres (`speed_cells`, packed per bucket);
//! only the per-event bookkeeping lives here.

mod legacy;
pub(crate) mod log;
pub(crate) mod recover;
pub(crate) mod store;

use log::{IdHash, LogEntry};
use shared_schema::time::Millis;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for keys that are hashes already: it keeps the one word they write.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = self.0.rotate_left(7) ^ xxhash_rust::xxh3::xxh3_64(bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(7) ^ n;
    }
}

type PrehashedMap<K, V> = HashMap<K, V, BuildHasherDefault<Prehashed>>;

/// A `sessions` metric's key, both hashed (see `log::key_hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    pub metric: u64,
    pub key: u64,
}

/// What the speed layer has counted, for deduplication and session starts.
#[derive(Default)]
pub(crate) struct SpeedState {
    /// Ids counted, with their event time in seconds (for expiry).
    ids: PrehashedMap<IdHash, u32>,
    /// Each key's counted event times, sorted.
    sessions: PrehashedMap<SessionKey, Vec<Millis>>,
    /// The last `speed_log` row applied.
    pub applied_seq: i64,
    /// Which log that sequence belongs to: a replay swaps in another (see `store`).
    pub generation: i64,
}

/// What [`SpeedState::expire`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    pub ids: usize,
    pub session_times: usize,
}

impl SpeedState {
    /// Whether `id` was counted.
    pub(crate) fn contains(&self, id: &IdHash) -> bool {
        self.ids.contains_key(id)
    }

    /// The counted event times of a session key within `[low, high]`, sorted.
    pub(crate) fn session_times(&self, key: &SessionKey, low: Millis, high: Millis) -> &[Millis] {
        let Some(times) = self.sessions.get(key) else {
            return &[];
        };
        let from = times.partition_point(|t| *t < low);
        let to = times.partition_point(|t| *t <= high);
        &times[from..to.max(from)]
    }

    /// Records a counted event. Idempotent: an entry whose id is held already changes nothing,
    /// so a log row read twice counts once. Returns whether it was new.
    pub(crate) fn apply(&mut self, entry: &LogEntry) -> bool {
        match self.ids.entry(entry.id) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(slot) => {
                slot.insert(seconds(entry.event_time));
            }
        }
        for &(metric, key) in &entry.sessions {
            let times = self.sessions.entry(SessionKey { metric, key }).or_default();
            // Mostly in time order: a push; otherwise an insert where it belongs.
            match times.last() {
                Some(last) if *last > entry.event_time => {
                    let at = times.partition_point(|t| *t <= entry.event_time);
                    times.insert(at, entry.event_time);
                }
                _ => times.push(entry.event_time),
            }
        }
        true
    }

    /// Drops ids whose event time lies before `id_horizon` and session times before
    /// `session_horizon` (a session start at the id horizon needs the events one gap before).
    pub(crate) fn expire(&mut self, id_horizon: Millis, session_horizon: Millis) -> Expired {
        let before = (self.ids.len(), self.session_time_count());
        // Whole seconds, rounded down: an id kept a little too long is harmless, one dropped
        // inside the horizon could be counted twice.
        let horizon = seconds(id_horizon);
        self.ids.retain(|_, seconds| *seconds >= horizon);
        self.sessions.retain(|_, times| {
            let from = times.partition_point(|t| *t < session_horizon);
            times.drain(..from);
            !times.is_empty()
        });
        self.ids.shrink_to_fit();
        self.sessions.shrink_to_fit();
        Expired {
            ids: before.0 - self.ids.len(),
            session_times: before.1 - self.session_time_count(),
        }
    }

    pub(crate) fn ids(&self) -> usize {
        self.ids.len()
    }

    fn session_time_count(&self) -> usize {
        self.sessions.values().map(Vec::len).sum()
    }

    /// Bytes the tables hold, from their capacities: what `speed.state_max_mb` bounds.
    pub(crate) fn bytes(&self) -> usize {
        // A hash table slot is its key and value plus one control byte.
        let slot = |k: usize, v: usize| k + v + 1;
        self.ids.capacity() * slot(size_of::<IdHash>(), size_of::<u32>())
            + self.sessions.capacity() * slot(size_of::<SessionKey>(), size_of::<Vec<Millis>>())
            + self
                .sessions
                .values()
                .map(|v| v.capacity() * size_of::<Millis>())
                .sum::<usize>()
    }
}

/// Event time in whole seconds, clamped to what 32 bits hold (1970 to 2106).
fn seconds(t: Millis) -> u32 {
    u32::try_from(t.div_euclid(1000).max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::log::{id_hash, key_hash};
    use super::*;

    fn entry(id: &str, t: Millis, user: Option<&str>) -> LogEntry {
        LogEntry {
            id: id_hash(id),
            event_time: t,
            sessions: user
                .map(|u| vec![(key_hash("sessions"), key_hash(u))])
                .unwrap_or_default(),
        }
    }

    fn key(user: &str) -> SessionKey {
        SessionKey {
            metric: key_hash("sessions"),
            key: key_hash(user),
        }
    }

    #[test]
    fn an_entry_applied_twice_counts_once() {
        let mut state = SpeedState::default();
        assert!(state.apply(&entry("a", 10_000, Some("u"))));
        assert!(!state.apply(&entry("a", 10_000, Some("u"))));
        assert!(state.contains(&id_hash("a")));
        assert!(!state.contains(&id_hash("b")));
        assert_eq!(state.session_times(&key("u"), 0, i64::MAX), &[10_000]);
    }

    #[test]
    fn session_times_stay_sorted_and_are_read_by_range() {
        let mut state = SpeedState::default();
        for (i, t) in [50, 10, 30, 30, 70, 20].into_iter().enumerate() {
            state.apply(&entry(&format!("e{i}"), t, Some("u")));
        }
        assert_eq!(
            state.session_times(&key("u"), 0, 100),
            &[10, 20, 30, 30, 50, 70]
        );
        assert_eq!(state.session_times(&key("u"), 20, 50), &[20, 30, 30, 50]);
        assert_eq!(state.session_times(&key("u"), 51, 69), &[] as &[Millis]);
        assert_eq!(state.session_times(&key("other"), 0, 100), &[] as &[Millis]);
    }

    #[test]
    fn expiry_keeps_what_the_horizons_need() {
        let mut state = SpeedState::default();
        state.apply(&entry("old", 59_999, Some("u")));
        state.apply(&entry("edge", 60_000, Some("u")));
        state.apply(&entry("new", 120_000, None));
        let expired = state.expire(60_000, 0);
        assert_eq!(expired.ids, 1);
        assert_eq!(expired.session_times, 0);
        assert!(!state.contains(&id_hash("old")));
        assert!(state.contains(&id_hash("edge")));
        // Sessions keep one gap more.
        assert_eq!(
            state.session_times(&key("u"), 0, i64::MAX),
            &[59_999, 60_000]
        );
        let expired = state.expire(60_000, 60_000);
        assert_eq!(expired.session_times, 1);
        state.expire(200_000, 200_000);
        assert_eq!(state.ids(), 0);
        assert_eq!(state.session_time_count(), 0);
    }

    #[test]
    fn a_horizon_inside_a_second_keeps_every_id_after_it() {
        let mut state = SpeedState::default();
        state.apply(&entry("before", 999, None));
        state.apply(&entry("after", 1_500, None));
        state.expire(1_200, 0);
        assert!(!state.contains(&id_hash("before")));
        assert!(state.contains(&id_hash("after")));
    }
}
