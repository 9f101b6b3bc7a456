use super::*;
use crate::time::MINUTE_MS;
use crate::{catalog::MetricCatalog, metrics::encode_dims};
use proptest::prelude::*;

const M: Millis = MINUTE_MS;

fn row(bucket: Millis, country: Option<&str>, count: i64) -> BucketRow {
    BucketRow {
        bucket_start: bucket,
        dims: encode_dims(&[country]),
        partial: Partial {
            count,
            sum_micros: count as i128 * 1_000_000,
            ..Partial::default()
        },
    }
}

fn minute_query(from: Millis, to: Millis) -> SeriesQuery {
    SeriesQuery {
        from,
        to,
        step: M,
        window: M,
        group_by: None,
        filter: None,
    }
}

fn purchases() -> MetricDef {
    MetricCatalog::default().get("purchases").unwrap().1.clone()
}

#[test]
fn split_is_enforced_at_t() {
    let t = Some(2 * M);
    // Both sides hold rows for every bucket; only the right side of each may count.
    let batch = (0..4).map(|b| row(b * M, Some("DE"), 10));
    let speed = (0..4).map(|b| row(b * M, Some("DE"), 1));
    let series = assemble(&purchases(), &minute_query(0, 4 * M), t, batch, speed);
    let counts: Vec<(i64, Source)> = series[0]
        .points
        .iter()
        .map(|p| (p.partial.count, p.source))
        .collect();
    assert_eq!(
        counts,
        vec![
            (10, Source::Batch),
            (10, Source::Batch),
            (1, Source::Speed),
            (1, Source::Speed)
        ]
    );
}

#[test]
fn sliding_window_and_group_by_and_filter() {
    let speed = vec![
        row(0, Some("DE"), 1),
        row(M, Some("FR"), 2),
        row(2 * M, Some("DE"), 4),
        row(2 * M, None, 8),
    ];
    let mut q = SeriesQuery {
        from: 0,
        to: 3 * M,
        step: M,
        window: 2 * M,
        group_by: Some(0),
        filter: None,
    };
    let series = assemble(
        &purchases(),
        &q,
        Some(M),
        vec![row(0, Some("DE"), 1)],
        speed.clone(),
    );
    #[allow(clippy::type_complexity)] // the answer's shape, spelled out for the assertion
    let by_group: Vec<(Option<Option<String>>, Vec<(Millis, i64, Source)>)> = series
        .iter()
        .map(|s| {
            (
                s.group.clone(),
                s.points
                    .iter()
                    .map(|p| (p.t, p.partial.count, p.source))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        by_group,
        vec![
            // The point at t covers the buckets t - 1m and t; T = 1m.
            (Some(None), vec![(2 * M, 8, Source::Speed)]),
            (
                Some(Some("DE".into())),
                vec![
                    (0, 1, Source::Batch),
                    (M, 1, Source::Mixed),
                    (2 * M, 4, Source::Speed)
                ]
            ),
            (
                Some(Some("FR".into())),
                vec![(M, 2, Source::Mixed), (2 * M, 2, Source::Speed)]
            ),
        ]
    );
    q.group_by = None;
    q.filter = Some((0, "DE".into()));
    q.window = M;
    q.step = 3 * M;
    let series = assemble(
        &purchases(),
        &q,
        Some(M),
        vec![row(0, Some("DE"), 1)],
        speed,
    );
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].group, None);
    let points: Vec<(Millis, i64)> = series[0]
        .points
        .iter()
        .map(|p| (p.t, p.partial.count))
        .collect();
    assert_eq!(
        points,
        vec![(0, 4)],
        "window 1m at step 3m covers only the third minute"
    );
}

#[test]
fn gaps_are_reported_between_t_and_speed_coverage() {
    assert_eq!(
        gaps(0, 10 * M, Some(2 * M), Some(5 * M)),
        vec![(2 * M, 5 * M)]
    );
    assert_eq!(gaps(0, 10 * M, None, Some(5 * M)), vec![(0, 5 * M)]);
    assert_eq!(gaps(0, 10 * M, Some(6 * M), Some(5 * M)), vec![]);
    assert_eq!(gaps(0, 10 * M, None, None), vec![]);
}

