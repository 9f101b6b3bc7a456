//! The batch layer's side of the temporal join: the deduplicated events joined with the
//! profile changelog the lander keeps in the lake, by the SQL of
//! `shared_schema::profiles::temporal_join_sql`, the rule the speed layer applies with
//! `shared_schema::profiles::version_at`. The tests below check that the two agree.

use crate::BatchError;
use crate::changelog_batch::changelog_schema;
use datafusion::error::Result as DfResult;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, lit};
use shared_schema::profiles::{UNKNOWN, temporal_join_sql};

const EVENTS_TABLE: &str = "events_for_join";
const VERSIONS_TABLE: &str = "profile_versions";

/// `events` (with `user_id` and `event_time_ms`) with `tier` and `signup_country` added from the
/// changelog files at `changelog_paths` (none: every event's are `unknown`). Not cached: each
/// metric that reads a profile plans the join after its own filter (pushed below the join's
/// preserved side), where a cache held a second copy of every event.
pub async fn enrich(
    ctx: &SessionContext,
    events: DataFrame,
    changelog_paths: &[String],
) -> Result<DataFrame, BatchError> {
    join(ctx, events, changelog_paths)
        .await
        .map_err(|source| BatchError::JoinProfiles {
            files: changelog_paths.len(),
            source,
        })
}

