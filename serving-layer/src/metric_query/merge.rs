//! Both sides of one metric merged and finished, with the split at T: the batch view's rows
//! before it, the speed layer's from it on (`shared_schema::query`).

use super::read::{ReadInputsError, SnapshotSource, read_inputs};
use crate::snapshot::Snapshot;
use crate::state::AppState;
use shared_schema::metrics::MetricDef;
use shared_schema::query::rows_in;
use shared_schema::query::{BucketRow, Group, MergedPoint, SeriesQuery, finish_points_within};
use shared_schema::sliding::{MergeBudget, MergeError};
use shared_schema::time::Millis;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Finished points by group and time.
pub type Points = BTreeMap<(Group, Millis), MergedPoint>;

#[derive(Debug, thiserror::Error)]
pub enum PointsError {
    #[error("reading `{metric}`: {source}")]
    Read {
        metric: String,
        source: ReadInputsError,
    },
    #[error("merging `{metric}`: {source}")]
    Merge { metric: String, source: MergeError },
}

/// The finished points of `metric` under `query`, read from one fresh snapshot, and the
/// snapshot.
pub async fn merged_points(
    state: &AppState,
    metric: &MetricDef,
    query: &SeriesQuery,
) -> Result<(Arc<Snapshot>, Points), PointsError> {
    let inputs = read_inputs(state, metric, query.bucket_range(), SnapshotSource::Fresh)
        .await
        .map_err(|source| PointsError::Read {
            metric: metric.name.clone(),
            source,
        })?;
    let view = inputs.view.as_deref();
    let points = merge_sides(
        &inputs.parts,
        &inputs.snapshot,
        view,
        query,
        &MergeBudget::default(),
    )
    .map_err(|source| PointsError::Merge {
        metric: metric.name.clone(),
        source,
    })?;
    Ok((inputs.snapshot, points))
}

/// The view's rows of `part` with a bucket in `[start, end)`.
pub(crate) fn batch_rows<'a>(
    view: Option<&'a HashMap<String, Vec<BucketRow>>>,
    part: &MetricDef,
    (start, end): (Millis, Millis),
) -> &'a [BucketRow] {
    view.and_then(|view| view.get(&part.name))
        .map(|rows| rows_in(rows, start, end))
        .unwrap_or_default()
}

/// Where the batch side's rows end within `range`: T, clamped to it (its start without T).
pub(crate) fn batch_end(cutover: Option<Millis>, range: (Millis, Millis)) -> Millis {
    cutover.map_or(range.0, |t| t.clamp(range.0, range.1))
}

/// Both sides' rows of `parts` under `query`, merged and finished, with the split at T.
pub(crate) fn merge_sides(
    parts: &[&MetricDef],
    snapshot: &Snapshot,
    view: Option<&HashMap<String, Vec<BucketRow>>>,
    query: &SeriesQuery,
    budget: &MergeBudget,
) -> Result<Points, MergeError> {
    let range = query.bucket_range();
    let batch_end = batch_end(snapshot.cutover, range);
    let inputs = parts
        .iter()
        .map(|part| {
            let speed = snapshot.speed_rows.get(&part.name).into_iter().flatten();
            let batch = batch_rows(view, part, (range.0, batch_end));
            (*part, batch.iter().cloned(), speed.cloned())
        })
        .collect();
    finish_points_within(query, snapshot.cutover, inputs, budget)
}
