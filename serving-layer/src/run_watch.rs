//! Finishes the record of a batch run started over HTTP, whatever way the run ends: with its
//! outcome, or failed when it panicked or was cancelled. Without this a panicking run stayed
//! `running` forever and every later `POST /v1/admin/runs` was refused.

use crate::admin::Runs;
use batch_layer::BatchError;
use batch_layer::recompute::RunOutcome;
use std::any::Any;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Waits for run `id`'s task and records how it ended.
pub(crate) async fn watch(runs: Runs, id: u64, run: JoinHandle<Result<RunOutcome, BatchError>>) {
    let outcome = ended(run)
        .instrument(tracing::info_span!("http_batch_run", id))
        .await;
    runs.finish(id, outcome);
}

async fn ended(run: JoinHandle<Result<RunOutcome, BatchError>>) -> Result<(String, i64), String> {
    match run.await {
        Ok(Ok(outcome)) => {
            tracing::info!(version = %outcome.version, "batch run started over HTTP promoted");
            Ok((outcome.version, outcome.cutover))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "batch run started over HTTP failed");
            Err(e.to_string())
        }
        Err(e) if e.is_panic() => {
            let message = panic_message(e.into_panic());
            tracing::error!(panic = %message, "batch run started over HTTP panicked");
            Err(format!("the run panicked: {message}"))
        }
        Err(e) => {
            tracing::error!(error = %e, "batch run started over HTTP was cancelled");
            Err("the run was cancelled".into())
        }
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
    use crate::admin::RunState;

    #[tokio::test]
    async fn a_panicking_run_is_recorded_as_failed_and_does_not_block_the_next() {
        let runs = Runs::default();
        let Ok(first) = runs.start() else {
            panic!("the first run is refused")
        };
        let task = tokio::spawn(async { panic!("boom") });
        watch(runs.clone(), first.id, task).await;
        let status = runs.get(first.id);
        assert_eq!(status.as_ref().map(|s| s.state), Some(RunState::Failed));
        let error = status.and_then(|s| s.error).unwrap_or_default();
        assert!(error.contains("boom"), "{error}");
        assert!(runs.start().is_ok(), "the next run is not refused");
    }

    #[tokio::test]
    async fn a_run_whose_task_ended_without_a_result_does_not_block() {
        let runs = Runs::default();
        let Ok(first) = runs.start() else {
            panic!("the first run is refused")
        };
        // A watcher that ends without finishing the run (aborted, or lost).
        let watcher = tokio::spawn(std::future::pending::<()>());
        runs.track(first.id, watcher.abort_handle());
        assert!(runs.start().is_err(), "a live run blocks the next");
        watcher.abort();
        let _ = watcher.await;
        assert!(runs.start().is_ok(), "an ended run does not block the next");
        assert_eq!(runs.get(first.id).map(|s| s.state), Some(RunState::Failed));
    }

    #[test]
    fn panic_messages_are_read_from_strings_and_strs() {
        assert_eq!(panic_message(Box::new("a")), "a");
        assert_eq!(panic_message(Box::new(String::from("b"))), "b");
        assert_eq!(panic_message(Box::new(3)), "a non-text panic");
    }
}
