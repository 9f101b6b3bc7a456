//! The speed layer's batch transaction (`SpeedLayer::commit_batch`) against the real test
//! Postgres, without a broker or a binary: what one batch stores (claims, partials, offsets,
//! watermarks, bad messages, late events, session starts), and that a batch committed again,
//! or by two owners at once, is counted once.

mod common;

use common::*;
use shared_io::kafka::BadMessage;
use speed_layer::Committed;

#[tokio::test]
async fn a_batch_stores_its_partials_claims_and_offsets_in_one_commit() {
    let (db, layer) = speed_layer("speed_commit_one").await;
    let batch = batch(vec![
        (0, 10, purchase("a", T0 + 1_000, "u1", "DE", 2_500_000)),
        (0, 11, purchase("b", T0 + 2_000, "u2", "DE", 1_000_000)),
        (1, 40, purchase("c", T0 + M + 5, "u3", "FR", 7_000_000)),
    ]);
    let progress = [(0, Some(T0)), (1, None)];

    let committed = layer
        .commit_batch(TOPIC, &batch, None, &progress)
        .await
        .expect("the batch commits");

    assert_eq!(
        committed,
        Committed {
            claimed: 3,
            duplicates: 0
        }
    );
    // One cell per bucket and dimensions, whichever partitions its events came from.
    assert_eq!(
        aggregates(&db.pool, "purchases").await,
        vec![
            (T0, country("DE"), 2, 3_500_000),
            (T0 + M, country("FR"), 1, 7_000_000),
        ]
    );
    assert_eq!(
        aggregates(&db.pool, "revenue").await,
        vec![
            (T0, country("DE"), 2, 3_500_000),
            (T0 + M, country("FR"), 1, 7_000_000),
        ]
    );
    // One packed row per bucket, holding every metric.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM speed_cells WHERE 'purchases' = ANY(metrics)"
        )
        .await,
        2
    );
    // The next offset of each partition, and each partition's share of the watermark.
    assert_eq!(
        offsets(&db.pool).await,
        vec![(0, 12, Some(T0)), (1, 41, None)]
    );
    assert_eq!(count(&db.pool, LOGGED_IDS).await, 3);
    // The distinct count keeps a sketch per cell: 2 users in the first minute, 1 in the second.
    let sketched: Vec<(i64, Option<f64>)> = cells(&db.pool, "active_users")
        .await
        .into_iter()
        .map(|(_, _, p)| (p.count, p.sketch.map(|s| s.estimate().round())))
        .collect();
    assert_eq!(sketched, vec![(2, Some(2.0)), (1, Some(1.0))]);
}

#[tokio::test]
async fn a_batch_replayed_after_its_commit_is_not_counted_twice() {
    let (db, layer) = speed_layer("speed_commit_replay").await;
    let batch = batch(vec![
        (0, 0, purchase("a", T0, "u1", "DE", 1_000_000)),
        (0, 1, purchase("b", T0 + 1, "u2", "DE", 1_000_000)),
    ]);
    layer
        .commit_batch(TOPIC, &batch, None, &[])
        .await
        .expect("the first commit");
    let before = aggregates(&db.pool, "revenue").await;

    // A restart that read the batch again before its offsets were seen commits it again.
    let again = layer
        .commit_batch(TOPIC, &batch, None, &[])
        .await
        .expect("the second commit");

    assert_eq!(
        again,
        Committed {
            claimed: 0,
            duplicates: 2
        }
    );
    assert_eq!(before, vec![(T0, country("DE"), 2, 2_000_000)]);
    assert_eq!(aggregates(&db.pool, "revenue").await, before);
    assert_eq!(count(&db.pool, LOGGED_IDS).await, 2);
    assert_eq!(offsets(&db.pool).await, vec![(0, 2, None)]);
}

