//! The batch view files: what the batch layer writes for a version and the serving layer reads.
//!
//! Parquet files of the partials of every metric per bucket: a version's time segments (see
//! `view_segments`), or, for versions written before segments, one file,
//! `views/<version>/view.parquet`, holding every bucket before the version's cutover. Partials use the same dims keys and
//! the same micro-unit sums as the speed layer's rows, so the two sides merge without
//! conversion.

use crate::storage::{Lake, StorageError};
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Decimal128Type, Field, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampMillisecondType,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use shared_schema::hll::{Hll, SketchError};
use shared_schema::metrics::Partial;
use shared_schema::query::BucketRow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

pub const VIEW_FILE: &str = "view.parquet";
/// Where view versions go under `LAKE_DIR`, one directory (or key prefix) each.
pub const VIEWS_DIR: &str = "views";
/// Sums are stored unscaled in micro-units: `Decimal128(38, 6)`.
pub const SUM_TYPE: DataType = DataType::Decimal128(38, 6);

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("could not write view file {path}: {source}")]
    WriteFile {
        path: String,
        source: std::io::Error,
    },
    #[error("could not open view file {path}: {source}")]
    OpenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("could not encode the view's rows as Parquet: {0}")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("could not decode a view file: {0}")]
    Decode(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("a distinct sketch in a view file is malformed: {0}")]
    DecodeSketch(#[source] SketchError),
    #[error("view file has an unexpected column layout: {0}")]
    Layout(String),
    #[error("reading a view stopped before it finished: {0}")]
    RunBlocking(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Manifest(#[from] crate::view_segments::ManifestError),
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
        Field::new("min_micros", DataType::Int64, true),
        Field::new("max_micros", DataType::Int64, true),
        Field::new("sketch", DataType::Binary, true),
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
    let failed = |source| ViewError::WriteFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::create(path).map_err(failed)?;
    write_view_to(&mut file, rows)?;
    file.sync_all().map_err(failed)?;
    Ok(())
}

/// Writes `rows` as a view file to `out`.
pub fn write_view_to<W: Write + Send>(out: W, rows: &[ViewRow]) -> Result<(), ViewError> {
    let schema = view_schema();
    // Written in the order `read_view` returns, so reading back needs no sort.
    let mut order: Vec<&ViewRow> = rows.iter().collect();
    order.sort_unstable_by(|a, b| {
        (&a.metric, a.row.bucket_start, &a.row.dims).cmp(&(
            &b.metric,
            b.row.bucket_start,
            &b.row.dims,
        ))
    });
    let rows = order;
    let partials = || rows.iter().map(|r| &r.row.partial);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.metric.as_str()),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.row.bucket_start))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.row.dims.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(partials().map(|p| p.count))),
        Arc::new(
            Decimal128Array::from_iter_values(partials().map(|p| p.sum_micros))
                .with_data_type(SUM_TYPE),
        ),
        Arc::new(partials().map(|p| p.min_micros).collect::<Int64Array>()),
        Arc::new(partials().map(|p| p.max_micros).collect::<Int64Array>()),
        Arc::new(
            partials()
                .map(|p| p.sketch.as_ref().map(Hll::to_bytes))
                .collect::<BinaryArray>(),
        ),
    ];
    let encode = |e: Box<dyn std::error::Error + Send + Sync>| ViewError::Encode(e);
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| encode(e.into()))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer =
        ArrowWriter::try_new(out, schema, Some(properties)).map_err(|e| encode(e.into()))?;
    writer.write(&batch).map_err(|e| encode(e.into()))?;
    writer.finish().map_err(|e| encode(e.into()))?;
    Ok(())
}

/// Rows grouped by metric, sorted by bucket.
pub type ViewRows = HashMap<String, Vec<BucketRow>>;

/// Reads the view `relative` of `lake`, whole: a version's manifest (every segment it lists) or
/// a single view file (versions written before segments).
pub async fn read_lake_view(lake: &Lake, relative: &str) -> Result<ViewRows, ViewError> {
    if crate::view_segments::is_manifest(relative) {
        let manifest = crate::view_segments::read_manifest(lake, relative).await?;
        return crate::view_segments::read_all_segments(lake, &manifest).await;
    }
    read_view_file(lake, relative).await
}

