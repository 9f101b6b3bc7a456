//! The cutover T between the batch view and the speed layer, and the rules that move it.
//!
//! A bucket starting before T is answered by the promoted batch view only, a bucket starting at
//! or after T by the speed layer only (CONTRACT §5.2). T is always a bucket boundary, so the
//! split never cuts a bucket, and an event at exactly T is on the speed side.

use crate::time::{Millis, bucket_start, format_rfc3339};

/// How far the lander has landed one Kafka partition into the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandedPartition {
    pub partition: i32,
    /// The greatest event time among the events landed from this partition.
    pub max_event_time: Option<Millis>,
    /// The lander has read this partition to its end, so nothing in it is waiting to land.
    pub caught_up: bool,
}

/// The latest instant up to which the lake is complete: every partition has landed events more
/// than `allowed_lateness` past it. A partition that never carried an event does not hold the
/// lake back once the lander has read it to the end; one that is still behind does.
pub fn lake_complete_until(
    partitions: &[LandedPartition],
    allowed_lateness: Millis,
) -> Option<Millis> {
    let mut complete: Option<Millis> = None;
    for partition in partitions {
        match partition.max_event_time {
            Some(max) => {
                let until = max.saturating_sub(allowed_lateness);
                complete = Some(complete.map_or(until, |c| c.min(until)));
            }
            None if partition.caught_up => {}
            None => return None,
        }
    }
    complete
}

/// `landed` (the lander's recorded progress) with a row added for every partition of the topic
/// the lander has not recorded yet: a partition added to the topic since the lander last
/// looked may already hold events, so it holds the lake back until the lander has read it.
pub fn with_unrecorded_partitions(
    mut landed: Vec<LandedPartition>,
    topic_partitions: &[i32],
) -> Vec<LandedPartition> {
    for partition in topic_partitions {
        if !landed.iter().any(|l| l.partition == *partition) {
            landed.push(LandedPartition {
                partition: *partition,
                max_event_time: None,
                caught_up: false,
            });
        }
    }
    landed
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CutoverError {
    #[error("the lake holds no complete data yet, so there is no cutover to promote")]
    LakeEmpty,
    #[error(
        "the lake is complete only up to {complete}, not up to the requested cutover {requested}; \
         wait for the lander or choose an earlier cutover"
    )]
    LakeIncomplete { requested: String, complete: String },
    #[error(
        "the requested cutover {requested} is before the promoted cutover {current}; \
         T never moves backwards except by an explicit rollback"
    )]
    Backwards { requested: String, current: String },
}

/// Chooses the cutover of a new batch view.
///
/// * `requested`: the operator's `--cutover`, rounded down to a bucket boundary;
/// * `complete_until`: what [`lake_complete_until`] says now;
/// * `current`: the cutover currently promoted.
///
/// Without a request, T is the latest boundary at which the lake is complete, and never earlier
/// than the current T (the lake only grows, so it stays complete up to where it was).
pub fn choose_cutover(
    requested: Option<Millis>,
    complete_until: Option<Millis>,
    current: Option<Millis>,
    alignment: Millis,
) -> Result<Millis, CutoverError> {
    let complete = complete_until.map(|c| bucket_start(c, alignment));
    match requested {
        Some(requested) => {
            let requested = bucket_start(requested, alignment);
            let complete = complete.ok_or(CutoverError::LakeEmpty)?;
            if requested > complete {
                return Err(CutoverError::LakeIncomplete {
                    requested: format_rfc3339(requested),
                    complete: format_rfc3339(complete),
                });
            }
            if let Some(current) = current.filter(|c| requested < *c) {
                return Err(CutoverError::Backwards {
                    requested: format_rfc3339(requested),
                    current: format_rfc3339(current),
                });
            }
            Ok(requested)
        }
        None => match (complete, current) {
            (Some(complete), Some(current)) => Ok(complete.max(current)),
            (Some(complete), None) => Ok(complete),
            (None, Some(current)) => Ok(current),
            (None, None) => Err(CutoverError::LakeEmpty),
        },
    }
}

/// Which side answers a span of time `[start, end)` given the cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Batch,
    Speed,
    Mixed,
}

