//! The Postgres write path: cells/s of the speed layer's packed cell writes (a row per metric and
//! bucket, `speed_layer::write_cells`, merging a bucket's rows every `MAX_ROWS_PER_BUCKET`
//! batches), against COPY of a row per cell into a plain table, beside it on the same server.

use crate::report::Figure;
use anyhow::{Context, Result};
use shared_schema::event::Event;
use shared_schema::time::{MINUTE_MS, bucket_start, now_millis};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{Partial, PartialKey},
};
use std::collections::HashMap;
use std::time::Instant;

const PARTITIONS: i32 = 4;

pub async fn run(rows_per_batch: usize, batches: usize) -> Result<Vec<Figure>> {
    let platform = crate::load::bench_platform("bench_pg_write", 1).await?;
    let pool = shared_io::db::connect_and_migrate(&platform.database_url, 4).await?;
    let catalog = MetricCatalog::load(None)?;
    let (index, metric) = catalog
        .get("page_views")
        .context("page_views is a default metric")?;
    let bucket = bucket_start(now_millis(), MINUTE_MS);

    // Each batch changes the same cells of one bucket, as a busy bucket does: its rows pile up
    // and are merged.
    let batch_partials = || {
        let mut cells: HashMap<PartialKey, Partial> = HashMap::new();
        for row in 0..rows_per_batch {
            let event = Event {
                event_id: format!("w{row}"),
                event_type: "page_view".into(),
                event_time: bucket + (row as i64 % MINUTE_MS),
                schema_version: 2,
                user_id: None,
                product_id: Some(format!("p{}", row / PARTITIONS as usize)),
                amount_micros: None,
                city: None,
                country: None,
                profile: None,
            };
            MetricCatalog::fold_one(index, metric, &event, &mut cells);
        }
        let mut packed = speed_layer::Cells::new();
        for (key, partial) in cells {
            packed
                .entry((key.metric, key.bucket_start))
                .or_default()
                .insert(key.dims, partial);
        }
        packed
    };
    let upserting = Instant::now();
    for seq in 0..batches {
        let mut tx = pool.begin().await?;
        speed_layer::write_cells(
            &mut tx,
            &catalog,
            seq as i64,
            batch_partials(),
            &Default::default(),
        )
        .await?;
        tx.commit().await?;
    }
    let upsert_rate = (rows_per_batch * batches) as f64 / upserting.elapsed().as_secs_f64();

    sqlx::query(
        "CREATE TABLE bench_copy (metric text, bucket_start timestamptz, dims text, partition int,
                                  event_count bigint, sum_micros numeric)",
    )
    .execute(&pool)
    .await?;
    let mut text = String::new();
    for row in 0..rows_per_batch {
        text.push_str(&format!(
            "page_views\t2026-11-21 00:00:00+00\t{{\"product_id\":\"p{}\"}}\t{}\t1\t0\n",
            row / PARTITIONS as usize,
            row as i32 % PARTITIONS
        ));
    }
    let copying = Instant::now();
    for _ in 0..batches {
        let mut conn = pool.acquire().await?;
        let mut copy = conn.copy_in_raw("COPY bench_copy FROM STDIN").await?;
        copy.send(text.as_bytes()).await?;
        copy.finish().await?;
    }
    let copy_rate = (rows_per_batch * batches) as f64 / copying.elapsed().as_secs_f64();
    Ok(vec![Figure::new(
        "packed cell writes",
        (upsert_rate, "cells/s"),
        ("COPY into a plain table", copy_rate),
        format!(
            "{rows_per_batch} cells of one bucket per transaction, packed into one row, \
             {batches} batches over the same cells (merged every {} batches)",
            speed_layer::MAX_ROWS_PER_BUCKET
        ),
    )])
}
