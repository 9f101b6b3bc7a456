//! The batch view file: what the batch layer writes for a version and the serving layer reads.
//!
//! One Parquet file per version, `views/<version>/view.parquet`, holding the partials of every
//! metric for every bucket before the version's cutover. Partials use the same dims keys and
//! the same micro-unit sums as the speed layer's rows, so the two sides merge without
//! conversion.

use crate::metrics::Partial;
use crate::query::BucketRow;
use crate::time::Millis;
use arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

pub const VIEW_FILE: &str = "view.parquet";
/// Sums are stored unscaled in micro-units: `Decimal128(38, 6)`.
pub const SUM_TYPE: DataType = DataType::Decimal128(38, 6);

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("view file Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("view file Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("view file has an unexpected column layout: {0}")]
    Layout(String),
}

pub fn view_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("metric", DataType::Utf8, false),
        Field::new(
            "bucket_start",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("dims", DataType::Utf8, false),
        Field::new("event_count", DataType::Int64, false),
        Field::new("sum_micros", SUM_TYPE, false),
    ]))
}

/// One row of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRow {
    pub metric: String,
    pub row: BucketRow,
}

/// Writes `rows` to `path` and syncs it (not atomically: the caller publishes by renaming the
/// directory it is in).
pub fn write_view(path: &Path, rows: &[ViewRow]) -> Result<(), ViewError> {
    let schema = view_schema();
    let metric = StringArray::from_iter_values(rows.iter().map(|r| r.metric.as_str()));
    let bucket =
        TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.row.bucket_start))
            .with_timezone("UTC");
    let dims = StringArray::from_iter_values(rows.iter().map(|r| r.row.dims.as_str()));
    let count = Int64Array::from_iter_values(rows.iter().map(|r| r.row.partial.count));
    let sum = Decimal128Array::from_iter_values(rows.iter().map(|r| r.row.partial.sum_micros))
        .with_data_type(SUM_TYPE);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(metric),
        Arc::new(bucket),
        Arc::new(dims),
        Arc::new(count),
        Arc::new(sum),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties))?;
    writer.write(&batch)?;
    writer.finish()?;
    writer.inner().sync_all()?;
    Ok(())
}

/// Reads a view into rows grouped by metric and sorted by bucket.
pub fn read_view(path: &Path) -> Result<HashMap<String, Vec<BucketRow>>, ViewError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?.build()?;
    let mut by_metric: HashMap<String, Vec<BucketRow>> = HashMap::new();
    for batch in reader {
        let batch = batch?;
        let column = |name: &str, data_type: &DataType| -> Result<ArrayRef, ViewError> {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| ViewError::Layout(format!("missing column {name}")))?;
            Ok(cast(array, data_type)?)
        };
        let metric = column("metric", &DataType::Utf8)?;
        let bucket = column(
            "bucket_start",
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let dims = column("dims", &DataType::Utf8)?;
        let count = column("event_count", &DataType::Int64)?;
        let sum = column("sum_micros", &SUM_TYPE)?;
        let (Some(metric), Some(bucket), Some(dims), Some(count), Some(sum)) = (
            metric.as_any().downcast_ref::<StringArray>(),
            bucket.as_any().downcast_ref::<TimestampMillisecondArray>(),
            dims.as_any().downcast_ref::<StringArray>(),
            count.as_any().downcast_ref::<Int64Array>(),
            sum.as_any().downcast_ref::<Decimal128Array>(),
        ) else {
            return Err(ViewError::Layout("column types".into()));
        };
        for i in 0..batch.num_rows() {
            let bucket_start: Millis = bucket.value(i);
            by_metric
                .entry(metric.value(i).to_string())
                .or_default()
                .push(BucketRow {
                    bucket_start,
                    dims: dims.value(i).to_string(),
                    partial: Partial {
                        count: count.value(i),
                        sum_micros: sum.value(i),
                    },
                });
        }
    }
    for rows in by_metric.values_mut() {
        rows.sort_by(|a, b| (a.bucket_start, &a.dims).cmp(&(b.bucket_start, &b.dims)));
    }
    Ok(by_metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_round_trips() {
        let dir = std::env::temp_dir().join(format!("view-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(VIEW_FILE);
        let row = |metric: &str, bucket, dims: &str, count, sum_micros| ViewRow {
            metric: metric.into(),
            row: BucketRow {
                bucket_start: bucket,
                dims: dims.into(),
                partial: Partial { count, sum_micros },
            },
        };
        let rows = vec![
            row("revenue", 120_000, r#"["DE"]"#, 2, 19_990_000),
            row("revenue", -60_000, "[null]", 1, 1),
            row("purchases", 0, r#"["FR"]"#, 3, 0),
        ];
        write_view(&path, &rows).unwrap();
        let read = read_view(&path).unwrap();
        assert_eq!(
            read["revenue"],
            vec![rows[1].row.clone(), rows[0].row.clone()]
        );
        assert_eq!(read["purchases"], vec![rows[2].row.clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
