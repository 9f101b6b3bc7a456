//! The answer's JSON, fast: points whose window ends by T are copied out of rendered chunks of
//! the batch view (`answer_cache`), the rest are merged and rendered per request, and the
//! series are spliced into the serialized `MetricAnswer` head.

use super::answer::SeriesOut;
use super::merge::{Points, batch_end, batch_rows, merge_sides};
use super::params::Request;
use super::read::{Inputs, SnapshotSource, read_inputs};
use crate::answer_cache::{AnswerCache, ChunkKey, RenderedSeries, chunk_span, render};
use crate::error::{ApiError, merge_refused};
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::view_cache::BatchView;
use shared_schema::config::ServingConfig;
use shared_schema::metrics::MetricDef;
use shared_schema::query::{Group, SeriesQuery, check_budget, finish_points_within};
use shared_schema::sliding::{MergeBudget, MergeError};
use shared_schema::time::Millis;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Reads the answer's inputs (through the snapshot cache, under `generation`), checks them
/// against `serving.max_rows`, and renders the answer on the blocking pool.
pub(super) async fn render_answer(
    state: &AppState,
    generation: Option<u64>,
    metric: &MetricDef,
    request: &Request,
    deadline: Instant,
) -> Result<Vec<u8>, ApiError> {
    let range = request.query.bucket_range();
    let Inputs {
        parts,
        snapshot,
        view,
    } = read_inputs(
        state,
        metric,
        range,
        chunk_span(request.query.step, request.query.window),
        SnapshotSource::Cached { generation },
    )
    .await?;
    crate::limits::check_rows(
        &parts,
        &snapshot,
        view.as_ref(),
        range,
        &state.config.serving,
    )?;
    // Merging and rendering is CPU work: it runs on the blocking pool, a core at a time per
    // answer, so the async workers keep answering (`/healthz` among them).
    let _permit = state
        .compute
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("the serving layer is shutting down"))?;
    let (catalog, name, request) = (state.catalog.clone(), metric.name.clone(), request.clone());
    let (answers, limits) = (state.answers.clone(), state.config.clone());
    tokio::task::spawn_blocking(move || {
        let Some((_, metric)) = catalog.get(&name) else {
            return Err(ApiError::internal("the metric left the catalogue"));
        };
        let parts = catalog
            .parts(metric)
            .map_err(|e| ApiError::dependency_down("the metric catalogue", &e))?;
        let answer = AnswerInputs {
            metric,
            parts: &parts,
            request: &request,
            snapshot: &snapshot,
            view: view.as_ref(),
        };
        answer.render(&answers, &limits.serving, Some(deadline))
    })
    .await
    .map_err(|e| ApiError::internal(format!("rendering the answer failed: {e}")))?
}

/// What one answer is made of, once read.
pub(super) struct AnswerInputs<'a> {
    pub metric: &'a MetricDef,
    /// The stored metrics it is finished from (see `MetricCatalog::parts`).
    pub parts: &'a [&'a MetricDef],
    pub request: &'a Request,
    pub snapshot: &'a Snapshot,
    pub view: Option<&'a BatchView>,
}

/// Without `group_by` there is always exactly one series, under this group, even an empty one.
const WHOLE: Group = None;