#[tokio::test]
async fn a_copy_inside_one_batch_and_one_in_a_later_batch_count_once() {
    let (db, layer) = speed_layer("speed_commit_copies").await;
    // The producer retried: "a" twice in one batch, on two partitions.
    let first = batch(vec![
        (0, 0, purchase("a", T0, "u1", "DE", 1_000_000)),
        (1, 0, purchase("a", T0, "u1", "DE", 1_000_000)),
        (1, 1, purchase("b", T0, "u2", "DE", 1_000_000)),
    ]);
    let committed = layer.commit_batch(TOPIC, &first, None, &[]).await.unwrap();
    assert_eq!(
        committed,
        Committed {
            claimed: 2,
            duplicates: 1
        }
    );
    // And once more in the next batch, beside a new event.
    let second = batch(vec![
        (0, 1, purchase("a", T0, "u1", "DE", 1_000_000)),
        (0, 2, purchase("c", T0, "u3", "DE", 1_000_000)),
    ]);
    let committed = layer.commit_batch(TOPIC, &second, None, &[]).await.unwrap();
    assert_eq!(
        committed,
        Committed {
            claimed: 1,
            duplicates: 1
        }
    );
    let total: i64 = aggregates(&db.pool, "purchases")
        .await
        .iter()
        .map(|row| row.2)
        .sum();
    assert_eq!(total, 3);
}

/// Without fencing (as in a replay, or before partitions are claimed), two instances may commit
/// the same events at once: the log head orders them, and the second finds the first's ids.
#[tokio::test]
async fn two_owners_committing_the_same_events_at_once_count_them_once() {
    let (db, layer) = speed_layer("speed_commit_owners").await;
    let other = speed_layer_on(&db, "speed_commit_owners_b");
    let events: Vec<_> = (0..200)
        .map(|i| (0, i, purchase(&format!("e{i}"), T0 + i, "u1", "DE", 1_000)))
        .collect();
    let batch = batch(events);

    let (a, b) = tokio::join!(
        layer.commit_batch(TOPIC, &batch, None, &[]),
        other.commit_batch(TOPIC, &batch, None, &[]),
    );
    let (a, b) = (a.expect("owner a commits"), b.expect("owner b commits"));

    assert_eq!(a.claimed + b.claimed, 200, "{a:?} {b:?}");
    assert_eq!(
        aggregates(&db.pool, "revenue").await,
        vec![(T0, country("DE"), 200, 200_000)]
    );
}

fn speed_layer_on(db: &test_postgres::TestDatabase, _hint: &str) -> speed_layer::SpeedLayer {
    let config = shared_schema::config::PlatformConfig {
        events_topic: TOPIC.into(),
        ..Default::default()
    };
    speed_layer::SpeedLayer::new(db.pool.clone(), config, catalog())
}

#[tokio::test]
async fn late_events_are_counted_under_every_policy_and_applied_only_under_update() {
    let (db, layer) = speed_layer("speed_commit_late").await;
    // Buckets are a minute and lateness a minute: with the watermark at T0 + 3m, the bucket of
    // T0 closed (T0 + 2m <= watermark) and the one of T0 + 2m is still open.
    let watermark = Some(T0 + 3 * M);
    let batch = batch(vec![
        (0, 0, purchase("late", T0 + 5, "u1", "DE", 1_000_000)),
        (0, 1, purchase("on-time", T0 + 2 * M, "u2", "DE", 1_000_000)),
    ]);

    layer
        .commit_batch(TOPIC, &batch, watermark, &[])
        .await
        .expect("the batch commits");

    // `update` applies the late event; `drop` and `side_output` keep it out.
    let buckets = |rows: Vec<(i64, String, i64, i64)>| -> Vec<(i64, i64)> {
        rows.into_iter().map(|r| (r.0, r.2)).collect()
    };
    assert_eq!(
        buckets(aggregates(&db.pool, "purchases").await),
        vec![(T0, 1), (T0 + 2 * M, 1)]
    );
    for kept_out in ["purchases_dropping_late", "purchases_late_to_side"] {
        assert_eq!(
            buckets(aggregates(&db.pool, kept_out).await),
            vec![(T0 + 2 * M, 1)],
            "{kept_out}"
        );
    }
    // Counted (seen, late) per metric and bucket under every policy.
    let counts: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT u.metric, extract(epoch FROM c.bucket_start)::bigint * 1000, sum(u.seen)::bigint, sum(u.late)::bigint
         FROM speed_cells c, UNNEST(c.metrics, c.seen, c.late) AS u(metric, seen, late)
         WHERE u.metric LIKE 'purchases%' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut expected = Vec::new();
    for metric in [
        "purchases",
        "purchases_dropping_late",
        "purchases_late_to_side",
    ] {
        expected.push((metric.to_string(), T0, 1, 1));
        expected.push((metric.to_string(), T0 + 2 * M, 1, 0));
    }
    assert_eq!(counts, expected);
    // Only `side_output` keeps a record of the event itself.
    let side: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "SELECT metric, event_id, partition, kafka_offset FROM speed_late_events ORDER BY metric",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        side,
        vec![("purchases_late_to_side".into(), "late".into(), 0, 0)]
    );
}

