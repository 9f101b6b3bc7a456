use super::*;

fn version(valid_from: Millis, lsn: i64, tier: Option<&str>) -> ProfileVersion {
    ProfileVersion {
        user_id: "u1".into(),
        valid_from,
        lsn,
        profile: tier.map(|t| Profile {
            tier: t.into(),
            signup_country: None,
        }),
    }
}

#[test]
fn an_event_sees_the_version_valid_at_its_time() {
    let versions = [
        version(100, 5, Some("gold")),
        version(0, 1, Some("bronze")),
        version(100, 9, Some("silver")),
        version(200, 7, None),
    ];
    let tier = |t| profile_at(&versions, t).map(|p| p.tier.as_str());
    assert_eq!(tier(-1), None, "before the first version");
    assert_eq!(tier(0), Some("bronze"));
    assert_eq!(tier(99), Some("bronze"));
    assert_eq!(
        tier(100),
        Some("silver"),
        "the later write of the same time"
    );
    assert_eq!(tier(199), Some("silver"));
    assert_eq!(tier(200), None, "deleted");
}

#[test]
fn a_change_delivered_twice_is_applied_once() {
    let mut history = ProfileHistory::default();
    assert!(history.apply(version(0, 1, Some("bronze"))));
    assert!(!history.apply(version(0, 1, Some("bronze"))));
    assert_eq!(history.len(), 1);
    assert_eq!(
        history.at(Some("u1"), 5).map(|p| p.tier.as_str()),
        Some("bronze")
    );
    assert_eq!(history.at(None, 5), None);
    assert_eq!(history.at(Some("u2"), 5), None);
}

#[test]
fn envelopes_give_versions() {
    let source = ChangeSource {
        connector: "x".into(),
        db: "d".into(),
        schema: "public".into(),
        table: SOURCE_TABLE.into(),
        lsn: 42,
        lsn_text: format_lsn(42),
        tx_id: None,
        ts_ms: 5_000,
        snapshot: false,
    };
    let row = ProfileRow::new("u1", "gold", Some("DE"), 1_000);
    let update = ChangeEnvelope {
        before: None,
        after: Some(row.clone()),
        op: "u".into(),
        ts_ms: 6_000,
        source: source.clone(),
    };
    let text = serde_json::to_vec(&update).unwrap();
    let version = ChangeEnvelope::decode(&text).unwrap().version().unwrap();
    assert_eq!((version.valid_from, version.lsn), (1_000, 42));
    assert_eq!(
        version.profile.unwrap().signup_country.as_deref(),
        Some("DE")
    );
    let delete = ChangeEnvelope {
        before: Some(row),
        after: None,
        op: "d".into(),
        ts_ms: 6_000,
        source,
    };
    let tombstone = delete.version().unwrap();
    assert_eq!((tombstone.valid_from, tombstone.profile), (5_000, None));
    assert!(ChangeEnvelope::decode(b"{}").is_err());
}

#[test]
fn lsns_round_trip() {
    assert_eq!(parse_lsn("0/1526230"), Some(0x1526230));
    assert_eq!(parse_lsn("1/0"), Some(1 << 32));
    assert_eq!(format_lsn(0x1_0152_6230), "1/1526230");
    assert_eq!(parse_lsn("x"), None);
}
