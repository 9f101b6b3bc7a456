//! One scenario's private platform and the services it starts.

use crate::*;
use crate::{cluster::stack_lib, kafka::partition_count, paths::replace_user};
use anyhow::{Context, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// One scenario's private platform: a database, a topic, a lake directory and an HTTP port.
pub struct Platform {
    pub name: String,
    pub database_url: String,
    /// What the serving layer answers requests through: the read-only role of migration 0011.
    pub reader_database_url: String,
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    pub lake_dir: PathBuf,
    pub listen_addr: String,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub http: reqwest::Client,
    /// Added to every service's environment.
    pub extra_env: Vec<(String, String)>,
}

impl Platform {
    pub async fn new(name: &str, partitions: i32) -> Result<Platform> {
        let cluster = Cluster::from_env();
        let (unique, database_url) = test_postgres::create_database(name).await?;
        let reader_database_url = replace_user(&database_url, READER_ROLE)?;
        let topic = format!("events_{unique}");
        create_topic(&cluster.brokers, &topic, partitions).await?;
        let lake_dir = target_dir()?.join("e2e").join(&unique).join("lake");
        std::fs::create_dir_all(&lake_dir)?;
        let listen_addr = free_local_addr()?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url)
            .await?;
        Ok(Platform {
            name: unique,
            database_url,
            reader_database_url,
            producer: producer(&cluster.brokers)?,
            brokers: cluster.brokers,
            topic,
            partitions,
            lake_dir,
            listen_addr,
            pool,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            extra_env: Vec::new(),
        })
    }

    fn env(&self) -> Vec<(String, String)> {
        let base: Vec<(&str, String)> = vec![
            ("DATABASE_URL", self.database_url.clone()),
            // Only the serving layer reads it: its requests go through the read-only role.
            (
                "PLATFORM_SERVING__DATABASE_URL",
                self.reader_database_url.clone(),
            ),
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("EVENTS_TOPIC", self.topic.clone()),
            ("LAKE_DIR", self.lake_dir.to_string_lossy().into_owned()),
            ("LISTEN_ADDR", self.listen_addr.clone()),
            // Short flushes keep the scenarios quick.
            ("PLATFORM_LANDER__FLUSH_INTERVAL", "300ms".into()),
            ("PLATFORM_SPEED__BATCH_MAX_WAIT", "100ms".into()),
            // A SIGKILLed speed layer hands its partitions over after this.
            (
                "PLATFORM_SPEED__SESSION_TIMEOUT",
                format!("{}s", GROUP_SESSION_TIMEOUT.as_secs()),
            ),
            // One consumer group per scenario, so scenarios never rebalance one another.
            ("PLATFORM_SPEED__GROUP_ID", format!("speed-{}", self.name)),
            // One profile changelog and replication slot per scenario, likewise.
            ("PLATFORM_CDC__TOPIC", self.cdc_topic()),
            ("PLATFORM_CDC__SLOT", self.cdc_slot()),
            ("RUST_LOG", "info".into()),
            // Each instance serves /metrics on a port of its own; a scenario that scrapes them
            // sets fixed ones (free_local_addr).
            ("PLATFORM_SPEED__METRICS_ADDR", "127.0.0.1:0".into()),
            ("PLATFORM_LANDER__METRICS_ADDR", "127.0.0.1:0".into()),
            ("PLATFORM_BATCH__METRICS_ADDR", "127.0.0.1:0".into()),
            ("PLATFORM_CDC__METRICS_ADDR", "127.0.0.1:0".into()),
        ];
        base.into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(self.extra_env.iter().cloned())
            .collect()
    }

    /// Grows this scenario's topic to `total` partitions while everything runs: through the
    /// Kafka API (CreatePartitions) where the broker has it, otherwise, for tansu 0.6 which has
    /// not, through `grow_tansu_topic` of `scripts/lib.sh`. Returns which of the two it used.
    pub async fn add_partitions(&mut self, total: i32) -> Result<&'static str> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let grow = NewPartitions::new(&self.topic, usize::try_from(total)?);
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(10)));
        let how = match admin.create_partitions([&grow], &options).await {
            Ok(results) if results.iter().all(Result::is_ok) => "CreatePartitions",
            refused => {
                println!("the broker refused CreatePartitions ({refused:?}); growing its store");
                let var = |name: &str| {
                    std::env::var(name)
                        .with_context(|| format!("{name}: run through scripts/test.sh"))
                };
                stack_lib(
                    &var("E2E_STACK_LIB")?,
                    &format!(
                        "grow_tansu_topic {} {} {total}",
                        var("E2E_BROKER_NAME")?,
                        self.topic
                    ),
                )?;
                "tansu's store"
            }
        };
        // The producer knows the topic's partitions from its last metadata: a new one replaces
        // it once the broker lists them all.
        wait_until(
            Duration::from_secs(30),
            "the broker to list the new partitions",
            || async { partition_count(&self.brokers, &self.topic).is_ok_and(|n| n == total) },
        )
        .await?;
        self.producer = producer(&self.brokers)?;
        self.partitions = total;
        Ok(how)
    }

    /// This scenario's profile changelog topic.
    pub fn cdc_topic(&self) -> String {
        format!("profiles_{}", self.name)
    }

    /// This scenario's replication slot (slot names are unique per Postgres cluster).
    pub fn cdc_slot(&self) -> String {
        format!("cdc_{}", self.name)
    }

    /// Drops this scenario's replication slot, which would otherwise keep WAL forever. The
    /// publisher must be stopped.
    pub async fn drop_cdc_slot(&self) -> Result<()> {
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(self.cdc_slot())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Starts `binary args...` with this platform's environment; output goes to a log file
    /// beside the lake.
    pub fn spawn(&self, binary: &str, args: &[&str]) -> Result<Service> {
        self.spawn_as(&format!("{binary}-{}", args.join("-")), binary, args)
    }

    /// Like `spawn`, logging to `<label>.log`, for several instances of one service.
    pub fn spawn_as(&self, label: &str, binary: &str, args: &[&str]) -> Result<Service> {
        let log_path = self.lake_dir.with_file_name(format!("{label}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        // A restarted instance appends to its predecessor's log; its own part starts here.
        let log_start = log.metadata()?.len();
        let child = Command::new(bin_path(binary)?)
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(Service {
            child,
            log_path,
            log_start,
        })
    }

    /// `binary args...` with this platform's environment, for a scenario that runs a command
    /// while it does something else.
    pub fn command(&self, binary: &str, args: &[&str]) -> Result<Command> {
        let mut command = Command::new(bin_path(binary)?);
        command.args(args).envs(self.env()).kill_on_drop(true);
        Ok(command)
    }

    /// Runs `binary args...` to completion and returns whether it succeeded, and its output.
    pub async fn run(&self, binary: &str, args: &[&str]) -> Result<(bool, String)> {
        let output = self.command(binary, args)?.output().await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), text))
    }

    /// `batch-layer run --cutover <cutover>`, which must succeed: its output.
    pub async fn run_batch(&self, cutover: shared_schema::time::Millis) -> Result<String> {
        let cutover = shared_schema::time::format_rfc3339(cutover);
        let (ok, output) = self
            .run("batch-layer", &["run", "--cutover", &cutover])
            .await?;
        anyhow::ensure!(ok, "batch-layer run failed:\n{output}");
        Ok(output)
    }

    pub async fn send(&self, partition: i32, payload: &[u8]) -> Result<i64> {
        send(&self.producer, &self.topic, partition, b"", payload).await
    }

    /// Sends `payload` and raises `ends[partition]` to the offset after it, for
    /// [`Platform::wait_caught_up`].
    pub async fn send_tracked(
        &self,
        partition: i32,
        payload: &serde_json::Value,
        ends: &mut HashMap<i32, i64>,
    ) -> Result<()> {
        let offset = self.send(partition, payload.to_string().as_bytes()).await?;
        let end = ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
        Ok(())
    }

    pub async fn get(&self, path_and_query: &str) -> Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .get(format!("http://{}{}", self.listen_addr, path_and_query))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    /// The sum of the speed layer's committed next offsets over this scenario's partitions.
    pub async fn speed_offset_sum(&self) -> Result<i64> {
        Ok(sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum(next_offset)::bigint FROM speed_offsets WHERE topic = $1",
        )
        .bind(&self.topic)
        .fetch_one(&self.pool)
        .await?
        .unwrap_or(0))
    }

    /// How often the serving layer's `cache` (snapshot, body or answer) was hit, from /metrics.
    pub async fn cache_hits(&self, cache: &str) -> Result<f64> {
        self.cache_lookups(cache, "hit").await
    }

    /// How many lookups in the serving layer's `cache` had `outcome` (`hit`, or `miss`: the
    /// request computed the value), from /metrics; 0 before the first.
    pub async fn cache_lookups(&self, cache: &str, outcome: &str) -> Result<f64> {
        let text = self.scrape(&self.listen_addr).await?;
        let series = format!(
            "lambda_serving_cache_lookups_total{{cache=\"{cache}\",outcome=\"{outcome}\"}}"
        );
        Ok(series_value(&text, &series)?.unwrap_or(0.0))
    }

    /// What the `/metrics` listener at `addr` (host:port) answers.
    pub async fn scrape(&self, addr: &str) -> Result<String> {
        Ok(self
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The view version served and its cutover T, which a scenario expects to exist.
    pub async fn served(&self) -> Result<(String, i64)> {
        let (version, cutover): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
            sqlx::query_as("SELECT version, cutover FROM serving_state")
                .fetch_one(&self.pool)
                .await?;
        Ok((
            version.context("a version is served")?,
            cutover.context("a cutover is served")?.timestamp_millis(),
        ))
    }

    /// The view version served and where its view is (`batch_versions.view_path`, relative to
    /// the lake).
    pub async fn served_view_path(&self) -> Result<(String, String)> {
        let (version, _) = self.served().await?;
        let path: String =
            sqlx::query_scalar("SELECT view_path FROM batch_versions WHERE version = $1")
                .bind(&version)
                .fetch_one(&self.pool)
                .await?;
        Ok((version, path))
    }

    /// Waits until the CDC publisher has its slot and has published the table as it was then,
    /// so that every later write reaches the layers as exactly one change.
    pub async fn wait_cdc_publisher_ready(&self) -> Result<()> {
        wait_until(
            Duration::from_secs(60),
            "the publisher's snapshot",
            || async {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cdc_snapshots WHERE slot = $1")
                    .bind(self.cdc_slot())
                    .fetch_one(&self.pool)
                    .await
                    .is_ok_and(|n| n == 1)
            },
        )
        .await
        .with_context(|| self.log_tails(30))
    }

    pub async fn wait_for_http(&self) -> Result<()> {
        wait_until(
            Duration::from_secs(60),
            "the serving layer to answer /readyz",
            || async { matches!(self.get("/readyz").await, Ok((200, _))) },
        )
        .await
    }

    /// Waits until the consumer whose positions are in `table` has read every partition up to
    /// `ends` (the next offset after the last produced message per partition).
    pub async fn wait_caught_up(&self, table: &str, ends: &HashMap<i32, i64>) -> Result<()> {
        self.wait_caught_up_within(table, ends, Duration::from_secs(120))
            .await
    }

    /// Waits until both consumers, the speed layer and the lander, have read up to `ends`.
    pub async fn wait_both_caught_up(&self, ends: &HashMap<i32, i64>) -> Result<()> {
        self.wait_caught_up("speed_offsets", ends).await?;
        self.wait_caught_up("lake_progress", ends).await
    }

    /// [`Platform::wait_caught_up`] with its own time limit.
    pub async fn wait_caught_up_within(
        &self,
        table: &str,
        ends: &HashMap<i32, i64>,
        limit: Duration,
    ) -> Result<()> {
        let query = format!("SELECT partition, next_offset FROM {table} WHERE topic = $1");
        let positions = || async {
            let rows: Vec<(i32, i64)> = sqlx::query_as(&query)
                .bind(&self.topic)
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
            rows.into_iter().collect::<HashMap<i32, i64>>()
        };
        let waited = wait_until(limit, &format!("{table} to reach {ends:?}"), || async {
            let have = positions().await;
            ends.iter()
                .all(|(p, end)| have.get(p).is_some_and(|n| n >= end))
        })
        .await;
        if let Err(timeout) = waited {
            let reached = positions().await;
            return Err(
                timeout.context(format!("reached only {reached:?}\n{}", self.log_tails(40)))
            );
        }
        Ok(())
    }

    /// The last `lines` lines of every service log of this scenario, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let Some(dir) = self.lake_dir.parent() else {
            return String::new();
        };
        let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        logs.iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("--- {} (last {lines} lines)\n{tail}", path.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // Keep the lake and logs of a failed scenario, or of any with E2E_KEEP set, for
        // inspection; clean up the rest.
        if !std::thread::panicking()
            && std::env::var_os("E2E_KEEP").is_none()
            && let Some(dir) = self.lake_dir.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The value of `series` (a family name with its labels as exported, e.g.
/// `lambda_x_total{cause="data"}`) in a `/metrics` text: none when absent, an error when the
/// value does not parse.
pub fn series_value(text: &str, series: &str) -> Result<Option<f64>> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| {
            value
                .trim()
                .parse()
                .with_context(|| format!("{series} {value}"))
        })
        .transpose()
}
