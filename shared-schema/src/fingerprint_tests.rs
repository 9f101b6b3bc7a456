use super::*;
use crate::catalog::DEFAULT_METRICS;

fn catalog(text: &str) -> MetricCatalog {
    MetricCatalog::from_toml(text).unwrap()
}

const BASE: &str = r#"
[[metric]]
name = "revenue"
description = "Sum of amount over purchase events"
event_type = "purchase"
aggregation = "sum"
field = "amount"
dimensions = ["country", "city"]

[[metric]]
name = "sessions"
aggregation = "sessions"
field = "user_id"
gap = "30m"
"#;

#[test]
fn the_fingerprint_of_the_default_catalogue_is_pinned() {
    // A change here means every deployment's definitions "changed": only ever on purpose,
    // together with CANONICAL_FORMAT or config/metrics.toml.
    let fingerprint = MetricCatalog::default().fingerprint();
    // Changed on purpose when revenue_by_tier joined the default file.
    assert_eq!(fingerprint, "760366270ed9d5f54ec53eac5afec5ee");
    assert_eq!(fingerprint, catalog(DEFAULT_METRICS).fingerprint());
    let canonical = MetricCatalog::default().canonical().to_json();
    assert!(
            canonical.starts_with(r#"{"format":1,"metrics":[{"name":"active_users","event_type":null,"aggregation":"distinct","field":"user_id""#),
            "{canonical}"
        );
}

#[test]
fn same_semantics_same_fingerprint() {
    let reference = catalog(BASE).fingerprint();
    let rewritten = r#"
# comments, blank lines, another key order, another metric order, defaults written out,
# another description and an alert rule change no stored value.
[[metric]]
gap = "1800s"
field = "user_id"
aggregation = "sessions"
name = "sessions"
bucket = "60s"

[[metric]]
dimensions = ["country", "city"]   # the group key's order
field = "amount"
aggregation = "sum"
event_type = "purchase"
name = "revenue"
description = "money"
bucket = "1m"
allowed_lateness = "60000ms"
late_policy = "update"

[[alert]]
name = "big"
metric = "revenue"
window = "5m"
above = 1000
"#;
    assert_eq!(catalog(rewritten).fingerprint(), reference);
    assert_eq!(catalog(rewritten).canonical(), catalog(BASE).canonical());
}

#[test]
fn every_semantic_change_changes_the_fingerprint_and_is_named() {
    let base = catalog(BASE);
    let changes: [(&str, &str, &str, &str); 10] = [
        (
            "event_type = \"purchase\"",
            "event_type = \"order\"",
            "revenue",
            "event_type",
        ),
        ("event_type = \"purchase\"\n", "", "revenue", "event_type"),
        (
            "aggregation = \"sum\"",
            "aggregation = \"avg\"",
            "revenue",
            "aggregation",
        ),
        (
            "dimensions = [\"country\", \"city\"]",
            "dimensions = [\"city\", \"country\"]",
            "revenue",
            "dimensions",
        ),
        (
            "dimensions = [\"country\", \"city\"]",
            "dimensions = [\"country\"]",
            "revenue",
            "dimensions",
        ),
        (
            "field = \"amount\"",
            "field = \"amount\"\nbucket = \"5m\"",
            "revenue",
            "bucket",
        ),
        (
            "field = \"amount\"",
            "field = \"amount\"\nallowed_lateness = \"2m\"",
            "revenue",
            "allowed_lateness",
        ),
        (
            "field = \"amount\"",
            "field = \"amount\"\nlate_policy = \"drop\"",
            "revenue",
            "late_policy",
        ),
        ("gap = \"30m\"", "gap = \"31m\"", "sessions", "gap"),
        (
            "field = \"user_id\"",
            "field = \"product_id\"",
            "sessions",
            "field",
        ),
    ];
    for (from, to, metric, field) in changes {
        assert!(BASE.contains(from), "{from}");
        let changed = catalog(&BASE.replacen(from, to, 1));
        assert_ne!(
            changed.fingerprint(),
            base.fingerprint(),
            "{from} -> {to} must change the fingerprint"
        );
        let diff = base.canonical().diff(&changed.canonical());
        assert_eq!(diff.len(), 1, "{from} -> {to}: {diff:?}");
        let Difference::Changed {
            metric: m,
            field: f,
            old,
            new,
        } = &diff[0]
        else {
            panic!("{diff:?}");
        };
        assert_eq!((m.as_str(), *f), (metric, field), "{from} -> {to}");
        assert_ne!(old, new);
    }
}

#[test]
fn a_difference_names_the_metric_the_field_and_both_values() {
    let promoted = catalog(BASE).canonical();
    let here = catalog(
        &BASE
            .replace("event_type = \"purchase\"", "event_type = \"order\"")
            .replace("name = \"sessions\"", "name = \"visits\""),
    )
    .canonical();
    let lines: Vec<String> = promoted
        .diff(&here)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            r#"metric `revenue`, field `event_type`: "purchase" in the promoted view, "order" here"#,
            "metric `sessions`: in the promoted view, missing here",
            "metric `visits`: not in the promoted view",
        ]
    );
    assert!(promoted.diff(&promoted).is_empty());
}

#[test]
fn ratio_parts_are_covered() {
    let text = "[[metric]]\nname = \"a\"\naggregation = \"count\"\n\
                    [[metric]]\nname = \"b\"\naggregation = \"count\"\n\
                    [[metric]]\nname = \"r\"\naggregation = \"ratio\"\nnumerator = \"a\"\ndenominator = \"b\"\n";
    let swapped = text
        .replace("numerator = \"a\"", "numerator = \"b\"")
        .replace("denominator = \"b\"", "denominator = \"a\"");
    let diff = catalog(text)
        .canonical()
        .diff(&catalog(&swapped).canonical());
    let fields: Vec<&str> = diff
        .iter()
        .filter_map(|d| match d {
            Difference::Changed { field, .. } => Some(*field),
            _ => None,
        })
        .collect();
    assert_eq!(fields, ["numerator", "denominator"]);
}

#[test]
fn the_canonical_form_round_trips_through_its_json() {
    let canonical = MetricCatalog::default().canonical();
    let back = CanonicalCatalog::from_json(&canonical.to_json()).unwrap();
    assert_eq!(back, canonical);
    assert_eq!(back.fingerprint(), canonical.fingerprint());
}
