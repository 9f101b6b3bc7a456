use super::*;
use crate::kafka::{BadMessage, Batch, SourcedEvent};
use shared_schema::event::Event;
use shared_schema::time::now_millis;
use std::collections::{BTreeMap, BTreeSet};

fn all(registry: &Registry) -> (ConsumerMetrics, SpeedMetrics, BatchMetrics, ServingMetrics) {
    (
        ConsumerMetrics::register(registry).unwrap(),
        SpeedMetrics::register(registry).unwrap(),
        BatchMetrics::register(registry).unwrap(),
        ServingMetrics::register(registry).unwrap(),
    )
}

fn event(partition: i32, offset: i64) -> SourcedEvent {
    SourcedEvent {
        partition,
        offset,
        event: Event {
            event_id: format!("e{partition}-{offset}"),
            event_type: "purchase".into(),
            event_time: 0,
            schema_version: 2,
            user_id: None,
            product_id: None,
            amount_micros: None,
            city: None,
            country: None,
            profile: None,
        },
    }
}

#[test]
fn families_register_once_each() {
    let registry = Registry::new();
    let _handles = all(&registry);
    let names: BTreeSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
    assert_eq!(
        names.len(),
        FAMILIES.len(),
        "a family name is declared twice"
    );
    let _cdc = CdcMetrics::register(&registry).unwrap();
    assert!(
        ConsumerMetrics::register(&registry).is_err(),
        "a second registration is refused"
    );
    for family in FAMILIES {
        assert!(family.name.starts_with("lambda_"), "{}", family.name);
        assert_eq!(
            family.kind == Kind::Counter,
            family.name.ends_with("_total"),
            "{}: counters, and only counters, end in _total",
            family.name
        );
        assert!(!family.exported_by.is_empty(), "{}", family.name);
    }
}

#[test]
fn a_batch_counts_events_per_partition_and_bad_messages() {
    let registry = Registry::new();
    let (consumer, ..) = all(&registry);
    consumer.start("speed-layer");
    let text = render(&registry).unwrap();
    assert!(
        text.contains("lambda_consumer_quarantined_total{consumer=\"speed-layer\"} 0\n"),
        "{text}"
    );
    let batch = Batch {
        events: vec![event(0, 1), event(0, 2), event(1, 7)],
        bad: vec![BadMessage {
            partition: 1,
            offset: 8,
            raw: None,
            reason: "not JSON".into(),
        }],
        ..Batch::default()
    };
    consumer.record_batch("speed-layer", &batch, &BTreeMap::from([(0, 5), (1, 0)]));
    let passed_over = Batch {
        missing_offsets: 3,
        ..Batch::default()
    };
    consumer.record_batch("speed-layer", &passed_over, &BTreeMap::from([(1, 3)]));
    consumer.record_batch("speed-layer", &batch, &BTreeMap::from([(1, 3)]));
    let text = render(&registry).unwrap();
    for line in [
        "lambda_consumer_offsets_missing_total{consumer=\"speed-layer\"} 3\n",
        "lambda_consumer_events_total{consumer=\"speed-layer\",partition=\"0\"} 4\n",
        "lambda_consumer_events_total{consumer=\"speed-layer\",partition=\"1\"} 2\n",
        "lambda_consumer_quarantined_total{consumer=\"speed-layer\"} 2\n",
        "lambda_consumer_lag_messages{consumer=\"speed-layer\",partition=\"1\"} 3\n",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        !text.contains("lambda_consumer_lag_messages{consumer=\"speed-layer\",partition=\"0\"}"),
        "a partition no longer owned has no lag series:\n{text}"
    );
}

#[test]
fn served_version_gauges_are_replaced_not_kept() {
    let registry = Registry::new();
    let (.., serving) = all(&registry);
    let now = now_millis();
    let served = ServedVersion {
        version: "v1".into(),
        cutover: now - 600_000,
        started_at: now - 65_000,
        finished_at: now - 60_000,
        rows: 42,
    };
    serving.set_served(Some(&served));
    serving.set_divergence([("purchases", 0.5), ("revenue", 0.0)]);
    let text = render(&registry).unwrap();
    assert!(
        text.contains("lambda_promoted_version_info{version=\"v1\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("lambda_promoted_version_rows 42\n"), "{text}");
    assert!(
        text.contains("lambda_promoted_version_run_seconds 5\n"),
        "{text}"
    );
    assert!(text.contains("lambda_divergence_ratio{metric=\"revenue\"} 0\n"));
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    // Timestamps, not ages: what a stalled exporter leaves is still true.
    let at = |millis: i64| millis as f64 / 1000.0;
    assert_eq!(value("lambda_promoted_timestamp_seconds"), at(now - 60_000));
    assert_eq!(value("lambda_cutover_timestamp_seconds"), at(now - 600_000));

    serving.set_served(Some(&ServedVersion {
        version: "v2".into(),
        ..served
    }));
    serving.set_divergence([("purchases", 0.25)]);
    let text = render(&registry).unwrap();
    assert!(
        !text.contains("v1"),
        "the previous version's series are gone:\n{text}"
    );
    assert!(!text.contains("metric=\"revenue\""), "{text}");
    serving.set_served(None);
    let text = render(&registry).unwrap();
    assert!(!text.contains("lambda_promoted_version"), "{text}");
    assert!(
        !text.contains("lambda_cutover_timestamp_seconds "),
        "{text}"
    );
}

#[test]
fn batch_runs_and_requests_are_histograms() {
    let registry = Registry::new();
    let (_, speed, batch, serving) = all(&registry);
    let text = render(&registry).unwrap();
    assert!(
        text.contains("lambda_batch_run_duration_seconds_count{outcome=\"failed\"} 0\n"),
        "{text}"
    );
    batch.promoted(
        3.0,
        RunRows {
            view: 10,
            reused: 4,
            lake: 100,
        },
    );
    batch.failed(0.2);
    serving.observe_request("GET", "/v1/metrics/{name}", 200, 0.003);
    speed.count_late("purchases", 2);
    speed.set_watermark("events", Some(now_millis() - 5_000));
    let text = render(&registry).unwrap();
    for line in [
        "lambda_batch_run_duration_seconds_bucket{outcome=\"promoted\",le=\"5\"} 1\n",
        "lambda_batch_run_duration_seconds_bucket{outcome=\"promoted\",le=\"2.5\"} 0\n",
        "lambda_batch_run_duration_seconds_count{outcome=\"failed\"} 1\n",
        "lambda_batch_run_rows{kind=\"view\"} 10\n",
        "lambda_batch_run_rows{kind=\"lake\"} 100\n",
        "lambda_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/metrics/{name}\",status=\"200\"} 1\n",
        "lambda_speed_late_events_total{metric=\"purchases\"} 2\n",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(text.contains("lambda_speed_watermark_delay_seconds{topic=\"events\"} 5"));
}
