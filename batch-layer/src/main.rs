use anyhow::Context;
use batch_layer::cluster;
use batch_layer::definitions::SERVICE;
use batch_layer::incremental::Request;
use batch_layer::land::Lander;
use batch_layer::recompute::{RunOptions, RunProgress, describe, log_progress, run_once};
use batch_layer::requested::run_next;
use batch_layer::schedule::{parse_cron, run_on_schedule};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shared_io::promotion;
use shared_io::service::{self, Started};
use shared_io::telemetry;
use shared_io::{observe, registry};
use shared_schema::config::PlatformConfig;
use shared_schema::time::{format_rfc3339, parse_rfc3339};
use std::io::IsTerminal;

// DataFusion's sorts and merges allocate per row; mimalloc is faster at it than glibc's malloc
// (BENCHMARKS.md, the batch profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "batch-layer",
    version,
    about = "Lands events into the Parquet lake and recomputes the batch views"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the events topic into the lake until SIGTERM.
    Land,
    /// Recompute the metrics, then promote the view and its cutover. By default only the lake
    /// hours that changed since the promoted view are recomputed; the rest of it is reused.
    Run {
        /// Instead: run the batch runs requested over HTTP (`POST /v1/admin/runs`) that wait,
        /// one after another, reporting each one's outcome; for deployments that run the batch
        /// layer from cron rather than `schedule`.
        #[arg(long, conflicts_with_all = ["cutover", "full", "from", "to", "accept_definitions"])]
        requested: bool,
        /// The cutover T (RFC 3339), rounded down to a bucket boundary. Default: the latest
        /// boundary at which the lake is complete.
        #[arg(long, value_parser = parse_time)]
        cutover: Option<i64>,
        /// Recompute every hour of the lake.
        #[arg(long)]
        full: bool,
        /// Backfill: also recompute the hours from this time (RFC 3339)...
        #[arg(long, value_parser = parse_time, requires = "to")]
        from: Option<i64>,
        /// ...up to this one, even if their files did not change.
        #[arg(long, value_parser = parse_time, requires = "from")]
        to: Option<i64>,
        /// Roll out changed metric definitions: recompute and promote with them even though
        /// the promoted view was computed with others. Without it such a run is refused.
        #[arg(long)]
        accept_definitions: bool,
    },
    /// List the view versions, newest first: id, cutover, when computed and last promoted,
    /// rows, definitions fingerprint, and which is served and which `rollback` would serve.
    Versions,
    /// Serve an existing view version, and its cutover.
    Promote {
        #[arg(long)]
        version: String,
    },
    /// Undo the latest promotion, serving the previous version and its cutover again.
    Rollback,
    /// Run the recomputation on a cron schedule, and every run requested over HTTP
    /// (`POST /v1/admin/runs`), until SIGTERM.
    Schedule {
        /// A crontab(5) expression, e.g. "*/5 * * * *", "0 2 * * mon-fri" or "@daily" (Sunday
        /// is 0 or 7), read in `batch.cron_timezone` (default UTC); a sixth field in front
        /// gives seconds ("*/20 * * * * *"). Without it, only requested runs.
        #[arg(long)]
        cron: Option<String>,
    },
    /// A Ballista scheduler for `BATCH_ENGINE=ballista://host:port`, knowing the platform's
    /// functions. Needs no database. Runs until SIGTERM.
    BallistaScheduler {
        /// The address it listens on (gRPC).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
        /// The name others reach it by; default: the bound address.
        #[arg(long)]
        external_host: Option<String>,
    },
    /// A Ballista executor serving that scheduler, knowing the platform's functions. It reads
    /// the lake at the paths the batch run sees. Needs no database. Runs until SIGTERM.
    BallistaExecutor {
        /// The scheduler's `host:port`.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The name the batch run and other executors reach it by; default: `--bind-host`.
        #[arg(long)]
        external_host: Option<String>,
        /// Arrow Flight port: results and shuffle data are fetched from it.
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks run at once; default: the number of cores.
        #[arg(long)]
        vcores: Option<usize>,
        /// Where shuffle files go; default: a temporary directory.
        #[arg(long)]
        work_dir: Option<String>,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    parse_rfc3339(text).ok_or_else(|| format!("`{text}` is not RFC 3339 with an offset"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    batch_layer::allocator::keep_freed_memory();
    let cli = Cli::parse();
    if let Some(result) = run_cluster_process(&cli.command).await {
        return result;
    }
    let Started {
        config,
        catalog,
        pool,
    } = service::start().await.context("starting the batch layer")?;
    match cli.command {
        Command::Land => {
            observe::serve(&config.lander.metrics_addr)
                .await
                .context("starting the lander")?;
            tokio::spawn(shared_io::quarantine::keep_bounded(
                pool.clone(),
                config.quarantine.clone(),
            ));
            Lander::new(pool, config)
                .run(telemetry::shutdown_signal())
                .await?
        }
        Command::Run {
            requested: true, ..
        } => {
            registry::register_service(&pool, SERVICE, &catalog, false)
                .await
                .context("starting the requested batch runs")?;
            let mut failed = 0;
            while let Some(run) = run_next(&pool, &config, &catalog).await? {
                match run.result {
                    Ok(outcome) => println!("run {}: {}", run.id, describe(&outcome)),
                    Err(e) => {
                        failed += 1;
                        println!("run {} failed: {e}", run.id);
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{failed} requested batch run(s) failed");
        }
        Command::Run {
            requested: false,
            cutover,
            full,
            from,
            to,
            accept_definitions,
        } => {
            registry::register_service(&pool, SERVICE, &catalog, accept_definitions)
                .await
                .context("starting the batch run")?;
            let options = RunOptions {
                cutover,
                request: Request {
                    full,
                    backfill: from.zip(to),
                },
                accept_definitions,
            };
            let outcome = match std::io::stderr().is_terminal() {
                true => {
                    let bar = progress_bar();
                    let draw = |p: RunProgress| {
                        bar.set_length(p.total);
                        bar.set_position(p.done);
                    };
                    let outcome = run_once(&pool, &config, &catalog, &options, &draw).await;
                    bar.finish_and_clear();
                    outcome?
                }
                false => run_once(&pool, &config, &catalog, &options, &log_progress).await?,
            };
            println!("{}", describe(&outcome));
        }
        Command::Promote { version } => {
            let served = promotion::pin(config.database_url()?, &config.lake_dir, &version).await?;
            println!(
                "serving version {} with cutover {}",
                served.version,
                format_rfc3339(served.cutover)
            );
        }
        Command::Versions => {
            let versions = shared_io::versions::list(&pool).await?;
            println!(
                "{:<30} {:<24} {:<24} {:>10} {:<16} state",
                "version", "cutover", "created", "rows", "definitions"
            );
            for v in &versions {
                let state = match (v.served, v.rollback_target) {
                    (true, _) => "served",
                    (false, true) => "rollback target",
                    _ => "",
                };
                println!(
                    "{:<30} {:<24} {:<24} {:>10} {:<16} {state}",
                    v.version,
                    format_rfc3339(v.cutover.timestamp_millis()),
                    format_rfc3339(v.created_at.timestamp_millis()),
                    v.rows,
                    v.definitions_fingerprint
                        .as_deref()
                        .map_or("-", |f| f.get(..16).unwrap_or(f)),
                );
            }
        }
        Command::Rollback => {
            let served = promotion::rollback(config.database_url()?, &config.lake_dir).await?;
            println!(
                "rolled back: serving version {} with cutover {}",
                served.version,
                format_rfc3339(served.cutover)
            );
        }
        Command::Schedule { cron } => {
            let schedule = cron.map(|cron| parse_cron(&cron, &config)).transpose()?;
            registry::register_service(&pool, "batch-layer schedule", &catalog, false)
                .await
                .context("starting the batch schedule")?;
            observe::serve(&config.batch.metrics_addr)
                .await
                .context("starting the batch schedule")?;
            run_on_schedule(
                &pool,
                &config,
                &catalog,
                schedule.as_ref(),
                telemetry::shutdown_signal(),
            )
            .await?;
        }
        Command::BallistaScheduler { .. } | Command::BallistaExecutor { .. } => {}
    }
    Ok(())
}

/// Recomputed hours out of the run's total, on a terminal.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} hours ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The Ballista processes, which need the configuration but no database; `None` for the other
/// commands.
async fn run_cluster_process(command: &Command) -> Option<anyhow::Result<()>> {
    let config = || -> anyhow::Result<PlatformConfig> {
        let config = PlatformConfig::load().context("loading the configuration")?;
        telemetry::init_tracing(config.log_format);
        Ok(config)
    };
    let result = match command {
        Command::BallistaScheduler {
            bind,
            external_host,
        } => {
            let run = async {
                let config = config()?;
                cluster::run_scheduler(
                    config,
                    *bind,
                    external_host.clone(),
                    telemetry::shutdown_signal(),
                )
                .await
                .context("running the Ballista scheduler")
            };
            run.await
        }
        Command::BallistaExecutor {
            scheduler,
            bind_host,
            external_host,
            flight_port,
            grpc_port,
            vcores,
            work_dir,
        } => {
            let run = async {
                let config = config()?;
                let (host, port) = scheduler
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)))
                    .with_context(|| format!("--scheduler `{scheduler}` is not host:port"))?;
                let options = cluster::ExecutorOptions {
                    scheduler_host: host,
                    scheduler_port: port,
                    bind_host: bind_host.clone(),
                    external_host: external_host.clone(),
                    flight_port: *flight_port,
                    grpc_port: *grpc_port,
                    vcores: *vcores,
                    work_dir: work_dir.clone(),
                };
                cluster::run_executor(config, options, telemetry::shutdown_signal())
                    .await
                    .context("running the Ballista executor")
            };
            run.await
        }
        _ => return None,
    };
    Some(result)
}
