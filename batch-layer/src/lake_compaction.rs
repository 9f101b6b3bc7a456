//! Compacting the lake's closed hours (issue 18): the lander writes a small file per touched
//! hour every flush (about 17 000 a day); after each promotion, `batch-layer run` rewrites the
//! hours before T that hold at least [`MIN_FILES`] files into one file each.
//!
//! The rows are copied as they are (copies of an id included, with their Kafka partition and
//! offset, which decide which copy the batch keeps), so every computation over the hour gives
//! what it gave before. One transaction swaps the files in `lake_files` and, for every version
//! computed from exactly the files it replaces, the hour's digest in `batch_version_lake`: an
//! incremental run then sees the hour unchanged instead of recomputing it. The old files are
//! deleted after that commit; the run lock is held throughout, so no batch run is reading them.
//! A crash before the commit leaves an unlisted file, after it unlisted old ones: garbage no
//! reader opens, like a lander's (docs/DESIGN.md, "The lake on object storage").

use crate::incremental::digest_files;
use crate::lake::{lake_schema, write_parquet};
use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shared_io::storage::Lake;
use shared_schema::time::Millis;
use sqlx::PgPool;

/// An hour is compacted once it holds this many files.
pub const MIN_FILES: i64 = 4;
/// Hours compacted per run at most, so a backlog spreads over runs.
pub const MAX_HOURS_PER_RUN: i64 = 48;
/// Rows compacted into one file at most: a larger hour is left as it is.
pub const MAX_ROWS: i64 = 5_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error("listing the lake hours to compact: {0}")]
    List(#[source] sqlx::Error),
    #[error("reading lake file {path}: {source}")]
    Read {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing the compacted file {path}: {source}")]
    Write {
        path: String,
        source: Box<crate::BatchError>,
    },
    #[error("recording the compacted file {path}: {source}")]
    Record { path: String, source: sqlx::Error },
}

/// One hour's files as listed.
struct HourFiles {
    dir: String,
    hour: Millis,
    paths: Vec<String>,
}

/// Compacts the closed hours of `topic` before `cutover`; returns how many. Best effort per
/// hour: an hour that fails is logged and left for the next run.
pub(crate) async fn compact_closed_hours(
    pool: &PgPool,
    lake: &Lake,
    topic: &str,
    cutover: Millis,
) -> Result<usize, CompactionError> {
    #[allow(clippy::type_complexity)]
    let hours: Vec<(chrono::NaiveDate, i32, Millis, Vec<String>)> = sqlx::query_as(
        "SELECT dt, hour, (EXTRACT(EPOCH FROM dt::timestamp)::bigint + hour::bigint * 3600) * 1000 AS start,
                array_agg(path ORDER BY path)
         FROM lake_files WHERE topic = $1
         GROUP BY dt, hour
         HAVING count(*) >= $2 AND sum(row_count) <= $3
            AND (EXTRACT(EPOCH FROM dt::timestamp)::bigint + hour::bigint * 3600 + 3600) * 1000 <= $4
         ORDER BY dt, hour LIMIT $5",
    )
    .bind(topic)
    .bind(MIN_FILES)
    .bind(MAX_ROWS)
    .bind(cutover)
    .bind(MAX_HOURS_PER_RUN)
    .fetch_all(pool)
    .await
    .map_err(CompactionError::List)?;
    let mut compacted = 0;
    for (date, hour, start, paths) in hours {
        let files = HourFiles {
            dir: crate::lake::LakePartition {
                date,
                hour: hour as u32,
            }
            .dir(),
            hour: start,
            paths,
        };
        match compact_hour(pool, lake, topic, &files).await {
            Ok(()) => compacted += 1,
            Err(e) => {
                tracing::warn!(dir = files.dir, error = %e, "could not compact a lake hour; will retry next run")
            }
        }
    }
    Ok(compacted)
}

async fn compact_hour(
    pool: &PgPool,
    lake: &Lake,
    topic: &str,
    files: &HourFiles,
) -> Result<(), CompactionError> {
    let mut batches = Vec::new();
    for path in &files.paths {
        let read = |source: Box<dyn std::error::Error + Send + Sync>| CompactionError::Read {
            path: path.clone(),
            source,
        };
        let bytes: Bytes = lake.read(path).await.map_err(|e| read(e.into()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .map_err(|e| read(e.into()))?;
        for batch in reader {
            let batch = batch.map_err(|e| read(e.into()))?;
            // A file of an older layout is left alone rather than rewritten into this one.
            if batch.schema().fields() != lake_schema().fields() {
                return Err(read("not the current lake layout".into()));
            }
            batches.push(batch);
        }
    }
    let path = format!(
        "{}/compacted-{}.parquet",
        files.dir,
        uuid::Uuid::now_v7().simple()
    );
    let batch: RecordBatch =
        concat_batches(&lake_schema(), &batches).map_err(|e| CompactionError::Read {
            path: files.dir.clone(),
            source: e.into(),
        })?;
    let rows = batch.num_rows() as i64;
    let written_path = path.clone();
    lake.publish(&path, move |out| write_parquet(out, &written_path, &batch))
        .await
        .map_err(|source| CompactionError::Write {
            path: path.clone(),
            source: Box::new(source),
        })?;
    record(pool, topic, files, &path, rows)
        .await
        .map_err(|source| CompactionError::Record {
            path: path.clone(),
            source,
        })?;
    for old in &files.paths {
        if let Err(e) = lake.remove_file(old).await {
            tracing::warn!(path = old, error = %e, "could not delete a compacted lake file");
        }
    }
    tracing::info!(
        dir = files.dir,
        files = files.paths.len(),
        rows,
        "compacted a lake hour"
    );
    Ok(())
}

/// Swaps the hour's files for the compacted one in `lake_files`, and the hour's digest in every
/// version computed from exactly the files before.
async fn record(
    pool: &PgPool,
    topic: &str,
    files: &HourFiles,
    path: &str,
    rows: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Every file of the hour now, locked: the lander may have added one since the listing.
    let now: Vec<(String, i64)> = sqlx::query_as(
        "SELECT path, row_count FROM lake_files
         WHERE topic = $1 AND (EXTRACT(EPOCH FROM dt::timestamp)::bigint + hour::bigint * 3600) * 1000 = $2
         ORDER BY path FOR UPDATE",
    )
    .bind(topic)
    .bind(files.hour)
    .fetch_all(&mut *tx)
    .await?;
    let before = digest_files(now.iter().map(|(p, r)| (p.as_str(), *r)));
    let after = digest_files(
        now.iter()
            .filter(|(p, _)| !files.paths.contains(p))
            .map(|(p, r)| (p.as_str(), *r))
            .chain([(path, rows)]),
    );
    sqlx::query(
        "INSERT INTO lake_files (path, topic, dt, hour, row_count, min_event_time, max_event_time)
         SELECT $1, topic, dt, hour, $2, min(min_event_time), max(max_event_time)
         FROM lake_files WHERE path = ANY($3) GROUP BY topic, dt, hour",
    )
    .bind(path)
    .bind(rows)
    .bind(&files.paths)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM lake_files WHERE path = ANY($1)")
        .bind(&files.paths)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE batch_version_lake SET digests[array_position(hours, $1)] = $3
         WHERE array_position(hours, $1) IS NOT NULL AND digests[array_position(hours, $1)] = $2",
    )
    .bind(files.hour)
    .bind(&before)
    .bind(&after)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