#[tokio::test]
async fn session_starts_move_when_an_earlier_event_arrives_in_a_later_batch() {
    let (db, layer) = speed_layer("speed_commit_sessions").await;
    // Two events of u1 5 minutes apart: one session, started at T0 + 10m.
    let first = batch(vec![
        (0, 0, page_view("v1", T0 + 10 * M, "u1")),
        (0, 1, page_view("v2", T0 + 15 * M, "u1")),
    ]);
    layer.commit_batch(TOPIC, &first, None, &[]).await.unwrap();
    let starts = |rows: Vec<(i64, String, i64, i64)>| -> Vec<(i64, i64)> {
        rows.into_iter().map(|r| (r.0, r.2)).collect()
    };
    assert_eq!(
        starts(aggregates(&db.pool, "sessions").await),
        vec![(T0 + 10 * M, 1)]
    );

    // An event 8 minutes before it, within the 30-minute gap, moves the start back to T0 + 2m;
    // one an hour later starts a second session.
    let second = batch(vec![
        (0, 2, page_view("v0", T0 + 2 * M, "u1")),
        (0, 3, page_view("v3", T0 + 75 * M, "u1")),
    ]);
    layer.commit_batch(TOPIC, &second, None, &[]).await.unwrap();

    assert_eq!(
        starts(aggregates(&db.pool, "sessions").await),
        vec![(T0 + 2 * M, 1), (T0 + 10 * M, 0), (T0 + 75 * M, 1)]
    );
    assert_eq!(count(&db.pool, LOGGED_IDS).await, 4);
}

#[tokio::test]
async fn bad_messages_are_kept_with_the_offsets_that_skip_them() {
    let (db, layer) = speed_layer("speed_commit_bad").await;
    let mut batch = batch(vec![(2, 7, purchase("a", T0, "u1", "DE", 1))]);
    batch.bad.push(BadMessage {
        partition: 2,
        offset: 8,
        raw: Some(b"{not json".to_vec()),
        reason: "not a JSON object".into(),
    });
    batch.positions.get_mut(&2).unwrap().next_offset = 9;

    layer.commit_batch(TOPIC, &batch, None, &[]).await.unwrap();

    let kept: Vec<(String, i32, i64, String, String)> = sqlx::query_as(
        "SELECT topic, partition, kafka_offset, reason, detected_by FROM quarantine",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        vec![(
            TOPIC.into(),
            2,
            8,
            "not a JSON object".into(),
            "speed-layer".into()
        )]
    );
    assert_eq!(offsets(&db.pool).await, vec![(2, 9, None)]);
}

