//! The profile changelog as the lake keeps it (`profiles/part-*.parquet`): its Arrow schema and
//! the record batch the changelog lander writes.

use arrow::array::{ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use shared_schema::profiles::SourcedVersion;
use std::sync::Arc;

/// The changelog as the lake keeps it (`profiles/part-*.parquet`), one row per change record.
pub fn changelog_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("user_id", false),
        Field::new("valid_from", DataType::Int64, false),
        Field::new("lsn", DataType::Int64, false),
        text("tier", true),
        text("signup_country", true),
        Field::new("deleted", DataType::Boolean, false),
        // Lineage: where the record was read.
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
}

/// The change records as one record batch in [`changelog_schema`].
pub fn versions_to_batch(
    versions: &[SourcedVersion],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let text = |f: fn(&SourcedVersion) -> Option<&str>| -> ArrayRef {
        Arc::new(versions.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        text(|s| Some(s.version.user_id.as_str())),
        Arc::new(Int64Array::from_iter_values(
            versions.iter().map(|s| s.version.valid_from),
        )),
        Arc::new(Int64Array::from_iter_values(
            versions.iter().map(|s| s.version.lsn),
        )),
        text(|s| s.version.profile.as_ref().map(|p| p.tier.as_str())),
        text(|s| {
            s.version
                .profile
                .as_ref()
                .and_then(|p| p.signup_country.as_deref())
        }),
        Arc::new(BooleanArray::from_iter(
            versions.iter().map(|s| Some(s.version.profile.is_none())),
        )),
        Arc::new(Int32Array::from_iter_values(
            versions.iter().map(|s| s.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            versions.iter().map(|s| s.offset),
        )),
    ];
    RecordBatch::try_new(changelog_schema(), columns)
}
