//! The initial snapshot: on the first start for a slot, the rows already in the table are
//! published once as `op: r`, recorded in `cdc_snapshots`.

use crate::{CdcError, Publisher};
use chrono::DateTime;
use shared_schema::profiles::{ChangeEnvelope, ProfileRow, parse_lsn};
use shared_schema::time::now_millis;

impl Publisher {
    /// Publishes the table's rows as they are, once per slot: what the slot cannot replay
    /// because it was written before the slot existed.
    pub(crate) async fn snapshot_once(&self) -> Result<(), CdcError> {
        let slot = &self.config.cdc.slot;
        let reading = |source| CdcError::ReadSnapshot {
            slot: slot.clone(),
            source,
        };
        let done: Option<i64> =
            sqlx::query_scalar("SELECT rows FROM cdc_snapshots WHERE slot = $1")
                .bind(slot)
                .fetch_optional(&self.pool)
                .await
                .map_err(reading)?;
        if done.is_some() {
            return Ok(());
        }
        // Every row read here was committed at or before this LSN; a change streamed after it
        // has a greater one and wins where both describe the same version.
        let lsn_text: String = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_one(&self.pool)
        .await
        .map_err(reading)?;
        let lsn = parse_lsn(&lsn_text).ok_or_else(|| CdcError::SnapshotLsn {
            slot: slot.clone(),
            text: lsn_text.clone(),
        })?;
        let rows: Vec<(String, String, Option<String>, DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT user_id, tier, signup_country, updated_at FROM user_profiles ORDER BY user_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(reading)?;
        let now = now_millis();
        let envelopes: Vec<ChangeEnvelope> = rows
            .iter()
            .map(|(user_id, tier, country, updated_at)| ChangeEnvelope {
                before: None,
                after: Some(ProfileRow::new(
                    user_id,
                    tier,
                    country.as_deref(),
                    updated_at.timestamp_millis(),
                )),
                op: "r".into(),
                ts_ms: now,
                source: self.source(lsn, None, now, true),
            })
            .collect();
        let unsendable = self.send_all(&envelopes).await?;
        crate::refusals::record(&self.pool, &unsendable)
            .await
            .map_err(CdcError::RecordRefusals)?;
        sqlx::query("INSERT INTO cdc_snapshots (slot, lsn, rows) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(slot)
            .bind(lsn)
            .bind(envelopes.len() as i64)
            .execute(&self.pool)
            .await
            .map_err(|source| CdcError::RecordSnapshot {
                slot: slot.clone(),
                source,
            })?;
        tracing::info!(
            rows = envelopes.len(),
            lsn = lsn_text,
            "published the initial snapshot"
        );
        Ok(())
    }
}
