use anyhow::Context;
use clap::{Parser, Subcommand};
use shared_schema::{PlatformConfig, db, telemetry};
use speed_layer::SpeedLayer;

#[derive(Parser)]
#[command(
    name = "speed-layer",
    about = "Consumes events and keeps recent per-bucket aggregates in Postgres"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the events topic until SIGTERM.
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let Command::Run = Cli::parse().command;
    let config = PlatformConfig::load()?;
    let catalog = config.metric_catalog()?;
    let pool = db::connect_and_migrate(config.database_url()?, config.database_max_connections)
        .await
        .context("starting the speed layer")?;
    SpeedLayer::new(pool, config, catalog)
        .run(telemetry::shutdown_signal())
        .await?;
    Ok(())
}
