use anyhow::Context;
use clap::{Parser, Subcommand};
use serving_layer::{
    AppState, StateGeneration, alert_delivery, alerts, http_metrics, reader, router,
};
use shared_io::registry;
use shared_io::service::{self, Started};
use shared_io::telemetry;

// Every answer allocates its points and their JSON; glibc's malloc and free were 45% of a
// profile under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "serving-layer",
    version,
    about = "HTTP API over the merged batch and speed views"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API on LISTEN_ADDR until SIGTERM.
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run = Cli::parse().command;
    let Started {
        config,
        catalog,
        pool,
    } = service::start()
        .await
        .context("starting the serving layer")?;
    // Refuses to start with definitions the promoted view was not computed with.
    registry::register_service(&pool, "serving-layer run", &catalog, false)
        .await
        .context("starting the serving layer")?;
    let listener = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    tracing::info!(addr = %config.listen_addr, "serving");
    // Requests read through their own read-only pool; `pool` keeps the service's own writes.
    let reader = reader::connect(&config)
        .await
        .context("connecting the read-only pool for requests")?;
    // Cached query snapshots are dropped on every change Postgres notifies.
    let changes = StateGeneration::listen(reader.clone());
    let state = AppState::new(reader, pool, config, catalog, changes);
    let evaluator = tokio::spawn(alerts::run_evaluator(
        state.clone(),
        telemetry::shutdown_signal(),
    ));
    let deliveries = tokio::spawn(alert_delivery::run_deliveries(
        state.clone(),
        telemetry::shutdown_signal(),
    ));
    axum::serve(listener, http_metrics::instrument(router(state)))
        .with_graceful_shutdown(telemetry::shutdown_signal())
        .await?;
    evaluator.abort();
    deliveries.abort();
    Ok(())
}
