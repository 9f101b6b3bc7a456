//! Batch runs requested over HTTP (`shared_io::run_requests`) against the test Postgres:
//! one open at a time, claimed by one runner, reported back, and failed (never left running)
//! when their runner dies.

use shared_io::run_requests::{self, RunRequestError, RunState};
use shared_schema::time::MINUTE_MS;
use test_postgres::TestDatabase;

const T: i64 = 1_800_000_000_000;

#[tokio::test]
async fn a_request_is_claimed_once_run_and_reported() {
    let db = TestDatabase::new("run_requests")
        .await
        .expect("a test database");
    let first = run_requests::request(&db.pool, Some(T))
        .await
        .expect("request");
    assert_eq!(first.state, RunState::Requested);
    assert_eq!(first.cutover, Some(T));
    assert!(first.started_at.is_none());
    let refused = run_requests::request(&db.pool, None)
        .await
        .expect_err("one open request at a time");
    assert!(
        matches!(refused, RunRequestError::InProgress { id, state: RunState::Requested } if id == first.id),
        "{refused}"
    );
    assert!(run_requests::pending(&db.pool).await.expect("pending"));

    let claimed = run_requests::claim(&db.url)
        .await
        .expect("claim")
        .expect("a waiting request");
    assert_eq!((claimed.id, claimed.cutover), (first.id, Some(T)));
    assert!(
        run_requests::claim(&db.url).await.expect("claim").is_none(),
        "a request is claimed once"
    );
    assert_eq!(
        run_requests::reap_abandoned(&db.pool).await.expect("reap"),
        0
    );
    let running = run_requests::get(&db.pool, first.id).await.expect("get");
    let running = running.expect("the request");
    assert_eq!(running.state, RunState::Running);
    assert!(running.started_at.is_some());
    let refused = run_requests::request(&db.pool, None)
        .await
        .expect_err("still open while running");
    assert!(matches!(
        refused,
        RunRequestError::InProgress {
            state: RunState::Running,
            ..
        }
    ));

    claimed
        .finish(&db.pool, Ok(("v1".into(), T + MINUTE_MS)))
        .await
        .expect("finish");
    let done = run_requests::get(&db.pool, first.id)
        .await
        .expect("get")
        .expect("the request");
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.version.as_deref(), Some("v1"));
    assert_eq!(done.promoted_cutover, Some(T + MINUTE_MS));
    assert!(done.finished_at.is_some());

    let second = run_requests::request(&db.pool, None)
        .await
        .expect("the next request");
    assert!(second.id > first.id);
    let claimed = run_requests::claim(&db.url)
        .await
        .expect("claim")
        .expect("the second");
    claimed
        .finish(&db.pool, Err("the lake is incomplete".into()))
        .await
        .expect("finish");
    let listed = run_requests::list(&db.pool).await.expect("list");
    let states: Vec<(i64, RunState)> = listed.iter().map(|r| (r.id, r.state)).collect();
    assert_eq!(
        states,
        [
            (second.id, RunState::Failed),
            (first.id, RunState::Succeeded)
        ],
        "newest first"
    );
    assert_eq!(listed[0].error.as_deref(), Some("the lake is incomplete"));
    assert!(
        run_requests::get(&db.pool, 4242)
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn a_request_whose_runner_died_is_failed_and_does_not_block_the_next() {
    let db = TestDatabase::new("run_requests_died")
        .await
        .expect("a test database");
    let request = run_requests::request(&db.pool, None)
        .await
        .expect("request");
    let claimed = run_requests::claim(&db.url)
        .await
        .expect("claim")
        .expect("claimed");
    // The runner's session ends without a report, as when its process is killed.
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&db.pool)
    .await
    .expect("terminate");
    assert_eq!(ended, 1);
    drop(claimed);
    // Reading it is enough to reap it.
    let mut failed = None;
    for _ in 0..50 {
        let run = run_requests::get(&db.pool, request.id)
            .await
            .expect("get")
            .expect("it");
        if run.state != RunState::Running {
            failed = Some(run);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let failed = failed.expect("the dead runner's request leaves `running`");
    assert_eq!(failed.state, RunState::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("runner")),
        "{failed:?}"
    );
    assert!(failed.finished_at.is_some());
    run_requests::request(&db.pool, None)
        .await
        .expect("the next request is accepted");
}
