//! The lander's second reader: the profile changelog into the lake, as `profiles/part-*.parquet`
//! (one file per read, every record kept), listed in `lake_files` under the changelog topic.
//! Like the events, a file is published by rename and listed, with the reader's positions, in
//! one transaction; a crash before it leaves an unlisted file nobody reads. Copies of a record
//! share its LSN, and the batch layer's join keeps one version per LSN.

use crate::BatchError;
use crate::changelog_batch::versions_to_batch;
use crate::lake::{partition_of, write_parquet};
use chrono::{DateTime, Utc};
use shared_io::changelog::{ChangelogBatch, ChangelogReader, store_positions};
use shared_io::storage::Lake;
use shared_io::{quarantine, retry};
use shared_schema::config::PlatformConfig;
use shared_schema::time::to_datetime;
use sqlx::PgPool;

/// Name under which the lander keeps its changelog positions and bad records.
const CONSUMER: &str = "batch-lander";
/// Where changelog files go under `LAKE_DIR`.
pub const CHANGELOG_DIR: &str = "profiles";

/// A published changelog file.
struct ChangelogFile {
    path: String,
    rows: i64,
    min_valid_from: i64,
    max_valid_from: i64,
}

/// Lands the changelog until aborted.
pub async fn run(pool: PgPool, config: PlatformConfig) {
    let topic = config.cdc.topic.clone();
    let mut reader = ChangelogReader::connect_until_success(&pool, &config, CONSUMER).await;
    loop {
        let batch = reader
            .next_batch_until_success(
                config.lander.flush_max_events,
                config.lander.flush_interval.as_std(),
            )
            .await;
        if !batch.advanced {
            continue;
        }
        let file =
            retry::until_success("writing a changelog file", || write_file(&config, &batch)).await;
        retry::until_success("changelog manifest commit", || {
            commit(&pool, &topic, &batch, file.as_ref())
        })
        .await;
        tracing::info!(records = batch.versions.len(), "landed profile changes");
    }
}

async fn write_file(
    config: &PlatformConfig,
    batch: &ChangelogBatch,
) -> Result<Option<ChangelogFile>, BatchError> {
    if batch.versions.is_empty() {
        return Ok(None);
    }
    let record_batch =
        versions_to_batch(&batch.versions).map_err(|source| BatchError::EncodeProfileVersions {
            versions: batch.versions.len(),
            source,
        })?;
    let path = format!("{CHANGELOG_DIR}/part-{}.parquet", uuid::Uuid::now_v7());
    let lake = Lake::open(&config.lake_dir)?;
    let location = lake.location(&path);
    lake.publish(&path, move |out| {
        write_parquet(out, &location, &record_batch)
    })
    .await?;
    let times = batch.versions.iter().map(|v| v.version.valid_from);
    Ok(Some(ChangelogFile {
        path,
        rows: batch.versions.len() as i64,
        min_valid_from: times.clone().min().unwrap_or_default(),
        max_valid_from: times.max().unwrap_or_default(),
    }))
}

async fn commit(
    pool: &PgPool,
    topic: &str,
    batch: &ChangelogBatch,
    file: Option<&ChangelogFile>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(file) = file {
        // The manifest's partition columns hold the hour of the earliest version.
        let partition = partition_of(file.min_valid_from);
        let (lo, hi): (DateTime<Utc>, DateTime<Utc>) = (
            to_datetime(file.min_valid_from),
            to_datetime(file.max_valid_from),
        );
        sqlx::query(
            "INSERT INTO lake_files (path, topic, dt, hour, row_count, min_event_time, max_event_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (path) DO NOTHING",
        )
        .bind(&file.path)
        .bind(topic)
        .bind(partition.date)
        .bind(partition.hour as i32)
        .bind(file.rows)
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await?;
    }
    store_positions(&mut tx, CONSUMER, topic, &batch.positions).await?;
    quarantine::record(&mut tx, topic, CONSUMER, &batch.bad).await?;
    tx.commit().await
}
