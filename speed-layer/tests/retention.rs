//! Speed retention (`SpeedLayer::apply_retention`) against the real test Postgres: only state
//! past the horizon (T minus `speed.retention_grace`, 10 minutes by default) is removed, the
//! coverage moves to the horizon, and nothing is removed while no view is promoted.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use shared_schema::time::{Millis, to_datetime};
use speed_layer::Removed;
use sqlx::PgPool;

async fn promote(pool: &PgPool, cutover: Millis) {
    sqlx::query("UPDATE serving_state SET cutover = $1 WHERE id = 1")
        .bind(to_datetime(cutover))
        .execute(pool)
        .await
        .expect("setting T");
}

#[allow(clippy::unwrap_used)] // a test helper: a failed read fails the test
async fn covered_from(pool: &PgPool) -> Option<Option<Millis>> {
    let row: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT covered_from FROM speed_coverage WHERE topic = $1")
            .bind(TOPIC)
            .fetch_optional(pool)
            .await
            .unwrap();
    row.map(|t| t.map(|t| t.timestamp_millis()))
}

#[tokio::test]
async fn retention_removes_only_what_lies_before_the_horizon() {
    let (db, layer) = speed_layer("speed_retention_horizon").await;
    sqlx::query("INSERT INTO speed_coverage (topic, covered_from) VALUES ($1, NULL)")
        .bind(TOPIC)
        .execute(&db.pool)
        .await
        .unwrap();
    let batch = batch(vec![
        (0, 0, purchase("p28", T0 + 28 * M, "u1", "DE", 1)),
        (0, 1, purchase("p29", T0 + 29 * M + 59_999, "u2", "DE", 1)),
        (0, 2, purchase("p30", T0 + 30 * M, "u3", "DE", 1)),
        (0, 3, purchase("p31", T0 + 31 * M, "u4", "DE", 1)),
    ]);
    // With the watermark past T0 + 30m, p28's bucket closed: it has a side-output record.
    layer
        .commit_batch(TOPIC, &batch, Some(T0 + 30 * M), &[])
        .await
        .expect("committing the state");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM speed_late_events").await,
        1
    );
    // T at T0 + 40m: the horizon is T0 + 30m.
    promote(&db.pool, T0 + 40 * M).await;

    let removed = layer.apply_retention().await.expect("retention runs");

    // Minutes 28 and 29: a `speed_cells` row each (one checkpoint, every metric in it). The log
    // row holds events after the session horizon (T0), so it stays.
    assert_eq!(
        removed,
        Some(Removed {
            horizon: T0 + 30 * M,
            aggregates: 2,
            log_rows: 0
        })
    );
    let buckets: Vec<Millis> = aggregates(&db.pool, "purchases")
        .await
        .iter()
        .map(|row| row.0)
        .collect();
    assert_eq!(buckets, vec![T0 + 30 * M, T0 + 31 * M]);
    // The ids at or after the horizon still deduplicate.
    let again = common::batch(vec![
        (0, 4, purchase("p30", T0 + 30 * M, "u3", "DE", 1)),
        (0, 5, purchase("p31", T0 + 31 * M, "u4", "DE", 1)),
    ]);
    let committed = layer
        .commit_batch(TOPIC, &again, None, &[])
        .await
        .expect("committing copies");
    assert_eq!(committed.claimed, 0, "{committed:?}");
    assert_eq!(covered_from(&db.pool).await, Some(Some(T0 + 30 * M)));
    // Late counts and records follow their buckets.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM speed_cells WHERE bucket_start < '2026-01-01T00:30:00Z'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM speed_late_events").await,
        0
    );
    // Session events stay one gap (30 minutes) before the horizon, for the starts after it.
    assert_eq!(count(&db.pool, LOGGED_IDS).await, 4);
}

#[tokio::test]
async fn retention_never_moves_the_coverage_back() {
    let (db, layer) = speed_layer("speed_retention_coverage").await;
    sqlx::query("INSERT INTO speed_coverage (topic, covered_from) VALUES ($1, $2)")
        .bind(TOPIC)
        .bind(to_datetime(T0 + 60 * M))
        .execute(&db.pool)
        .await
        .unwrap();
    // A rollback moved T back below the coverage (to T0 + 40m, horizon T0 + 30m).
    promote(&db.pool, T0 + 40 * M).await;

    let removed = layer.apply_retention().await.expect("retention runs");

    assert_eq!(
        removed,
        Some(Removed {
            horizon: T0 + 30 * M,
            aggregates: 0,
            log_rows: 0
        })
    );
    assert_eq!(covered_from(&db.pool).await, Some(Some(T0 + 60 * M)));
}

#[tokio::test]
async fn nothing_is_removed_while_no_view_is_promoted() {
    let (db, layer) = speed_layer("speed_retention_no_view").await;
    let batch = batch(vec![(0, 0, purchase("old", T0 - 1_000 * M, "u1", "DE", 1))]);
    layer.commit_batch(TOPIC, &batch, None, &[]).await.unwrap();

    let removed = layer.apply_retention().await.expect("retention runs");

    assert_eq!(removed, None);
    assert_eq!(aggregates(&db.pool, "purchases").await.len(), 1);
    assert_eq!(count(&db.pool, LOGGED_IDS).await, 1);
}

#[tokio::test]
async fn a_log_row_goes_once_all_its_events_lie_a_gap_before_the_horizon() {
    let (db, layer) = speed_layer("speed_retention_log").await;
    for (offset, (id, time)) in [("early", T0), ("later", T0 + 60 * M)]
        .into_iter()
        .enumerate()
    {
        let one = batch(vec![(0, offset as i64, purchase(id, time, "u1", "DE", 1))]);
        layer.commit_batch(TOPIC, &one, None, &[]).await.unwrap();
    }
    // T at T0 + 80m: the horizon is T0 + 70m, the session horizon 30 minutes before it.
    promote(&db.pool, T0 + 80 * M).await;

    let removed = layer.apply_retention().await.expect("retention runs");

    assert_eq!(removed.map(|r| r.log_rows), Some(1));
    assert_eq!(count(&db.pool, LOGGED_IDS).await, 1);
}
