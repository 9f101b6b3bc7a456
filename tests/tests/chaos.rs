//! Chaos (issue 5): a few minutes of traffic, with duplicates and late events, while random
//! services are SIGKILLed at random moments and Postgres and the broker are each restarted once.
//! Afterwards every bucket of every default metric must equal the truth: nothing lost, nothing
//! counted twice.
//!
//! The seed is printed and can be replayed with `CHAOS_SEED`. The scenario restarts the shared
//! servers, so it lives alone in this test binary (cargo runs test binaries one at a time).

use anyhow::{Context, Result, ensure};
use platform_tests::truth::{Sent, check_served, default_metrics};
use platform_tests::{GROUP_SESSION_TIMEOUT, Platform, Service, stack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::time::{MINUTE_MS, bucket_start, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
/// How long traffic flows; the whole scenario takes about twice this.
const TRAFFIC: Duration = Duration::from_secs(100);

struct Fleet {
    /// Label, binary, arguments and the running process of every long-lived service.
    services: Vec<(String, &'static str, Vec<&'static str>, Service)>,
    /// Killed services and when each is started again.
    down: Vec<(usize, Instant)>,
}

impl Fleet {
    fn start(platform: &Platform) -> Result<Fleet> {
        let wanted: [(&str, &'static str, Vec<&'static str>); 5] = [
            ("speed-a", "speed-layer", vec!["run"]),
            ("speed-b", "speed-layer", vec!["run"]),
            ("lander", "batch-layer", vec!["land"]),
            ("serving", "serving-layer", vec!["run"]),
            (
                "scheduler",
                "batch-layer",
                vec!["schedule", "--cron", "*/20 * * * * *"],
            ),
        ];
        let mut services = Vec::new();
        for (label, binary, args) in wanted {
            let service = platform.spawn_as(label, binary, &args)?;
            services.push((label.to_string(), binary, args, service));
        }
        Ok(Fleet {
            services,
            down: Vec::new(),
        })
    }

    /// SIGKILLs one running service and schedules its restart; returns its label. A speed layer
    /// is restarted once its group session has expired (see `GROUP_SESSION_TIMEOUT`), the others
    /// within 1.5 s.
    async fn kill_one(&mut self, rng: &mut StdRng) -> Result<Option<String>> {
        let index = rng.random_range(0..self.services.len());
        if self.down.iter().any(|(down, _)| *down == index) {
            return Ok(None);
        }
        let (label, binary, _, service) = &mut self.services[index];
        service.kill9().await?;
        let delay = if *binary == "speed-layer" {
            GROUP_SESSION_TIMEOUT + Duration::from_secs(1)
        } else {
            Duration::from_millis(rng.random_range(0..1500))
        };
        println!("SIGKILL {label}, restart in {delay:?}");
        self.down.push((index, Instant::now() + delay));
        Ok(Some(label.clone()))
    }

    /// Starts the killed services whose time has come; with `all`, waits for every one.
    async fn restart_due(&mut self, platform: &Platform, all: bool) -> Result<()> {
        let mut still_down = Vec::new();
        for (index, at) in std::mem::take(&mut self.down) {
            if all {
                tokio::time::sleep_until(at.into()).await;
            } else if Instant::now() < at {
                still_down.push((index, at));
                continue;
            }
            let (label, binary, args, service) = &mut self.services[index];
            *service = platform.spawn_as(label, binary, args)?;
            println!("restarted {label}");
        }
        self.down = still_down;
        Ok(())
    }

    /// No service may have exited by itself: every outage is retried, never fatal.
    fn assert_running(&mut self) -> Result<()> {
        for (label, _, _, service) in &mut self.services {
            service
                .assert_running()
                .with_context(|| format!("{label} is not running"))?;
        }
        Ok(())
    }

    /// Stops the scheduled batch runs, so that T stays put while the answers are checked.
    async fn stop_scheduler(&mut self) -> Result<()> {
        if let Some(index) = self.services.iter().position(|s| s.0 == "scheduler") {
            let (_, _, _, mut scheduler) = self.services.remove(index);
            scheduler.assert_running()?;
            scheduler.kill9().await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kills_and_server_restarts_lose_nothing_and_count_nothing_twice() -> Result<()> {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_millis() as u64);
    println!("chaos seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let platform = Platform::new("chaos", PARTITIONS).await?;
    let mut fleet = Fleet::start(&platform)?;
    platform.wait_for_http().await?;

    let base = bucket_start(now_millis(), MINUTE_MS) - 30 * MINUTE_MS;
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let (mut copies, mut kills) = (0usize, Vec::new());
    let postgres_at = TRAFFIC.mul_f64(rng.random_range(0.2..0.4));
    let broker_at = TRAFFIC.mul_f64(rng.random_range(0.6..0.8));
    let (mut postgres_restarted, mut broker_restarted) = (false, false);

    let started = Instant::now();
    while started.elapsed() < TRAFFIC {
        for _ in 0..40 {
            let id = format!("c{}", sent.len());
            // Up to 30 minutes old, as a late or replayed producer sends them.
            let time = base + rng.random_range(0..30 * MINUTE_MS);
            let event = Sent::random(&mut rng, id.clone(), time);
            let times_sent = if rng.random_bool(0.1) { 2 } else { 1 };
            for _ in 0..times_sent {
                let partition = rng.random_range(0..PARTITIONS);
                send_until_delivered(&platform, partition, &event.payload(), &mut ends).await?;
            }
            copies += times_sent;
            sent.insert(id, event);
        }
        if rng.random_bool(0.12)
            && let Some(killed) = fleet.kill_one(&mut rng).await?
        {
            kills.push(killed);
        }
        fleet.restart_due(&platform, false).await?;
        if !postgres_restarted && started.elapsed() >= postgres_at {
            println!("restarting Postgres");
            stack("stop_postgres")?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            stack("start_postgres")?;
            postgres_restarted = true;
        }
        if !broker_restarted && started.elapsed() >= broker_at {
            println!("restarting the broker");
            stack("stop_tansu")?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            stack("start_tansu")?;
            broker_restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
    }
    ensure!(
        postgres_restarted && broker_restarted,
        "both servers restart once"
    );
    fleet.restart_due(&platform, true).await?;

    platform.wait_both_caught_up(&ends).await?;
    fleet.assert_running()?;
    fleet.stop_scheduler().await?;
    let (ok, output) = platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "the batch run after the chaos failed:\n{output}");
    let metrics = default_metrics();
    check_served(
        &platform,
        "after the chaos",
        &metrics.iter().map(String::as_str).collect::<Vec<_>>(),
        (base - 30 * MINUTE_MS, base + 60 * MINUTE_MS),
        &sent,
        &sent,
    )
    .await?;
    println!(
        "chaos: {} events ({copies} messages), {} SIGKILLs ({}), Postgres and the broker restarted once each, every bucket exact",
        sent.len(),
        kills.len(),
        kills.join(", ")
    );
    Ok(())
}

/// Sends one message, retrying while the broker is away; a retry after an unknown outcome may
/// write the message twice, which the platform must count once like any other duplicate.
async fn send_until_delivered(
    platform: &Platform,
    partition: i32,
    payload: &[u8],
    ends: &mut HashMap<i32, i64>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match platform.send(partition, payload).await {
            Ok(offset) => {
                let end = ends.entry(partition).or_default();
                *end = (*end).max(offset + 1);
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                println!("send failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