async fn join(
    ctx: &SessionContext,
    events: DataFrame,
    changelog_paths: &[String],
) -> DfResult<DataFrame> {
    if changelog_paths.is_empty() {
        // What the join gives an event without a version, without joining an empty table: a
        // Ballista cluster receives plans as protobuf, which has no form for an in-memory table
        // and drops the columns of an empty relation.
        return events
            .with_column("tier", lit(UNKNOWN))?
            .with_column("signup_country", lit(UNKNOWN));
    }
    ctx.register_table(EVENTS_TABLE, events.into_view())?;
    let versions = ctx
        .read_parquet(
            changelog_paths.to_vec(),
            ParquetReadOptions::default().schema(&changelog_schema()),
        )
        .await?;
    ctx.register_table(VERSIONS_TABLE, versions.into_view())?;
    ctx.sql(&temporal_join_sql(EVENTS_TABLE, VERSIONS_TABLE))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog_batch::versions_to_batch;
    use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use proptest::prelude::*;
    use shared_schema::profiles::{
        Profile, ProfileHistory, ProfileVersion, SourcedVersion, UNKNOWN,
    };
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// What the SQL gives per event id: (tier, signup_country).
    fn joined(
        versions: &[ProfileVersion],
        events: &[(String, Option<String>, i64)],
    ) -> BTreeMap<String, (Option<String>, Option<String>)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let ctx = SessionContext::new();
            let schema = Arc::new(Schema::new(vec![
                Field::new("event_id", DataType::Utf8, false),
                Field::new("user_id", DataType::Utf8, true),
                Field::new("event_time_ms", DataType::Int64, false),
            ]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(events.iter().map(|e| &e.0))),
                    Arc::new(
                        events
                            .iter()
                            .map(|e| e.1.as_deref())
                            .collect::<StringArray>(),
                    ),
                    Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.2))),
                ],
            )
            .unwrap();
            let events = ctx
                .read_table(Arc::new(
                    MemTable::try_new(schema, vec![vec![batch]]).unwrap(),
                ))
                .unwrap();
            // The versions through a Parquet file, as the lander writes them.
            let dir = std::env::temp_dir().join(format!("enrich-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("part.parquet");
            let sourced: Vec<SourcedVersion> = versions
                .iter()
                .enumerate()
                .map(|(i, v)| SourcedVersion {
                    partition: 0,
                    offset: i as i64,
                    version: v.clone(),
                })
                .collect();
            let mut paths = Vec::new();
            if !sourced.is_empty() {
                crate::lake::write_parquet_atomically(&path, &versions_to_batch(&sourced).unwrap())
                    .unwrap();
                paths.push(path.to_string_lossy().into_owned());
            }
            let batches = enrich(&ctx, events, &paths)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            let mut out = BTreeMap::new();
            for batch in batches {
                let column = |name: &str| {
                    arrow::compute::cast(batch.column_by_name(name).unwrap(), &DataType::Utf8)
                        .unwrap()
                };
                let (ids, tiers, countries) =
                    (column("event_id"), column("tier"), column("signup_country"));
                let text = |a: &Arc<dyn Array>, i: usize| {
                    let a = a.as_string::<i32>();
                    (!a.is_null(i)).then(|| a.value(i).to_string())
                };
                for i in 0..batch.num_rows() {
                    let id = text(&ids, i).unwrap();
                    assert!(
                        out.insert(id, (text(&tiers, i), text(&countries, i)))
                            .is_none(),
                        "an event joined twice"
                    );
                }
            }
            out
        })
    }

    fn expected(
        versions: &[ProfileVersion],
        events: &[(String, Option<String>, i64)],
    ) -> BTreeMap<String, (Option<String>, Option<String>)> {
        let mut history = ProfileHistory::default();
        versions.iter().for_each(|v| {
            history.apply(v.clone());
        });
        events
            .iter()
            .map(|(id, user, t)| {
                let fields = match history.at(user.as_deref(), *t) {
                    Some(p) => (Some(p.tier.clone()), p.signup_country.clone()),
                    None => (Some(UNKNOWN.into()), Some(UNKNOWN.into())),
                };
                (id.clone(), fields)
            })
            .collect()
    }

    fn version() -> impl Strategy<Value = ProfileVersion> {
        (
            0u8..3,
            0i64..20,
            0i64..6,
            proptest::option::of((0u8..3, proptest::option::of(0u8..2))),
        )
            .prop_map(|(user, valid_from, lsn, profile)| ProfileVersion {
                user_id: format!("u{user}"),
                valid_from: valid_from * 10,
                lsn,
                profile: profile.map(|(tier, country)| Profile {
                    tier: ["bronze", "silver", "gold"][tier as usize].into(),
                    signup_country: country.map(|c| ["DE", "FR"][c as usize].into()),
                }),
            })
    }

    fn event() -> impl Strategy<Value = (Option<String>, i64)> {
        (proptest::option::of(0u8..4), -10i64..220)
            .prop_map(|(user, t)| (user.map(|u| format!("u{u}")), t))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn the_sql_join_and_the_rule_agree(
            versions in proptest::collection::vec(version(), 0..12),
            events in proptest::collection::vec(event(), 1..30),
        ) {
            // One row per (user, valid_from, lsn), as the readers keep them; the same change
            // delivered twice is the same row, which the test below covers.
            let mut unique: BTreeMap<(String, i64, i64), ProfileVersion> = BTreeMap::new();
            for v in versions {
                unique.insert((v.user_id.clone(), v.valid_from, v.lsn), v);
            }
            let versions: Vec<ProfileVersion> = unique.into_values().collect();
            let events: Vec<(String, Option<String>, i64)> = events
                .into_iter()
                .enumerate()
                .map(|(i, (user, t))| (format!("e{i}"), user, t))
                .collect();
            prop_assert_eq!(joined(&versions, &events), expected(&versions, &events));
        }
    }

    #[test]
    fn a_change_delivered_twice_joins_once() {
        let version = ProfileVersion {
            user_id: "u1".into(),
            valid_from: 10,
            lsn: 3,
            profile: Some(Profile {
                tier: "gold".into(),
                signup_country: None,
            }),
        };
        let events = vec![
            ("a".to_string(), Some("u1".to_string()), 5),
            ("b".to_string(), Some("u1".to_string()), 10),
            ("c".to_string(), None, 10),
        ];
        let got = joined(&[version.clone(), version.clone()], &events);
        assert_eq!(got, expected(&[version], &events));
        assert_eq!(got["b"].0.as_deref(), Some("gold"));
        assert_eq!(got["a"].0.as_deref(), Some(UNKNOWN));
        assert_eq!(got["c"].0.as_deref(), Some(UNKNOWN));
    }
}
