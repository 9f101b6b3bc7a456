//! `batch-layer ballista-scheduler` and `batch-layer ballista-executor`: a Ballista scheduler
//! and executor built from the Ballista library crates with the platform's functions
//! registered (`engine::register_functions`), because Ballista's own binaries do not know
//! `hll_sketch`: the scheduler could not decode a plan that calls it, nor an executor run one.
//! They need no database; they read the lake by the paths in the plans, so they see `LAKE_DIR`
//! where the batch run sees it (the same filesystem for a local lake).

use crate::BatchError;
use crate::engine::{cluster_session_state, memory_limit_bytes, runtime_env};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::prelude::SessionConfig;
use shared_schema::config::PlatformConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Runs a scheduler on `bind` until `shutdown` completes.
pub async fn run_scheduler(
    config: PlatformConfig,
    bind: SocketAddr,
    external_host: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BatchError> {
    let session_config = config.clone();
    let scheduler = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: external_host.unwrap_or_else(|| bind.ip().to_string()),
        ..SchedulerConfig::default()
    }
    .with_override_session_builder(Arc::new(move |session: SessionConfig| {
        cluster_session_state(&session_config, session)
    }));
    let failed = |source| BatchError::RunScheduler { bind, source };
    let cluster = BallistaCluster::new_from_config(&scheduler)
        .await
        .map_err(failed)?;
    tracing::info!(%bind, "Ballista scheduler listening");
    tokio::select! {
        result = start_server(cluster, bind, Arc::new(scheduler)) => result.map_err(failed),
        () = shutdown => Ok(()),
    }
}

/// Where an executor listens and which scheduler it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's `host:port`.
    pub scheduler_host: String,
    pub scheduler_port: u16,
    pub bind_host: String,
    /// The name the batch run and the other executors reach it by; absent: `bind_host`.
    pub external_host: Option<String>,
    /// Arrow Flight (results and shuffle data) and gRPC ports.
    pub flight_port: u16,
    pub grpc_port: u16,
    /// Tasks it runs at once; absent: the number of cores.
    pub vcores: Option<usize>,
    /// Shuffle files; absent: a temporary directory.
    pub work_dir: Option<String>,
}

/// Runs an executor until `shutdown` completes (or SIGINT, which Ballista handles itself).
pub async fn run_executor(
    config: PlatformConfig,
    options: ExecutorOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BatchError> {
    let functions = cluster_session_state(&config, SessionConfig::new())
        .map_err(|source| BatchError::BuildSession { source })?;
    let runtime_config = config.clone();
    let defaults = ExecutorProcessConfig::default();
    let executor = ExecutorProcessConfig {
        bind_host: options.bind_host,
        external_host: options.external_host,
        port: options.flight_port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler_host,
        scheduler_port: options.scheduler_port,
        // The scheduler may start at the same moment (compose, the tests).
        scheduler_connect_timeout_seconds: 30,
        vcores: options.vcores.unwrap_or(defaults.vcores),
        work_dir: options.work_dir,
        // Ballista sizes a pool per task from this; absent, from the machine's memory.
        memory_pool_size: memory_limit_bytes(&config).map(|b| b as u64),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&functions))),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| {
            runtime_env(&runtime_config)
        })),
        ..defaults
    };
    tokio::select! {
        result = start_executor_process(Arc::new(executor)) => {
            result.map_err(|source| BatchError::RunExecutor { source })
        }
        () = shutdown => Ok(()),
    }
}
