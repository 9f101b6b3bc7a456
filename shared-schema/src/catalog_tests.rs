//! Unit tests of the catalogue, the definitions and the partial arithmetic.

use super::*;
use crate::hll::Hll;
use crate::metrics::*;
use proptest::prelude::*;

fn purchase(id: &str, t: Millis, country: Option<&str>, micros: i64) -> Event {
    Event {
        event_id: id.into(),
        event_type: "purchase".into(),
        event_time: t,
        schema_version: 2,
        user_id: Some(format!("user-{id}")),
        product_id: None,
        amount_micros: Some(micros),
        city: None,
        country: country.map(str::to_string),
        profile: None,
    }
}

#[test]
fn the_default_catalogue_is_the_contract_dashboard() {
    let catalog = MetricCatalog::default();
    let names: Vec<&str> = catalog.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "purchases",
            "revenue",
            "page_views",
            "errors",
            "error_rate",
            "active_users",
            "failed_logins",
            "sessions",
            "revenue_by_tier"
        ]
    );
    assert!(
        catalog
            .metrics
            .iter()
            .all(|m| m.bucket.millis() == MINUTE_MS)
    );
    let (_, rate) = catalog.get("error_rate").unwrap();
    assert!(!rate.is_stored());
}

#[test]
fn fold_counts_only_matching_events_per_bucket_and_group() {
    let catalog = MetricCatalog::default();
    let mut table = HashMap::new();
    catalog.fold(&purchase("a", 60_000, Some("DE"), 1_500_000), &mut table);
    catalog.fold(&purchase("b", 119_999, Some("DE"), 500_000), &mut table);
    catalog.fold(&purchase("c", 120_000, None, 1), &mut table);

    let (revenue, def) = catalog.get("revenue").unwrap();
    let de = PartialKey {
        metric: revenue,
        bucket_start: 60_000,
        dims: r#"["DE"]"#.into(),
    };
    assert_eq!((table[&de].count, table[&de].sum_micros), (2, 2_000_000));
    assert_eq!(table[&de].finish(&def.aggregation), Some(2.0));
    assert_eq!(table[&de].min_micros, Some(500_000));
    let (users, users_def) = catalog.get("active_users").unwrap();
    let all = PartialKey {
        metric: users,
        bucket_start: 60_000,
        dims: "[]".into(),
    };
    assert_eq!(table[&all].finish(&users_def.aggregation), Some(2.0));
    let (page_views, _) = catalog.get("page_views").unwrap();
    assert!(
        table.keys().all(|k| k.metric != page_views),
        "a purchase is no page view"
    );
}

#[test]
fn value_metrics_see_only_events_with_the_value() {
    let catalog = MetricCatalog::from_toml(
        "[[metric]]\nname = \"avg_amount\"\naggregation = \"avg\"\nfield = \"amount\"\n\
             [[metric]]\nname = \"most\"\naggregation = \"max\"\nfield = \"amount\"\n",
    )
    .unwrap();
    let mut table = HashMap::new();
    catalog.fold(&purchase("a", 0, None, 2_000_000), &mut table);
    catalog.fold(&purchase("b", 0, None, 4_000_000), &mut table);
    let mut no_amount = purchase("c", 0, None, 0);
    no_amount.amount_micros = None;
    catalog.fold(&no_amount, &mut table);
    let key = |metric| PartialKey {
        metric,
        bucket_start: 0,
        dims: "[]".into(),
    };
    assert_eq!(
        table[&key(0)].finish(&catalog.metrics[0].aggregation),
        Some(3.0)
    );
    assert_eq!(
        table[&key(1)].finish(&catalog.metrics[1].aggregation),
        Some(4.0)
    );
}

