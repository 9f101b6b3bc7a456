//! Event-time progress of the speed layer, and what counts as late.
//!
//! The watermark of an instance is the minimum, over its partitions that are not idle, of the
//! newest event time seen minus the allowed out-of-orderness. An event is late for a metric
//! when its bucket closed, i.e. the bucket's end plus the metric's allowed lateness is at or
//! before the watermark; the metric's late policy then decides what the speed layer does with
//! it. The lake keeps every event whatever the policy, so the next batch run counts it.

use crate::metrics::MetricDef;
use crate::time::Millis;

/// One partition's contribution: its newest event time, and whether it is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionTime {
    pub max_event_time: Option<Millis>,
    pub idle: bool,
}

/// The watermark over `partitions`; `None` before any active partition has seen an event.
pub fn watermark(partitions: &[PartitionTime], out_of_orderness: Millis) -> Option<Millis> {
    let active: Vec<&PartitionTime> = partitions.iter().filter(|p| !p.idle).collect();
    if active.iter().any(|p| p.max_event_time.is_none()) {
        // An active partition that has not shown an event time yet could still bring old events.
        return None;
    }
    let slowest = if active.is_empty() {
        // Everything is idle: all that was sent has been seen.
        partitions.iter().filter_map(|p| p.max_event_time).max()
    } else {
        active.iter().filter_map(|p| p.max_event_time).min()
    };
    slowest.map(|t| t.saturating_sub(out_of_orderness))
}

/// Whether an event at `event_time` is late for `metric` under `watermark`.
pub fn is_late(metric: &MetricDef, event_time: Millis, watermark: Option<Millis>) -> bool {
    let Some(watermark) = watermark else {
        return false;
    };
    let bucket_end =
        crate::time::bucket_start(event_time, metric.bucket.millis()) + metric.bucket.millis();
    bucket_end + metric.allowed_lateness.millis() <= watermark
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::MetricCatalog;
    use crate::time::MINUTE_MS;

    fn p(max: Option<Millis>, idle: bool) -> PartitionTime {
        PartitionTime {
            max_event_time: max,
            idle,
        }
    }

    #[test]
    fn slowest_active_partition_sets_the_watermark() {
        assert_eq!(
            watermark(&[p(Some(100), false), p(Some(50), false)], 10),
            Some(40)
        );
        assert_eq!(
            watermark(&[p(Some(100), false), p(Some(50), true)], 10),
            Some(90)
        );
        assert_eq!(
            watermark(&[p(Some(100), true), p(Some(50), true)], 10),
            Some(90)
        );
        assert_eq!(watermark(&[p(Some(100), false), p(None, false)], 10), None);
        assert_eq!(
            watermark(&[p(Some(100), false), p(None, true)], 10),
            Some(90)
        );
        assert_eq!(watermark(&[], 10), None);
    }

    #[test]
    fn late_means_the_bucket_and_its_lateness_are_behind_the_watermark() {
        let catalog = MetricCatalog::default();
        let (_, purchases) = catalog.get("purchases").unwrap();
        // Bucket [0, 1m) with 1m allowed lateness closes for good at watermark 2m.
        assert!(!is_late(purchases, 59_999, Some(2 * MINUTE_MS - 1)));
        assert!(is_late(purchases, 59_999, Some(2 * MINUTE_MS)));
        assert!(!is_late(purchases, 0, None));
    }
}
