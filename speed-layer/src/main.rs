use anyhow::Context;
use clap::{Parser, Subcommand};
use shared_io::service::{self, Started};
use shared_io::telemetry;
use shared_io::{observe, quarantine, registry};
use speed_layer::replay_start::ReplayStart;
use speed_layer::{SERVICE, SpeedLayer, liveness, quarantine_admin, replay};

#[derive(Parser)]
#[command(
    name = "speed-layer",
    version,
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
    /// What the quarantine keeps (bad input, CONTRACT §1), and re-injecting it once fixed.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// Prints the kept messages, oldest first, one JSON object a line.
    List {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Also the messages replayed before.
        #[arg(long)]
        include_replayed: bool,
        /// Payload bytes shown per message.
        #[arg(long, default_value_t = 256)]
        preview_bytes: usize,
    },
    /// Produces again, to the events topic, each selected message the decoder accepts now, and
    /// marks it replayed; the others stay, with their reason.
    Replay {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Only say what would be produced.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct SelectionArgs {
    /// Only this topic (default: every topic for `list`; `replay` takes the events topic).
    #[arg(long)]
    topic: Option<String>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Only messages whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// At most this many messages.
    #[arg(long, default_value_t = 1000)]
    limit: i64,
}

impl SelectionArgs {
    fn selection(self, include_replayed: bool) -> quarantine::Selection {
        quarantine::Selection {
            topic: self.topic,
            partition: self.partition,
            reason: self.reason,
            include_replayed,
            limit: self.limit,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    let Started {
        config,
        catalog,
        pool,
    } = service::start().await.context("starting the speed layer")?;
    // Refuses to consume with definitions the promoted view was not computed with; the
    // quarantine commands fold nothing and need no check.
    if !matches!(command, Command::Quarantine { .. }) {
        registry::register_service(&pool, SERVICE, &catalog, false)
            .await
            .context("starting the speed layer")?;
    }
    match command {
        Command::Quarantine { action } => quarantine_command(&pool, &config, action).await?,
        Command::Run => {
            tokio::spawn(quarantine::keep_bounded(
                pool.clone(),
                config.quarantine.clone(),
            ));
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

async fn quarantine_command(
    pool: &sqlx::PgPool,
    config: &shared_schema::PlatformConfig,
    action: QuarantineAction,
) -> anyhow::Result<()> {
    match action {
        QuarantineAction::List {
            selection,
            include_replayed,
            preview_bytes,
        } => {
            let kept = quarantine::list(pool, &selection.selection(include_replayed)).await?;
            for message in &kept {
                println!("{}", quarantine_admin::describe(message, preview_bytes));
            }
        }
        QuarantineAction::Replay { selection, dry_run } => {
            let outcome =
                quarantine_admin::replay(pool, config, &selection.selection(false), dry_run)
                    .await?;
            for (from, to) in &outcome.produced {
                println!("replayed {from} -> {to}");
            }
            for (from, reason) in &outcome.still_bad {
                println!("kept {from}: {reason}");
            }
            println!(
                "{} replayed, {} still refused by the decoder",
                outcome.produced.len(),
                outcome.still_bad.len()
            );
        }
    }
    Ok(())
}
