//! What a checkpoint writes of its cells: one `speed_cells` row per bucket it changed, packing,
//! per metric, every changed cell of that bucket (`shared_schema::metrics::cells`) beside the
//! number of the metric's events it saw there and how many were late. Postgres sees a few rows
//! per checkpoint however many metrics, cells, users or partitions the batch touched; readers
//! sum a bucket's rows. A bucket that piled up [`MAX_ROWS_PER_BUCKET`] rows is merged into one
//! by the next checkpoint that touches it, so readers never sum more than that.
//!
//! Every caller holds the log head (`state::store::lock_head`), which orders the checkpoints of
//! every instance: a merge never races another checkpoint's rows.

use chrono::{DateTime, Utc};
use shared_schema::catalog::MetricCatalog;
use shared_schema::metrics::Partial;
use shared_schema::metrics::cells::{decode_cells, encode_cells, join_sections, split_sections};
use shared_schema::time::{Millis, to_datetime};
use std::collections::{BTreeMap, HashMap};

/// Changed cells: per (metric index, bucket start), by dims key.
pub type Cells = HashMap<(usize, Millis), HashMap<String, Partial>>;

/// Rows one bucket may hold before they are merged. More rows cost readers a decode each;
/// fewer cost the writer a rewrite of the bucket more often (a merge rewrites all its cells
/// once per this many checkpoints that touch it).
pub const MAX_ROWS_PER_BUCKET: i64 = 16;

/// What [`write_cells`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CellsWritten {
    /// Rows inserted: one per bucket.
    pub rows: usize,
    /// Of those, buckets whose stored rows were merged into the new one.
    pub merged: usize,
}

/// One metric's part of a bucket: its changed cells, and how many of its events the checkpoint
/// counted there and how many of those were late (under every late policy).
#[derive(Default)]
struct Delta {
    cells: BTreeMap<String, Partial>,
    seen: i64,
    late: i64,
}

/// Per bucket start, per metric name: what a checkpoint writes.
type Buckets = BTreeMap<Millis, BTreeMap<String, Delta>>;

/// Writes the changed `cells` and the `(seen, late)` event `counts` per metric and bucket of the
/// checkpoint `seq` (the log head it holds). Public for the write-path benchmark.
pub async fn write_cells(
    tx: &mut sqlx::PgConnection,
    catalog: &MetricCatalog,
    seq: i64,
    cells: Cells,
    counts: &BTreeMap<(usize, Millis), (i64, i64)>,
) -> Result<CellsWritten, sqlx::Error> {
    let name = |index: usize| catalog.metrics[index].name.clone();
    let mut buckets = Buckets::new();
    for ((metric, bucket), changed) in cells.into_iter().filter(|(_, c)| !c.is_empty()) {
        let delta = buckets
            .entry(bucket)
            .or_default()
            .entry(name(metric))
            .or_default();
        delta.cells = changed.into_iter().collect();
    }
    for ((metric, bucket), (seen, late)) in counts {
        let delta = buckets
            .entry(*bucket)
            .or_default()
            .entry(name(*metric))
            .or_default();
        delta.seen += seen;
        delta.late += late;
    }
    if buckets.is_empty() {
        return Ok(CellsWritten::default());
    }
    let starts: Vec<DateTime<Utc>> = buckets.keys().map(|b| to_datetime(*b)).collect();
    let full: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT bucket_start FROM speed_cells WHERE bucket_start = ANY($1)
         GROUP BY 1 HAVING count(*) >= $2",
    )
    .bind(&starts)
    .bind(MAX_ROWS_PER_BUCKET)
    .fetch_all(&mut *tx)
    .await?;
    let merged = full.len();
    if !full.is_empty() {
        merge_stored(tx, &full, &mut buckets).await?;
    }
    insert(tx, seq, &buckets).await?;
    Ok(CellsWritten {
        rows: buckets.len(),
        merged,
    })
}

/// Deletes the stored rows of the buckets `full` and adds what they held to `buckets`, metrics
/// this instance does not define included, so that the merged row loses nothing.
async fn merge_stored(
    tx: &mut sqlx::PgConnection,
    full: &[DateTime<Utc>],
    buckets: &mut Buckets,
) -> Result<(), sqlx::Error> {
    type Stored = (DateTime<Utc>, Vec<String>, Vec<i64>, Vec<i64>, Vec<u8>);
    let stored: Vec<Stored> = sqlx::query_as(
        "DELETE FROM speed_cells WHERE bucket_start = ANY($1)
         RETURNING bucket_start, metrics, seen, late, body",
    )
    .bind(full)
    .fetch_all(&mut *tx)
    .await?;
    let malformed = |e| sqlx::Error::Decode(Box::new(e));
    for (start, metrics, seen, late, body) in stored {
        let sections = split_sections(&body).map_err(malformed)?;
        if sections.len() != metrics.len()
            || seen.len() != metrics.len()
            || late.len() != metrics.len()
        {
            return Err(sqlx::Error::Protocol(format!(
                "a speed_cells row of {start} lists {} metrics for {} sections",
                metrics.len(),
                sections.len()
            )));
        }
        let bucket = buckets.entry(start.timestamp_millis()).or_default();
        for (i, metric) in metrics.into_iter().enumerate() {
            let delta = bucket.entry(metric).or_default();
            for (dims, partial) in decode_cells(sections[i]).map_err(malformed)? {
                delta.cells.entry(dims).or_default().merge(&partial);
            }
            delta.seen += seen[i];
            delta.late += late[i];
        }
    }
    Ok(())
}

/// One row per bucket. A row's metrics, seen and late counts are slices of flat arrays, as
/// UNNEST cannot take an array per row.
async fn insert(
    tx: &mut sqlx::PgConnection,
    seq: i64,
    buckets: &Buckets,
) -> Result<(), sqlx::Error> {
    let (mut starts, mut lows, mut highs, mut counts, mut bodies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut metrics, mut seen, mut late) = (Vec::new(), Vec::new(), Vec::new());
    for (start, deltas) in buckets {
        starts.push(to_datetime(*start));
        lows.push(metrics.len() as i32 + 1);
        let mut sections = Vec::with_capacity(deltas.len());
        let mut cells = 0;
        for (metric, delta) in deltas {
            metrics.push(metric.as_str());
            seen.push(delta.seen);
            late.push(delta.late);
            cells += delta.cells.len() as i32;
            sections.push(encode_cells(
                delta.cells.iter().map(|(dims, p)| (dims.as_str(), p)),
            ));
        }
        highs.push(metrics.len() as i32);
        counts.push(cells);
        bodies.push(join_sections(&sections));
    }
    sqlx::query(
        "INSERT INTO speed_cells (bucket_start, seq, metrics, seen, late, cells, body)
         SELECT r.b, $1, ($7::text[])[r.lo:r.hi], ($8::bigint[])[r.lo:r.hi],
                ($9::bigint[])[r.lo:r.hi], r.n, r.body
         FROM UNNEST($2::timestamptz[], $3::int[], $4::int[], $5::int[], $6::bytea[])
             AS r(b, lo, hi, n, body)",
    )
    .bind(seq)
    .bind(&starts)
    .bind(&lows)
    .bind(&highs)
    .bind(&counts)
    .bind(&bodies)
    .bind(&metrics)
    .bind(&seen)
    .bind(&late)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
