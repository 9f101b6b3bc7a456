use super::*;
use shared_schema::catalog::MetricCatalog;
use shared_schema::hll::Hll;
use shared_schema::metrics::{Partial, encode_dims};
use shared_schema::time::MINUTE_MS;

const M: Millis = MINUTE_MS;

fn catalog() -> MetricCatalog {
    MetricCatalog::default()
}

fn row(bucket: Millis, country: &str, count: i64, sum_micros: i128) -> BucketRow {
    BucketRow {
        bucket_start: bucket,
        dims: encode_dims(&[Some(country)]),
        partial: Partial {
            count,
            sum_micros,
            ..Partial::default()
        },
    }
}

fn rows(metric: &str, rows: Vec<BucketRow>) -> HashMap<String, Vec<BucketRow>> {
    HashMap::from([(metric.to_string(), rows)])
}

fn compare_named(
    name: &str,
    range: (Millis, Millis),
    batch: &HashMap<String, Vec<BucketRow>>,
    speed: &HashMap<String, Vec<BucketRow>>,
) -> Comparison {
    let catalog = catalog();
    let (_, metric) = catalog.get(name).unwrap();
    let parts = catalog.parts(metric).unwrap();
    compare(metric, &parts, range, batch, speed)
}

#[test]
fn the_same_rows_do_not_diverge() {
    // The speed layer keeps one row per Kafka partition; the view one per bucket and group.
    let batch = rows("purchases", vec![row(0, "DE", 3, 0), row(M, "FR", 2, 0)]);
    let speed = rows(
        "purchases",
        vec![row(0, "DE", 1, 0), row(0, "DE", 2, 0), row(M, "FR", 2, 0)],
    );
    let c = compare_named("purchases", (0, 2 * M), &batch, &speed);
    assert_eq!(
        c,
        Comparison {
            batch_total: Some(5.0),
            speed_total: Some(5.0),
            difference: 0.0,
            ratio: 0.0,
            buckets: 2,
            differing_buckets: 0,
        }
    );
}

#[test]
fn an_extra_speed_count_is_a_difference_in_one_bucket() {
    let batch = rows("purchases", vec![row(0, "DE", 3, 0), row(M, "FR", 1, 0)]);
    let speed = rows(
        "purchases",
        vec![row(0, "DE", 3, 0), row(M, "FR", 1, 0), row(M, "DE", 4, 0)],
    );
    let c = compare_named("purchases", (0, 2 * M), &batch, &speed);
    assert_eq!((c.batch_total, c.speed_total), (Some(4.0), Some(8.0)));
    assert_eq!((c.difference, c.ratio), (4.0, 0.5));
    assert_eq!((c.buckets, c.differing_buckets), (2, 1));
    // Missing speed rows diverge the other way, by the same measure.
    let c = compare_named("purchases", (0, 2 * M), &speed, &batch);
    assert_eq!((c.difference, c.ratio), (-4.0, 0.5));
}

#[test]
fn a_shift_between_buckets_keeps_the_total_and_counts_both_buckets() {
    let batch = rows("purchases", vec![row(0, "DE", 2, 0), row(M, "DE", 1, 0)]);
    let speed = rows("purchases", vec![row(0, "DE", 1, 0), row(M, "DE", 2, 0)]);
    let c = compare_named("purchases", (0, 2 * M), &batch, &speed);
    assert_eq!((c.ratio, c.buckets, c.differing_buckets), (0.0, 2, 2));
    // A bucket only one side has differs too.
    let speed = rows(
        "purchases",
        vec![row(0, "DE", 2, 0), row(2 * M, "DE", 1, 0)],
    );
    let c = compare_named("purchases", (0, 3 * M), &batch, &speed);
    assert_eq!((c.buckets, c.differing_buckets), (3, 2));
}

#[test]
fn rows_outside_the_range_are_not_compared() {
    let batch = rows(
        "revenue",
        vec![row(-M, "DE", 1, 5_000_000), row(0, "DE", 1, 2_500_000)],
    );
    let speed = rows(
        "revenue",
        vec![row(0, "DE", 1, 2_500_000), row(M, "DE", 9, 9_000_000)],
    );
    let c = compare_named("revenue", (0, M), &batch, &speed);
    assert_eq!(
        (c.batch_total, c.speed_total, c.ratio),
        (Some(2.5), Some(2.5), 0.0)
    );
    assert_eq!(c.buckets, 1);
}

#[test]
fn a_ratio_is_compared_as_its_summed_parts() {
    let both = |errors: Vec<BucketRow>, views: Vec<BucketRow>| {
        HashMap::from([
            ("errors".to_string(), errors),
            ("page_views".to_string(), views),
        ])
    };
    // Batch: 1 error in 10 views, then 3 in 10: 4/20 = 0.2 (not the mean of 0.1 and 0.3).
    let batch = both(
        vec![row(0, "p", 1, 0), row(M, "p", 3, 0)],
        vec![row(0, "p", 10, 0), row(M, "p", 10, 0)],
    );
    // Speed lost 10 views of the second minute: 4/10.
    let speed = both(
        vec![row(0, "p", 1, 0), row(M, "p", 3, 0)],
        vec![row(0, "p", 10, 0)],
    );
    let c = compare_named("error_rate", (0, 2 * M), &batch, &speed);
    assert_eq!(c.batch_total, Some(0.2));
    assert_eq!(c.speed_total, Some(0.4));
    assert!((c.ratio - 0.5).abs() < 1e-12, "{c:?}");
    // The second minute has no rate on the speed side at all (3 errors, no views).
    assert_eq!((c.buckets, c.differing_buckets), (2, 1));
}

