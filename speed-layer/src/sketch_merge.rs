//! Distinct-count sketches of the rows a batch touches, merged with what is stored.

use chrono::{DateTime, Utc};
use shared_schema::hll::Hll;
use shared_schema::time::to_datetime;
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{Partial, PartialKey},
};

/// Sketches cannot be merged in SQL, so the stored sketch of every row the batch touches is
/// read (and locked) and merged into the batch's partial, which then replaces it. Sketch union
/// is idempotent, so this stays exact even if a row were written twice.
pub(crate) async fn merge_stored_sketches(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    catalog: &MetricCatalog,
    rows: &mut [(PartialKey, i32, Partial)],
) -> Result<(), sqlx::Error> {
    let with_sketch: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].2.sketch.is_some())
        .collect();
    if with_sketch.is_empty() {
        return Ok(());
    }
    let metrics: Vec<&str> = with_sketch
        .iter()
        .map(|&i| catalog.metrics[rows[i].0.metric].name.as_str())
        .collect();
    let buckets: Vec<DateTime<Utc>> = with_sketch
        .iter()
        .map(|&i| to_datetime(rows[i].0.bucket_start))
        .collect();
    let dims: Vec<&str> = with_sketch
        .iter()
        .map(|&i| rows[i].0.dims.as_str())
        .collect();
    let partitions: Vec<i32> = with_sketch.iter().map(|&i| rows[i].1).collect();
    // Two instances can write one row while a partition moves between them: serialise on the
    // row's key first, in sorted order, so neither overwrites the other's registers.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(m || chr(31) || b::text || chr(31) || d || chr(31) || p::text, 0))
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int[]) AS k(m, b, d, p)
         ORDER BY m, b, d, p",
    )
    .bind(&metrics)
    .bind(&buckets)
    .bind(&dims)
    .bind(&partitions)
    .execute(&mut **tx)
    .await?;
    let stored: Vec<(i32, Vec<u8>)> = sqlx::query_as(
        "SELECT k.ord::int, a.sketch
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int[]) WITH ORDINALITY AS k(m, b, d, p, ord)
         JOIN speed_aggregates a ON a.metric = k.m AND a.bucket_start = k.b AND a.dims = k.d AND a.partition = k.p
         WHERE a.sketch IS NOT NULL
         ORDER BY k.ord
         FOR UPDATE OF a",
    )
    .bind(&metrics)
    .bind(&buckets)
    .bind(&dims)
    .bind(&partitions)
    .fetch_all(&mut **tx)
    .await?;
    for (ordinal, bytes) in stored {
        let Some(&row) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|k| with_sketch.get(k))
        else {
            continue;
        };
        match Hll::from_bytes(&bytes) {
            Ok(existing) => {
                if let Some(sketch) = rows[row].2.sketch.as_mut() {
                    sketch.merge(&existing);
                }
            }
            Err(e) => tracing::error!(error = %e, "a stored sketch is unreadable; it is replaced"),
        }
    }
    Ok(())
}