#[test]
fn points_tile_the_asked_range_from_its_first_bucket_boundary() {
    // `from=01:21&to=02:21&step=1h&window=1h`: one point at 01:21 holding the whole hour
    // (points at multiples of the hour left it out: the only one, 02:00, lay after the data).
    let h = 60 * M;
    let rows: Vec<BucketRow> = (81..141).map(|m| row(m * M, Some("DE"), 1)).collect();
    let q = SeriesQuery {
        from: 81 * M,
        to: 141 * M,
        step: h,
        window: h,
        group_by: None,
        filter: None,
    };
    assert_eq!(q.point_count(), 1);
    assert_eq!(q.bucket_range(), (81 * M, 141 * M));
    for (cutover, source) in [
        (Some(200 * M), Source::Batch),
        (Some(100 * M), Source::Mixed),
        (Some(0), Source::Speed),
        (None, Source::Speed),
    ] {
        let series = assemble(&purchases(), &q, cutover, rows.clone(), rows.clone());
        let points: Vec<(Millis, i64, Source)> = series[0]
            .points
            .iter()
            .map(|p| (p.t, p.partial.count, p.source))
            .collect();
        assert_eq!(points, vec![(81 * M, 60, source)], "T = {cutover:?}");
    }
    // A sliding window on the same grid; no point at all when no boundary is in range.
    let sliding = SeriesQuery {
        window: 2 * h,
        to: 81 * M + 3 * h,
        ..q.clone()
    };
    let times: Vec<Millis> = sliding.point_times().collect();
    assert_eq!(times, [81 * M, 141 * M, 201 * M]);
    assert_eq!(sliding.bucket_range(), (21 * M, 261 * M));
    assert_eq!(sliding.grid_floor(200 * M), 141 * M);
    let empty = SeriesQuery {
        from: 82 * M,
        to: 82 * M,
        ..q
    };
    assert_eq!(empty.point_count(), 0);
    assert!(assemble(&purchases(), &empty, None, Vec::new(), rows).is_empty());
}

#[test]
fn limits_refuse_before_the_windows_are_computed() {
    let rows: Vec<BucketRow> = (0..50)
        .map(|i| row(i * M, Some(format!("c{i}").as_str()), 1))
        .collect();
    let mut q = minute_query(0, 50 * M);
    q.group_by = Some(0);
    let groups = MergeBudget {
        max_groups: Some(10),
        ..MergeBudget::default()
    };
    let refused = finish_points_within(
        &q,
        None,
        vec![(&purchases(), Vec::new(), rows.clone())],
        &groups,
    );
    assert_eq!(refused, Err(MergeError::Groups { max: 10 }));
    // 50 groups of one bucket, each in 10 windows of 10 minutes.
    q.window = 10 * M;
    let points = MergeBudget {
        max_points: Some(499),
        ..MergeBudget::default()
    };
    let refused = finish_points_within(
        &q,
        None,
        vec![(&purchases(), Vec::new(), rows.clone())],
        &points,
    );
    assert_eq!(
        refused,
        Err(MergeError::Points {
            points: 500,
            max: 499
        })
    );
    let enough = MergeBudget {
        max_points: Some(500),
        ..MergeBudget::default()
    };
    let answered = finish_points_within(&q, None, vec![(&purchases(), Vec::new(), rows)], &enough);
    assert_eq!(answered.map(|p| p.len()), Ok(50 * 10 - 45));
}

proptest! {
    /// Whatever the cutover, the merged answer equals the answer of one side holding all
    /// data, when both sides agree on every bucket (the parity the layers guarantee).
    #[test]
    fn merge_equals_single_source(
        counts in proptest::collection::vec(0i64..5, 1..40),
        cut in 0i64..40,
        step_buckets in 1i64..5,
        window_steps in 1i64..4,
        from in 0i64..10,
    ) {
        let rows: Vec<BucketRow> = counts.iter().enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| row(i as Millis * M, Some("DE"), *c)).collect();
        let step = step_buckets * M;
        let q = SeriesQuery { from: from * M, to: 40 * M, step, window: window_steps * step, group_by: None, filter: None };
        let merged = assemble(&purchases(), &q, Some(cut * M), rows.clone(), rows.clone());
        let single = assemble(&purchases(), &q, None, Vec::new(), rows.clone());
        let values = |s: &[Series]| -> Vec<(Millis, i64)> {
            s.iter().flat_map(|s| s.points.iter().map(|p| (p.t, p.partial.count))).collect()
        };
        prop_assert_eq!(values(&merged), values(&single));
        // And each point is the sum over exactly its window.
        for p in merged.iter().flat_map(|s| &s.points) {
            let (start, end) = q.window_of(p.t);
            let expected: i64 = rows.iter().filter(|r| r.bucket_start >= start && r.bucket_start < end).map(|r| r.partial.count).sum();
            prop_assert_eq!(p.partial.count, expected);
            // CONTRACT §4 (issue 15): points lie on `from`'s grid, not on multiples of the
            // step since the epoch (this asserted `p.t % step == 0` before).
            prop_assert_eq!((p.t - q.from) % step, 0);
        }
    }
}
