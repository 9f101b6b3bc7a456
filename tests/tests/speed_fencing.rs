//! The speed layer's checkpoints under the failures issue 17 names: an instance paused past its
//! session timeout (a zombie) cannot commit after its partitions moved, whether the group or
//! leases moved them; a SIGKILL while a checkpoint has written everything but not committed
//! loses and doubles nothing; and with leases, SIGKILLs in quick succession leave the survivor
//! every partition whatever the broker's coordinator does. All with copies of events on
//! several partitions, and checked against the truth through the API.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, Service, purchases_path, wait_until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const PARTITIONS: i32 = 4;
const ASSIGNMENT_LIMIT: Duration = Duration::from_secs(60);

/// Purchases sent so far, per bucket, and the end offset of each partition.
struct Sent {
    base: Millis,
    truth: BTreeMap<Millis, f64>,
    ends: HashMap<i32, i64>,
    rng: StdRng,
}

impl Sent {
    fn new(seed: u64) -> Sent {
        Sent {
            base: bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS,
            truth: BTreeMap::new(),
            ends: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `n` purchases, a fifth of them sent twice on random partitions.
    async fn send(&mut self, platform: &Platform, round: &str, n: usize) -> Result<()> {
        for i in 0..n {
            let time = self.base + self.rng.random_range(0..15 * MINUTE_MS);
            let payload = json!({"event_id": format!("{round}-{i}"), "event_type": "purchase",
                "event_time": time, "schema_version": 2});
            let copies = if self.rng.random_bool(0.2) { 2 } else { 1 };
            for _ in 0..copies {
                let partition = self.rng.random_range(0..PARTITIONS);
                platform
                    .send_tracked(partition, &payload, &mut self.ends)
                    .await?;
            }
            *self.truth.entry(bucket_start(time, MINUTE_MS)).or_default() += 1.0;
        }
        Ok(())
    }

    /// Waits for the speed layer to commit everything sent, then compares the served purchases
    /// with the truth.
    async fn check(&self, platform: &Platform, when: &str) -> Result<()> {
        platform.wait_caught_up("speed_offsets", &self.ends).await?;
        let url = purchases_path(self.base, self.base + 20 * MINUTE_MS);
        let (status, body) = platform.get(&url).await?;
        ensure!(status == 200, "{status} {body}");
        let served = platform_tests::first_series_points(&body)?;
        ensure!(
            served == self.truth,
            "{when}: served {served:?}\ntruth  {:?}",
            self.truth
        );
        Ok(())
    }
}

fn signal(service: &Service, signal: &str) -> Result<()> {
    let pid = service.pid().context("a running process")?;
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {signal} {pid}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_instance_cannot_commit_after_its_partitions_moved() -> Result<()> {
    zombie("zombie", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_instance_cannot_commit_after_its_leases_moved() -> Result<()> {
    zombie("zombie_leases", LEASES).await
}

/// `speed.assignment = "leases"`, with leases renewed every second.
const LEASES: &[(&str, &str)] = &[
    ("PLATFORM_SPEED__ASSIGNMENT", "leases"),
    ("PLATFORM_SPEED__SESSION_TIMEOUT", "3s"),
];

async fn zombie(name: &str, env: &[(&str, &str)]) -> Result<()> {
    let mut platform = Platform::new(name, PARTITIONS).await?;
    for (k, v) in env {
        platform.extra_env.push((k.to_string(), v.to_string()));
    }
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    // The zombie-to-be holds every batch a while before its checkpoint begins, so that it is
    // holding one when it is paused.
    platform.extra_env.push((
        "LAMBDA_FAILPOINTS".into(),
        "speed.checkpoint.begun=sleep:4000".into(),
    ));
    let mut zombie = platform.spawn_as("speed-zombie", "speed-layer", &["run"])?;
    platform.extra_env.pop();
    zombie.wait_for_partitions(ASSIGNMENT_LIMIT).await?;
    let mut sent = Sent::new(17);
    sent.send(&platform, "before", 100).await?;
    sent.check(&platform, "before the pause").await?;

    sent.send(&platform, "held", 100).await?;
    wait_until(
        Duration::from_secs(30),
        "the zombie to hold a batch",
        || async {
            zombie.log().matches("failpoint: sleeping").count()
                > zombie.log().matches("failpoint: slept").count()
        },
    )
    .await?;
    signal(&zombie, "-STOP")?;
    // The group (or the leases) drops it after its session timeout and hands everything to the
    // other.
    let mut owner = platform.spawn_as("speed-owner", "speed-layer", &["run"])?;
    owner.wait_for_partitions(ASSIGNMENT_LIMIT).await?;
    sent.send(&platform, "moved", 100).await?;
    sent.check(&platform, "with the zombie paused").await?;

    signal(&zombie, "-CONT")?;
    wait_until(
        Duration::from_secs(60),
        "the zombie's held checkpoint to be refused",
        || async {
            zombie
                .log()
                .contains("another instance owns these partitions now")
        },
    )
    .await?;
    sent.send(&platform, "after", 100).await?;
    sent.check(&platform, "after the zombie woke").await?;
    zombie.assert_running()?;
    owner.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_inside_a_checkpoint_loses_and_doubles_nothing() -> Result<()> {
    let mut platform = Platform::new("checkpoint_kill", PARTITIONS).await?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let mut sent = Sent::new(18);
    // Every checkpoint waits with all of it written and nothing committed.
    platform.extra_env.push((
        "LAMBDA_FAILPOINTS".into(),
        "speed.checkpoint.written=sleep:3000".into(),
    ));
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    platform.extra_env.pop();
    speed.wait_for_partitions(ASSIGNMENT_LIMIT).await?;
    for round in 0..3 {
        sent.send(&platform, &format!("r{round}"), 150).await?;
        let held = speed.log().matches("failpoint: sleeping").count();
        wait_until(
            Duration::from_secs(30),
            "a checkpoint to be written",
            || async { speed.log().matches("failpoint: sleeping").count() > held },
        )
        .await?;
        speed.kill9().await?;
        platform_tests::wait_out_group_session().await;
        platform.extra_env.push((
            "LAMBDA_FAILPOINTS".into(),
            "speed.checkpoint.written=sleep:3000".into(),
        ));
        speed = platform.spawn("speed-layer", &["run"])?;
        platform.extra_env.pop();
    }
    // The last one runs without the failpoint: it commits everything.
    speed.kill9().await?;
    platform_tests::wait_out_group_session().await;
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    sent.check(&platform, "after three kills inside checkpoints")
        .await?;
    speed.assert_running()?;
    Ok(())
}

/// Issue 17 item 4: with leases, ownership does not depend on the broker's coordinator. Three
/// instances share the partitions; three of them are SIGKILLed within a few seconds (one right
/// after it took partitions), and the survivor reads every partition within the session
/// timeout plus two lease rounds, counting every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_sigkills_leave_the_survivor_every_partition_by_lease() -> Result<()> {
    const SURVIVOR_BOUND: Duration = Duration::from_secs(20);
    let mut platform = Platform::new("lease_kills", PARTITIONS).await?;
    for (k, v) in LEASES {
        platform.extra_env.push((k.to_string(), v.to_string()));
    }
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let mut a = platform.spawn_as("speed-a", "speed-layer", &["run"])?;
    let mut b = platform.spawn_as("speed-b", "speed-layer", &["run"])?;
    let mut survivor = platform.spawn_as("speed-c", "speed-layer", &["run"])?;
    for service in [&a, &b, &survivor] {
        service.wait_for_partitions(ASSIGNMENT_LIMIT).await?;
    }
    let mut sent = Sent::new(19);
    sent.send(&platform, "shared", 200).await?;
    sent.check(&platform, "shared by three").await?;

    a.kill9().await?;
    b.kill9().await?;
    let mut d = platform.spawn_as("speed-d", "speed-layer", &["run"])?;
    d.wait_for_partitions(ASSIGNMENT_LIMIT).await?;
    d.kill9().await?;
    let killed = std::time::Instant::now();
    sent.send(&platform, "after", 200).await?;
    wait_until(
        SURVIVOR_BOUND,
        "the survivor to read every partition",
        || async { survivor.last_assignment() == "[0, 1, 2, 3]" },
    )
    .await
    .with_context(|| format!("the survivor's assignments: {:?}", survivor.assignments()))?;
    println!(
        "the survivor read every partition {:.1}s after the last SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    sent.check(&platform, "after three SIGKILLs").await?;
    ensure!(
        !survivor.log().contains("joined the consumer group"),
        "an instance assigned by lease joined a consumer group"
    );
    survivor.assert_running()?;
    Ok(())
}
