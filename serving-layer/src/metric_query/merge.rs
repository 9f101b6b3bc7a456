//! Both sides of one metric merged and finished, with the split at T: the batch view's rows
//! before it, the speed layer's from it on (`shared_schema::query`).

use super::read::{ReadInputsError, SnapshotSource, read_inputs};
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::view_cache::BatchView;
use shared_schema::metrics::MetricDef;
use shared_schema::query::{BucketRow, Group, MergedPoint, SeriesQuery, finish_points_within};
use shared_schema::sliding::{MergeBudget, MergeError};
use shared_schema::time::Millis;
use std::collections::BTreeMap;
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
    let inputs = read_inputs(
        state,
        metric,
        query.bucket_range(),
        0,
        SnapshotSource::Fresh,
    )
    .await
    .map_err(|source| PointsError::Read {
        metric: metric.name.clone(),
        source,
    })?;
    let view = inputs.view.as_ref();
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

/// The view's rows of `part` with a bucket in `[start, end)`, in bucket order.
pub(crate) fn batch_rows<'a>(
    view: Option<&'a BatchView>,
    part: &'a MetricDef,
    (start, end): (Millis, Millis),
) -> impl Iterator<Item = &'a BucketRow> + Clone + 'a {
    view.into_iter()
        .flat_map(move |view| view.rows(&part.name, start, end))
}

/// Where the batch side's rows end within `range`: T, clamped to it (its start without T).
pub(crate) fn batch_end(cutover: Option<Millis>, range: (Millis, Millis)) -> Millis {
    cutover.map_or(range.0, |t| t.clamp(range.0, range.1))
}

/// Both sides' rows of `parts` under `query`, merged and finished, with the split at T.
pub(crate) fn merge_sides(
    parts: &[&MetricDef],
    snapshot: &Snapshot,
    view: Option<&BatchView>,
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
            (*part, batch.cloned(), speed.cloned())
        })
        .collect();
    finish_points_within(query, snapshot.cutover, inputs, budget)
}
