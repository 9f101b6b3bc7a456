//! `bench`: the platform's benchmarks, each figure a ratio against a baseline measured beside it
//! in the same run. `scripts/bench.sh` starts the servers, builds in release mode and runs this.

mod batch;
mod ceiling;
mod freshness;
mod history;
mod load;
mod memory;
mod pg_write;
mod recovery;
mod report;
mod scaling;
mod serving;
mod throughput;

use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;

// DataFusion's sorts and merges allocate per row; mimalloc is faster at it than glibc's malloc
// (BENCHMARKS.md, the batch profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "bench", about = "Benchmarks against baselines run beside them")]
struct Args {
    /// Run only these benchmarks: throughput, ceiling, recovery, freshness, batch, memory,
    /// pg-write, serving, history, scaling.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Events preloaded for the throughput figure.
    #[arg(long, default_value_t = 1_000_000)]
    throughput_events: u64,
    /// Events decoded and folded from memory for the ceiling figure.
    #[arg(long, default_value_t = 1_000_000)]
    ceiling_events: u64,
    /// Events (distinct ids in the dedupe horizon) before the SIGKILL of the recovery figure.
    #[arg(long, default_value_t = 1_000_000)]
    recovery_events: u64,
    /// Events preloaded for the 1-against-2-instances figure, and its alternating rounds.
    #[arg(long, default_value_t = 300_000)]
    scaling_events: u64,
    #[arg(long, default_value_t = 2)]
    scaling_rounds: usize,
    /// Steady produce rate (events/s) and duration (s) of the freshness figure.
    #[arg(long, default_value_t = 20_000.0)]
    freshness_rate: f64,
    #[arg(long, default_value_t = 30)]
    freshness_seconds: u64,
    /// Events in the lake for the batch-against-DuckDB figure.
    #[arg(long, default_value_t = 20_000_000)]
    batch_events: u64,
    /// The Python that has DuckDB installed.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Events after which the speed layer's memory is sampled; T moves after the middle one.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000000,5000000,7500000,10000000"
    )]
    memory_checkpoints: Vec<u64>,
    /// Rows per upsert statement, and statements, of the write-path figure.
    #[arg(long, default_value_t = 20_000)]
    pg_rows: usize,
    #[arg(long, default_value_t = 20)]
    pg_batches: usize,
    /// Events (over 25 hours) behind the query-speed figure, and wrk's paced rate and duration.
    #[arg(long, default_value_t = 500_000)]
    serving_events: u64,
    #[arg(long, default_value_t = 2_000.0)]
    serving_rate: f64,
    #[arg(long, default_value_t = 15)]
    serving_seconds: u64,
    /// Internal: the batch figure's recompute alone in a fresh process, over this lake.
    #[arg(long, hide = true, requires = "batch_end")]
    batch_recompute: Option<PathBuf>,
    #[arg(long, hide = true)]
    batch_end: Option<i64>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench/results/latest.json")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let (Some(lake), Some(end)) = (&args.batch_recompute, args.batch_end) {
        // The timed recompute, with the batch layer's allocator settings. Only here: the parent,
        // keeping the generator's freed memory too, left the child and DuckDB short of free
        // pages (ours 17-19 s beside it, 11.5 s alone).
        batch_layer::allocator::keep_freed_memory();
        // RUST_LOG=batch_layer=debug prints the recompute's phases on stderr.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
        return batch::recompute_in_this_process(lake, end).await;
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut figures = Vec::new();
    // One benchmark failing leaves the others' figures standing.
    let mut keep = |name: &str, result: Result<Vec<report::Figure>>| match result {
        Ok(more) => figures.extend(more),
        Err(e) => eprintln!("{name} failed: {e:#}"),
    };
    if wanted("pg-write") {
        keep(
            "pg-write",
            pg_write::run(args.pg_rows, args.pg_batches).await,
        );
    }
    if wanted("throughput") {
        keep("throughput", throughput::run(args.throughput_events).await);
    }
    if wanted("ceiling") {
        keep("ceiling", ceiling::run(args.ceiling_events));
    }
    if wanted("recovery") {
        keep("recovery", recovery::run(args.recovery_events).await);
    }
    if wanted("scaling") {
        keep(
            "scaling",
            scaling::run(args.scaling_events, args.scaling_rounds).await,
        );
    }
    if wanted("freshness") {
        keep(
            "freshness",
            freshness::run(args.freshness_rate, args.freshness_seconds).await,
        );
    }
    if wanted("batch") {
        keep("batch", batch::run(args.batch_events, &args.python).await);
    }
    if wanted("memory") {
        keep("memory", memory::run(&args.memory_checkpoints).await);
    }
    if wanted("serving") {
        keep(
            "serving",
            serving::run(args.serving_events, args.serving_rate, args.serving_seconds).await,
        );
    }
    if wanted("history") {
        keep("history", history::run().await);
    }
    report::print_table(&figures);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let machine = serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "when": chrono::Utc::now().to_rfc3339(),
    });
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&serde_json::json!({"machine": machine, "figures": figures}))?,
    )?;
    println!("written to {}", args.out.display());
    Ok(())
}