/// Reads the rows of the view `relative` whose buckets start in `[from, to)`, and maybe others:
/// of a manifest only the segments of those hours, of a single file all of it.
pub async fn read_lake_view_between(
    lake: &Lake,
    relative: &str,
    (from, to): (shared_schema::time::Millis, shared_schema::time::Millis),
) -> Result<ViewRows, ViewError> {
    if !crate::view_segments::is_manifest(relative) {
        return read_view_file(lake, relative).await;
    }
    let mut manifest = crate::view_segments::read_manifest(lake, relative).await?;
    manifest.segments = manifest.overlapping(from, to).to_vec();
    crate::view_segments::read_all_segments(lake, &manifest).await
}

/// Reads one view file (a segment, or a version's single file) of `lake`.
pub async fn read_view_file(lake: &Lake, relative: &str) -> Result<ViewRows, ViewError> {
    match lake {
        Lake::Local(dir) => {
            let path = dir.join(relative);
            run_blocking(move || read_view(&path)).await
        }
        Lake::S3 { .. } => {
            let bytes = lake.read(relative).await?;
            run_blocking(move || read_view_from(bytes)).await
        }
    }
}

async fn run_blocking(
    read: impl FnOnce() -> Result<ViewRows, ViewError> + Send + 'static,
) -> Result<ViewRows, ViewError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(ViewError::RunBlocking)?
}

/// Reads a view into rows grouped by metric and sorted by bucket.
pub fn read_view(path: &Path) -> Result<ViewRows, ViewError> {
    let file = File::open(path).map_err(|source| ViewError::OpenFile {
        path: path.display().to_string(),
        source,
    })?;
    read_view_from(file)
}

/// Reads a view from any Parquet source (a file, bytes fetched from an object store).
pub fn read_view_from<R: ChunkReader + 'static>(source: R) -> Result<ViewRows, ViewError> {
    let decode = |e: Box<dyn std::error::Error + Send + Sync>| ViewError::Decode(e);
    let reader = ParquetRecordBatchReaderBuilder::try_new(source)
        .and_then(|builder| builder.build())
        .map_err(|e| decode(e.into()))?;
    let mut by_metric: ViewRows = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| decode(e.into()))?;
        let column = |name: &str, data_type: &DataType| -> Result<ArrayRef, ViewError> {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| ViewError::Layout(format!("missing column {name}")))?;
            cast(array, data_type).map_err(|e| decode(e.into()))
        };
        let metric = column("metric", &DataType::Utf8)?;
        let bucket = column(
            "bucket_start",
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let dims = column("dims", &DataType::Utf8)?;
        let count = column("event_count", &DataType::Int64)?;
        let sum = column("sum_micros", &SUM_TYPE)?;
        let min = column("min_micros", &DataType::Int64)?;
        let max = column("max_micros", &DataType::Int64)?;
        let sketch = column("sketch", &DataType::Binary)?;
        let (metric, bucket, dims) = (
            metric.as_string::<i32>(),
            bucket.as_primitive::<TimestampMillisecondType>(),
            dims.as_string::<i32>(),
        );
        let (count, sum) = (
            count.as_primitive::<Int64Type>(),
            sum.as_primitive::<Decimal128Type>(),
        );
        let (min, max, sketch) = (
            min.as_primitive::<Int64Type>(),
            max.as_primitive::<Int64Type>(),
            sketch.as_binary::<i32>(),
        );
        for i in 0..batch.num_rows() {
            let sketch = if sketch.is_null(i) {
                None
            } else {
                Some(Hll::from_bytes(sketch.value(i)).map_err(ViewError::DecodeSketch)?)
            };
            // Looked up before inserting, so the metric's name is not copied for every row.
            let name = metric.value(i);
            if !by_metric.contains_key(name) {
                by_metric.insert(name.to_string(), Vec::new());
            }
            let Some(rows) = by_metric.get_mut(name) else {
                continue;
            };
            rows.push(BucketRow {
                bucket_start: bucket.value(i),
                dims: dims.value(i).to_string(),
                partial: Partial {
                    count: count.value(i),
                    sum_micros: sum.value(i),
                    min_micros: (!min.is_null(i)).then(|| min.value(i)),
                    max_micros: (!max.is_null(i)).then(|| max.value(i)),
                    sketch,
                },
            });
        }
    }
    for rows in by_metric.values_mut() {
        if !rows.is_sorted_by(|a, b| (a.bucket_start, &a.dims) <= (b.bucket_start, &b.dims)) {
            rows.sort_unstable_by(|a, b| (a.bucket_start, &a.dims).cmp(&(b.bucket_start, &b.dims)));
        }
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
                partial: Partial {
                    count,
                    sum_micros,
                    min_micros: Some(1),
                    max_micros: None,
                    sketch: (count == 3).then(|| {
                        let mut sketch = Hll::default();
                        sketch.insert("someone");
                        sketch
                    }),
                },
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