#[test]
fn a_distinct_count_merges_its_sketches_over_the_range() {
    let users = |bucket: Millis, names: &[&str]| {
        let mut sketch = Hll::default();
        names.iter().for_each(|n| sketch.insert(n));
        BucketRow {
            bucket_start: bucket,
            dims: encode_dims(&[]),
            partial: Partial {
                count: names.len() as i64,
                sketch: Some(sketch),
                ..Partial::default()
            },
        }
    };
    // The same user in both minutes is one active user over the range, not two.
    let batch = rows(
        "active_users",
        vec![users(0, &["a", "b"]), users(M, &["a"])],
    );
    let speed = rows(
        "active_users",
        vec![users(0, &["a", "b"]), users(M, &["a"])],
    );
    let c = compare_named("active_users", (0, 2 * M), &batch, &speed);
    assert_eq!(
        (c.batch_total, c.speed_total, c.ratio),
        (Some(2.0), Some(2.0), 0.0)
    );
    let speed = rows(
        "active_users",
        vec![users(0, &["a", "b"]), users(M, &["c"])],
    );
    let c = compare_named("active_users", (0, 2 * M), &batch, &speed);
    assert_eq!((c.speed_total, c.differing_buckets), (Some(3.0), 0));
    assert!((c.ratio - 1.0 / 3.0).abs() < 1e-12, "{c:?}");
}

#[test]
fn nothing_on_either_side_is_no_divergence() {
    let empty = HashMap::new();
    let c = compare_named("purchases", (0, 5 * M), &empty, &empty);
    assert_eq!(
        (c.batch_total, c.speed_total, c.ratio, c.buckets),
        (None, None, 0.0, 0)
    );
    assert_eq!(relative_difference(Some(0.0), None), (0.0, 0.0));
    assert_eq!(relative_difference(None, Some(2.0)), (2.0, 1.0));
    assert_eq!(relative_difference(Some(100.0), Some(99.0)), (-1.0, 0.01));
}

#[test]
fn a_range_of_decades_is_compared_in_steps_of_rows_not_of_buckets() {
    // The first promotion after an event dated 1970: its range spans 56 years of minutes.
    let to = 29_500_000 * M;
    let batch = rows(
        "purchases",
        vec![row(M, "DE", 1, 0), row(to - M, "DE", 2, 0)],
    );
    let speed = rows("purchases", vec![row(to - M, "DE", 2, 0)]);
    let started = std::time::Instant::now();
    let c = compare_named("purchases", (0, to), &batch, &speed);
    assert_eq!((c.batch_total, c.speed_total), (Some(3.0), Some(2.0)));
    assert_eq!((c.buckets, c.differing_buckets), (2, 1));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn only_what_the_speed_layer_covered_is_compared() {
    let range = (10 * M, 20 * M);
    assert_eq!(compared_range(range, None, Some(30 * M), M), Some(range));
    // Retention removed the speed state before 12m30s: its bucket is not compared either.
    assert_eq!(
        compared_range(range, Some(12 * M + 30_000), Some(30 * M), M),
        Some((13 * M, 20 * M))
    );
    // The speed layer had read up to 15m30s only.
    assert_eq!(
        compared_range(range, None, Some(15 * M + 30_000), M),
        Some((10 * M, 15 * M))
    );
    // It never started, has read nothing, or its coverage starts after the range.
    assert_eq!(
        compared_range(range, Some(Millis::MAX), Some(30 * M), M),
        None
    );
    assert_eq!(compared_range(range, None, None, M), None);
    assert_eq!(compared_range(range, Some(25 * M), Some(30 * M), M), None);
    assert_eq!(compared_range(range, None, Some(10 * M), M), None);
    // Buckets wider than a minute are kept whole.
    let hour = 60 * M;
    assert_eq!(
        compared_range((0, 5 * hour), Some(hour + M), Some(4 * hour - M), hour),
        Some((2 * hour, 3 * hour))
    );
}

#[test]
fn the_speed_layer_is_complete_where_every_partition_has_read_past() {
    let lateness = M;
    let speed = [(0, Some(10 * M), true), (1, Some(8 * M), false)];
    let lake = [(0, Some(10 * M)), (1, Some(10 * M))];
    assert_eq!(speed_complete_until(&speed, &lake, lateness), Some(7 * M));
    // A partition the lander has events from and the speed layer never read holds it back.
    let lake = [(0, Some(10 * M)), (1, Some(10 * M)), (2, Some(M))];
    assert_eq!(speed_complete_until(&speed, &lake, lateness), None);
    // One that carried no event does not.
    let lake = [(0, Some(10 * M)), (1, Some(10 * M)), (2, None)];
    assert_eq!(speed_complete_until(&speed, &lake, lateness), Some(7 * M));
}
