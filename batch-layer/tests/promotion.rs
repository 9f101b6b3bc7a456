//! Promotion, pinning and rollback (`shared_io::promotion`, which `batch-layer promote|
//! rollback` and `POST /v1/admin/promote|rollback` call) driven directly against the test
//! Postgres (`E2E_DATABASE_URL`, started by scripts/test.sh): what is served, what the history
//! records, the refusals, and the run lock they wait for.

use shared_io::promotion::{self, PromotionError, Served};
use shared_io::run_lock::RunLock;
use shared_schema::time::{MINUTE_MS, to_datetime};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;
use test_postgres::TestDatabase;

const T0: i64 = 1_800_000_000_000;

/// A database and a lake directory holding the views of `versions`, each with a cutover a
/// minute after the previous one's; none is served yet.
async fn setup(hint: &str, versions: &[&str]) -> (TestDatabase, PathBuf) {
    let db = TestDatabase::new(hint).await.expect("a test database");
    let lake = std::env::temp_dir().join(format!("promotion-{}", db.name));
    for (i, version) in versions.iter().enumerate() {
        let path = format!("views/{version}/view.parquet");
        std::fs::create_dir_all(lake.join(format!("views/{version}"))).expect("view dir");
        std::fs::write(lake.join(&path), b"a view").expect("view file");
        sqlx::query(
            "INSERT INTO batch_versions (version, cutover, view_path, row_count, lake_files, lake_rows, started_at)
             VALUES ($1, $2, $3, 0, 0, 0, now())",
        )
        .bind(version)
        .bind(to_datetime(cutover(i)))
        .bind(&path)
        .execute(&db.pool)
        .await
        .expect("a version");
    }
    (db, lake)
}

fn cutover(i: usize) -> i64 {
    T0 + (i as i64 + 1) * MINUTE_MS
}

async fn served(pool: &PgPool) -> (Option<String>, Option<i64>) {
    let (version, cutover): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT version, cutover FROM serving_state WHERE id = 1")
            .fetch_one(pool)
            .await
            .expect("serving_state");
    (version, cutover.map(|c| c.timestamp_millis()))
}

