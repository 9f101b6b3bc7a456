//! Changes the publisher cannot publish: a wal2json row it cannot make an envelope of (an
//! `updated_at` of `infinity`, a missing column), or an envelope the broker refuses for what it
//! is (larger than the broker takes). Retrying either fails forever and would stop every later
//! change, so each is kept in the quarantine, with its reason, before the slot moves past it.
//!
//! The quarantine names a message by topic, partition and offset; a refused change is named by
//! the source table as its topic, partition -1 and its LSN as its offset.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use shared_io::quarantine::printable;
use shared_schema::profiles::{ChangeEnvelope, SOURCE_TABLE, parse_lsn};
use sqlx::PgPool;

/// The publisher's name in the quarantine's `detected_by`.
const DETECTED_BY: &str = "cdc-publisher";
/// The partition of every refused change in the quarantine.
const NO_PARTITION: i32 = -1;

#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    lsn: i64,
    raw: Vec<u8>,
    reason: String,
}

impl Refused {
    /// A change at `lsn` (text) whose wal2json output `data` cannot be published.
    pub fn new(lsn: &str, data: &str, reason: String) -> Refused {
        Refused {
            lsn: parse_lsn(lsn).unwrap_or_default(),
            raw: data.as_bytes().to_vec(),
            reason: printable(&format!("change at LSN {lsn}: {reason}")),
        }
    }

    /// An envelope the broker refused with `error`.
    pub fn unsendable(envelope: &ChangeEnvelope, payload: Vec<u8>, error: &KafkaError) -> Refused {
        Refused {
            lsn: envelope.source.lsn,
            raw: payload,
            reason: printable(&format!(
                "change at LSN {}: refused by the broker: {error}",
                envelope.source.lsn_text
            )),
        }
    }
}

/// Whether the broker refused a message for its content, which no retry changes.
pub fn refused_for_content(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// Keeps `refused` in the quarantine; a change kept before (a restart read it again) is kept once.
pub async fn record(pool: &PgPool, refused: &[Refused]) -> Result<(), sqlx::Error> {
    if refused.is_empty() {
        return Ok(());
    }
    for r in refused {
        tracing::warn!(lsn = r.lsn, reason = %r.reason, "a change of the profile table cannot be published; quarantined");
    }
    let lsns: Vec<i64> = refused.iter().map(|r| r.lsn).collect();
    let raws: Vec<Vec<u8>> = refused.iter().map(|r| r.raw.clone()).collect();
    let reasons: Vec<&str> = refused.iter().map(|r| r.reason.as_str()).collect();
    sqlx::query(
        "INSERT INTO quarantine (topic, partition, kafka_offset, raw, reason, detected_by)
         SELECT $1, $2, o, r, why, $3
         FROM UNNEST($4::bigint[], $5::bytea[], $6::text[]) AS u(o, r, why)
         ON CONFLICT DO NOTHING",
    )
    .bind(format!("public.{SOURCE_TABLE}"))
    .bind(NO_PARTITION)
    .bind(DETECTED_BY)
    .bind(&lsns)
    .bind(&raws)
    .bind(&reasons)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_change_is_named_by_its_lsn_with_a_printable_reason() {
        let r = Refused::new("0/1526230", "{\"x\":1}", "timestamp \"infinity\"\0".into());
        assert_eq!(r.lsn, 0x1526230);
        assert!(r.reason.starts_with("change at LSN 0/1526230: "));
        assert!(!r.reason.contains('\0'));
        assert!(refused_for_content(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(!refused_for_content(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
    }
}