#[tokio::test]
async fn a_refused_batch_stores_nothing() {
    let (db, layer) = speed_layer("speed_commit_refused").await;
    // A rule the decoder does not know (as a NUL in text was): the packed cells of the bucket
    // fail, and the whole batch with them.
    sqlx::query(
        "ALTER TABLE speed_cells ADD CONSTRAINT test_refuses CHECK (position('XX'::bytea in body) = 0)",
    )
    .execute(&db.pool)
    .await
    .expect("adding the rule");
    let batch = batch(vec![
        (0, 0, purchase("fine", T0, "u1", "DE", 1)),
        (0, 1, purchase("refused", T0, "u1", "XX", 1)),
    ]);

    let refused = layer
        .commit_batch(TOPIC, &batch, None, &[])
        .await
        .expect_err("Postgres refuses the batch");

    let speed_layer::CheckpointError::Commit(refused) = refused else {
        panic!("refused for another reason: {refused}");
    };
    assert_eq!(refused.step, "writing cells", "{refused}");
    assert_eq!(count(&db.pool, LOGGED_IDS).await, 0);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM speed_cells").await, 0);
    assert_eq!(offsets(&db.pool).await, vec![]);
}

#[tokio::test]
async fn a_restarted_instance_loads_the_log_and_counts_nothing_twice() {
    let (db, layer) = speed_layer("speed_commit_restart").await;
    let events: Vec<_> = (0..50)
        .map(|i| (0, i, purchase(&format!("e{i}"), T0 + i, "u1", "DE", 1_000)))
        .collect();
    layer
        .commit_batch(TOPIC, &batch(events.clone()), None, &[])
        .await
        .unwrap();
    drop(layer);

    // A new process: its state comes from the log alone.
    let restarted = speed_layer_on(&db, "restart");
    let committed = restarted
        .commit_batch(TOPIC, &batch(events), None, &[])
        .await
        .unwrap();

    assert_eq!(
        committed,
        Committed {
            claimed: 0,
            duplicates: 50
        }
    );
    assert_eq!(
        aggregates(&db.pool, "revenue").await,
        vec![(T0, country("DE"), 50, 50_000)]
    );
}

/// Copies of one event on two partitions owned by two instances, each of which loaded its
/// state before the other's copy was committed: the second learns the first's id from the log.
#[tokio::test]
async fn copies_on_two_instances_partitions_count_once() {
    let (db, a) = speed_layer("speed_commit_two_partitions").await;
    let b = speed_layer_on(&db, "b");
    a.take_partitions(TOPIC, &[0]).await.unwrap();
    b.take_partitions(TOPIC, &[1]).await.unwrap();
    // Both load their state first.
    a.commit_batch(
        TOPIC,
        &batch(vec![(0, 0, purchase("a0", T0, "u1", "DE", 1))]),
        None,
        &[],
    )
    .await
    .unwrap();
    b.commit_batch(
        TOPIC,
        &batch(vec![(1, 0, purchase("b0", T0, "u2", "DE", 1))]),
        None,
        &[],
    )
    .await
    .unwrap();

    let copy = |partition| batch(vec![(partition, 1, purchase("twice", T0, "u3", "DE", 1))]);
    let first = a.commit_batch(TOPIC, &copy(0), None, &[]).await.unwrap();
    let second = b.commit_batch(TOPIC, &copy(1), None, &[]).await.unwrap();

    assert_eq!((first.claimed, second.claimed), (1, 0));
    let total: i64 = aggregates(&db.pool, "purchases")
        .await
        .iter()
        .map(|row| row.2)
        .sum();
    assert_eq!(total, 3);
}

/// An instance that lost a partition while paused (a zombie) cannot write for it after the new
/// owner claimed it, not even its offsets.
#[tokio::test]
async fn a_zombie_cannot_commit_after_its_partition_moved() {
    let (db, zombie) = speed_layer("speed_commit_zombie").await;
    let owner = speed_layer_on(&db, "owner");
    zombie.take_partitions(TOPIC, &[0]).await.unwrap();
    owner.take_partitions(TOPIC, &[0]).await.unwrap();

    let stale = batch(vec![(0, 0, purchase("z", T0, "u1", "DE", 1))]);
    let refused = zombie
        .commit_batch(TOPIC, &stale, None, &[])
        .await
        .expect_err("the zombie is fenced");

    assert!(
        matches!(&refused, speed_layer::CheckpointError::Fenced { partitions, .. } if partitions == &vec![0]),
        "{refused}"
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM speed_cells").await, 0);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM speed_offsets").await,
        0
    );
    // The new owner reads the partition from its stored offsets and counts the event.
    let committed = owner.commit_batch(TOPIC, &stale, None, &[]).await.unwrap();
    assert_eq!(committed.claimed, 1);
}

