//! The batch side of answers, rendered once per promoted version.
//!
//! A point whose whole window lies before T depends only on the promoted view, which never
//! changes under a version. So its JSON is rendered once, per chunk of `CHUNK_POINTS` points of
//! one query shape (metric, step, window, group_by, filter), and later answers copy byte
//! ranges out of it. Only the points at or after T's step are merged and rendered per request.
//! Rendering every point per request dominated the profile of a 24-hour per-minute query
//! (BENCHMARKS.md).

use serde::Serialize;
use shared_io::observe;
use shared_schema::cutover::Source;
use shared_schema::query::{Group, MergedPoint};
use shared_schema::time::{Millis, format_rfc3339};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Points per cached chunk: a day of one-minute points.
pub const CHUNK_POINTS: i64 = 1440;

/// The time a chunk spans: `CHUNK_POINTS` steps, or the window if longer. A chunk reads the rows
/// of its points' windows, so a chunk shorter than the window would read each row once per
/// chunk it reaches back into; at least a window long, all chunks together read each row at
/// most twice.
pub fn chunk_span(step: Millis, window: Millis) -> Millis {
    let window_steps = (window + step - 1) / step;
    step * CHUNK_POINTS.max(window_steps)
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PointOut {
    /// The point's start.
    #[schema(format = DateTime)]
    pub t: String,
    pub value: f64,
    #[schema(value_type = crate::openapi::PointSource)]
    pub source: Source,
}

/// Points of one series as JSON objects, comma-separated, in time order.
#[derive(Debug, Default)]
pub struct RenderedPoints {
    times: Vec<Millis>,
    /// Where each point's object starts in `bytes`.
    starts: Vec<usize>,
    bytes: Vec<u8>,
}

impl RenderedPoints {
    fn push(&mut self, t: Millis, point: &MergedPoint) {
        if !self.bytes.is_empty() {
            self.bytes.push(b',');
        }
        self.starts.push(self.bytes.len());
        self.times.push(t);
        let out = PointOut {
            t: format_rfc3339(t),
            value: point.value,
            source: point.source,
        };
        // Writing plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.bytes, &out);
    }

    /// The points with `from <= t < to`, as `{...},{...}`.
    pub fn slice(&self, from: Millis, to: Millis) -> &[u8] {
        let first = self.times.partition_point(|t| *t < from);
        let end = self.times.partition_point(|t| *t < to);
        if first >= end {
            return &[];
        }
        let end_byte = match self.starts.get(end) {
            Some(next) => next - 1, // before the comma
            None => self.bytes.len(),
        };
        &self.bytes[self.starts[first]..end_byte]
    }

    fn size(&self) -> usize {
        self.bytes.len() + self.times.len() * 16
    }
}

/// Rendered series by group.
pub type RenderedSeries = BTreeMap<Group, RenderedPoints>;

pub fn render(points: &BTreeMap<(Group, Millis), MergedPoint>) -> RenderedSeries {
    let mut series = RenderedSeries::new();
    for ((group, t), point) in points {
        series.entry(group.clone()).or_default().push(*t, point);
    }
    series
}

/// What a chunk of rendered batch points depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub version: String,
    pub cutover: Millis,
    pub metric: String,
    pub step: Millis,
    pub window: Millis,
    pub group_by: Option<usize>,
    pub filter: Option<(usize, String)>,
    /// The first point time the chunk may hold: on the query's grid of points (its phase
    /// against the step is part of the key through it), a multiple of `chunk_span` apart.
    pub start: Millis,
}

/// Rendered chunks, least recently used evicted beyond `budget_bytes`.
#[derive(Clone)]
pub struct AnswerCache {
    budget_bytes: usize,
    state: Arc<Mutex<CacheState>>,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<ChunkKey, Entry>,
    used_bytes: usize,
    clock: u64,
}

struct Entry {
    series: Arc<RenderedSeries>,
    bytes: usize,
    last_used: u64,
}

impl AnswerCache {
    pub fn new(budget_mb: usize) -> Self {
        AnswerCache {
            budget_bytes: budget_mb.saturating_mul(1 << 20),
            state: Arc::default(),
        }
    }

