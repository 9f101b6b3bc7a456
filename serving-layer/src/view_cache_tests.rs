use super::*;
use shared_io::view::{ViewRow, write_view};
use shared_schema::metrics::Partial;
use shared_schema::time::HOUR_MS;

fn rows(count: i64, first_bucket: Millis) -> Vec<ViewRow> {
    (0..count)
        .map(|i| ViewRow {
            metric: "purchases".into(),
            row: BucketRow {
                bucket_start: first_bucket + (i % 60) * 60_000,
                dims: format!("[\"{i}\"]"),
                partial: Partial {
                    count: 1,
                    ..Partial::default()
                },
            },
        })
        .collect()
}

fn lake(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("view-cache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Single view files `<name>/view.parquet` of `rows_each` rows each.
fn files(lake: &Path, names: &[&str], rows_each: i64) {
    for name in names {
        std::fs::create_dir_all(lake.join(name)).unwrap();
        write_view(
            &lake.join(format!("{name}/view.parquet")),
            &rows(rows_each, 0),
        )
        .unwrap();
    }
}

fn path(name: &str) -> String {
    format!("{name}/view.parquet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_new_segment_share_one_read() {
    let dir = lake("shared");
    files(&dir, &["shared"], 200_000);
    let cache = ViewCache::new(&dir, usize::MAX);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let cache = cache.clone();
        requests.spawn(async move { cache.get(&path("shared"), (0, HOUR_MS)).await.unwrap() });
    }
    let views = requests.join_all().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(views[0].count("purchases", 0, HOUR_MS), 200_000);
    assert!(
        views
            .iter()
            .all(|v| Arc::ptr_eq(&v.segments[0], &views[0].segments[0])),
        "read more than once"
    );
}

#[tokio::test]
async fn segments_go_least_recently_used_first_past_the_byte_budget() {
    let dir = lake("budget");
    files(&dir, &["a", "b", "c", "late"], 1_000);
    let one = weigh(
        &read_view_file(&Lake::Local(dir.clone()), &path("a"))
            .await
            .unwrap(),
    );
    // Room for two segments, not three.
    let cache = ViewCache::new(&dir, one * 2 + one / 2);
    assert!(cache.get(&path("missing"), (0, 1)).await.is_err());
    let a = cache.get(&path("a"), (0, 1)).await.unwrap();
    cache.get(&path("b"), (0, 1)).await.unwrap();
    // `a` used again, so `b` is the one that goes when `c` comes.
    let again = cache.get(&path("a"), (0, 1)).await.unwrap();
    assert!(Arc::ptr_eq(&a.segments[0], &again.segments[0]));
    cache.get(&path("c"), (0, 1)).await.unwrap();
    assert_eq!(cache.used_bytes(), one * 2);
    let again = cache.get(&path("a"), (0, 1)).await.unwrap();
    assert!(Arc::ptr_eq(&a.segments[0], &again.segments[0]));
    let kept: Vec<String> = {
        let entries = cache.segments.lock().unwrap();
        let mut kept: Vec<String> = entries.by_path.keys().cloned().collect();
        kept.sort();
        kept
    };
    assert_eq!(kept, [path("a"), path("c")]);
    // A segment larger than the whole budget is read, answered from, and not kept.
    let small = ViewCache::new(&dir, one / 2);
    assert_eq!(
        small
            .get(&path("late"), (0, 1))
            .await
            .unwrap()
            .count("purchases", 0, HOUR_MS),
        1_000
    );
    assert_eq!(small.used_bytes(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_query_reads_only_the_segments_of_the_hours_it_touches() {
    let dir = lake("segments");
    let local = Lake::Local(dir.clone());
    let all: Vec<ViewRow> = (0..48).flat_map(|h| rows(60, h * HOUR_MS)).collect();
    let (manifest, manifest_path) = view_segments::publish_version(&local, "v1", all, Vec::new())
        .await
        .unwrap();
    assert_eq!(manifest.segments.len(), 48);
    let cache = ViewCache::new(&dir, usize::MAX);
    let view = cache
        .get(&manifest_path, (10 * HOUR_MS + 1, 12 * HOUR_MS))
        .await
        .unwrap();
    assert_eq!(view.segments.len(), 2);
    assert_eq!(cache.segments.lock().unwrap().by_path.len(), 2);
    // Rows come in bucket order across segments.
    let buckets: Vec<Millis> = view
        .rows("purchases", 0, 48 * HOUR_MS)
        .map(|r| r.bucket_start)
        .collect();
    assert!(buckets.is_sorted() && buckets.len() == 120, "{buckets:?}");
    assert_eq!(
        view.count("purchases", 11 * HOUR_MS, 11 * HOUR_MS + 60_000),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
}
