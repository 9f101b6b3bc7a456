use anyhow::Context;
use clap::{Parser, Subcommand};
use shared_schema::kafka::ReplayStart;
use shared_schema::service::{self, Started};
use shared_schema::telemetry;
use shared_schema::{observe, registry};
use speed_layer::{SERVICE, SpeedLayer, liveness, replay};

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
    /// Rebuild the speed state from the bus into new tables, then swap them in atomically.
    Replay {
        /// Where to start every partition: `earliest`, an offset, or an RFC 3339 time (the
        /// first message produced at or after it).
        #[arg(long)]
        from: ReplayStart,
        /// Events per second at most, so that a replay cannot flood Postgres.
        #[arg(long)]
        max_rate: Option<f64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    let Started {
        config,
        catalog,
        pool,
    } = service::start().await.context("starting the speed layer")?;
    // Refuses to start with definitions the promoted view was not computed with.
    registry::register_service(&pool, SERVICE, &catalog, false)
        .await
        .context("starting the speed layer")?;
    match command {
        Command::Run => {
            let addr = config.speed.metrics_addr.clone();
            let layer = SpeedLayer::new(pool, config, catalog);
            observe::serve_with_readiness(
                &addr,
                Some(liveness::readiness_check(layer.readiness())),
            )
            .await
            .context("starting the speed layer")?;
            layer.run(telemetry::shutdown_signal()).await?
        }
        Command::Replay { from, max_rate } => {
            let outcome = replay::replay(
                pool,
                config,
                catalog,
                from,
                max_rate,
                telemetry::shutdown_signal(),
            )
            .await?;
            if !outcome.swapped {
                anyhow::bail!(
                    "stopped after replaying {} events; nothing was swapped in",
                    outcome.events
                );
            }
            println!(
                "replayed {} events in {:.1}s ({:.0}/s) and swapped them in",
                outcome.events,
                outcome.seconds,
                outcome.events as f64 / outcome.seconds.max(1e-9)
            );
        }
    }
    Ok(())
}