/// `speed-layer replay` swaps in another log under a new generation: a running instance
/// notices at its next checkpoint and loads it, rather than deduplicating against the old one.
#[tokio::test]
async fn a_swapped_in_log_is_loaded_at_the_next_checkpoint() {
    let (db, layer) = speed_layer("speed_commit_generation").await;
    let events = batch(vec![(0, 0, purchase("e", T0, "u1", "DE", 1))]);
    layer.commit_batch(TOPIC, &events, None, &[]).await.unwrap();
    // What a replay that has not seen the event swaps in: an empty log of a new generation.
    sqlx::query("DELETE FROM speed_log")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE speed_log_head SET generation = generation + 1")
        .execute(&db.pool)
        .await
        .unwrap();

    let committed = layer.commit_batch(TOPIC, &events, None, &[]).await.unwrap();

    assert_eq!(committed.claimed, 1);
}

/// Upgrading in place: ids an earlier version kept as rows still deduplicate, and its session
/// events still place session starts.
#[tokio::test]
async fn an_earlier_versions_rows_move_into_the_log() {
    let (db, layer) = speed_layer("speed_commit_legacy").await;
    sqlx::query("INSERT INTO speed_dedupe (event_id, bucket_start) VALUES ('old', $1)")
        .bind(shared_schema::time::to_datetime(T0))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO speed_session_events (metric, session_key, event_time, event_id)
         VALUES ('sessions', 'u1', $1, 'old')",
    )
    .bind(shared_schema::time::to_datetime(T0))
    .execute(&db.pool)
    .await
    .unwrap();
    layer.take_partitions(TOPIC, &[0]).await.unwrap();

    let copy_and_next = batch(vec![
        (0, 0, page_view("old", T0, "u1")),
        (0, 1, page_view("new", T0 + M, "u1")),
    ]);
    let committed = layer
        .commit_batch(TOPIC, &copy_and_next, None, &[])
        .await
        .unwrap();

    assert_eq!(
        committed,
        Committed {
            claimed: 1,
            duplicates: 1
        }
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM speed_dedupe").await,
        0
    );
    // The new event continues the session the old one started: no start of its own.
    assert_eq!(aggregates(&db.pool, "sessions").await, vec![]);
}

/// Every checkpoint adds a row to each bucket it touches; once a bucket holds
/// `MAX_ROWS_PER_BUCKET`, the next checkpoint merges them into one. Sums and sketches survive it.
#[tokio::test]
async fn a_bucket_touched_by_many_checkpoints_keeps_few_rows_and_exact_sums() {
    let (db, layer) = speed_layer("speed_commit_merge").await;
    let checkpoints = 3 * speed_layer::MAX_ROWS_PER_BUCKET + 5;
    for i in 0..checkpoints {
        let batch = batch(vec![(
            0,
            i,
            purchase(&format!("e{i}"), T0 + i, &format!("u{i}"), "DE", 1_000),
        )]);
        layer.commit_batch(TOPIC, &batch, None, &[]).await.unwrap();
        let rows = count(
            &db.pool,
            "SELECT count(*) FROM speed_cells WHERE 'revenue' = ANY(metrics)",
        )
        .await;
        assert!(
            (1..=speed_layer::MAX_ROWS_PER_BUCKET).contains(&rows),
            "after {i}: {rows} rows"
        );
    }
    assert_eq!(
        aggregates(&db.pool, "revenue").await,
        vec![(T0, country("DE"), checkpoints, checkpoints * 1_000)]
    );
    let users: Vec<Option<f64>> = cells(&db.pool, "active_users")
        .await
        .into_iter()
        .map(|(_, _, p)| p.sketch.map(|s| s.estimate().round()))
        .collect();
    assert_eq!(users, vec![Some(checkpoints as f64)]);
}