    /// The chunk under `key`, rendered by `build` on a miss; a failed build is not kept.
    pub fn get_or_render<E>(
        &self,
        key: ChunkKey,
        build: impl FnOnce() -> Result<RenderedSeries, E>,
    ) -> Result<Arc<RenderedSeries>, E> {
        if let Some(series) = self.lookup(&key) {
            observe::serving().cache_lookup("answer", true);
            return Ok(series);
        }
        observe::serving().cache_lookup("answer", false);
        let series = Arc::new(build()?);
        let bytes: usize = series.values().map(RenderedPoints::size).sum();
        if bytes <= self.budget_bytes {
            self.insert(key, series.clone(), bytes);
        }
        Ok(series)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lookup(&self, key: &ChunkKey) -> Option<Arc<RenderedSeries>> {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        state.entries.get_mut(key).map(|entry| {
            entry.last_used = now;
            entry.series.clone()
        })
    }

    fn insert(&self, key: ChunkKey, series: Arc<RenderedSeries>, bytes: usize) {
        let mut state = self.lock();
        state.clock += 1;
        let last_used = state.clock;
        if let Some(old) = state.entries.insert(
            key,
            Entry {
                series,
                bytes,
                last_used,
            },
        ) {
            state.used_bytes -= old.bytes;
        }
        state.used_bytes += bytes;
        while state.used_bytes > self.budget_bytes {
            let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.used_bytes -= evicted.bytes;
            }
        }
    }

    #[cfg(test)]
    fn used_bytes(&self) -> usize {
        self.lock().used_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(value: f64) -> MergedPoint {
        MergedPoint {
            value,
            source: Source::Batch,
            denominator: None,
        }
    }

    #[test]
    fn slices_are_whole_points_without_dangling_commas() {
        let mut points = BTreeMap::new();
        for t in 0..4 {
            points.insert((None, t * 60_000), point(t as f64));
        }
        let series = render(&points);
        let rendered = &series[&None];
        let parse = |bytes: &[u8]| -> Vec<f64> {
            let text = format!("[{}]", String::from_utf8_lossy(bytes));
            let values: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
            values
                .iter()
                .map(|v| v["value"].as_f64().unwrap())
                .collect()
        };
        assert_eq!(parse(rendered.slice(0, 240_000)), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(parse(rendered.slice(60_000, 180_000)), [1.0, 2.0]);
        assert_eq!(parse(rendered.slice(1, 60_001)), [1.0]);
        assert_eq!(parse(rendered.slice(180_000, 999_999)), [3.0]);
        assert!(rendered.slice(240_000, 999_999).is_empty());
    }

    #[test]
    fn least_recently_used_chunks_go_first_beyond_the_budget() {
        let cache = AnswerCache::new(1);
        let key = |start| ChunkKey {
            version: "v".into(),
            cutover: 0,
            metric: "m".into(),
            step: 60_000,
            window: 60_000,
            group_by: None,
            filter: None,
            start,
        };
        let big = || {
            let mut points = BTreeMap::new();
            for t in 0..6_000 {
                points.insert((None, t), point(1.0));
            }
            render(&points)
        };
        let first = cache.get_or_render(key(0), || Ok::<_, ()>(big())).unwrap();
        assert!(cache.used_bytes() > 0);
        let again = cache
            .get_or_render(key(0), || Err::<RenderedSeries, _>("cached, not built"))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Each chunk is about 0.4 MB: the third evicts the least recently used.
        cache.get_or_render(key(1), || Ok::<_, ()>(big())).unwrap();
        cache
            .get_or_render(key(0), || {
                Err::<RenderedSeries, _>("used more recently than key 1")
            })
            .unwrap();
        cache.get_or_render(key(2), || Ok::<_, ()>(big())).unwrap();
        assert!(cache.used_bytes() <= 1 << 20);
        let mut rebuilt = false;
        cache
            .get_or_render(key(1), || {
                rebuilt = true;
                Ok::<_, ()>(big())
            })
            .unwrap();
        assert!(rebuilt, "key 1 was the least recently used");
    }

    #[test]
    fn a_chunk_spans_at_least_its_window() {
        let m = 60_000;
        assert_eq!(chunk_span(m, m), CHUNK_POINTS * m);
        assert_eq!(chunk_span(m, 31 * 1440 * m), 31 * 1440 * m);
        assert_eq!(chunk_span(60 * m, 90 * m), CHUNK_POINTS * 60 * m);
    }
}
