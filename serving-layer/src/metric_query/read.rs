//! The read every answer starts from, written once: the stored metrics a metric is finished
//! from, one snapshot of them over the buckets a query needs, and the batch view it names.

use crate::error::ApiError;
use crate::snapshot::{Snapshot, SnapshotError, read_snapshot, read_snapshot_cached};
use crate::state::AppState;
use crate::view_cache::BatchView;
use shared_schema::metrics::{MetricDef, MetricError};
use shared_schema::time::Millis;
use std::sync::Arc;

/// Whether a snapshot may come from, and go into, the snapshot cache.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SnapshotSource {
    /// Read from Postgres, kept by no one.
    Fresh,
    /// Through `AppState::snapshots`, under this state generation.
    Cached { generation: Option<u64> },
}

/// What an answer of one metric is made of, once read.
pub(crate) struct Inputs<'a> {
    /// The stored metrics it is finished from (see `MetricCatalog::parts`).
    pub parts: Vec<&'a MetricDef>,
    pub snapshot: Arc<Snapshot>,
    /// The promoted view's segments the answer reads, if any version is promoted.
    pub view: Option<BatchView>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadInputsError {
    #[error("finding the stored metrics `{metric}` is made of: {source}")]
    MetricParts { metric: String, source: MetricError },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl From<ReadInputsError> for ApiError {
    fn from(e: ReadInputsError) -> Self {
        match e {
            ReadInputsError::MetricParts { .. } => {
                ApiError::dependency_down("the metric catalogue", &e)
            }
            ReadInputsError::Snapshot(e) => e.into(),
        }
    }
}

/// The stored metrics `metric` is finished from: a ratio is read as its two stored parts,
/// anything else as itself.
pub(crate) fn parts<'a>(
    state: &'a AppState,
    metric: &'a MetricDef,
) -> Result<Vec<&'a MetricDef>, ReadInputsError> {
    state
        .catalog
        .parts(metric)
        .map_err(|source| ReadInputsError::MetricParts {
            metric: metric.name.clone(),
            source,
        })
}

/// Reads `metric`'s inputs over the buckets `range`; of the batch view, also `view_margin`
/// either side of it (the rendered chunks of an answer reach past its range).
pub(crate) async fn read_inputs<'a>(
    state: &'a AppState,
    metric: &'a MetricDef,
    range: (Millis, Millis),
    view_margin: Millis,
    source: SnapshotSource,
) -> Result<Inputs<'a>, ReadInputsError> {
    let parts = parts(state, metric)?;
    let names: Vec<&str> = parts.iter().map(|m| m.name.as_str()).collect();
    let (pool, topic) = (&state.pool, &state.config.events_topic);
    let stall_after = state.config.speed.stall_timeout.millis();
    let snapshot = match source {
        SnapshotSource::Fresh => {
            Arc::new(read_snapshot(pool, topic, &names, range, stall_after).await?)
        }
        SnapshotSource::Cached { generation } => {
            let cache = &state.snapshots;
            read_snapshot_cached(cache, generation, pool, topic, &names, range, stall_after).await?
        }
    };
    let view = match (&snapshot.view_path, snapshot.cutover) {
        (Some(path), Some(t)) => {
            let from = range.0.saturating_sub(view_margin);
            let to = range.1.saturating_add(view_margin).min(t);
            Some(state.views.get(path, (from, to)).await?)
        }
        _ => None,
    };
    Ok(Inputs {
        parts,
        snapshot,
        view,
    })
}
