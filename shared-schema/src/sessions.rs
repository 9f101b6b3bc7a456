//! Sessions: a user's events split by inactivity gaps, counted in the bucket of their first
//! event (CONTRACT §6).
//!
//! The rule both layers apply: an event starts a session when the same user has no earlier
//! event less than `gap` before it (an event at exactly the gap starts a new one). Whether an
//! event starts a session depends only on the events before it, which is what lets the cutover
//! split sessions exactly once: a session starting before T is the batch view's, one starting
//! at or after T is the speed layer's, and each side sees every event before its own.
//!
//! The batch layer evaluates the rule with a window function over the whole lake. The speed
//! layer applies it incrementally: a late event can start a session, or end one by filling a
//! gap, so [`start_changes`] returns the starts that appear and disappear when events arrive.

use crate::time::Millis;
use std::collections::BTreeMap;

/// The session starts among a user's sorted event times.
pub fn starts(sorted_times: &[Millis], gap: Millis) -> Vec<Millis> {
    sorted_times
        .iter()
        .enumerate()
        .filter(|(i, t)| *i == 0 || **t - sorted_times[i - 1] >= gap)
        .map(|(_, t)| *t)
        .collect()
}

/// How the session starts of one user change when `added` events join the `known` ones:
/// `+1` for a start that appears at a time, `-1` for one that disappears.
///
/// `known` needs only the user's events within `gap` of the added ones, i.e. in
/// `[min(added) - gap, max(added) + gap]`: nothing outside that range can change, and an event
/// whose predecessor lies outside it starts a session either way.
pub fn start_changes(known: &[Millis], added: &[Millis], gap: Millis) -> Vec<(Millis, i64)> {
    let (Some(&lowest), Some(&highest)) = (added.iter().min(), added.iter().max()) else {
        return Vec::new();
    };
    let affected = |t: &Millis| *t >= lowest && *t <= highest.saturating_add(gap);
    let mut before: Vec<Millis> = known.to_vec();
    before.sort_unstable();
    let mut after: Vec<Millis> = before.iter().chain(added).copied().collect();
    after.sort_unstable();
    let mut changes: BTreeMap<Millis, i64> = BTreeMap::new();
    for t in starts(&after, gap).iter().filter(|t| affected(t)) {
        *changes.entry(*t).or_default() += 1;
    }
    for t in starts(&before, gap).iter().filter(|t| affected(t)) {
        *changes.entry(*t).or_default() -= 1;
    }
    changes
        .into_iter()
        .filter(|(_, change)| *change != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GAP: Millis = 30;

    #[test]
    fn a_gap_of_exactly_the_limit_starts_a_new_session() {
        assert_eq!(starts(&[0, 10, 40, 69, 100], GAP), vec![0, 40, 100]);
        assert_eq!(starts(&[5, 5], GAP), vec![5]);
        assert_eq!(starts(&[], GAP), Vec::<Millis>::new());
    }

    #[test]
    fn a_late_event_can_merge_two_sessions() {
        // Sessions at 0 and 50; an event at 25 bridges them.
        assert_eq!(start_changes(&[0, 50], &[25], GAP), vec![(50, -1)]);
        // An event before everything becomes the start instead of 0.
        assert_eq!(
            start_changes(&[0, 10], &[-20], GAP),
            vec![(-20, 1), (0, -1)]
        );
    }

    proptest! {
        /// Applying arrivals in any batches, with only the nearby known events, gives the starts
        /// of the whole set.
        #[test]
        fn incremental_changes_sum_to_the_starts_of_everything(
            times in proptest::collection::vec(0i64..400, 0..60),
            cuts in proptest::collection::vec(0usize..60, 0..6),
        ) {
            let mut known: Vec<Millis> = Vec::new();
            let mut counted: BTreeMap<Millis, i64> = BTreeMap::new();
            let mut boundaries: Vec<usize> = cuts.into_iter().filter(|c| *c < times.len()).collect();
            boundaries.extend([0, times.len()]);
            boundaries.sort_unstable();
            for pair in boundaries.windows(2) {
                let added = &times[pair[0]..pair[1]];
                if added.is_empty() { continue; }
                let (lo, hi) = (added.iter().min().unwrap() - GAP, added.iter().max().unwrap() + GAP);
                let nearby: Vec<Millis> = known.iter().copied().filter(|t| *t >= lo && *t <= hi).collect();
                for (t, change) in start_changes(&nearby, added, GAP) {
                    *counted.entry(t).or_default() += change;
                }
                known.extend_from_slice(added);
            }
            known.sort_unstable();
            let mut expected: BTreeMap<Millis, i64> = BTreeMap::new();
            for t in starts(&known, GAP) {
                *expected.entry(t).or_default() += 1;
            }
            counted.retain(|_, c| *c != 0);
            prop_assert_eq!(counted, expected);
        }
    }
}
