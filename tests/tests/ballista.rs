//! Batch runs on an Apache DataFusion Ballista cluster (issue 9): a scheduler and an executor
//! of ours (`batch-layer ballista-scheduler`, `batch-layer ballista-executor`) on loopback
//! ports, and `BATCH_ENGINE=ballista://host:port`. A full and an incremental run on the
//! cluster write views equal row for row to the local engine's over the same lake, and serve
//! the truth; with the scheduler unreachable a run fails with a clear error and promotes
//! nothing.

use anyhow::{Context, Result, ensure};
use platform_tests::truth::{Sent, check_served, default_metrics, send_all};
use platform_tests::{Platform, Service, free_local_addr, wait_until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_io::storage::Lake;
use shared_io::view::read_lake_view;
use shared_schema::query::BucketRow;
use shared_schema::time::{Millis, format_rfc3339, now_millis};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const PARTITIONS: i32 = 2;
const HOUR: Millis = 3_600_000;
const HOURS: i64 = 5;
/// What the scheduler logs per plan it ran (Ballista's own message).
const JOB_DONE: &str = "Job finished successfully";

/// A scheduler and an executor serving it, started from the workspace's `batch-layer`.
struct Ballista {
    scheduler: Service,
    executor: Service,
    engine: String,
}

impl Ballista {
    async fn start(platform: &Platform) -> Result<Ballista> {
        let scheduler_addr = free_local_addr()?;
        let scheduler = platform.spawn_as(
            "ballista-scheduler",
            "batch-layer",
            &["ballista-scheduler", "--bind", &scheduler_addr],
        )?;
        wait_listening(&scheduler_addr, "the Ballista scheduler").await?;
        let port = |addr: String| addr.rsplit_once(':').map(|(_, p)| p.to_string());
        let flight = free_local_addr()?;
        let flight_port = port(flight.clone()).context("port")?;
        let grpc_port = port(free_local_addr()?).context("port")?;
        let work_dir = platform.lake_dir.with_file_name("ballista-work");
        std::fs::create_dir_all(&work_dir)?;
        let executor = platform.spawn_as(
            "ballista-executor",
            "batch-layer",
            &[
                "ballista-executor",
                "--scheduler",
                &scheduler_addr,
                "--bind-host",
                "127.0.0.1",
                "--flight-port",
                &flight_port,
                "--grpc-port",
                &grpc_port,
                "--vcores",
                "2",
                "--work-dir",
                &work_dir.to_string_lossy(),
            ],
        )?;
        wait_listening(&flight, "the Ballista executor").await?;
        Ok(Ballista {
            scheduler,
            executor,
            engine: format!("ballista://{scheduler_addr}"),
        })
    }

    /// Plans the scheduler ran to completion so far.
    fn jobs_done(&self) -> usize {
        self.scheduler.log().matches(JOB_DONE).count()
    }
}

async fn wait_listening(addr: &str, what: &str) -> Result<()> {
    wait_until(Duration::from_secs(60), what, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

/// `batch-layer args...` with `BATCH_ENGINE=engine` (absent: the default, local).
async fn batch_run(
    platform: &Platform,
    engine: Option<&str>,
    args: &[&str],
) -> Result<(bool, String)> {
    let mut command = platform.command("batch-layer", args)?;
    if let Some(engine) = engine {
        command.env("BATCH_ENGINE", engine);
    }
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .context("the batch run did not finish in 10 minutes")??;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

async fn run_ok(platform: &Platform, engine: Option<&str>, args: &[&str]) -> Result<String> {
    let (ok, output) = batch_run(platform, engine, args).await?;
    ensure!(
        ok,
        "batch-layer {args:?} (engine {engine:?}) failed:\n{output}\n{}",
        platform.log_tails(30)
    );
    Ok(output)
}

/// The served version's view, every metric's rows in one order.
async fn served_view(platform: &Platform) -> Result<BTreeMap<String, Vec<BucketRow>>> {
    let (_, path) = platform.served_view_path().await?;
    // A version's manifest and every segment it lists.
    let by_metric = read_lake_view(&Lake::Local(platform.lake_dir.clone()), &path).await?;
    Ok(by_metric
        .into_iter()
        .map(|(metric, mut rows)| {
            rows.sort_by(|a, b| (a.bucket_start, &a.dims).cmp(&(b.bucket_start, &b.dims)));
            (metric, rows)
        })
        .collect())
}

fn ensure_same_view(
    step: &str,
    ballista: &BTreeMap<String, Vec<BucketRow>>,
    local: &BTreeMap<String, Vec<BucketRow>>,
) -> Result<()> {
    let names = |v: &BTreeMap<String, Vec<BucketRow>>| v.keys().cloned().collect::<Vec<_>>();
    ensure!(
        names(ballista) == names(local),
        "{step}: metrics {:?} on Ballista, {:?} locally",
        names(ballista),
        names(local)
    );
    for (metric, rows) in ballista {
        let theirs = &local[metric];
        ensure!(
            rows.len() == theirs.len(),
            "{step}: {metric} has {} rows on Ballista, {} locally",
            rows.len(),
            theirs.len()
        );
        if let Some((a, b)) = rows.iter().zip(theirs).find(|(a, b)| a != b) {
            anyhow::bail!("{step}: {metric} differs:\nBallista {a:?}\nlocal    {b:?}");
        }
    }
    Ok(())
}

/// An event past T in every partition tells the batch layer the lake is complete up to T.
async fn send_fences(
    platform: &Platform,
    cutover: Millis,
    rng: &mut StdRng,
    ends: &mut HashMap<i32, i64>,
) -> Result<()> {
    for partition in 0..PARTITIONS {
        let fence = Sent::random(rng, format!("fence{partition}"), cutover + HOUR / 2);
        let payload: serde_json::Value = serde_json::from_slice(&fence.payload())?;
        platform.send_tracked(partition, &payload, ends).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ballista_runs_write_the_local_engines_views() -> Result<()> {
    let mut platform = Platform::new("ballista", PARTITIONS).await?;
    // Two hours at a time: several plans and contexts per run.
    platform
        .extra_env
        .push(("PLATFORM_BATCH__CHUNK_HOURS".into(), "2".into()));
    let mut cluster = Ballista::start(&platform).await?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    let base = now_millis().div_euclid(HOUR) * HOUR - (HOURS + 1) * HOUR;
    let cutover = base + HOURS * HOUR;
    let t = format_rfc3339(cutover);
    let range = (base, cutover);
    let metrics = default_metrics();
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let mut rng = StdRng::seed_from_u64(9);
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut ends = HashMap::new();
    for i in 0..500 {
        let time = base + rng.random_range(0..HOURS * HOUR);
        let event = Sent::random(&mut rng, format!("b{i}"), time);
        sent.insert(event.id.clone(), event);
    }
    // Some copies: the cluster deduplicates as the local engine does.
    let copies: Vec<Sent> = sent.values().step_by(7).cloned().collect();
    let first: Vec<&Sent> = sent.values().chain(copies.iter()).collect();
    send_all(&platform, &first, &mut rng, &mut ends).await?;
    send_fences(&platform, cutover, &mut rng, &mut ends).await?;
    platform.wait_caught_up("lake_progress", &ends).await?;

    // The same lake through both engines, each a full recompute.
    let output = run_ok(&platform, None, &["run", "--cutover", &t]).await?;
    ensure!(output.contains("full recompute"), "local run: {output}");
    let local = served_view(&platform).await?;
    let jobs = cluster.jobs_done();
    let output = run_ok(
        &platform,
        Some(&cluster.engine),
        &["run", "--full", "--cutover", &t],
    )
    .await?;
    ensure!(output.contains("full recompute"), "Ballista run: {output}");
    // Every metric of every chunk was a job of the cluster, not of the run's own process.
    let ran = cluster.jobs_done() - jobs;
    ensure!(
        ran >= metrics.len(),
        "the scheduler finished {ran} jobs for {} metrics:\n{}",
        metrics.len(),
        cluster.scheduler.log()
    );
    let ballista = served_view(&platform).await?;
    ensure!(!ballista.is_empty(), "the Ballista run wrote an empty view");
    ensure_same_view("full run", &ballista, &local)?;
    check_served(
        &platform,
        "Ballista full run",
        &metrics,
        range,
        &sent,
        &sent,
    )
    .await?;

    // Late events in hour 1: an incremental run on the cluster recomputes those hours only, and
    // its view is the local engine's full recompute of the new lake.
    let late: Vec<Sent> = (0..40)
        .map(|i| {
            let time = base + HOUR + rng.random_range(0..HOUR);
            Sent::random(&mut rng, format!("late{i}"), time)
        })
        .collect();
    send_all(
        &platform,
        &late.iter().collect::<Vec<_>>(),
        &mut rng,
        &mut ends,
    )
    .await?;
    sent.extend(late.into_iter().map(|e| (e.id.clone(), e)));
    platform.wait_caught_up("lake_progress", &ends).await?;
    let jobs = cluster.jobs_done();
    let output = run_ok(&platform, Some(&cluster.engine), &["run", "--cutover", &t]).await?;
    ensure!(
        output.contains("incremental: 2 hours recomputed"),
        "Ballista incremental run: {output}"
    );
    ensure!(
        cluster.jobs_done() > jobs,
        "the incremental run ran no job on the cluster"
    );
    let ballista = served_view(&platform).await?;
    check_served(
        &platform,
        "Ballista incremental run",
        &metrics,
        range,
        &sent,
        &sent,
    )
    .await?;
    run_ok(&platform, None, &["run", "--full", "--cutover", &t]).await?;
    let local = served_view(&platform).await?;
    ensure_same_view("incremental run", &ballista, &local)?;

    cluster.executor.assert_running()?;
    cluster.scheduler.assert_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_scheduler_fails_the_run_and_promotes_nothing() -> Result<()> {
    let platform = Platform::new("ballista_down", PARTITIONS).await?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let base = now_millis().div_euclid(HOUR) * HOUR - 2 * HOUR;
    let cutover = base + HOUR;
    let t = format_rfc3339(cutover);
    let mut rng = StdRng::seed_from_u64(10);
    let mut ends = HashMap::new();
    let mut events = Vec::new();
    for i in 0..50 {
        let time = base + rng.random_range(0..HOUR);
        events.push(Sent::random(&mut rng, format!("d{i}"), time));
    }
    send_all(
        &platform,
        &events.iter().collect::<Vec<_>>(),
        &mut rng,
        &mut ends,
    )
    .await?;
    send_fences(&platform, cutover, &mut rng, &mut ends).await?;
    platform.wait_caught_up("lake_progress", &ends).await?;
    run_ok(&platform, None, &["run", "--cutover", &t]).await?;
    let served = platform.served().await?;
    let versions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM batch_versions")
            .fetch_one(&platform.pool)
            .await
    };
    let before = versions().await?;

    // Nothing listens on this port.
    let nowhere = format!("ballista://{}", free_local_addr()?);
    let (ok, output) = batch_run(
        &platform,
        Some(&nowhere),
        &["run", "--full", "--cutover", &t],
    )
    .await?;
    ensure!(
        !ok,
        "a run with an unreachable scheduler succeeded:\n{output}"
    );
    ensure!(
        output.contains(&format!("on the Ballista cluster at {nowhere}")),
        "the failure does not name the cluster:\n{output}"
    );
    ensure!(
        platform.served().await? == served,
        "a failed run changed what is served"
    );
    ensure!(
        versions().await? == before,
        "a failed run recorded a version"
    );
    let staging: Vec<_> = std::fs::read_dir(platform.lake_dir.join("views"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    ensure!(staging.is_empty(), "a failed run left {staging:?}");

    // A value that names no engine is refused before any work, with what is accepted.
    let (ok, output) = batch_run(&platform, Some("spark://127.0.0.1:7077"), &["run"]).await?;
    ensure!(
        !ok && output.contains("`spark://127.0.0.1:7077`")
            && output.contains("ballista://host:port"),
        "an unknown engine:\n{output}"
    );
    ensure!(
        platform.served().await? == served,
        "a refused run changed what is served"
    );
    Ok(())
}