impl Source {
    pub fn of_span(start: Millis, end: Millis, cutover: Option<Millis>) -> Source {
        match cutover {
            None => Source::Speed,
            Some(t) if end <= t => Source::Batch,
            Some(t) if start >= t => Source::Speed,
            Some(_) => Source::Mixed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MINUTE_MS;
    use proptest::prelude::*;

    fn landed(partition: i32, max: Option<Millis>, caught_up: bool) -> LandedPartition {
        LandedPartition {
            partition,
            max_event_time: max,
            caught_up,
        }
    }

    #[test]
    fn slowest_partition_bounds_completeness() {
        let parts = [
            landed(0, Some(10 * MINUTE_MS), false),
            landed(1, Some(5 * MINUTE_MS + 30_000), false),
        ];
        assert_eq!(
            lake_complete_until(&parts, MINUTE_MS),
            Some(4 * MINUTE_MS + 30_000)
        );
        let with_empty_caught_up = [parts[0].clone(), landed(2, None, true)];
        assert_eq!(
            lake_complete_until(&with_empty_caught_up, 0),
            Some(10 * MINUTE_MS)
        );
        let with_empty_behind = [parts[0].clone(), landed(2, None, false)];
        assert_eq!(lake_complete_until(&with_empty_behind, 0), None);
        assert_eq!(lake_complete_until(&[], 0), None);
    }

    #[test]
    fn a_partition_the_lander_has_not_recorded_holds_the_lake_back() {
        let recorded = vec![
            landed(0, Some(10 * MINUTE_MS), false),
            landed(1, Some(8 * MINUTE_MS), true),
        ];
        // The topic grew to 3: partition 2 may hold events of any time.
        let grown = with_unrecorded_partitions(recorded.clone(), &[0, 1, 2]);
        assert_eq!(lake_complete_until(&grown, 0), None);
        // Once the lander records it, its own progress counts.
        let mut recorded_too = recorded.clone();
        recorded_too.push(landed(2, Some(9 * MINUTE_MS), false));
        let same = with_unrecorded_partitions(recorded_too, &[0, 1, 2]);
        assert_eq!(lake_complete_until(&same, 0), Some(8 * MINUTE_MS));
        // The topic listing never removes what the lander recorded.
        assert_eq!(with_unrecorded_partitions(recorded.clone(), &[0]), recorded);
    }

    #[test]
    fn explicit_cutover_is_rounded_and_checked() {
        let m = MINUTE_MS;
        assert_eq!(
            choose_cutover(Some(5 * m + 1), Some(9 * m), None, m),
            Ok(5 * m)
        );
        assert!(matches!(
            choose_cutover(Some(10 * m), Some(9 * m + 59_999), None, m),
            Err(CutoverError::LakeIncomplete { .. })
        ));
        assert!(matches!(
            choose_cutover(Some(4 * m), Some(9 * m), Some(5 * m), m),
            Err(CutoverError::Backwards { .. })
        ));
        assert_eq!(
            choose_cutover(Some(5 * m), Some(9 * m), Some(5 * m), m),
            Ok(5 * m)
        );
        assert_eq!(
            choose_cutover(None, None, None, m),
            Err(CutoverError::LakeEmpty)
        );
    }

    #[test]
    fn sources_split_at_t() {
        let t = Some(10);
        assert_eq!(Source::of_span(0, 10, t), Source::Batch);
        assert_eq!(Source::of_span(10, 20, t), Source::Speed);
        assert_eq!(Source::of_span(5, 15, t), Source::Mixed);
        assert_eq!(Source::of_span(0, 10, None), Source::Speed);
    }

    proptest! {
        #[test]
        fn automatic_cutover_never_moves_backwards_and_stays_complete(
            complete in proptest::option::of(0i64..1_000_000_000),
            current in proptest::option::of(0i64..1_000_000_000),
        ) {
            let current = current.map(|c| bucket_start(c, MINUTE_MS));
            if let Ok(t) = choose_cutover(None, complete, current, MINUTE_MS) {
                prop_assert_eq!(t % MINUTE_MS, 0);
                if let Some(c) = current { prop_assert!(t >= c); }
                if let Some(c) = complete { prop_assert!(t <= c || Some(t) == current); }
            }
        }
    }
}
