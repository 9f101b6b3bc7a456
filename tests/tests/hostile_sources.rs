//! Hostile sources (issue 15): an event judged "from the future" gets one verdict from both
//! layers however late either reads it (the message's broker timestamp is the clock); batches
//! of large messages are capped by bytes; a profile change the CDC publisher cannot publish is
//! quarantined instead of stopping every later change.

use anyhow::{Result, ensure};
use platform_tests::{Platform, wait_until, without_colours};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, now_millis, to_datetime};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// (partition, offset) -> reason of every quarantined message of `topic`.
async fn quarantined(platform: &Platform, topic: &str) -> Result<BTreeMap<(i32, i64), String>> {
    let rows: Vec<(i32, i64, String)> =
        sqlx::query_as("SELECT partition, kafka_offset, reason FROM quarantine WHERE topic = $1")
            .bind(topic)
            .fetch_all(&platform.pool)
            .await?;
    Ok(rows.into_iter().map(|(p, o, r)| ((p, o), r)).collect())
}

/// Sends `payload` with an explicit broker timestamp (CreateTime).
async fn send_at(
    platform: &Platform,
    partition: i32,
    payload: &Value,
    create_time: Millis,
) -> Result<i64> {
    let text = payload.to_string();
    let record = FutureRecord::to(&platform.topic)
        .partition(partition)
        .key(b"")
        .payload(text.as_bytes())
        .timestamp(create_time);
    let delivery = platform
        .producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("delivery failed: {e}"))?;
    Ok(delivery.offset)
}

