use anyhow::Context;
use clap::{Parser, Subcommand};
use shared_schema::registry;
use shared_schema::service::{self, Started};
use shared_schema::telemetry;
use speed_layer::{SERVICE, SpeedLayer};

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
    let Command::Run = Cli::parse().command;
    let Started {
        config,
        catalog,
        pool,
    } = service::start().await.context("starting the speed layer")?;
    // Refuses to start with definitions the promoted view was not computed with.
    registry::register_service(&pool, SERVICE, &catalog, false)
        .await
        .context("starting the speed layer")?;
    SpeedLayer::new(pool, config, catalog)
        .run(telemetry::shutdown_signal())
        .await?;
    Ok(())
}