#[test]
fn broken_definitions_name_the_metric_and_field() {
    let cases = [
        (
            "[[metric]]\nname = \"x\"\naggregation = \"summ\"\n",
            "metric `x`, field `aggregation`",
        ),
        (
            "[[metric]]\nname = \"x\"\naggregation = \"sum\"\n",
            "metric `x`, field `field`",
        ),
        (
            "[[metric]]\nname = \"x\"\naggregation = \"count\"\ndimensions = [\"colour\"]\n",
            "metric `x`, field `dimensions`",
        ),
        (
            "[[metric]]\nname = \"x\"\naggregation = \"count\"\nbucket = \"1 minute\"\n",
            "metric `x`, field `bucket`",
        ),
        (
            "[[metric]]\nname = \"x\"\naggregation = \"count\"\nbukket = \"1m\"\n",
            "metric `x`: unknown field `bukket`",
        ),
        (
            "[[metric]]\nname = \"x\"\naggregation = \"ratio\"\nnumerator = \"y\"\ndenominator = \"x\"\n",
            "metric `x`, field `numerator`",
        ),
        (
            "[[metric]]\nname = \"x\"\naggregation = \"count\"\n[[metric]]\nname = \"x\"\naggregation = \"count\"\n",
            "metric `x`, field `name`",
        ),
        (
            "[[metric]]\nname = \"x\"\naggregation = \"count\"\nlate_policy = \"ignore\"\n",
            "metric `x`",
        ),
    ];
    for (text, expected) in cases {
        let message = MetricCatalog::from_toml(text).unwrap_err().to_string();
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
}

#[test]
fn dims_round_trip() {
    let key = encode_dims(&[Some("DE"), None, Some("a\"b")]);
    assert_eq!(key, r#"["DE",null,"a\"b"]"#);
    assert_eq!(
        decode_dims(&key),
        vec![Some("DE".into()), None, Some("a\"b".into())]
    );
}

#[test]
fn ratios_are_divided_last() {
    assert_eq!(finish_ratio(Some(1.0), Some(4.0)), Some(0.25));
    assert_eq!(finish_ratio(None, Some(4.0)), Some(0.0));
    assert_eq!(finish_ratio(Some(1.0), Some(0.0)), None);
    assert_eq!(finish_ratio(Some(1.0), None), None);
}

fn partial() -> impl Strategy<Value = Partial> {
    (
        0i64..1_000_000,
        0i128..1_000_000_000_000,
        proptest::option::of(0i64..1000),
        proptest::option::of(0i64..1000),
        proptest::option::of(proptest::collection::vec(0u32..100, 0..5)),
    )
        .prop_map(
            |(count, sum_micros, min_micros, max_micros, users)| Partial {
                count,
                sum_micros,
                min_micros,
                max_micros,
                sketch: users.map(|users| {
                    let mut sketch = Hll::default();
                    users.iter().for_each(|u| sketch.insert(&u.to_string()));
                    sketch
                }),
            },
        )
}

proptest! {
    #[test]
    fn merge_is_commutative_and_associative(a in partial(), b in partial(), c in partial()) {
        let mut ab = a.clone(); ab.merge(&b);
        let mut ba = b.clone(); ba.merge(&a);
        prop_assert_eq!(&ab, &ba);
        let mut ab_c = ab.clone(); ab_c.merge(&c);
        let mut bc = b.clone(); bc.merge(&c);
        let mut a_bc = a.clone(); a_bc.merge(&bc);
        prop_assert_eq!(&ab_c, &a_bc);
        let mut with_identity = a.clone(); with_identity.merge(&Partial::default());
        prop_assert_eq!(with_identity, a);
    }
}

proptest! {
    /// The fold writes dims keys into a reused buffer; they must be the JSON array of the values
    /// that `serde_json` writes (the stored format both layers compare), escapes and missing
    /// values included.
    #[test]
    fn a_dims_key_written_in_place_is_the_encoded_one(
        country in proptest::option::of(".{0,6}"),
        product in proptest::option::of("[\"\\\\a-z\u{0}-\u{1f}é]{0,6}"),
        city in proptest::option::of(".{0,6}"),
    ) {
        let mut metric = MetricCatalog::default().metrics[0].clone();
        metric.dimensions = vec![Dimension::Country, Dimension::ProductId, Dimension::City];
        let mut event = purchase("a", 0, country.as_deref(), 1);
        event.product_id = product.clone();
        event.city = city.clone();
        let values = [country.as_deref(), product.as_deref(), city.as_deref()];
        let expected = serde_json::to_string(&values).expect("JSON of strings");
        prop_assert_eq!(encode_dims(&values), expected.clone());
        let mut buffer = b"left over".to_vec();
        metric.write_dims_key(&event, &mut buffer);
        prop_assert_eq!(std::str::from_utf8(&buffer), Ok(expected.as_str()));
        prop_assert_eq!(metric.dims_key(&event), expected);
    }
}