/// The rows the lander has listed in the manifest for the scenario's topic.
async fn landed_rows(platform: &Platform) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(row_count)::bigint FROM lake_files WHERE topic = $1",
    )
    .bind(&platform.topic)
    .fetch_one(&platform.pool)
    .await?
    .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_layers_judge_the_future_by_the_message_timestamp() -> Result<()> {
    let mut platform = Platform::new("future", 1).await?;
    platform
        .extra_env
        .push(("PLATFORM_MAX_EVENT_SKEW".into(), "10s".into()));
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let now = now_millis();
    let event = |id: &str, time: Millis| {
        json!({"event_id": id, "event_type": "purchase", "event_time": time,
               "schema_version": 2, "country": "DE", "amount": 1.0})
    };
    let hour_ago = bucket_start(now, MINUTE_MS) - 60 * MINUTE_MS;
    let sends = [
        // A minute ahead of its producer's clock: from the future, whenever it is read.
        ("skewed", hour_ago, hour_ago - MINUTE_MS),
        // Five seconds ahead of its producer's clock: fine, whenever it is read.
        ("fine", hour_ago, hour_ago - 5_000),
        // Twenty seconds ahead at produce time; a reader 15 s late would see it 5 s ahead.
        ("ahead", now + 20_000, now),
        ("normal", hour_ago + 1_000, now),
    ];
    let mut offsets = HashMap::new();
    for (id, time, create_time) in sends {
        offsets.insert(
            id,
            send_at(&platform, 0, &event(id, time), create_time).await?,
        );
    }
    let (skewed, ahead) = (offsets["skewed"], offsets["ahead"]);
    let ends = HashMap::from([(0, offsets["normal"] + 1)]);
    platform.wait_caught_up("speed_offsets", &ends).await?;

    // The lander starts late, after the wall clock has caught up with `ahead`'s margin.
    tokio::time::sleep(Duration::from_millis(
        (now + 15_000 - now_millis()).max(0) as u64
    ))
    .await;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    platform.wait_caught_up("lake_progress", &ends).await?;

    let kept = quarantined(&platform, &platform.topic).await?;
    let mut keys: Vec<&(i32, i64)> = kept.keys().collect();
    keys.sort();
    ensure!(
        keys == [&(0, skewed), &(0, ahead)],
        "quarantined {kept:?}, expected offsets {skewed} and {ahead}"
    );
    ensure!(
        landed_rows(&platform).await? == 2,
        "the lander lands exactly what the speed layer counts (2 events), landed {}",
        landed_rows(&platform).await?
    );
    let path = platform_tests::purchases_path(hour_ago, hour_ago + MINUTE_MS);
    let (status, body) = platform.get(&path).await?;
    ensure!(status == 200, "{status} {body}");
    let total = platform_tests::first_series_total(&body);
    ensure!(total == 2.0, "the speed side counts 2 purchases: {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn speed_batches_are_capped_by_bytes() -> Result<()> {
    let mut platform = Platform::new("bytes", 1).await?;
    platform.extra_env.extend([
        (
            "PLATFORM_SPEED__BATCH_MAX_BYTES".to_string(),
            "2000".to_string(),
        ),
        ("RUST_LOG".into(), "info,speed_layer=debug".into()),
    ]);
    let base = bucket_start(now_millis(), MINUTE_MS) - 5 * MINUTE_MS;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let padding = "x".repeat(1_000);
    for i in 0..30 {
        let payload = json!({"event_id": format!("big-{i}"), "event_type": "purchase",
                             "event_time": base, "schema_version": 2, "country": "DE",
                             "amount": 1.0, "padding": padding});
        platform.send_tracked(0, &payload, &mut ends).await?;
    }
    let speed = platform.spawn("speed-layer", &["run"])?;
    platform.wait_caught_up("speed_offsets", &ends).await?;
    // The debug line of each commit carries its span: `commit_batch{... events=N ...}`.
    let sizes: Vec<usize> = without_colours(&speed.log())
        .lines()
        .filter(|l| l.contains("committed"))
        .filter_map(|l| {
            let (_, rest) = l.split_once(" events=")?;
            let digits: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect();
    ensure!(
        sizes.iter().sum::<usize>() == 30,
        "every event committed once: {sizes:?}"
    );
    ensure!(
        sizes.iter().all(|n| *n <= 2),
        "a batch of ~1 KB messages holds at most 2 under a 2000-byte cap: {sizes:?}"
    );
    Ok(())
}

/// Writes one profile through SQL; `updated_at` is SQL text (`'infinity'` is a timestamptz).
async fn set_profile(platform: &Platform, user: &str, tier: &str, updated_at: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_profiles (user_id, tier, signup_country, updated_at)
         VALUES ($1, $2, 'DE', $3::text::timestamptz)",
    )
    .bind(user)
    .bind(tier)
    .bind(updated_at)
    .execute(&platform.pool)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_the_publisher_cannot_publish_is_quarantined_and_later_ones_flow() -> Result<()> {
    let platform = Platform::new("cdc_hostile", 1).await?;
    let mut publisher = platform.spawn("cdc-publisher", &["run"])?;
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    platform.wait_cdc_publisher_ready().await?;

    let now = to_datetime(now_millis() - 60 * MINUTE_MS).to_rfc3339();
    set_profile(&platform, "good-1", "gold", &now).await?;
    // `infinity` is a timestamptz, but no instant: the publisher cannot date the version.
    set_profile(&platform, "forever", "gold", "infinity").await?;
    // Published, but a tier no dimension value may be: the changelog readers quarantine it.
    set_profile(&platform, "big-tier", &"t".repeat(5_000), &now).await?;
    set_profile(&platform, "good-2", "silver", &now).await?;

    let cdc_topic = platform.cdc_topic();
    let counts = || async {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM speed_profile_versions ORDER BY user_id",
        )
        .fetch_all(&platform.pool)
        .await
        .unwrap_or_default();
        let landed: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(row_count), 0)::bigint FROM lake_files WHERE topic = $1",
        )
        .bind(&cdc_topic)
        .fetch_one(&platform.pool)
        .await
        .unwrap_or(-1);
        (users, landed)
    };
    let waited = wait_until(
        Duration::from_secs(60),
        "the later change in both layers",
        || async {
            let (users, landed) = counts().await;
            users.contains(&"good-2".to_string()) && landed >= 2
        },
    )
    .await;
    if let Err(e) = waited {
        let reached = counts().await;
        return Err(e.context(format!("reached {reached:?}\n{}", platform.log_tails(30))));
    }
    let (users, landed) = counts().await;
    ensure!(
        users == ["good-1", "good-2"] && landed == 2,
        "only the good versions are applied: {users:?}, {landed} landed"
    );
    let refused = quarantined(&platform, "public.user_profiles").await?;
    ensure!(
        refused.len() == 1 && refused.values().all(|r| r.contains("infinity")),
        "the undatable change is quarantined: {refused:?}"
    );
    let unreadable = quarantined(&platform, &cdc_topic).await?;
    ensure!(
        unreadable.len() == 1 && unreadable.values().all(|r| r.contains("`tier`")),
        "the oversized tier is quarantined by the readers: {unreadable:?}"
    );
    publisher.assert_running()?;
    speed.assert_running()?;
    lander.assert_running()?;
    Ok(())
}
