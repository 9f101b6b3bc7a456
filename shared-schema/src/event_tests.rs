use super::*;

const NOW: Millis = 1_800_000_000_000;
const SKEW: Millis = 600_000;

fn ok(json: &str) -> Event {
    decode(Some(json.as_bytes()), NOW, SKEW).unwrap()
}
fn bad(json: &str) -> DecodeError {
    decode(Some(json.as_bytes()), NOW, SKEW).unwrap_err()
}

#[test]
fn both_time_formats_decode_to_the_same_instant() {
    let a = ok(r#"{"event_id":"a","event_type":"click","event_time":"2026-11-21T13:45:12.345Z"}"#);
    let b = ok(r#"{"event_id":"a","event_type":"click","event_time":1795268712345}"#);
    assert_eq!(a.event_time, 1_795_268_712_345);
    assert_eq!(a, b);
}

#[test]
fn v1_location_is_upcast() {
    let e = ok(
        r#"{"event_id":"x","event_type":"purchase","event_time":1,"location":"Berlin, DE","amount":19.99}"#,
    );
    assert_eq!(e.schema_version, 1);
    assert_eq!(
        (e.city.as_deref(), e.country.as_deref()),
        (Some("Berlin"), Some("DE"))
    );
    assert_eq!(e.amount_micros, Some(19_990_000));
    let v2 = ok(
        r#"{"event_id":"x","event_type":"purchase","event_time":1,"schema_version":2,"city":"Berlin","country":"DE","amount":19.99}"#,
    );
    assert_eq!(
        Event {
            schema_version: 1,
            ..v2
        },
        e
    );
    assert_eq!(
        upcast_location("Washington, D.C., US"),
        (Some("Washington, D.C.".into()), Some("US".into()))
    );
    assert_eq!(upcast_location("Nowhere"), (Some("Nowhere".into()), None));
}

#[test]
fn every_registered_schema_version_decodes_and_the_last_is_current() {
    let last = SCHEMA_VERSIONS.last().map(|v| v.version);
    assert_eq!(last, Some(CURRENT_SCHEMA_VERSION));
    for (i, version) in SCHEMA_VERSIONS.iter().enumerate() {
        assert_eq!(version.version, i as i32 + 1);
        // An event with every listed field decodes, as that version.
        let mut json = serde_json::Map::new();
        for f in version.fields {
            let value = match f.name {
                "schema_version" => serde_json::json!(version.version),
                "event_time" => serde_json::json!(1),
                "amount" => serde_json::json!(1.5),
                "location" => serde_json::json!("Berlin, DE"),
                other => serde_json::json!(other),
            };
            json.insert(f.name.to_string(), value);
        }
        let event = ok(&serde_json::Value::Object(json).to_string());
        assert_eq!(event.schema_version, version.version);
        assert!(event.country.is_some() && event.city.is_some());
        // And one with only the required fields.
        let required: serde_json::Map<String, serde_json::Value> = version
            .fields
            .iter()
            .filter(|f| f.required)
            .map(|f| {
                let value = match f.name {
                    "schema_version" => serde_json::json!(version.version),
                    "event_time" => serde_json::json!(1),
                    other => serde_json::json!(other),
                };
                (f.name.to_string(), value)
            })
            .collect();
        assert_eq!(
            ok(&serde_json::Value::Object(required).to_string()).schema_version,
            version.version
        );
    }
    assert_ne!(
        SCHEMA_VERSIONS[0].fingerprint(),
        SCHEMA_VERSIONS[1].fingerprint()
    );
    assert_eq!(
        SCHEMA_VERSIONS[1].fingerprint(),
        SCHEMA_VERSIONS[1].fingerprint()
    );
}

#[test]
fn bad_input_is_named() {
    assert_eq!(decode(None, NOW, SKEW), Err(DecodeError::Empty));
    assert!(matches!(bad("not json"), DecodeError::NotJson(_)));
    assert!(matches!(bad("[1,2]"), DecodeError::NotJson(_)));
    assert!(matches!(
        bad(r#"{"event_type":"a","event_time":1}"#),
        DecodeError::NotJson(_)
    ));
    assert!(matches!(
        bad(r#"{"event_id":5,"event_type":"a","event_time":1}"#),
        DecodeError::NotJson(_)
    ));
    assert_eq!(
        bad(r#"{"event_id":"","event_type":"a","event_time":1}"#),
        DecodeError::EventIdLength(0)
    );
    let long = "x".repeat(129);
    assert_eq!(
        bad(&format!(
            r#"{{"event_id":"{long}","event_type":"a","event_time":1}}"#
        )),
        DecodeError::EventIdLength(129)
    );
    assert!(matches!(
        bad(r#"{"event_id":"a","event_type":"a","event_time":"yesterday"}"#),
        DecodeError::BadEventTime(_)
    ));
    assert!(matches!(
        bad(r#"{"event_id":"a","event_type":"a","event_time":"2026-11-21T13:45:12"}"#),
        DecodeError::BadEventTime(_)
    ));
    assert!(matches!(
        bad(r#"{"event_id":"a","event_type":"a","event_time":1.5}"#),
        DecodeError::NotJson(_)
    ));
    assert!(matches!(
        bad(&format!(
            r#"{{"event_id":"a","event_type":"a","event_time":{}}}"#,
            NOW + SKEW + 1
        )),
        DecodeError::FromTheFuture { .. }
    ));
    assert!(
        decode(
            Some(
                format!(
                    r#"{{"event_id":"a","event_type":"a","event_time":{}}}"#,
                    NOW + SKEW
                )
                .as_bytes()
            ),
            NOW,
            SKEW
        )
        .is_ok()
    );
    assert_eq!(
        bad(r#"{"event_id":"a","event_type":"purchase","event_time":1,"amount":-1}"#),
        DecodeError::BadAmount(-1.0)
    );
    assert_eq!(
        bad(r#"{"event_id":"a","event_type":"a","event_time":1,"schema_version":3}"#),
        DecodeError::UnsupportedVersion(3)
    );
    let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        decode(Some(&huge), NOW, SKEW),
        Err(DecodeError::TooLarge(MAX_MESSAGE_BYTES + 1))
    );
}

#[test]
fn strings_and_times_outside_the_contract_are_refused() {
    let with = |field: &str, value: serde_json::Value| {
        let mut v = serde_json::json!({"event_id": "a", "event_type": "purchase",
                                           "event_time": 1, "schema_version": 2});
        v[field] = value;
        decode(Some(v.to_string().as_bytes()), NOW, SKEW)
    };
    for field in [
        "event_id",
        "event_type",
        "user_id",
        "product_id",
        "city",
        "country",
    ] {
        assert!(
            matches!(
                with(field, "a\u{0}b".into()),
                Err(DecodeError::BadString(_))
            ),
            "NUL in {field}"
        );
        assert!(
            with(field, "x".repeat(5_000).into()).is_err(),
            "5 KB {field}"
        );
    }
    let v1 = r#"{"event_id":"a","event_type":"a","event_time":1,"location":"B\u0000, DE"}"#;
    assert!(matches!(bad(v1), DecodeError::BadString(_)));
    for t in [i64::MIN, -1, validity::MAX_EVENT_TIME + 1, i64::MAX] {
        assert_eq!(
            with("event_time", t.into()),
            Err(DecodeError::EventTimeOutOfRange(t))
        );
    }
    assert!(matches!(
        with("event_time", "0000-01-01T00:00:00Z".into()),
        Err(DecodeError::EventTimeOutOfRange(_))
    ));
    // Within range and the skew: accepted, at both ends of the range.
    assert!(with("event_time", 0.into()).is_ok());
    let far = validity::MAX_EVENT_TIME;
    assert!(
        decode(
            Some(format!(r#"{{"event_id":"a","event_type":"a","event_time":{far}}}"#).as_bytes()),
            far,
            0
        )
        .is_ok()
    );
    // The longest accepted values.
    assert!(with("user_id", "u".repeat(validity::MAX_USER_ID_BYTES).into()).is_ok());
    assert!(with("country", "c".repeat(validity::MAX_COUNTRY_BYTES).into()).is_ok());
}

#[test]
fn arbitrary_input_is_decoded_or_refused_with_a_reason() {
    use proptest::prelude::*;
    let config = ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    };
    let fields = || {
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("event_id"),
                    Just("event_type"),
                    Just("event_time"),
                    Just("schema_version"),
                    Just("amount"),
                    Just("location"),
                    Just("country"),
                    Just("user_id"),
                    Just("x"),
                ],
                prop_oneof![
                    any::<i64>().prop_map(|n| n.to_string()),
                    any::<f64>().prop_map(|f| f.to_string()),
                    "[a-zA-Z0-9 ,:.+-]{0,40}".prop_map(|t| format!("{t:?}")),
                    Just("null".to_string()),
                    Just("[]".to_string()),
                    Just("\"2026-11-21T13:45:12Z\"".to_string()),
                ],
            ),
            0..8,
        )
    };
    // Raw bytes, and JSON objects built from the contract's field names with values of every
    // type: never a panic, and every refusal carries a reason.
    proptest!(config.clone(), |(bytes in proptest::collection::vec(any::<u8>(), 0..512))| {
        if let Err(reason) = decode(Some(&bytes), NOW, SKEW) {
            prop_assert!(!reason.to_string().is_empty());
        }
    });
    proptest!(config, |(pairs in fields())| {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        let json = format!("{{{}}}", body.join(","));
        match decode(Some(json.as_bytes()), NOW, SKEW) {
            Ok(event) => prop_assert!(!event.event_id.is_empty() && event.event_id.len() <= MAX_EVENT_ID_BYTES),
            Err(reason) => prop_assert!(!reason.to_string().is_empty()),
        }
    });
}