impl AnswerInputs<'_> {
    pub(super) fn merge(
        &self,
        query: &SeriesQuery,
        budget: &MergeBudget,
    ) -> Result<Points, MergeError> {
        merge_sides(self.parts, self.snapshot, self.view, query, budget)
    }

    /// The answer's JSON. Points whose window ends by T come from rendered chunks of the batch
    /// view (`answer_cache`); the rest are merged and rendered here. Every merge is refused
    /// past `serving.max_groups`, `serving.max_answer_points` or `deadline` before its windows
    /// are computed or rendered.
    pub(super) fn render(
        &self,
        answers: &AnswerCache,
        limits: &ServingConfig,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ApiError> {
        let query = &self.request.query;
        let budget = MergeBudget {
            max_groups: Some(limits.max_groups),
            max_points: Some(limits.max_answer_points),
            deadline,
        };
        let refused = |e| merge_refused(e, limits);
        self.check_budget(&budget).map_err(refused)?;
        // The points whose window ends by T, on the query's grid (points at `from + k * step`).
        let batch_points_end = match self.snapshot.cutover {
            Some(t) if t > query.from && query.from < query.to => query.grid_floor(t).min(query.to),
            _ => query.from,
        };
        let span = chunk_span(query.step, query.window);
        let chunks = self.batch_chunks(answers, batch_points_end, &budget, limits)?;
        let fresh = if batch_points_end < query.to {
            let fresh_query = SeriesQuery {
                from: batch_points_end,
                ..query.clone()
            };
            render(&self.merge(&fresh_query, &budget).map_err(refused)?)
        } else {
            RenderedSeries::new()
        };

        let mut series: BTreeMap<&Group, Vec<&[u8]>> = BTreeMap::new();
        if self.request.group_by.is_none() {
            series.insert(&WHOLE, Vec::new());
        }
        for (start, chunk) in &chunks {
            let (from, to) = (query.from.max(*start), batch_points_end.min(start + span));
            for (group, points) in chunk.iter() {
                let slice = points.slice(from, to);
                if !slice.is_empty() {
                    series.entry(group).or_default().push(slice);
                }
            }
        }
        for (group, points) in &fresh {
            series
                .entry(group)
                .or_default()
                .push(points.slice(Millis::MIN, Millis::MAX));
        }
        crate::limits::check_groups(series.len(), limits)?;
        self.splice(&series)
    }

    /// The whole answer's groups and points against `budget`, before any part is merged.
    fn check_budget(&self, budget: &MergeBudget) -> Result<(), MergeError> {
        let (query, cutover) = (&self.request.query, self.snapshot.cutover);
        let range = query.bucket_range();
        for part in self.parts {
            let speed = self
                .snapshot
                .speed_rows
                .get(&part.name)
                .into_iter()
                .flatten();
            let batch = batch_rows(self.view, part, (range.0, batch_end(cutover, range)));
            check_budget(query, cutover, batch, speed, budget)?;
        }
        Ok(())
    }

    /// The rendered chunks of batch points before `batch_points_end`, by first point time.
    fn batch_chunks(
        &self,
        answers: &AnswerCache,
        batch_points_end: Millis,
        budget: &MergeBudget,
        limits: &ServingConfig,
    ) -> Result<Vec<(Millis, Arc<RenderedSeries>)>, ApiError> {
        let query = &self.request.query;
        let span = chunk_span(query.step, query.window);
        let mut chunks = Vec::new();
        let (Some(version), Some(t)) = (&self.snapshot.batch_version, self.snapshot.cutover) else {
            return Ok(chunks);
        };
        // Chunks lie on the grid's phase, so `start` names the grid as well as the chunk.
        let mut start =
            query.from - (query.from - query.from.rem_euclid(query.step)).rem_euclid(span);
        while start < batch_points_end {
            let key = ChunkKey {
                version: version.clone(),
                cutover: t,
                metric: self.metric.name.clone(),
                step: query.step,
                window: query.window,
                group_by: query.group_by,
                filter: query.filter.clone(),
                start,
            };
            let chunk = answers.get_or_render(key, || {
                let chunk_query = SeriesQuery {
                    from: start,
                    to: (start + span).min(query.grid_floor(t)),
                    ..query.clone()
                };
                let range = chunk_query.bucket_range();
                let inputs = self
                    .parts
                    .iter()
                    .map(|part| {
                        let rows = batch_rows(self.view, part, (range.0, t.min(range.1)));
                        (*part, rows.cloned(), std::iter::empty())
                    })
                    .collect();
                finish_points_within(&chunk_query, Some(t), inputs, budget)
                    .map(|points| render(&points))
                    .map_err(|e| merge_refused(e, limits))
            })?;
            chunks.push((start, chunk));
            start += span;
        }
        Ok(chunks)
    }

    /// The head is the answer with no series; the series are spliced in from their pieces,
    /// as `SeriesOut` would serialize them.
    fn splice(&self, series: &BTreeMap<&Group, Vec<&[u8]>>) -> Result<Vec<u8>, ApiError> {
        let head = self.answer_with(Vec::<SeriesOut>::new());
        let mut body = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
        if !body.ends_with(b"[]}") {
            return Err(ApiError::internal("an answer's series are not last"));
        }
        body.truncate(body.len() - 3);
        let points_bytes: usize = series.values().flatten().map(|p| p.len() + 1).sum();
        body.reserve(points_bytes + series.len() * 64 + 4);
        body.push(b'[');
        for (i, (group, pieces)) in series.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"group\":");
            serde_json::to_writer(&mut body, &self.group_json(group))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            body.extend_from_slice(b",\"points\":[");
            for (j, piece) in pieces.iter().enumerate() {
                if j > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(piece);
            }
            body.extend_from_slice(b"]}");
        }
        body.extend_from_slice(b"]}");
        Ok(body)
    }
}
