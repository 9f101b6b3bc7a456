use anyhow::Context;
use cdc_publisher::Publisher;
use clap::{Parser, Subcommand};
use shared_io::service::{self, Started};
use shared_io::{observe, telemetry};

#[derive(Parser)]
#[command(
    name = "cdc-publisher",
    version,
    about = "Publishes the changes of user_profiles, read by logical decoding, to the changelog topic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish changes until SIGTERM, resuming from the slot's confirmed LSN.
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run = Cli::parse().command;
    let Started { config, pool, .. } = service::start()
        .await
        .context("starting the CDC publisher")?;
    observe::serve(&config.cdc.metrics_addr)
        .await
        .context("serving the CDC publisher's metrics")?;
    Publisher::new(pool, config)
        .await
        .context("starting the CDC publisher")?
        .run(telemetry::shutdown_signal())
        .await?;
    Ok(())
}
