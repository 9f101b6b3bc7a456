//! T never passes the wall clock minus the allowed lateness.
//!
//! The lake's completeness comes from the event times it has landed, and the decoder accepts
//! events up to `max_event_skew` ahead of the wall clock; a few such events would carry the
//! lake's completeness, and so T, into the future. Events that then arrive for `[now, T)` would
//! be answered by a view that lacks them, with `complete:true`. So the clock bounds T as the
//! slowest partition does: no event may still be arriving for a bucket before T, and events can
//! arrive up to the allowed lateness after their time.

use shared_schema::cutover::{CutoverError, choose_cutover};
use shared_schema::time::{Millis, bucket_start, format_rfc3339};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error(transparent)]
    Cutover(#[from] CutoverError),
    #[error(
        "the requested cutover {requested} is after {limit}, the wall clock minus the allowed \
         lateness ({lateness_ms} ms): events for the buckets before it may still arrive; \
         choose a cutover at or before {limit}"
    )]
    AheadOfClock {
        requested: String,
        limit: String,
        lateness_ms: Millis,
    },
}

/// The latest cutover the clock allows at `now`: a bucket boundary at or before
/// `now - allowed_lateness`.
pub fn clock_limit(now: Millis, allowed_lateness: Millis, alignment: Millis) -> Millis {
    bucket_start(now.saturating_sub(allowed_lateness), alignment)
}

/// How far the lake is complete, as far as the clock allows.
pub fn bounded(complete_until: Option<Millis>, limit: Millis) -> Option<Millis> {
    complete_until.map(|complete| complete.min(limit))
}

/// Refuses an operator's `--cutover` beyond the clock's limit (after rounding it down to a
/// bucket boundary, as the run does).
pub fn check_requested(
    requested: Option<Millis>,
    limit: Millis,
    allowed_lateness: Millis,
    alignment: Millis,
) -> Result<(), ClockError> {
    match requested.map(|r| bucket_start(r, alignment)) {
        Some(requested) if requested > limit => Err(ClockError::AheadOfClock {
            requested: format_rfc3339(requested),
            limit: format_rfc3339(limit),
            lateness_ms: allowed_lateness,
        }),
        _ => Ok(()),
    }
}

/// `cutover::choose_cutover`, bounded by the clock: an automatic T stops at the clock's `limit`
/// (or stays where it is, never moving backwards); a requested one is first checked against
/// the lake as before, then refused if it passes the limit.
pub fn choose(
    requested: Option<Millis>,
    complete_until: Option<Millis>,
    current: Option<Millis>,
    alignment: Millis,
    limit: Millis,
    allowed_lateness: Millis,
) -> Result<Millis, ClockError> {
    match requested {
        Some(_) => {
            let cutover = choose_cutover(requested, complete_until, current, alignment)?;
            check_requested(Some(cutover), limit, allowed_lateness, alignment)?;
            Ok(cutover)
        }
        None => Ok(choose_cutover(
            None,
            bounded(complete_until, limit),
            current,
            alignment,
        )?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::time::MINUTE_MS;

    const M: Millis = MINUTE_MS;

    #[test]
    fn the_limit_is_a_boundary_before_now_minus_lateness() {
        assert_eq!(clock_limit(100 * M + 30_000, 5 * M, M), 95 * M);
        assert_eq!(clock_limit(100 * M, 0, M), 100 * M);
        assert_eq!(clock_limit(100 * M + 1, 0, 60 * M), 60 * M);
    }

    #[test]
    fn completeness_in_the_future_is_cut_at_the_limit() {
        assert_eq!(bounded(Some(110 * M), 95 * M), Some(95 * M));
        assert_eq!(bounded(Some(90 * M), 95 * M), Some(90 * M));
        assert_eq!(bounded(None, 95 * M), None);
    }

    #[test]
    fn a_requested_cutover_past_the_limit_is_refused() {
        assert_eq!(check_requested(None, 95 * M, 5 * M, M), Ok(()));
        assert_eq!(
            check_requested(Some(95 * M + 59_999), 95 * M, 5 * M, M),
            Ok(())
        );
        let refused = check_requested(Some(96 * M), 95 * M, 5 * M, M).unwrap_err();
        assert!(refused.to_string().contains("wall clock"), "{refused}");
    }

    #[test]
    fn an_automatic_t_stops_at_the_clock_and_never_moves_back() {
        // Events ten minutes ahead made the lake "complete" up to 105m; the clock allows 95m.
        assert_eq!(
            choose(None, Some(105 * M), None, M, 95 * M, 5 * M),
            Ok(95 * M)
        );
        assert_eq!(
            choose(None, Some(90 * M), None, M, 95 * M, 5 * M),
            Ok(90 * M)
        );
        // A T already past the limit stays: T never moves backwards.
        assert_eq!(
            choose(None, Some(105 * M), Some(99 * M), M, 95 * M, 5 * M),
            Ok(99 * M)
        );
    }

    #[test]
    fn a_requested_t_is_checked_against_the_lake_first_then_the_clock() {
        assert!(matches!(
            choose(Some(110 * M), Some(105 * M), None, M, 95 * M, 5 * M),
            Err(ClockError::Cutover(CutoverError::LakeIncomplete { .. }))
        ));
        assert!(matches!(
            choose(Some(100 * M), Some(105 * M), None, M, 95 * M, 5 * M),
            Err(ClockError::AheadOfClock { .. })
        ));
        assert_eq!(
            choose(Some(95 * M), Some(105 * M), None, M, 95 * M, 5 * M),
            Ok(95 * M)
        );
    }
}
