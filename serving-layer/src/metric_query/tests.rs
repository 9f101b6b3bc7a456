//! The query's parameters, and the fast renderer against one merge over the whole range.

use super::params::parse_query;
use super::render::AnswerInputs;
use crate::answer_cache::AnswerCache;
use crate::snapshot::Snapshot;
use axum::http::StatusCode;
use proptest::prelude::*;
use serde_json::Value;
use shared_schema::config::PlatformConfig;
use shared_schema::query::BucketRow;
use shared_schema::time::{MINUTE_MS, format_rfc3339};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{MetricDef, Partial, encode_dims},
};
use std::collections::HashMap;

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn revenue() -> MetricDef {
    MetricCatalog::default()
        .get("revenue")
        .map(|(_, m)| m.clone())
        .unwrap()
}

fn rows_strategy() -> impl Strategy<Value = Vec<(i64, usize, i64)>> {
    // (minute, dimension value index, count)
    proptest::collection::vec((0i64..200, 0usize..3, 0i64..4), 0..120)
}

fn to_rows(rows: &[(i64, usize, i64)], sum_micros: bool) -> Vec<BucketRow> {
    let values = [Some("a"), Some("b"), None];
    let mut rows: Vec<BucketRow> = rows
        .iter()
        .map(|&(minute, value, count)| BucketRow {
            bucket_start: minute * MINUTE_MS,
            dims: encode_dims(&[values[value]]),
            partial: Partial {
                count,
                sum_micros: if sum_micros { count as i128 * 7 } else { 0 },
                ..Partial::default()
            },
        })
        .collect();
    rows.sort_by_key(|r| r.bucket_start);
    rows
}

proptest! {
    /// Splicing cached chunks of batch points with freshly merged ones gives the answer a
    /// single merge over the whole range gives, for any T, range, step, window and grouping,
    /// cold or from a warm cache.
    #[test]
    fn rendered_answers_equal_one_merge_over_the_range(
        batch in rows_strategy(),
        speed in rows_strategy(),
        cutover in proptest::option::of(0i64..220),
        from in 0i64..200,
        length in 1i64..200,
        step in 1i64..4,
        window_steps in 1i64..3,
        grouping in 0usize..3,
        ratio in any::<bool>(),
    ) {
        let catalog = MetricCatalog::default();
        let name = if ratio { "error_rate" } else { "purchases" };
        let metric = catalog.get(name).unwrap().1.clone();
        let parts = catalog.parts(&metric).unwrap();
        let dimension = metric.dimensions[0].name();
        let step = if step == 3 { 5 } else { step };
        let mut pairs = vec![
            ("from", format_rfc3339(from * MINUTE_MS)),
            ("to", format_rfc3339((from + length) * MINUTE_MS)),
            ("step", format!("{step}m")),
            ("window", format!("{}m", step * window_steps)),
        ];
        match grouping {
            1 => pairs.push(("group_by", dimension.to_string())),
            2 => pairs.push(("filter", format!("{dimension}:a"))),
            _ => {}
        }
        let params: HashMap<String, String> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let request = parse_query(&metric, &params, &PlatformConfig::default().serving).unwrap();
        let mut view = HashMap::new();
        let mut snapshot = Snapshot {
            cutover: cutover.map(|t| t * MINUTE_MS),
            batch_version: cutover.map(|_| "v1".to_string()),
            ..Snapshot::default()
        };
        for (i, part) in parts.iter().enumerate() {
            view.insert(part.name.clone(), to_rows(&batch, i == 0));
            snapshot.speed_rows.insert(part.name.clone(), to_rows(&speed, i == 1));
        }
        let view = crate::view_cache::BatchView::whole(view);
        let inputs = AnswerInputs {
            metric: &metric,
            parts: &parts,
            request: &request,
            snapshot: &snapshot,
            view: Some(&view),
        };
        let expected = serde_json::to_value(inputs.reference()).unwrap();
        let cache = AnswerCache::new(16);
        let limits = PlatformConfig::default().serving;
        for attempt in ["cold", "warm"] {
            let body = inputs.render(&cache, &limits, None).unwrap();
            let rendered: Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(&rendered, &expected, "{}", attempt);
        }
    }
}

#[test]
fn parameters_are_validated_with_400s() {
    let m = revenue();
    let ok = [
        ("from", "2026-11-21T12:00:00Z"),
        ("to", "2026-11-21T13:00:00Z"),
    ];
    let mut limits = PlatformConfig::default().serving;
    limits.max_points = 1000;
    let request = parse_query(&m, &params(&ok), &limits).unwrap();
    assert_eq!(request.query.step, 60_000);
    assert_eq!(request.query.point_count(), 60);
    for bad in [
        vec![("from", "2026-11-21T12:00:00Z")],
        vec![("from", "yesterday"), ("to", "2026-11-21T13:00:00Z")],
        vec![ok[1], ("from", "2026-11-21T14:00:00Z")],
        vec![ok[0], ok[1], ("step", "90s")],
        vec![ok[0], ok[1], ("step", "1x")],
        vec![ok[0], ok[1], ("window", "30s")],
        vec![ok[0], ok[1], ("group_by", "city")],
        vec![ok[0], ok[1], ("filter", "country")],
        vec![ok[0], ok[1], ("filter", "product_id:1")],
    ] {
        let err = parse_query(&m, &params(&bad), &limits)
            .err()
            .expect("should be refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    limits.max_points = 59;
    let too_many = parse_query(&m, &params(&ok), &limits)
        .err()
        .expect("60 points over a limit of 59");
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_many.limit, Some("serving.max_points"));
}
