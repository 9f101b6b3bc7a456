//! The lake and the views on S3 (issue 9): with `LAKE_DIR=s3://...` on a local S3-compatible
//! server (moto's server mode, started here), the real lander, batch run, speed layer and
//! serving layer serve the truth, keep nothing on local disk, and a batch run killed after its
//! view is written but before it is promoted changes nothing that is served.

use anyhow::{Context, Result, bail, ensure};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use platform_tests::truth::{Ledger, Sent, default_metrics};
use platform_tests::{Platform, free_local_addr, wait_until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared_schema::time::{MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const PARTITIONS: i32 = 2;
const BUCKET: &str = "lake";
const PREFIX: &str = "platform";

/// The moto server, stopped when dropped.
struct S3Server {
    _child: Child,
    endpoint: String,
}

impl S3Server {
    /// Starts moto's server on a free port, or `None` outside CI when it is not installed.
    async fn start(log: &std::path::Path) -> Result<Option<S3Server>> {
        let Some(executable) = std::env::var_os("E2E_MOTO_SERVER") else {
            if std::env::var_os("CI").is_some() {
                bail!("E2E_MOTO_SERVER is unset: run through scripts/test.sh (ensure_moto)");
            }
            eprintln!("skipped: E2E_MOTO_SERVER is unset (scripts/test.sh installs moto)");
            return Ok(None);
        };
        let addr = free_local_addr()?;
        let (host, port) = addr.rsplit_once(':').context("address")?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(&executable)
            .args(["-H", host, "-p", port])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", executable.to_string_lossy()))?;
        let endpoint = format!("http://{addr}");
        let http = reqwest::Client::new();
        wait_until(
            Duration::from_secs(60),
            "the S3 server to answer",
            || async { http.get(&endpoint).send().await.is_ok() },
        )
        .await?;
        let created = http.put(format!("{endpoint}/{BUCKET}")).send().await?;
        ensure!(
            created.status().is_success(),
            "creating the bucket: {}",
            created.status()
        );
        Ok(Some(S3Server {
            _child: child,
            endpoint,
        }))
    }

    /// What every service needs to keep its lake here: the standard AWS variables.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("LAKE_DIR", format!("s3://{BUCKET}/{PREFIX}")),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A client of its own, to look at the bucket independently of the platform's code.
    fn client(&self) -> Result<AmazonS3> {
        Ok(AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()?)
    }
}

fn key(relative: &str) -> ObjectPath {
    ObjectPath::from(format!("{PREFIX}/{relative}"))
}

async fn exists(s3: &AmazonS3, relative: &str) -> Result<bool> {
    match s3.head(&key(relative)).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The version directories under `views/`.
async fn view_versions(s3: &AmazonS3) -> Result<Vec<String>> {
    let listed = s3.list_with_delimiter(Some(&key("views"))).await?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

/// Waits for a view version other than `first` to appear in the bucket.
async fn new_view(s3: &AmazonS3, first: &str) -> Result<String> {
    for _ in 0..1200 {
        if let Some(version) = view_versions(s3).await?.into_iter().find(|v| v != first) {
            return Ok(version);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no second view version appeared in the bucket")
}

struct Scenario {
    platform: Platform,
    base: Millis,
    ledger: Ledger,
    rng: StdRng,
}

impl Scenario {
    /// Sends `count` random events (a tenth twice) within the 30 minutes after `base`.
    async fn send(&mut self, count: usize) -> Result<()> {
        let first = self.ledger.sent.len();
        let events: Vec<Sent> = (first..first + count)
            .map(|i| {
                let time = self.base + self.rng.random_range(0..30 * MINUTE_MS);
                Sent::random(&mut self.rng, format!("s{i}"), time)
            })
            .collect();
        self.ledger
            .send(&self.platform, &events, &mut self.rng, 0.1)
            .await
    }

    async fn check(&self, step: &str) -> Result<()> {
        let metrics = default_metrics();
        let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
        let range = (self.base - 10 * MINUTE_MS, self.base + 40 * MINUTE_MS);
        self.ledger
            .check(&self.platform, step, &metrics, range)
            .await
    }

    async fn run_batch(&mut self, cutover: Millis) -> Result<()> {
        let (ok, output) = self
            .platform
            .run(
                "batch-layer",
                &["run", "--cutover", &format_rfc3339(cutover)],
            )
            .await?;
        ensure!(ok, "batch-layer run failed:\n{output}");
        self.ledger.promoted();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lake_and_views_on_s3_with_a_killed_run() -> Result<()> {
    let mut platform = Platform::new("s3lake", PARTITIONS).await?;
    let Some(server) = S3Server::start(&platform.lake_dir.with_file_name("moto.log")).await? else {
        return Ok(());
    };
    platform.extra_env.extend(server.env());
    let s3 = server.client()?;
    let base = bucket_start(now_millis(), MINUTE_MS) - 35 * MINUTE_MS;
    let mut scenario = Scenario {
        platform,
        base,
        ledger: Ledger::default(),
        rng: StdRng::seed_from_u64(9),
    };
    let platform = &scenario.platform;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _lander = platform.spawn("batch-layer", &["land"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;

    // A file a crashed lander left unlisted: junk no reader may open, since readers go by the
    // manifest.
    s3.put(
        &key("events/dt=2000-01-01/hour=00/part-crashed.parquet"),
        PutPayload::from_static(b"not parquet"),
    )
    .await?;

    scenario.send(300).await?;
    scenario.run_batch(base + 10 * MINUTE_MS).await?;
    scenario.check("after the first run").await?;

    // Everything the platform published is in the bucket, listed in Postgres, and nothing went
    // to the local disk.
    let platform = &scenario.platform;
    let paths: Vec<String> = sqlx::query_scalar("SELECT path FROM lake_files")
        .fetch_all(&platform.pool)
        .await?;
    ensure!(!paths.is_empty(), "the lander listed no files");
    for path in &paths {
        ensure!(
            exists(&s3, path).await?,
            "listed lake file {path} is not in the bucket"
        );
    }
    let (first, view_path) = platform.served_view_path().await?;
    ensure!(
        exists(&s3, &view_path).await?,
        "served view {view_path} is not in the bucket"
    );
    let local: Vec<_> = std::fs::read_dir(&platform.lake_dir)?.collect();
    ensure!(local.is_empty(), "files on local disk: {local:?}");

    // A run that wrote its view and is killed before its promotion commits: the test holds the
    // row the promotion locks, so the run waits there with its view in the bucket.
    scenario.send(200).await?;
    let platform = &scenario.platform;
    let mut hold = platform.pool.begin().await?;
    sqlx::query("SELECT 1 FROM serving_state WHERE id = 1 FOR UPDATE")
        .execute(&mut *hold)
        .await?;
    let mut killed = platform.spawn(
        "batch-layer",
        &["run", "--cutover", &format_rfc3339(base + 20 * MINUTE_MS)],
    )?;
    let unlisted = new_view(&s3, &first).await.with_context(|| killed.log())?;
    // The PUT is whole once the key lists; the answer still comes from the first version.
    scenario.check("while the run waits to promote").await?;
    killed.kill9().await?;
    hold.rollback().await?;
    let platform = &scenario.platform;
    let listed: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_versions WHERE version = $1")
        .bind(&unlisted)
        .fetch_one(&platform.pool)
        .await?;
    ensure!(
        listed == 0,
        "the killed run's version {unlisted} was listed"
    );
    ensure!(
        platform.served().await?.0 == first,
        "a killed run changed the served version"
    );
    scenario.check("after the killed run").await?;

    // The next run promotes, and removes the killed run's unlisted view.
    scenario.run_batch(base + 25 * MINUTE_MS).await?;
    scenario.check("after the next run").await?;
    let platform = &scenario.platform;
    let (second, _) = platform.served().await?;
    ensure!(second != first && second != unlisted, "served {second}");
    let versions = view_versions(&s3).await?;
    ensure!(
        !versions.contains(&unlisted),
        "the killed run's view {unlisted} survived the next run: {versions:?}"
    );
    Ok(())
}
