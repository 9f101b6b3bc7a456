//! The shared test servers `scripts/test.sh` starts, and stopping or starting them.

use anyhow::{Context, Result};

/// The servers a test run uses, from the environment `scripts/test.sh` sets.
pub struct Cluster {
    pub admin_database_url: String,
    pub brokers: String,
}

impl Cluster {
    pub fn from_env() -> Cluster {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the end-to-end tests through scripts/test.sh, which starts Postgres and the broker")
            })
        };
        Cluster {
            admin_database_url: var("E2E_DATABASE_URL"),
            brokers: var("E2E_KAFKA_BROKERS"),
        }
    }
}

/// Stops or starts one of the shared test servers through `scripts/lib.sh`: `command` is
/// `stop_postgres`, `start_postgres`, `stop_tansu` or `start_tansu`. A scenario that calls it
/// must be alone in its test binary, since cargo runs test binaries one at a time.
pub fn stack(command: &str) -> Result<()> {
    let var = |name: &str| {
        std::env::var(name).with_context(|| format!("{name}: run through scripts/test.sh"))
    };
    let lib = var("E2E_STACK_LIB")?;
    let (name, port) = if command.ends_with("postgres") {
        (var("E2E_PG_NAME")?, var("E2E_PG_PORT")?)
    } else {
        (var("E2E_BROKER_NAME")?, var("E2E_KAFKA_PORT")?)
    };
    stack_lib(&lib, &format!("{command} {name} {port}"))
}

/// Runs one command line with `scripts/lib.sh` sourced.
pub(crate) fn stack_lib(lib: &str, command_line: &str) -> Result<()> {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {lib:?} && {command_line}"))
        .status()?;
    anyhow::ensure!(status.success(), "{command_line} failed");
    Ok(())
}