/// The promotion history, oldest first: (version, reason, rolled_back).
async fn history(pool: &PgPool) -> Vec<(String, String, bool)> {
    sqlx::query_as("SELECT version, reason, rolled_back FROM promotions ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("promotions")
}

async fn pin(db: &TestDatabase, lake: &Path, version: &str) -> Result<Served, PromotionError> {
    promotion::pin(&db.url, lake, version).await
}

#[tokio::test]
async fn a_pin_serves_the_version_with_its_cutover_and_records_it() {
    let (db, lake) = setup("promotion_pin", &["v1", "v2"]).await;
    let pinned = pin(&db, &lake, "v2").await.expect("pin v2");
    assert_eq!(
        pinned,
        Served {
            version: "v2".into(),
            cutover: cutover(1)
        }
    );
    assert_eq!(
        served(&db.pool).await,
        (Some("v2".into()), Some(cutover(1)))
    );
    assert_eq!(
        history(&db.pool).await,
        [("v2".into(), "pin".into(), false)]
    );
    // T may move backwards in a pin.
    pin(&db, &lake, "v1").await.expect("pin v1");
    assert_eq!(
        served(&db.pool).await,
        (Some("v1".into()), Some(cutover(0)))
    );
    let promoted_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT promoted_at FROM batch_versions WHERE version = 'v1'")
            .fetch_one(&db.pool)
            .await
            .expect("promoted_at");
    assert!(promoted_at.is_some(), "the version records its promotion");
}

#[tokio::test]
async fn a_pin_of_an_unknown_or_vanished_version_is_refused_and_changes_nothing() {
    let (db, lake) = setup("promotion_refused", &["v1", "v2"]).await;
    pin(&db, &lake, "v1").await.expect("pin v1");
    let unknown = pin(&db, &lake, "v9").await.expect_err("no v9");
    assert!(
        matches!(&unknown, PromotionError::NoSuchVersion { version } if version == "v9"),
        "{unknown}"
    );
    assert!(unknown.is_refusal());
    std::fs::remove_dir_all(lake.join("views/v2")).expect("remove v2's view");
    let gone = pin(&db, &lake, "v2").await.expect_err("v2's view is gone");
    assert!(
        matches!(&gone, PromotionError::ViewGone { version, .. } if version == "v2"),
        "{gone}"
    );
    assert!(gone.is_refusal());
    assert_eq!(
        served(&db.pool).await,
        (Some("v1".into()), Some(cutover(0)))
    );
    assert_eq!(
        history(&db.pool).await.len(),
        1,
        "no refused promotion recorded"
    );
}

#[tokio::test]
async fn a_rollback_serves_the_previous_promotion_until_none_is_left() {
    let (db, lake) = setup("promotion_rollback", &["v1", "v2", "v3"]).await;
    let nothing = promotion::rollback(&db.url, &lake)
        .await
        .expect_err("nothing promoted yet");
    assert!(
        matches!(nothing, PromotionError::NothingToRollBack),
        "{nothing}"
    );
    pin(&db, &lake, "v1").await.expect("pin v1");
    let one = promotion::rollback(&db.url, &lake)
        .await
        .expect_err("a single promotion has nothing before it");
    assert!(matches!(one, PromotionError::NothingToRollBack), "{one}");
    pin(&db, &lake, "v2").await.expect("pin v2");
    pin(&db, &lake, "v3").await.expect("pin v3");

    let back = promotion::rollback(&db.url, &lake).await.expect("rollback");
    assert_eq!(back.version, "v2");
    assert_eq!(
        served(&db.pool).await,
        (Some("v2".into()), Some(cutover(1)))
    );
    let back = promotion::rollback(&db.url, &lake).await.expect("rollback");
    assert_eq!(
        back.version, "v1",
        "a rollback never returns to its own record"
    );
    assert_eq!(
        served(&db.pool).await,
        (Some("v1".into()), Some(cutover(0)))
    );
    let end = promotion::rollback(&db.url, &lake)
        .await
        .expect_err("back at the first promotion");
    assert!(matches!(end, PromotionError::NothingToRollBack), "{end}");
    assert_eq!(
        history(&db.pool).await,
        [
            ("v1".into(), "pin".into(), false),
            ("v2".into(), "pin".into(), true),
            ("v3".into(), "pin".into(), true),
            ("v2".into(), "rollback".into(), true),
            ("v1".into(), "rollback".into(), true),
        ]
    );
}

#[tokio::test]
async fn pinning_an_older_version_is_undone_by_a_rollback() {
    let (db, lake) = setup("promotion_unpin", &["v1", "v2"]).await;
    pin(&db, &lake, "v1").await.expect("v1");
    pin(&db, &lake, "v2").await.expect("v2");
    pin(&db, &lake, "v1").await.expect("pin the older v1");
    let unpinned = promotion::rollback(&db.url, &lake).await.expect("unpin");
    assert_eq!(
        unpinned,
        Served {
            version: "v2".into(),
            cutover: cutover(1)
        }
    );
    assert_eq!(
        served(&db.pool).await,
        (Some("v2".into()), Some(cutover(1)))
    );
}

#[tokio::test]
async fn a_pin_waits_for_the_run_lock() {
    let (db, lake) = setup("promotion_lock", &["v1"]).await;
    let run = RunLock::acquire(&db.url)
        .await
        .expect("a run holds the lock");
    let pinning = {
        let (url, lake) = (db.url.clone(), lake.clone());
        tokio::spawn(async move { promotion::pin(&url, &lake, "v1").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pinning.is_finished(), "the pin went ahead of the run");
    assert_eq!(served(&db.pool).await, (None, None));
    run.release().await.expect("the run ends");
    let pinned = tokio::time::timeout(Duration::from_secs(10), pinning)
        .await
        .expect("the pin proceeds once the run ends")
        .expect("the pin's task")
        .expect("the pin");
    assert_eq!(pinned.version, "v1");
}
