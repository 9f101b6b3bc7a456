//! The quarantine: bad input kept with where it came from, and why (CONTRACT §1).

use sqlx::{Postgres, Transaction};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage {
    pub partition: i32,
    pub offset: i64,
    pub raw: Option<Vec<u8>>,
    pub reason: String,
}

/// Records bad messages in the caller's transaction, so they are kept exactly when the offsets
/// that skip them are committed. Several consumers read the same message; it is kept once.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    detected_by: &str,
    bad: &[BadMessage],
) -> Result<(), sqlx::Error> {
    if bad.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = bad.iter().map(|b| b.partition).collect();
    let offsets: Vec<i64> = bad.iter().map(|b| b.offset).collect();
    let raws: Vec<Option<Vec<u8>>> = bad.iter().map(|b| b.raw.clone()).collect();
    // A reason may quote the input; Postgres text cannot hold every character of it.
    let reasons: Vec<String> = bad
        .iter()
        .map(|b| crate::commit_guard::printable(&b.reason))
        .collect();
    sqlx::query(
        "INSERT INTO quarantine (topic, partition, kafka_offset, raw, reason, detected_by)
         SELECT $1, p, o, r, why, $6
         FROM UNNEST($2::int[], $3::bigint[], $4::bytea[], $5::text[]) AS u(p, o, r, why)
         ON CONFLICT DO NOTHING",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&raws)
    .bind(&reasons)
    .bind(detected_by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
