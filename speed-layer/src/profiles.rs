//! The speed layer's side of the temporal join: the profile changelog kept as state (in
//! `speed_profile_versions`, and in memory), and each event enriched with the version valid at
//! its event time by `shared_schema::profiles`' rule.
//!
//! A change that arrives after events it applies to (by `updated_at`) does not correct the
//! buckets already folded: those keep the version known when they were processed until the
//! next batch run recomputes them from the lake's changelog. Only events folded after the
//! change see it.

use shared_io::changelog::{ChangelogBatch, ChangelogReader, store_positions};
use shared_io::kafka::SourcedEvent;
use shared_io::{quarantine, retry};
use shared_schema::config::PlatformConfig;
use shared_schema::profiles::{Profile, ProfileHistory, ProfileVersion};
use sqlx::PgPool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Name under which the speed layer keeps its changelog positions and bad records.
const CONSUMER: &str = "speed-layer";

/// Sets each event's profile to the version valid at its event time.
pub fn enrich(history: &ProfileHistory, events: &mut [SourcedEvent]) {
    for sourced in events {
        let event = &mut sourced.event;
        event.profile = history
            .at(event.user_id.as_deref(), event.event_time)
            .cloned();
    }
}

/// Every version the speed layer has kept.
pub async fn load(pool: &PgPool) -> Result<ProfileHistory, sqlx::Error> {
    // user_id, valid_from, lsn, tier, signup_country, deleted
    type Row = (String, i64, i64, Option<String>, Option<String>, bool);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT user_id, valid_from, lsn, tier, signup_country, deleted FROM speed_profile_versions",
    )
    .fetch_all(pool)
    .await?;
    let mut history = ProfileHistory::default();
    for (user_id, valid_from, lsn, tier, signup_country, deleted) in rows {
        history.apply(ProfileVersion {
            user_id,
            valid_from,
            lsn,
            profile: (!deleted).then(|| Profile {
                tier: tier.unwrap_or_default(),
                signup_country,
            }),
        });
    }
    Ok(history)
}

/// Reads the changelog until aborted: each record into `history`, then into Postgres with the
/// reader's positions in one transaction.
pub async fn follow(pool: PgPool, config: PlatformConfig, history: Arc<RwLock<ProfileHistory>>) {
    let topic = config.cdc.topic.clone();
    let mut reader = ChangelogReader::connect_until_success(&pool, &config, CONSUMER).await;
    loop {
        let batch = reader
            .next_batch_until_success(1000, Duration::from_millis(100))
            .await;
        if !batch.advanced {
            continue;
        }
        // Memory first: an event folded from now on sees the change, even before it is stored
        // (a restart reads it again from the stored position).
        let applied = {
            let mut history = history.write().unwrap_or_else(|e| e.into_inner());
            batch
                .versions
                .iter()
                .filter(|v| history.apply(v.version.clone()))
                .count()
        };
        retry::until_success("profile changelog commit", || commit(&pool, &topic, &batch)).await;
        tracing::info!(
            records = batch.versions.len(),
            applied,
            "applied profile changes"
        );
    }
}

async fn commit(pool: &PgPool, topic: &str, batch: &ChangelogBatch) -> Result<(), sqlx::Error> {
    let versions: Vec<&ProfileVersion> = batch.versions.iter().map(|v| &v.version).collect();
    let users: Vec<&str> = versions.iter().map(|v| v.user_id.as_str()).collect();
    let valid_from: Vec<i64> = versions.iter().map(|v| v.valid_from).collect();
    let lsns: Vec<i64> = versions.iter().map(|v| v.lsn).collect();
    let tiers: Vec<Option<&str>> = versions
        .iter()
        .map(|v| v.profile.as_ref().map(|p| p.tier.as_str()))
        .collect();
    let countries: Vec<Option<&str>> = versions
        .iter()
        .map(|v| v.profile.as_ref().and_then(|p| p.signup_country.as_deref()))
        .collect();
    let deleted: Vec<bool> = versions.iter().map(|v| v.profile.is_none()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO speed_profile_versions (user_id, valid_from, lsn, tier, signup_country, deleted)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bool[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&users)
    .bind(&valid_from)
    .bind(&lsns)
    .bind(&tiers)
    .bind(&countries)
    .bind(&deleted)
    .execute(&mut *tx)
    .await?;
    store_positions(&mut tx, CONSUMER, topic, &batch.positions).await?;
    quarantine::record(&mut tx, topic, CONSUMER, &batch.bad).await?;
    tx.commit().await
}
