//! Decoding a metric plan's Arrow output into view rows: the bucket, the dimensions and the
//! partial (count, amount aggregates at scale 6, the distinct sketch).

use crate::BatchError;
use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use shared_io::view::{SUM_TYPE, ViewRow};
use shared_schema::hll::Hll;
use shared_schema::metrics::{MetricDef, Partial, encode_dims};
use shared_schema::query::BucketRow;

/// Appends the rows of one batch of `metric`'s plan output to `rows`.
pub(crate) fn append_rows(
    rows: &mut Vec<ViewRow>,
    metric: &MetricDef,
    batch: &RecordBatch,
) -> Result<(), BatchError> {
    let decode = |source: arrow::error::ArrowError| BatchError::DecodePlanOutput {
        metric: metric.name.clone(),
        source,
    };
    let column = |name: &str, data_type: &DataType| -> Result<ArrayRef, BatchError> {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| BatchError::PlanOutput {
                metric: metric.name.clone(),
                column: name.to_string(),
            })?;
        cast(array, data_type).map_err(decode)
    };
    let bucket = column("bucket_start", &DataType::Int64)?;
    let bucket = bucket.as_primitive::<Int64Type>();
    let count = column("event_count", &DataType::Int64)?;
    let count = count.as_primitive::<Int64Type>();
    // Amount aggregates stay decimals at scale 6, so their unscaled values are micro-units.
    // Sessions plans have none of them.
    let decimals = |name: &str| -> Result<Option<ArrayRef>, BatchError> {
        batch
            .column_by_name(name)
            .map(|a| cast(a, &SUM_TYPE))
            .transpose()
            .map_err(decode)
    };
    let (sum, min, max) = (
        decimals("sum_micros")?,
        decimals("min_micros")?,
        decimals("max_micros")?,
    );
    let sum = sum.as_ref().map(|a| a.as_primitive::<Decimal128Type>());
    let min = min.as_ref().map(|a| a.as_primitive::<Decimal128Type>());
    let max = max.as_ref().map(|a| a.as_primitive::<Decimal128Type>());
    let sketch = batch.column_by_name("sketch").map(|s| s.as_binary::<i32>());
    let dims = (0..metric.dimensions.len())
        .map(|i| column(&format!("d{i}"), &DataType::Utf8))
        .collect::<Result<Vec<_>, _>>()?;
    let dims: Vec<&StringArray> = dims.iter().map(|d| d.as_string::<i32>()).collect();
    let micros = |array: Option<&PrimitiveArray<Decimal128Type>>, i: usize| -> Option<i64> {
        array
            .filter(|a| !a.is_null(i))
            .map(|a| a.value(i))
            .and_then(|v| i64::try_from(v).ok())
    };
    for i in 0..batch.num_rows() {
        let values: Vec<Option<&str>> = dims
            .iter()
            .map(|d| (!d.is_null(i)).then(|| d.value(i)))
            .collect();
        let sketch = match sketch {
            Some(sketch) if !sketch.is_null(i) => Some(Hll::from_bytes(sketch.value(i)).map_err(
                |e| BatchError::DecodeSketch {
                    metric: metric.name.clone(),
                    reason: e.to_string(),
                },
            )?),
            _ => None,
        };
        rows.push(ViewRow {
            metric: metric.name.clone(),
            row: BucketRow {
                bucket_start: bucket.value(i),
                dims: encode_dims(&values),
                partial: Partial {
                    count: count.value(i),
                    sum_micros: sum.filter(|s| !s.is_null(i)).map_or(0, |s| s.value(i)),
                    min_micros: micros(min, i),
                    max_micros: micros(max, i),
                    sketch,
                },
            },
        });
    }
    Ok(())
}
