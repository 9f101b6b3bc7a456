//! The fences of issue 15 against a real Postgres (the one `scripts/test.sh` starts, at
//! `E2E_DATABASE_URL`), without spawning binaries: a run lock whose session died cannot begin
//! a promoting transaction, and a lander whose epoch was replaced cannot commit.

use batch_layer::BatchError;
use batch_layer::lander_lock::{Fence, LanderLock};
use shared_io::run_lock::{RunLock, RunLockError};
use shared_schema::config::PlatformConfig;
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// A fresh, migrated database of its own, and a config pointing at it.
async fn database(name: &str) -> (PgPool, PlatformConfig) {
    let admin_url =
        std::env::var("E2E_DATABASE_URL").expect("E2E_DATABASE_URL: run through scripts/test.sh");
    let unique = format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("admin connection");
    admin
        .execute(format!("CREATE DATABASE {unique}").as_str())
        .await
        .expect("create database");
    let (base, _) = admin_url.rsplit_once('/').expect("a database in the URL");
    let url = format!("{base}/{unique}");
    let pool = shared_io::db::connect_and_migrate(&url, 4)
        .await
        .expect("migrated");
    let config = PlatformConfig {
        database_url: Some(url),
        ..PlatformConfig::default()
    };
    (pool, config)
}

/// Ends the sessions holding advisory locks in this database, as a network cut would.
async fn terminate_lock_holders(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .expect("terminate")
}

#[tokio::test]
async fn a_run_lock_whose_session_died_cannot_promote() {
    let (pool, config) = database("run_lock_fence").await;
    let url = config.database_url().expect("a database URL");
    let mut lock = RunLock::acquire(url).await.expect("lock");
    // Held: a transaction begins on its session.
    let tx = lock.begin().await.expect("begin while held");
    tx.rollback().await.expect("rollback");
    assert_eq!(terminate_lock_holders(&pool).await, 1);
    // Another run can take the lock now; the first must not promote.
    let second = RunLock::acquire(url).await.expect("second lock");
    match lock.begin().await {
        Err(RunLockError::Lost(_)) => {}
        Err(other) => panic!("expected RunLockLost, got {other}"),
        Ok(_) => panic!("a lost run lock began a promoting transaction"),
    }
    second.release().await.expect("release");
}

#[tokio::test]
async fn a_replaced_lander_epoch_cannot_commit() {
    let (pool, config) = database("lander_fence").await;
    let mut first = LanderLock::acquire(&config, "events")
        .await
        .expect("first lander");
    let fence: Fence = first.fence();
    let mut tx = pool.begin().await.expect("begin");
    fence
        .check(&mut tx)
        .await
        .expect("the holder's epoch commits");
    tx.commit().await.expect("commit");
    // Its lock connection dies; a second lander takes the topic and raises the epoch.
    assert_eq!(terminate_lock_holders(&pool).await, 1);
    let second = LanderLock::acquire(&config, "events")
        .await
        .expect("second lander");
    assert_eq!(second.fence().epoch, fence.epoch + 1);
    let mut tx = pool.begin().await.expect("begin");
    let refused = fence
        .check(&mut tx)
        .await
        .expect_err("a stale epoch must not commit");
    let text = refused.to_string();
    assert!(text.contains("lander_fenced"), "{text}");
    drop(tx);
    // The first lander notices within its watch interval.
    let lost = tokio::time::timeout(std::time::Duration::from_secs(10), first.lost())
        .await
        .expect("the first lander notices it lost the lock");
    assert!(matches!(lost, BatchError::LanderFenced { .. }), "{lost}");
    // Another topic has a lock and an epoch of its own.
    let other = LanderLock::acquire(&config, "other")
        .await
        .expect("other topic");
    assert_eq!(other.fence().epoch, 1);
}
