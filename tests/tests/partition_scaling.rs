//! Speed scaling by partitions (issue 9): the topic grows from 2 to 4 partitions while the
//! speed layer and the lander run, a second speed instance joins, and every metric stays exact,
//! duplicates across old and new partitions included, before and after a promotion.
//!
//! Between the growth and the moment the lander finds the new partitions, a batch run must not
//! move T past events they hold: the lander is paused (SIGSTOP) across that window so it is
//! certain to be open, and the run must refuse to promote.

use anyhow::{Context, Result, ensure};
use platform_tests::truth::{Sent, check_served, default_metrics};
use platform_tests::{Platform, wait_until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Sends `count` distinct events at random times in `[base, base + 20m)` to random partitions
/// below `partitions`, a fifth of them twice (the copy to another random partition).
async fn send_round(
    platform: &Platform,
    rng: &mut StdRng,
    round: &str,
    count: usize,
    base: Millis,
    sent: &mut BTreeMap<String, Sent>,
    ends: &mut HashMap<i32, i64>,
) -> Result<()> {
    for i in 0..count {
        let time = base + rng.random_range(0..20 * MINUTE_MS);
        let event = Sent::random(rng, format!("{round}-{i}"), time);
        let copies = if rng.random_bool(0.2) { 2 } else { 1 };
        for _ in 0..copies {
            let partition = rng.random_range(0..platform.partitions);
            let offset = platform.send(partition, &event.payload()).await?;
            let end = ends.entry(partition).or_default();
            *end = (*end).max(offset + 1);
        }
        sent.insert(event.id.clone(), event);
    }
    Ok(())
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, signal)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_and_instances_added_while_running() -> Result<()> {
    let mut platform = Platform::new("scaling", 2).await?;
    // The consumers look for new partitions every second instead of every 30.
    platform
        .extra_env
        .push(("PLATFORM_KAFKA_METADATA_REFRESH".into(), "1s".into()));
    let lander = platform.spawn_as("lander", "batch-layer", &["land"])?;
    let first = platform.spawn_as("speed-first", "speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 30 * MINUTE_MS;
    let window = (base - MINUTE_MS, base + 25 * MINUTE_MS);
    let mut rng = StdRng::seed_from_u64(9);
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let metrics = default_metrics();
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();

    // 2 partitions, 1 instance.
    send_round(&platform, &mut rng, "a", 200, base, &mut sent, &mut ends).await?;
    platform.wait_both_caught_up(&ends).await?;

    // Grow to 4 with the lander paused, and fill the new partitions at once.
    let lander_pid = lander.pid().context("the lander's pid")?;
    signal(lander_pid, nix::sys::signal::Signal::SIGSTOP)?;
    let how = platform.add_partitions(4).await?;
    println!("grew the topic to 4 partitions through {how}");
    send_round(&platform, &mut rng, "b", 200, base, &mut sent, &mut ends).await?;
    ensure!(
        ends.contains_key(&2) && ends.contains_key(&3),
        "the round after the growth reached the new partitions: {ends:?}"
    );
    // The lander has recorded only partitions 0 and 1, both read to their end: without the
    // topic's own partition list, the lake would look complete up to about base + 19m.
    let (ok, output) = platform.run("batch-layer", &["run"]).await?;
    let cutover: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT cutover FROM serving_state")
            .fetch_one(&platform.pool)
            .await?;
    ensure!(
        !ok && cutover.is_none(),
        "a batch run promoted T = {cutover:?} past new partitions the lander has not read:\n{output}"
    );
    signal(lander_pid, nix::sys::signal::Signal::SIGCONT)?;
    // The one instance and the lander take the new partitions by themselves.
    platform.wait_both_caught_up(&ends).await?;
    ensure!(
        first.last_assignment() == "[0, 1, 2, 3]",
        "the first instance holds every partition: {:?}",
        first.last_assignment()
    );

    // A second instance joins; the group shares the 4 partitions between the two.
    let second = platform.spawn_as("speed-second", "speed-layer", &["run"])?;
    wait_until(
        Duration::from_secs(60),
        "both instances to hold partitions",
        || async {
            let (a, b) = (first.last_assignment(), second.last_assignment());
            a.len() > 2 && b.len() > 2 && a != "[0, 1, 2, 3]"
        },
    )
    .await?;
    send_round(&platform, &mut rng, "c", 200, base, &mut sent, &mut ends).await?;
    platform.wait_both_caught_up(&ends).await?;

    // Before any promotion, the speed layer answers every bucket.
    check_served(&platform, "speed only", &metrics, window, &sent, &sent).await?;

    let (ok, output) = platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "the batch run after the growth failed:\n{output}");
    let cutover: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT cutover FROM serving_state")
            .fetch_one(&platform.pool)
            .await?;
    let cutover = cutover.context("a promoted cutover")?.timestamp_millis();
    ensure!(
        cutover > base + 10 * MINUTE_MS,
        "T = {cutover} covers the new partitions' events"
    );
    check_served(
        &platform,
        "after the promotion",
        &metrics,
        window,
        &sent,
        &sent,
    )
    .await?;

    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lake_progress WHERE topic = $1 AND partition IN (2, 3)",
    )
    .bind(&platform.topic)
    .fetch_one(&platform.pool)
    .await?;
    ensure!(recorded == 2, "the lander recorded the new partitions");
    ensure!(
        lander.log().contains("partitions added to the topic"),
        "the running lander found the new partitions itself:\n{}",
        lander.log()
    );
    println!(
        "first instance: {}, second: {}",
        first.last_assignment(),
        second.last_assignment()
    );
    Ok(())
}
