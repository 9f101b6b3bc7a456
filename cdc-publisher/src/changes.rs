//! Reading the replication slot: wal2json's rows of complete transactions made Debezium-style
//! envelopes, or refusals for the rows that cannot be (see `refusals`).

use crate::refusals::Refused;
use crate::{CONNECTOR, CdcError, Publisher, SOURCE_SCHEMA};
use chrono::DateTime;
use serde::Deserialize;
use shared_schema::profiles::{
    ChangeEnvelope, ChangeSource, ProfileRow, SOURCE_TABLE, format_lsn, parse_lsn,
};
use shared_schema::time::{Millis, format_rfc3339, now_millis};

/// One change of a wal2json `format-version` 2 row.
#[derive(Debug, Deserialize)]
struct Wal2JsonRow {
    action: String,
    timestamp: Option<String>,
    lsn: Option<String>,
    xid: Option<i64>,
    table: Option<String>,
    #[serde(default)]
    columns: Vec<Column>,
    #[serde(default)]
    identity: Vec<Column>,
}

#[derive(Debug, Deserialize)]
struct Column {
    name: String,
    value: serde_json::Value,
}

/// Changes of complete transactions, and the slot position after them.
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub(crate) envelopes: Vec<ChangeEnvelope>,
    /// Changes that cannot be published (see `refusals`): quarantined, then confirmed.
    pub(crate) refused: Vec<Refused>,
    /// The end of the last complete transaction read: where the slot moves once published.
    pub(crate) confirm: Option<String>,
}

impl Publisher {
    /// The changes the slot holds past its confirmed position, up to `cdc.batch_max_changes`,
    /// without moving it.
    pub(crate) async fn read_changes(&self) -> Result<Read, CdcError> {
        let table = format!("{SOURCE_SCHEMA}.{SOURCE_TABLE}");
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2,
                 'format-version', '2', 'include-timestamp', '1', 'include-lsn', '1',
                 'include-xids', '1', 'include-types', '0', 'add-tables', $3)",
        )
        .bind(&self.config.cdc.slot)
        .bind(i32::try_from(self.config.cdc.batch_max_changes).unwrap_or(i32::MAX))
        .bind(&table)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| CdcError::PeekChanges {
            slot: self.config.cdc.slot.clone(),
            source,
        })?;
        let mut read = Read::default();
        let (mut pending, mut pending_refused) = (Vec::new(), Vec::new());
        let mut xid = None;
        for (row_lsn, data) in rows {
            // A change that cannot be made an envelope is quarantined, never retried forever.
            let refuse = |reason: String| Refused::new(&row_lsn, &data, reason);
            let row: Wal2JsonRow = match serde_json::from_str(&data) {
                Ok(row) => row,
                Err(e) => {
                    pending_refused.push(refuse(format!("wal2json output: {e}")));
                    continue;
                }
            };
            match row.action.as_str() {
                "B" => xid = row.xid,
                "C" => {
                    read.envelopes.append(&mut pending);
                    read.refused.append(&mut pending_refused);
                    read.confirm = Some(row_lsn);
                }
                "I" | "U" | "D" if row.table.as_deref() == Some(SOURCE_TABLE) => {
                    match self.envelope(&row, xid) {
                        Ok(envelope) => pending.push(envelope),
                        Err(e) => pending_refused.push(refuse(e)),
                    }
                }
                // Messages, truncates and other tables carry no profile version.
                _ => {}
            }
        }
        Ok(read)
    }

    fn envelope(&self, row: &Wal2JsonRow, xid: Option<i64>) -> Result<ChangeEnvelope, String> {
        let lsn_text = row.lsn.as_deref().ok_or("no lsn")?;
        let lsn = parse_lsn(lsn_text).ok_or("bad lsn")?;
        let committed = row
            .timestamp
            .as_deref()
            .map(parse_pg_time)
            .transpose()?
            .unwrap_or_else(now_millis);
        let image = |columns: &[Column]| -> Result<Option<ProfileRow>, String> {
            if columns.is_empty() {
                return Ok(None);
            }
            let text = |name: &str| -> Option<String> {
                columns
                    .iter()
                    .find(|c| c.name == name)
                    .and_then(|c| c.value.as_str().map(str::to_string))
            };
            let updated_at = parse_pg_time(&text("updated_at").ok_or("no updated_at")?)?;
            Ok(Some(ProfileRow {
                user_id: text("user_id").ok_or("no user_id")?,
                tier: text("tier").ok_or("no tier")?,
                signup_country: text("signup_country"),
                updated_at: format_rfc3339(updated_at),
            }))
        };
        let (op, before, after) = match row.action.as_str() {
            "I" => ("c", None, image(&row.columns)?),
            "U" => ("u", image(&row.identity)?, image(&row.columns)?),
            _ => ("d", image(&row.identity)?, None),
        };
        Ok(ChangeEnvelope {
            before,
            after,
            op: op.into(),
            ts_ms: now_millis(),
            source: self.source(lsn, xid, committed, false),
        })
    }

    pub(crate) fn source(
        &self,
        lsn: i64,
        tx_id: Option<i64>,
        ts_ms: Millis,
        snapshot: bool,
    ) -> ChangeSource {
        ChangeSource {
            connector: CONNECTOR.into(),
            db: self.database.clone(),
            schema: SOURCE_SCHEMA.into(),
            table: SOURCE_TABLE.into(),
            lsn,
            lsn_text: format_lsn(lsn),
            tx_id,
            ts_ms,
            snapshot,
        }
    }
}

/// Postgres's text form of a `timestamptz` (`2026-11-22 05:18:10.141435+00`) in epoch ms.
fn parse_pg_time(text: &str) -> Result<Millis, String> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("timestamp {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_times_parse() {
        assert_eq!(parse_pg_time("1970-01-01 00:00:01.5+00"), Ok(1_500));
        assert_eq!(parse_pg_time("1970-01-01 01:00:00+01"), Ok(0));
        assert_eq!(parse_pg_time("1970-01-01 00:00:00+05:30"), Ok(-19_800_000));
        assert!(parse_pg_time("yesterday").is_err());
    }
}
