//! The raw event lake: typed Parquet files under `events/dt=YYYY-MM-DD/hour=HH/`, partitioned
//! by event time, listed in the `lake_files` manifest once published.

use arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{Datelike, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use shared_io::kafka::SourcedEvent;
use shared_io::storage::write_file_atomically;
use shared_schema::event::AMOUNT_SCALE;
use shared_schema::time::{Millis, to_datetime};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// `amount` in the lake: up to 1e12 with six decimals, exactly the decoder's micro-units.
pub const AMOUNT_TYPE: DataType = DataType::Decimal128(18, AMOUNT_SCALE as i8);

pub fn lake_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("event_id", false),
        text("event_type", false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("schema_version", DataType::Int32, false),
        text("user_id", true),
        text("product_id", true),
        Field::new("amount", AMOUNT_TYPE, true),
        text("city", true),
        text("country", true),
        // Lineage: where the lander read the event. Also the tie-break among copies of an id.
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
}

/// The lake partition of an event time, e.g. `dt=2026-11-21/hour=13`.
pub fn partition_of(event_time: Millis) -> LakePartition {
    let t = to_datetime(event_time);
    LakePartition {
        date: t.date_naive(),
        hour: t.hour(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LakePartition {
    pub date: chrono::NaiveDate,
    pub hour: u32,
}

impl LakePartition {
    pub fn dir(&self) -> String {
        format!(
            "events/dt={:04}-{:02}-{:02}/hour={:02}",
            self.date.year(),
            self.date.month(),
            self.date.day(),
            self.hour
        )
    }
}

pub fn events_to_batch(events: &[&SourcedEvent]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let text = |f: fn(&SourcedEvent) -> Option<&str>| -> ArrayRef {
        Arc::new(events.iter().map(|e| f(e)).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        text(|e| Some(e.event.event_id.as_str())),
        text(|e| Some(e.event.event_type.as_str())),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.event.event_time))
                .with_timezone("UTC"),
        ),
        Arc::new(Int32Array::from_iter_values(
            events.iter().map(|e| e.event.schema_version),
        )),
        text(|e| e.event.user_id.as_deref()),
        text(|e| e.event.product_id.as_deref()),
        Arc::new(
            events
                .iter()
                .map(|e| e.event.amount_micros.map(i128::from))
                .collect::<Decimal128Array>()
                .with_data_type(AMOUNT_TYPE),
        ),
        text(|e| e.event.city.as_deref()),
        text(|e| e.event.country.as_deref()),
        Arc::new(Int32Array::from_iter_values(
            events.iter().map(|e| e.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.offset),
        )),
    ];
    RecordBatch::try_new(lake_schema(), columns)
}

/// Writes `batch` to the local `final_path` atomically (see `write_file_atomically`).
pub fn write_parquet_atomically(
    final_path: &Path,
    batch: &RecordBatch,
) -> Result<(), crate::BatchError> {
    let path = final_path.display().to_string();
    write_file_atomically(final_path, |out| write_parquet(out, &path, batch))
}

/// Writes `batch` as one Parquet file to `out`, which is (or becomes) the lake file `path`.
pub fn write_parquet(
    out: &mut (dyn Write + Send),
    path: &str,
    batch: &RecordBatch,
) -> Result<(), crate::BatchError> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let written =
        ArrowWriter::try_new(out, batch.schema(), Some(properties)).and_then(|mut writer| {
            writer.write(batch)?;
            writer.finish().map(drop)
        });
    written.map_err(|source| crate::BatchError::WriteLakeFile {
        path: path.to_string(),
        source,
    })
}
