//! How much one metric query may ask for: `serving.max_range` (also bounding `step` and
//! `window`), `serving.max_points`, `serving.max_rows`, `serving.max_groups` and
//! `serving.max_answer_points`. Beyond any of them the answer is a 400 naming the limit, before
//! the work: range and points when the request is parsed, rows once the snapshot is read, groups
//! and answer points once the rows are grouped, before any window is computed
//! (`shared_schema::sliding::MergeBudget`).

use crate::error::ApiError;
use crate::snapshot::Snapshot;
use crate::view_cache::BatchView;
use shared_schema::config::ServingConfig;
use shared_schema::metrics::MetricDef;
use shared_schema::query::SeriesQuery;
use shared_schema::time::{HumanDuration, Millis};

/// The range and the points per series of `query`, whose step is `step`.
pub fn check_query(
    query: &SeriesQuery,
    step: HumanDuration,
    limits: &ServingConfig,
) -> Result<(), ApiError> {
    let range = query.to.saturating_sub(query.from);
    if range > limits.max_range.millis() {
        return Err(ApiError::limit_exceeded(
            "serving.max_range",
            format!(
                "the range spans {}; at most {} is allowed (serving.max_range)",
                HumanDuration::from_millis(range),
                limits.max_range
            ),
        ));
    }
    // Also keeps the point arithmetic far from overflow.
    for (key, length) in [("step", query.step), ("window", query.window)] {
        if length > limits.max_range.millis() {
            return Err(ApiError::limit_exceeded(
                "serving.max_range",
                format!(
                    "`{key}` = {}; at most {} is allowed (serving.max_range)",
                    HumanDuration::from_millis(length),
                    limits.max_range
                ),
            ));
        }
    }
    let points = query.point_count();
    if points > limits.max_points {
        return Err(ApiError::limit_exceeded(
            "serving.max_points",
            format!(
                "the range holds {points} points at step {step}; at most {} are allowed (serving.max_points)",
                limits.max_points
            ),
        ));
    }
    Ok(())
}

/// The rows of `parts` in `range` (the buckets the points' windows need), from the view and the
/// snapshot's speed rows, against `serving.max_rows`. Counting is a binary search per part.
pub fn check_rows(
    parts: &[&MetricDef],
    snapshot: &Snapshot,
    view: Option<&BatchView>,
    (start, end): (Millis, Millis),
    limits: &ServingConfig,
) -> Result<(), ApiError> {
    let batch_end = snapshot.cutover.map_or(start, |t| t.clamp(start, end));
    let rows: usize = parts
        .iter()
        .map(|part| {
            let batch = view.map_or(0, |v| v.count(&part.name, start, batch_end));
            let speed = snapshot.speed_rows.get(&part.name).map_or(0, Vec::len);
            batch + speed
        })
        .sum();
    if rows > limits.max_rows {
        return Err(ApiError::limit_exceeded(
            "serving.max_rows",
            format!(
                "the query reads {rows} stored rows; at most {} are allowed (serving.max_rows): narrow it with `filter`, a shorter range or a shorter window",
                limits.max_rows
            ),
        ));
    }
    Ok(())
}

/// The number of series in an answer.
pub fn check_groups(groups: usize, limits: &ServingConfig) -> Result<(), ApiError> {
    if groups > limits.max_groups {
        return Err(ApiError::limit_exceeded(
            "serving.max_groups",
            format!(
                "the answer holds {groups} groups; at most {} are allowed (serving.max_groups): narrow it with `filter`",
                limits.max_groups
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::config::PlatformConfig;
    use shared_schema::time::{DAY_MS, MINUTE_MS};

    fn query(days: i64, step: i64) -> SeriesQuery {
        SeriesQuery {
            from: 0,
            to: days * DAY_MS,
            step,
            window: step,
            group_by: None,
            filter: None,
        }
    }

    #[test]
    fn each_limit_is_named_when_exceeded() {
        let mut limits = PlatformConfig::default().serving;
        limits.max_range = HumanDuration::from_millis(2 * DAY_MS);
        limits.max_points = 1_000;
        limits.max_groups = 3;
        let minute = HumanDuration::from_millis(MINUTE_MS);
        let hour = HumanDuration::from_millis(60 * MINUTE_MS);
        assert!(check_query(&query(2, hour.millis()), hour, &limits).is_ok());
        let too_long = check_query(&query(3, hour.millis()), hour, &limits).unwrap_err();
        assert_eq!(too_long.limit(), Some("serving.max_range"));
        let mut wide = query(1, hour.millis());
        wide.window = 3 * DAY_MS;
        let too_wide = check_query(&wide, hour, &limits).unwrap_err();
        assert_eq!(too_wide.limit(), Some("serving.max_range"));
        let too_many = check_query(&query(1, MINUTE_MS), minute, &limits).unwrap_err();
        assert_eq!(too_many.limit(), Some("serving.max_points"));
        assert!(check_groups(3, &limits).is_ok());
        assert_eq!(
            check_groups(4, &limits).unwrap_err().limit(),
            Some("serving.max_groups")
        );
    }

    #[test]
    fn rows_are_counted_on_both_sides_of_t() {
        use shared_schema::{catalog::MetricCatalog, metrics::Partial, query::BucketRow};
        let catalog = MetricCatalog::default();
        let purchases = catalog.get("purchases").unwrap().1;
        let row = |minute: i64| BucketRow {
            bucket_start: minute * MINUTE_MS,
            dims: String::new(),
            partial: Partial::default(),
        };
        let view = crate::view_cache::BatchView::whole(std::collections::HashMap::from([(
            "purchases".to_string(),
            (0..100).map(row).collect(),
        )]));
        let mut snapshot = Snapshot {
            cutover: Some(50 * MINUTE_MS),
            ..Snapshot::default()
        };
        snapshot
            .speed_rows
            .insert("purchases".into(), (50..60).map(row).collect());
        let mut limits = PlatformConfig::default().serving;
        let range = (10 * MINUTE_MS, 60 * MINUTE_MS);
        // 40 batch rows in [10m, 50m) and 10 speed rows.
        limits.max_rows = 50;
        assert!(check_rows(&[purchases], &snapshot, Some(&view), range, &limits).is_ok());
        limits.max_rows = 49;
        let refused = check_rows(&[purchases], &snapshot, Some(&view), range, &limits);
        assert_eq!(refused.unwrap_err().limit(), Some("serving.max_rows"));
    }
}
