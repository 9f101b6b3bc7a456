//! The answer's types: what `GET /openapi.json` describes, what the reference rendering
//! serializes, and what the fast renderer's head is; its spliced series must equal them
//! (the property test in `tests.rs`).

use super::render::AnswerInputs;
use crate::answer_cache::PointOut;
use crate::interval::Interval;
use serde::Serialize;
use serde_json::{Map, Value};
use shared_schema::query::{Group, gaps};
use shared_schema::time::format_rfc3339;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub(crate) struct SeriesOut {
    /// `{}` without `group_by`; else the grouped dimension and its value (`null`: absent).
    #[schema(value_type = HashMap<String, Option<String>>)]
    pub group: Map<String, Value>,
    pub points: Vec<PointOut>,
}

/// One metric over a range, merged across the cutover (CONTRACT §4).
#[derive(Serialize, ToSchema)]
pub(crate) struct MetricAnswer {
    metric: String,
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    #[schema(example = "1m")]
    step: String,
    #[schema(example = "1m")]
    window: String,
    /// `null` before the first promotion.
    #[schema(format = DateTime, required = true)]
    cutover: Option<String>,
    /// `null` before the first promotion.
    #[schema(required = true)]
    batch_version: Option<String>,
    #[schema(format = DateTime, required = true)]
    speed_watermark: Option<String>,
    /// Events the speed layer saw after their bucket closed, over the range.
    late_events: i64,
    /// `late_events` over the events counted; `null` when none were.
    #[schema(required = true)]
    late_rate: Option<f64>,
    /// `false` when part of the range is covered by neither side; the parts are in `gaps`.
    complete: bool,
    gaps: Vec<Interval>,
    /// Last, so the fast renderer can splice the series in after the rest.
    series: Vec<SeriesOut>,
}

impl AnswerInputs<'_> {
    /// A series' `group`.
    pub(super) fn group_json(&self, group: &Group) -> Map<String, Value> {
        let mut json = Map::new();
        if let (Some(dimension), Some(value)) = (self.request.group_by, group) {
            json.insert(
                dimension.name().to_string(),
                value.clone().map_or(Value::Null, Value::String),
            );
        }
        json
    }

    /// The answer holding `series`.
    pub(super) fn answer_with(&self, series: Vec<SeriesOut>) -> MetricAnswer {
        let (query, snapshot) = (&self.request.query, self.snapshot);
        let gaps = shared_io::liveness::with_stall_gap(
            gaps(
                self.request.from,
                query.to,
                snapshot.cutover,
                snapshot.speed_covered_from,
            ),
            self.request.from,
            query.to,
            snapshot.cutover,
            snapshot.speed_stalled_from,
        );
        MetricAnswer {
            metric: self.metric.name.clone(),
            from: format_rfc3339(self.request.from),
            to: format_rfc3339(query.to),
            step: self.request.step.to_string(),
            window: self.request.window.to_string(),
            cutover: snapshot.cutover.map(format_rfc3339),
            batch_version: snapshot.batch_version.clone(),
            speed_watermark: snapshot.speed_watermark.map(format_rfc3339),
            late_events: snapshot.late_events,
            late_rate: (snapshot.seen_events > 0)
                .then(|| snapshot.late_events as f64 / snapshot.seen_events as f64),
            complete: gaps.is_empty(),
            gaps: gaps
                .iter()
                .map(|(from, to)| Interval::new(*from, *to))
                .collect(),
            series,
        }
    }

    /// The answer rendered point by point from one merge over the whole range: what `render`
    /// must equal.
    #[cfg(test)]
    pub(super) fn reference(&self) -> MetricAnswer {
        use shared_schema::sliding::MergeBudget;
        use std::collections::BTreeMap;
        let points = self
            .merge(&self.request.query, &MergeBudget::default())
            .unwrap_or_default();
        let mut series: BTreeMap<Group, Vec<PointOut>> = BTreeMap::new();
        if self.request.group_by.is_none() {
            series.insert(None, Vec::new());
        }
        for ((group, t), point) in points {
            series.entry(group).or_default().push(PointOut {
                t: format_rfc3339(t),
                value: point.value,
                source: point.source,
            });
        }
        let series = series
            .into_iter()
            .map(|(group, points)| SeriesOut {
                group: self.group_json(&group),
                points,
            })
            .collect();
        self.answer_with(series)
    }
}
