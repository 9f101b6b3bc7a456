//! Running the batch runs requested over HTTP (`shared_io::run_requests`): `batch-layer
//! schedule` polls for them between its cron ticks, `batch-layer run --requested` runs the
//! waiting ones once. Each is claimed, run as a task of its own (so a panic fails that run
//! only, and is reported as its failure), and its outcome written back for
//! `GET /v1/admin/runs/{id}`.

use crate::BatchError;
use crate::recompute::{RunOptions, RunOutcome, log_progress, run_once};
use shared_io::run_requests;
use shared_schema::catalog::MetricCatalog;
use shared_schema::config::PlatformConfig;
use sqlx::PgPool;
use std::any::Any;
use tracing::Instrument;

/// A requested run that ended, and how.
pub struct RequestedRun {
    pub id: i64,
    pub result: Result<RunOutcome, BatchError>,
}

/// Claims the oldest waiting request and runs it; `None` when none waits. A request whose
/// runner died is marked failed first.
pub async fn run_next(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
) -> Result<Option<RequestedRun>, BatchError> {
    run_requests::reap_abandoned(pool).await?;
    if !run_requests::pending(pool).await? {
        return Ok(None);
    }
    let Some(claimed) = run_requests::claim(config.database_url()?).await? else {
        return Ok(None);
    };
    let id = claimed.id;
    let options = RunOptions {
        cutover: claimed.cutover,
        ..RunOptions::default()
    };
    let result = async {
        tracing::info!("running a batch run requested over HTTP");
        run_isolated(pool, config, catalog, options).await
    }
    .instrument(tracing::info_span!("requested_run", id))
    .await;
    let outcome = match &result {
        Ok(outcome) => Ok((outcome.version.clone(), outcome.cutover)),
        Err(e) => Err(e.to_string()),
    };
    claimed.finish(pool, outcome).await?;
    Ok(Some(RequestedRun { id, result }))
}

/// One run as a task of its own: a panic in it ends that task only, and is the run's error.
pub async fn run_isolated(
    pool: &PgPool,
    config: &PlatformConfig,
    catalog: &MetricCatalog,
    options: RunOptions,
) -> Result<RunOutcome, BatchError> {
    let (pool, config, catalog) = (pool.clone(), config.clone(), catalog.clone());
    let task =
        tokio::spawn(
            async move { run_once(&pool, &config, &catalog, &options, &log_progress).await },
        );
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(BatchError::Panicked(panic_message(e.into_panic()))),
        Err(e) => Err(BatchError::RunCancelled(e)),
    }
}

/// The text a panic carried, when it was a string.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_string(),
            Err(_) => "a non-text panic".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_read_from_strings_and_strs() {
        assert_eq!(panic_message(Box::new("a")), "a");
        assert_eq!(panic_message(Box::new(String::from("b"))), "b");
        assert_eq!(panic_message(Box::new(3)), "a non-text panic");
    }

    #[tokio::test]
    async fn a_panicking_run_is_its_error_not_the_callers_panic() {
        // What `run_isolated` does with a task that panicked.
        let task = tokio::spawn(async { panic!("boom") });
        let Err(e) = task.await;
        let message = panic_message(e.into_panic());
        assert_eq!(
            BatchError::Panicked(message).to_string(),
            "the run panicked: boom"
        );
    }
}
