//! Every metric kind end to end through a promotion (issue 3), with a definitions file that adds
//! metrics the default dashboard lacks: a definition change reaches both layers with no code
//! edited.
//!
//! The truth for each metric (`platform_tests::truth`) is written out by hand from what was
//! sent, independently of the definitions, and compared with what is served before and after a
//! promotion, and after late events and the next batch run.

use anyhow::{Context, Result, ensure};
use platform_tests::Platform;
use platform_tests::truth::{Ledger, Sent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::catalog::DEFAULT_METRICS;
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};

const PARTITIONS: i32 = 3;

const EXTRA_METRICS: &str = r#"
[[metric]]
name = "average_purchase"
description = "Mean amount of a purchase"
event_type = "purchase"
aggregation = "avg"
field = "amount"
dimensions = ["country"]

[[metric]]
name = "largest_purchase"
event_type = "purchase"
aggregation = "max"
field = "amount"
dimensions = ["country"]

[[metric]]
name = "smallest_purchase"
event_type = "purchase"
aggregation = "min"
field = "amount"
dimensions = ["country"]
"#;

const METRICS: [&str; 11] = [
    "sessions",
    "purchases",
    "revenue",
    "page_views",
    "errors",
    "error_rate",
    "active_users",
    "failed_logins",
    "average_purchase",
    "largest_purchase",
    "smallest_purchase",
];

struct Run {
    platform: Platform,
    base: Millis,
    ledger: Ledger,
}

impl Run {
    async fn send(&mut self, events: &[Sent], rng: &mut StdRng) -> Result<()> {
        self.ledger.send(&self.platform, events, rng, 0.15).await
    }

    async fn check(&self, step: &str) -> Result<()> {
        let range = (self.base - 60 * MINUTE_MS, self.base + 30 * MINUTE_MS);
        self.ledger
            .check(&self.platform, step, &METRICS, range)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_kind_through_a_promotion() -> Result<()> {
    let mut platform = Platform::new("metrics", PARTITIONS).await?;
    let definitions = platform.lake_dir.with_file_name("metrics.toml");
    std::fs::write(&definitions, format!("{DEFAULT_METRICS}\n{EXTRA_METRICS}"))?;
    platform.extra_env.push((
        "PLATFORM_METRICS_FILE".into(),
        definitions.to_string_lossy().into_owned(),
    ));
    let base = bucket_start(now_millis(), MINUTE_MS) - 20 * MINUTE_MS;
    let mut run = Run {
        platform,
        base,
        ledger: Ledger::default(),
    };
    let _speed = run.platform.spawn("speed-layer", &["run"])?;
    let _lander = run.platform.spawn("batch-layer", &["land"])?;
    let _serving = run.platform.spawn("serving-layer", &["run"])?;
    run.platform.wait_for_http().await?;

    let (status, body) = run.platform.get("/v1/metrics").await?;
    let listed: Vec<&str> = body["metrics"]
        .as_array()
        .context("metrics")?
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    ensure!(
        status == 200 && METRICS.iter().all(|m| listed.contains(m)),
        "listed metrics: {listed:?}"
    );

    let mut rng = StdRng::seed_from_u64(11);
    let mut next = 0;
    let mut make = |rng: &mut StdRng, time: Millis| {
        next += 1;
        Sent::random(rng, format!("m{next}"), time)
    };
    let click = |id: &str, user: &str, minutes: i64| Sent {
        id: id.into(),
        kind: "click",
        time: base + minutes * MINUTE_MS,
        user: Some(user.into()),
        product: None,
        country: None,
        cents: None,
    };
    let mut first: Vec<Sent> = (0..600)
        .map(|_| {
            let t = base + rng.random_range(-50 * MINUTE_MS..10 * MINUTE_MS);
            make(&mut rng, t)
        })
        .collect();
    // Sessions with known shapes: 31 minutes apart is two sessions, 30 exactly too, 20 is one;
    // a later event will bridge the gap of `bridged`.
    first.extend([
        click("s1", "split", -45),
        click("s2", "split", -14),
        click("s3", "split", 6),
        click("s4", "exact", -40),
        click("s5", "exact", -10),
        click("s6", "bridged", -40),
        click("s7", "bridged", -5),
    ]);
    run.send(&first, &mut rng).await?;
    run.check("before any promotion").await?;

    let t = base + 5 * MINUTE_MS;
    let (ok, output) = run
        .platform
        .run("batch-layer", &["run", "--cutover", &format_rfc3339(t)])
        .await?;
    ensure!(ok, "batch run failed:\n{output}");
    run.ledger.promoted();
    run.check("after the promotion").await?;

    let mut late: Vec<Sent> = (0..60)
        .map(|_| {
            let t = base + rng.random_range(-50 * MINUTE_MS..10 * MINUTE_MS);
            make(&mut rng, t)
        })
        .collect();
    late.push(click("s8", "bridged", -22));
    run.send(&late, &mut rng).await?;
    run.check("late events before the next run").await?;

    let (ok, output) = run.platform.run("batch-layer", &["run"]).await?;
    ensure!(ok, "second batch run failed:\n{output}");
    run.ledger.promoted();
    run.check("after the next run").await?;
    Ok(())
}

#[tokio::test]
async fn a_broken_definition_file_refuses_every_service_at_start() -> Result<()> {
    let dir = platform_tests::target_dir()?.join("e2e-broken-definitions");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("metrics.toml");
    std::fs::write(
        &path,
        "[[metric]]\nname = \"broken\"\naggregation = \"summ\"\n",
    )?;
    for (binary, args) in [
        ("speed-layer", vec!["run"]),
        ("batch-layer", vec!["run"]),
        ("serving-layer", vec!["run"]),
    ] {
        let output = tokio::process::Command::new(platform_tests::bin_path(binary)?)
            .args(&args)
            .env(
                "DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/never-reached",
            )
            .env("PLATFORM_METRICS_FILE", &path)
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success(),
            "{binary} started with a broken definition file"
        );
        ensure!(
            stderr.contains("metric `broken`, field `aggregation`"),
            "{binary} said: {stderr}"
        );
    }
    Ok(())
}
