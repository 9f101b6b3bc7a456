//! What a checkpoint writes of its cells: one `speed_cells` row per metric and bucket it changed,
//! packing every changed cell of that bucket (`shared_schema::metrics::cells`) beside the
//! number of the metric's events it saw there and how many were late. Postgres sees a
//! few rows per checkpoint however many cells, users or partitions the batch touched; readers
//! sum a bucket's rows. A bucket that piled up [`MAX_ROWS_PER_BUCKET`] rows is merged into one
//! by the next checkpoint that touches it, so readers never sum more than that.
//!
//! Every caller holds the log head (`state::store::lock_head`), which orders the checkpoints of
//! every instance: a merge never races another checkpoint's rows.

use chrono::{DateTime, Utc};
use shared_schema::catalog::MetricCatalog;
use shared_schema::metrics::Partial;
use shared_schema::metrics::cells::{decode_cells, encode_cells};
use shared_schema::time::{Millis, to_datetime};
use std::collections::{BTreeMap, HashMap};

/// Changed cells: per (metric index, bucket start), by dims key.
pub type Cells = HashMap<(usize, Millis), HashMap<String, Partial>>;

/// Rows one bucket of one metric may hold before they are merged. More rows cost readers a
/// decode each; fewer cost the writer a rewrite of the bucket more often (a merge rewrites all
/// its cells once per this many checkpoints that touch it).
pub const MAX_ROWS_PER_BUCKET: i64 = 16;

/// What [`write_cells`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CellsWritten {
    /// Rows inserted: one per metric and bucket.
    pub rows: usize,
    /// Of those, buckets whose stored rows were merged into the new one.
    pub merged: usize,
}

/// One bucket's part of a checkpoint: its changed cells, and how many events of the metric the
/// checkpoint saw in it and how many of those were late (under every late policy).
#[derive(Default)]
struct Delta {
    cells: BTreeMap<String, Partial>,
    seen: i64,
    late: i64,
}

/// Writes the changed `cells` and the `(seen, late)` event `counts` per metric and bucket of the
/// checkpoint `seq` (the log head it holds). Public for the write-path benchmark.
pub async fn write_cells(
    tx: &mut sqlx::PgConnection,
    catalog: &MetricCatalog,
    seq: i64,
    cells: Cells,
    counts: &BTreeMap<(usize, Millis), (i64, i64)>,
) -> Result<CellsWritten, sqlx::Error> {
    // Sorted, so that rows are written in key order.
    let mut buckets: BTreeMap<(usize, Millis), Delta> = BTreeMap::new();
    for (bucket, changed) in cells.into_iter().filter(|(_, c)| !c.is_empty()) {
        buckets.entry(bucket).or_default().cells = changed.into_iter().collect();
    }
    for (bucket, (seen, late)) in counts {
        let delta = buckets.entry(*bucket).or_default();
        delta.seen += seen;
        delta.late += late;
    }
    if buckets.is_empty() {
        return Ok(CellsWritten::default());
    }
    let name = |index: usize| catalog.metrics[index].name.as_str();
    let metrics: Vec<&str> = buckets.keys().map(|(m, _)| name(*m)).collect();
    let starts: Vec<DateTime<Utc>> = buckets.keys().map(|(_, b)| to_datetime(*b)).collect();

    let full: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT c.metric, c.bucket_start
         FROM speed_cells c
         JOIN UNNEST($1::text[], $2::timestamptz[]) AS k(m, b)
           ON c.metric = k.m AND c.bucket_start = k.b
         GROUP BY 1, 2 HAVING count(*) >= $3",
    )
    .bind(&metrics)
    .bind(&starts)
    .bind(MAX_ROWS_PER_BUCKET)
    .fetch_all(&mut *tx)
    .await?;
    let merged = full.len();
    if !full.is_empty() {
        let (full_metrics, full_starts): (Vec<String>, Vec<DateTime<Utc>>) =
            full.into_iter().unzip();
        type Stored = (String, DateTime<Utc>, Vec<u8>, i64, i64);
        let stored: Vec<Stored> = sqlx::query_as(
            "DELETE FROM speed_cells c
             USING UNNEST($1::text[], $2::timestamptz[]) AS k(m, b)
             WHERE c.metric = k.m AND c.bucket_start = k.b
             RETURNING c.metric, c.bucket_start, c.body, c.seen, c.late",
        )
        .bind(&full_metrics)
        .bind(&full_starts)
        .fetch_all(&mut *tx)
        .await?;
        for (metric, start, body, seen, late) in stored {
            let decoded = decode_cells(&body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            // Only rows of the batch's buckets were deleted: each has its entry.
            let delta = buckets
                .iter_mut()
                .find(|((m, b), _)| name(*m) == metric && *b == start.timestamp_millis())
                .map(|(_, delta)| delta)
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!("merged a row of {metric} the batch lacks"))
                })?;
            for (dims, partial) in decoded {
                delta.cells.entry(dims).or_default().merge(&partial);
            }
            delta.seen += seen;
            delta.late += late;
        }
    }

    let counts: Vec<i32> = buckets.values().map(|d| d.cells.len() as i32).collect();
    let seen: Vec<i64> = buckets.values().map(|d| d.seen).collect();
    let late: Vec<i64> = buckets.values().map(|d| d.late).collect();
    let bodies: Vec<Vec<u8>> = buckets
        .values()
        .map(|d| encode_cells(d.cells.iter().map(|(dims, p)| (dims.as_str(), p))))
        .collect();
    sqlx::query(
        "INSERT INTO speed_cells (metric, bucket_start, seq, cells, body, seen, late)
         SELECT k.m, k.b, $3, k.n, k.body, k.seen, k.late
         FROM UNNEST($1::text[], $2::timestamptz[], $4::int[], $5::bytea[], $6::bigint[], $7::bigint[])
             AS k(m, b, n, body, seen, late)",
    )
    .bind(&metrics)
    .bind(&starts)
    .bind(seq)
    .bind(&counts)
    .bind(&bodies)
    .bind(&seen)
    .bind(&late)
    .execute(&mut *tx)
    .await?;
    Ok(CellsWritten {
        rows: buckets.len(),
        merged,
    })
}
