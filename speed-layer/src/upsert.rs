//! Adding a batch's partials to `speed_aggregates`, one row per metric, bucket, dimensions and
//! Kafka partition.

use crate::sketch_merge::merge_stored_sketches;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use shared_schema::event::AMOUNT_SCALE;
use shared_schema::hll::Hll;
use shared_schema::time::to_datetime;
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{Partial, PartialKey},
};
use std::collections::{BTreeMap, HashMap};

/// Adds partials to `speed_aggregates`: one `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO
/// UPDATE` per batch. Public for the write-path benchmark.
pub async fn upsert_partials(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    catalog: &MetricCatalog,
    per_partition: BTreeMap<i32, HashMap<PartialKey, Partial>>,
) -> Result<(), sqlx::Error> {
    // Sorted by primary key, again so that concurrent writers take row locks in one order.
    let mut rows: Vec<(PartialKey, i32, Partial)> = per_partition
        .into_iter()
        .flat_map(|(partition, table)| table.into_iter().map(move |(k, v)| (k, partition, v)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    merge_stored_sketches(tx, catalog, &mut rows).await?;

    let metrics: Vec<&str> = rows
        .iter()
        .map(|(k, _, _)| catalog.metrics[k.metric].name.as_str())
        .collect();
    let buckets: Vec<DateTime<Utc>> = rows
        .iter()
        .map(|(k, _, _)| to_datetime(k.bucket_start))
        .collect();
    let dims: Vec<&str> = rows.iter().map(|(k, _, _)| k.dims.as_str()).collect();
    let partitions: Vec<i32> = rows.iter().map(|(_, p, _)| *p).collect();
    let counts: Vec<i64> = rows.iter().map(|(_, _, v)| v.count).collect();
    let sums: Vec<Decimal> = rows
        .iter()
        .map(|(_, _, v)| Decimal::from_i128_with_scale(v.sum_micros, AMOUNT_SCALE))
        .collect();
    let mins: Vec<Option<i64>> = rows.iter().map(|(_, _, v)| v.min_micros).collect();
    let maxs: Vec<Option<i64>> = rows.iter().map(|(_, _, v)| v.max_micros).collect();
    let sketches: Vec<Option<Vec<u8>>> = rows
        .iter()
        .map(|(_, _, v)| v.sketch.as_ref().map(Hll::to_bytes))
        .collect();
    sqlx::query(
        "INSERT INTO speed_aggregates
             (metric, bucket_start, dims, partition, event_count, sum_micros, min_micros, max_micros, sketch)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int[], $5::bigint[],
                              $6::numeric[], $7::bigint[], $8::bigint[], $9::bytea[])
         ON CONFLICT (metric, bucket_start, dims, partition) DO UPDATE SET
             event_count = speed_aggregates.event_count + EXCLUDED.event_count,
             sum_micros = speed_aggregates.sum_micros + EXCLUDED.sum_micros,
             min_micros = LEAST(speed_aggregates.min_micros, EXCLUDED.min_micros),
             max_micros = GREATEST(speed_aggregates.max_micros, EXCLUDED.max_micros),
             sketch = COALESCE(EXCLUDED.sketch, speed_aggregates.sketch),
             updated_at = now()",
    )
    .bind(&metrics)
    .bind(&buckets)
    .bind(&dims)
    .bind(&partitions)
    .bind(&counts)
    .bind(&sums)
    .bind(&mins)
    .bind(&maxs)
    .bind(&sketches)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
