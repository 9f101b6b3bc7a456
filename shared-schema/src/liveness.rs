//! Whether every partition of the topic has a live speed-layer consumer, judged from what
//! Postgres holds, so that any process can tell, even when no speed instance runs.
//!
//! A partition is *stalled* when the speed layer's stored position has stood still for at least
//! the stall timeout while newer messages exist: the broker's end offset, recorded by any
//! running speed instance in `speed_partition_liveness`, or the lake's landed position, is past
//! it. Its missing messages may belong to any bucket from the partition's speed watermark on,
//! so answers report `[max(T, watermark), to)` as a gap (CONTRACT §5.5) until it moves again.

use crate::time::Millis;

/// What Postgres holds about one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionEvidence {
    pub partition: i32,
    /// The speed layer's stored position (`speed_offsets`); `None`: it never stored one.
    pub speed_offset: Option<i64>,
    /// When that position was last stored.
    pub speed_updated_at: Option<Millis>,
    /// The partition's speed watermark, else its newest event time.
    pub speed_time: Option<Millis>,
    /// The newest event time the speed layer and the lander have read from it.
    pub speed_max_time: Option<Millis>,
    pub lake_max_time: Option<Millis>,
    /// The lander's stored position (`lake_progress`).
    pub lake_offset: Option<i64>,
    /// The broker's end offset as a speed instance last saw it, and since when the stored speed
    /// position it saw beside it has stood still below it.
    pub end_offset: Option<i64>,
    pub behind_since: Option<Millis>,
}

impl PartitionEvidence {
    /// Stalled at `now`: behind the broker (or the lake) without moving for `stall_after`.
    pub fn stalled(&self, now: Millis, stall_after: Millis) -> bool {
        let speed = self.speed_offset.unwrap_or(0);
        let behind_broker = self.end_offset.is_some_and(|end| end > speed)
            && self
                .behind_since
                .is_some_and(|since| now - since >= stall_after);
        // Without a running speed instance nothing records the broker's end; the lake then
        // shows the messages. Only for a position stored once: a speed layer that never
        // started is not judged here.
        // Behind the lake by `stall_after` of event time also covers a consumer that has just
        // resumed and still reads its backlog: its buckets are short until it catches up.
        let lake_newer = match (self.lake_max_time, self.speed_max_time) {
            (Some(lake), Some(speed)) => lake - speed >= stall_after,
            _ => false,
        };
        let behind_lake = self.lake_offset.is_some_and(|lake| lake > speed)
            && self
                .speed_updated_at
                .is_some_and(|at| now - at >= stall_after || lake_newer);
        behind_broker || behind_lake
    }
}

/// The earliest instant a stalled partition may be missing events from (its watermark, or
/// from the beginning of time without one); `None` when no partition is stalled.
pub fn stalled_from(
    evidence: &[PartitionEvidence],
    now: Millis,
    stall_after: Millis,
) -> Option<Millis> {
    evidence
        .iter()
        .filter(|e| e.stalled(now, stall_after))
        .map(|e| e.speed_time.unwrap_or(Millis::MIN))
        .min()
}

/// The stalled partitions at `now`.
pub fn stalled_partitions(
    evidence: &[PartitionEvidence],
    now: Millis,
    stall_after: Millis,
) -> Vec<i32> {
    evidence
        .iter()
        .filter(|e| e.stalled(now, stall_after))
        .map(|e| e.partition)
        .collect()
}

/// `gaps` (sorted, disjoint) with the speed side's stalled span `[max(from, T, stalled), to)`
/// added and overlapping intervals merged.
pub fn with_stall_gap(
    mut gaps: Vec<(Millis, Millis)>,
    from: Millis,
    to: Millis,
    cutover: Option<Millis>,
    stalled: Option<Millis>,
) -> Vec<(Millis, Millis)> {
    let Some(stalled) = stalled else {
        return gaps;
    };
    let start = stalled.max(from).max(cutover.unwrap_or(Millis::MIN));
    if start >= to {
        return gaps;
    }
    gaps.push((start, to));
    gaps.sort_unstable();
    let mut merged: Vec<(Millis, Millis)> = Vec::with_capacity(gaps.len());
    for (lo, hi) in gaps {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Millis = 1_000;

    fn evidence(partition: i32) -> PartitionEvidence {
        PartitionEvidence {
            partition,
            speed_offset: Some(100),
            speed_updated_at: Some(0),
            speed_time: Some(50 * S),
            speed_max_time: Some(55 * S),
            lake_max_time: Some(55 * S),
            lake_offset: Some(100),
            end_offset: Some(100),
            behind_since: None,
        }
    }

    #[test]
    fn a_partition_behind_the_broker_for_the_stall_timeout_is_stalled() {
        let mut e = evidence(0);
        assert!(!e.stalled(100 * S, 10 * S), "caught up");
        e.end_offset = Some(120);
        e.behind_since = Some(95 * S);
        assert!(!e.stalled(100 * S, 10 * S), "behind for 5 s only");
        assert!(e.stalled(105 * S, 10 * S));
        // The position moved past what was seen: not behind any more.
        e.speed_offset = Some(120);
        assert!(!e.stalled(105 * S, 10 * S));
    }

    #[test]
    fn the_lake_shows_a_stall_only_for_a_position_not_stored_for_the_stall_timeout() {
        let mut e = evidence(0);
        e.lake_offset = Some(130);
        e.speed_updated_at = Some(98 * S);
        assert!(!e.stalled(100 * S, 10 * S), "stored 2 s ago");
        assert!(e.stalled(108 * S, 10 * S));
        e.speed_offset = None;
        e.speed_updated_at = None;
        assert!(
            !e.stalled(108 * S, 10 * S),
            "a speed layer that never started"
        );
        // Just resumed, but still reading a backlog the lake has landed.
        let mut resumed = evidence(1);
        resumed.lake_offset = Some(130);
        resumed.speed_updated_at = Some(99 * S);
        resumed.lake_max_time = Some(70 * S);
        assert!(resumed.stalled(100 * S, 10 * S));
        resumed.lake_max_time = Some(60 * S);
        assert!(
            !resumed.stalled(100 * S, 10 * S),
            "within the stall timeout"
        );
    }

    #[test]
    fn the_gap_starts_at_the_earliest_stalled_watermark_and_merges() {
        let mut stalled = evidence(1);
        stalled.end_offset = Some(200);
        stalled.behind_since = Some(0);
        stalled.speed_time = Some(40 * S);
        let ok = evidence(0);
        let all = [ok.clone(), stalled.clone()];
        assert_eq!(stalled_from(&all, 100 * S, 10 * S), Some(40 * S));
        assert_eq!(stalled_partitions(&all, 100 * S, 10 * S), vec![1]);
        assert_eq!(stalled_from(&[ok], 100 * S, 10 * S), None);
        // Cut at T and at the range; merged with an existing gap it overlaps.
        assert_eq!(
            with_stall_gap(
                vec![(10 * S, 45 * S)],
                0,
                90 * S,
                Some(10 * S),
                Some(40 * S)
            ),
            vec![(10 * S, 90 * S)]
        );
        assert_eq!(
            with_stall_gap(Vec::new(), 0, 90 * S, Some(60 * S), Some(40 * S)),
            vec![(60 * S, 90 * S)]
        );
        assert_eq!(
            with_stall_gap(Vec::new(), 0, 30 * S, None, Some(40 * S)),
            vec![]
        );
        assert_eq!(
            with_stall_gap(Vec::new(), 0, 90 * S, None, None),
            Vec::<(Millis, Millis)>::new()
        );
    }
}
