//! Where a batch run's plans execute: in this process with DataFusion (`local`, the default),
//! or on an Apache DataFusion Ballista cluster (`ballista://host:port`, the scheduler's
//! address), chosen by `batch.engine` (`BATCH_ENGINE`). Both run the same logical plans; the
//! rows come back to the run, which writes and promotes the view either way.
//!
//! Every DataFusion session of the platform is built here: the run's own (either engine), and
//! the sessions of our Ballista scheduler and executors (`crate::cluster`). So the platform's
//! functions are registered by one function, and whatever the runtime needs to reach the lake
//! (an object store, say) slots into one function, [`runtime_env`], for all of them.

use crate::BatchError;
use crate::sketch_udaf::hll_sketch;
use ballista::prelude::SessionContextExt;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use shared_io::storage::Lake;
use shared_schema::config::PlatformConfig;
use std::fmt;
use std::sync::Arc;

/// The scheme of `batch.engine` that names a Ballista scheduler.
pub const BALLISTA_SCHEME: &str = "ballista://";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in the batch run's own process.
    Local,
    /// A Ballista scheduler at `host:port`.
    Ballista { scheduler: String },
}

impl Engine {
    pub fn parse(text: &str) -> Result<Engine, BatchError> {
        let text = text.trim();
        if text.is_empty() || text == "local" {
            return Ok(Engine::Local);
        }
        let invalid = |why: &str| BatchError::Engine(format!("`{text}`: {why}"));
        let address = text.strip_prefix(BALLISTA_SCHEME).ok_or_else(|| {
            invalid("expected `local` or `ballista://host:port` (a Ballista scheduler)")
        })?;
        let address = address.trim_end_matches('/');
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Engine::Ballista {
                    scheduler: address.to_string(),
                })
            }
            _ => Err(invalid("the scheduler's address must be `host:port`")),
        }
    }

    pub fn from_config(config: &PlatformConfig) -> Result<Engine, BatchError> {
        Engine::parse(&config.batch.engine)
    }

    /// A context whose plans run on this engine. For Ballista no connection is made yet: an
    /// unreachable scheduler fails the first plan executed.
    pub async fn context(&self, config: &PlatformConfig) -> Result<SessionContext, BatchError> {
        let state = session_state(config)?;
        match self {
            Engine::Local => Ok(SessionContext::new_with_state(state)),
            Engine::Ballista { scheduler } => {
                SessionContext::remote_with_state(&format!("df://{scheduler}"), state)
                    .await
                    .map_err(|source| BatchError::ConnectCluster {
                        scheduler: scheduler.clone(),
                        source,
                    })
            }
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Local => f.write_str("local"),
            Engine::Ballista { scheduler } => write!(f, "{BALLISTA_SCHEME}{scheduler}"),
        }
    }
}

/// The platform's own functions, in any session that plans or executes its plans: the local
/// one, and the Ballista scheduler's and executors', which know only what is registered.
pub fn register_functions(registry: &mut dyn FunctionRegistry) -> DfResult<()> {
    registry.register_udaf(Arc::new(hll_sketch()))?;
    registry.register_udaf(Arc::new(crate::session_udaf::session_starts()))?;
    registry.register_udf(Arc::new(crate::id_hash::id_hash()))?;
    Ok(())
}

/// The runtime of every session: memory capped by `batch.memory_limit_mb`, if set, so sorts
/// and aggregations past it spill to `batch.spill_dir` instead of failing, and the lake's
/// object store. (A Ballista executor
/// replaces the pool with its own, sized from the same limit.)
pub fn runtime_env(config: &PlatformConfig) -> DfResult<Arc<RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = memory_limit_bytes(config) {
        // Fair shares, so one spilling operator cannot starve the others of the whole pool.
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(bytes)));
    }
    if let Some(dir) = &config.batch.spill_dir {
        runtime = runtime.with_temp_file_path(dir);
    }
    let runtime = runtime.build_arc()?;
    // An `s3://` lake's store, so that every session (the run's, the scheduler's and the
    // executors') reads its locations; a local lake needs none.
    let lake = Lake::open(&config.lake_dir).map_err(|e| DataFusionError::External(Box::new(e)))?;
    if let Some((url, store)) = lake.object_store() {
        runtime.register_object_store(ObjectStoreUrl::parse(url)?.as_ref(), store);
    }
    Ok(runtime)
}

pub fn memory_limit_bytes(config: &PlatformConfig) -> Option<usize> {
    config
        .batch
        .memory_limit_mb
        .map(|mb| usize::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX))
}

/// The session a batch run plans in, with the platform's functions.
pub fn session_state(config: &PlatformConfig) -> Result<SessionState, BatchError> {
    let mut session = SessionConfig::new();
    if let Some(bytes) = memory_limit_bytes(config) {
        // The merge phase of a spilled sort reserves this up front; the 10 MB default is more
        // than a small limit holds.
        session = session.with_sort_spill_reservation_bytes((bytes / 16).min(10 * 1024 * 1024));
    }
    let built = |source| BatchError::BuildSession { source };
    let mut state = SessionStateBuilder::new()
        .with_config(session)
        .with_runtime_env(runtime_env(config).map_err(built)?)
        .with_default_features()
        .build();
    register_functions(&mut state).map_err(built)?;
    Ok(state)
}

/// What a Ballista scheduler or executor builds its sessions with: Ballista's defaults, our
/// runtime and our functions.
pub fn cluster_session_state(
    config: &PlatformConfig,
    session: SessionConfig,
) -> DfResult<SessionState> {
    let defaults = ballista_core::utils::default_session_builder(session)?;
    let mut state = SessionStateBuilder::new_from_existing(defaults)
        .with_runtime_env(runtime_env(config)?)
        .build();
    register_functions(&mut state)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_engine() {
        assert_eq!(Engine::parse("local").unwrap(), Engine::Local);
        assert_eq!(Engine::parse("").unwrap(), Engine::Local);
        assert_eq!(
            Engine::parse("ballista://scheduler:50050").unwrap(),
            Engine::Ballista {
                scheduler: "scheduler:50050".into()
            }
        );
        assert_eq!(
            Engine::parse("ballista://127.0.0.1:50100/")
                .unwrap()
                .to_string(),
            "ballista://127.0.0.1:50100"
        );
        for bad in [
            "ballista",
            "ballista://",
            "ballista://host",
            "ballista://:50050",
            "ballista://host:port",
            "df://host:50050",
            "spark://host:7077",
        ] {
            let err = Engine::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad.trim_end_matches('/')), "{bad}: {err}");
        }
    }

    #[test]
    fn every_session_knows_the_platform_functions() {
        let config = PlatformConfig::default();
        let local = session_state(&config).unwrap();
        let cluster = cluster_session_state(&config, SessionConfig::new()).unwrap();
        for state in [&local, &cluster] {
            for name in [crate::sketch_udaf::NAME, crate::session_udaf::NAME] {
                assert!(state.aggregate_functions().contains_key(name), "{name}");
            }
        }
        // Ballista's own functions stay: our registration adds, never replaces.
        assert!(cluster.aggregate_functions().contains_key("sum"));
    }
}
