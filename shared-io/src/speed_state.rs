//! Reading the speed layer's state back: its partials, how far back it covers and how far it
//! has read. The serving layer answers from it, and the batch layer compares a new view with it
//! (divergence); both read it through here, so both see the same rows and the same coverage.

use crate::positions::{PositionTable, load_positions};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use shared_schema::event::AMOUNT_SCALE;
use shared_schema::hll::{Hll, SketchError};
use shared_schema::metrics::Partial;
use shared_schema::metrics::cells::{DecodeCellsError, decode_cells, split_sections};
use shared_schema::query::BucketRow;
use shared_schema::time::{Millis, to_datetime};
use sqlx::PgConnection;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum SpeedStateError {
    #[error("could not read the speed rows from Postgres: {source}")]
    ReadRows { source: sqlx::Error },
    #[error("a speed layer sketch of metric {metric} is malformed: {source}")]
    DecodeSketch { metric: String, source: SketchError },
    #[error("the packed speed cells of metric {metric} are malformed: {source}")]
    DecodeCells {
        metric: String,
        source: DecodeCellsError,
    },
}

/// The speed cells of `metrics` with a bucket in `[from, to)`, per metric, possibly several per
/// bucket and dimensions (a merge sums them): `speed_cells` packs a checkpoint's changed cells
/// of one bucket into a row, a section per metric, and `speed_aggregates` holds what an earlier
/// version wrote, a row per cell, until retention removes it. Call it inside the transaction
/// that reads whatever the rows must be consistent with.
pub async fn read_rows(
    connection: &mut PgConnection,
    metrics: &[&str],
    from: Millis,
    to: Millis,
) -> Result<HashMap<String, Vec<BucketRow>>, SpeedStateError> {
    let mut by_metric = read_legacy_rows(connection, metrics, from, to).await?;
    let packed: Vec<(DateTime<Utc>, Vec<String>, Vec<u8>)> = sqlx::query_as(
        "SELECT bucket_start, metrics, body FROM speed_cells
         WHERE bucket_start >= $2 AND bucket_start < $3 AND metrics && $1",
    )
    .bind(metrics)
    .bind(to_datetime(from))
    .bind(to_datetime(to))
    .fetch_all(&mut *connection)
    .await
    .map_err(|source| SpeedStateError::ReadRows { source })?;
    for (bucket, names, body) in packed {
        let malformed = |source| SpeedStateError::DecodeCells {
            metric: names.join(","),
            source,
        };
        let sections = split_sections(&body).map_err(malformed)?;
        if sections.len() != names.len() {
            return Err(malformed(DecodeCellsError::Truncated(body.len())));
        }
        for (name, section) in names.iter().zip(sections) {
            if !metrics.contains(&name.as_str()) {
                continue;
            }
            let cells = decode_cells(section).map_err(|source| SpeedStateError::DecodeCells {
                metric: name.clone(),
                source,
            })?;
            let rows = by_metric.entry(name.clone()).or_default();
            rows.extend(cells.into_iter().map(|(dims, partial)| BucketRow {
                bucket_start: bucket.timestamp_millis(),
                dims,
                partial,
            }));
        }
    }
    Ok(by_metric)
}

/// The rows an earlier version wrote to `speed_aggregates`, one per cell and Kafka partition.
async fn read_legacy_rows(
    connection: &mut PgConnection,
    metrics: &[&str],
    from: Millis,
    to: Millis,
) -> Result<HashMap<String, Vec<BucketRow>>, SpeedStateError> {
    type Row = (
        String,
        DateTime<Utc>,
        String,
        i64,
        Decimal,
        Option<i64>,
        Option<i64>,
        Option<Vec<u8>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT metric, bucket_start, dims, event_count, sum_micros, min_micros, max_micros, sketch
         FROM speed_aggregates
         WHERE metric = ANY($1) AND bucket_start >= $2 AND bucket_start < $3",
    )
    .bind(metrics)
    .bind(to_datetime(from))
    .bind(to_datetime(to))
    .fetch_all(&mut *connection)
    .await
    .map_err(|source| SpeedStateError::ReadRows { source })?;
    let mut by_metric: HashMap<String, Vec<BucketRow>> = HashMap::new();
    for (metric, bucket, dims, count, sum, min_micros, max_micros, sketch) in rows {
        let sketch = sketch
            .map(|bytes| Hll::from_bytes(&bytes))
            .transpose()
            .map_err(|source| SpeedStateError::DecodeSketch {
                metric: metric.clone(),
                source,
            })?;
        by_metric.entry(metric).or_default().push(BucketRow {
            bucket_start: bucket.timestamp_millis(),
            dims,
            partial: Partial {
                count,
                sum_micros: decimal_to_micros(sum),
                min_micros,
                max_micros,
                sketch,
            },
        });
    }
    Ok(by_metric)
}

/// From when the speed layer's state is complete: `None` from the start of the topic, `Some(t)`
/// from `t` on (retention removed what was before). Without a coverage row the speed layer never
/// started, so it covers nothing: `Some(Millis::MAX)`.
pub async fn read_covered_from(
    connection: &mut PgConnection,
    topic: &str,
) -> Result<Option<Millis>, sqlx::Error> {
    let coverage: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT covered_from FROM speed_coverage WHERE topic = $1")
            .bind(topic)
            .fetch_optional(&mut *connection)
            .await?;
    Ok(match coverage {
        Some(from) => from.map(|t| t.timestamp_millis()),
        None => Some(Millis::MAX),
    })
}

/// How far the speed layer's state reaches on `topic`, for comparing it with a batch view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeedExtent {
    /// The first bucket it holds before the bound asked for, if one was asked for and any.
    pub first_bucket: Option<Millis>,
    /// From when it is complete ([`read_covered_from`]).
    pub covered_from: Option<Millis>,
    /// Per partition it has read: the newest event time and whether it reached the end.
    pub partitions: Vec<(i32, Option<Millis>, bool)>,
}

/// The speed state's extent on `topic`, with its first bucket before `first_bucket_before`
/// when given (a scan, so only when needed). Call it inside the transaction that reads the rows
/// (retention removes rows and raises the coverage in one transaction, so they all agree).
pub async fn read_extent(
    connection: &mut PgConnection,
    topic: &str,
    first_bucket_before: Option<Millis>,
) -> Result<SpeedExtent, sqlx::Error> {
    let first_bucket: Option<DateTime<Utc>> = match first_bucket_before {
        Some(before) => {
            sqlx::query_scalar(
                "SELECT min(b) FROM (
                     SELECT min(bucket_start) AS b FROM speed_cells WHERE bucket_start < $1
                     UNION ALL
                     SELECT min(bucket_start) FROM speed_aggregates WHERE bucket_start < $1
                 ) AS firsts",
            )
            .bind(to_datetime(before))
            .fetch_one(&mut *connection)
            .await?
        }
        None => None,
    };
    let covered_from = read_covered_from(connection, topic).await?;
    let positions = load_positions(&mut *connection, PositionTable::Speed, topic).await?;
    Ok(SpeedExtent {
        first_bucket: first_bucket.map(|t| t.timestamp_millis()),
        covered_from,
        partitions: positions
            .into_iter()
            .map(|(p, position)| (p, position.max_event_time, position.caught_up))
            .collect(),
    })
}

fn decimal_to_micros(mut value: Decimal) -> i128 {
    value.rescale(AMOUNT_SCALE);
    value.mantissa()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_come_back_in_micro_units() {
        assert_eq!(decimal_to_micros(Decimal::new(1_999_990, 6)), 1_999_990);
        assert_eq!(decimal_to_micros(Decimal::new(2, 0)), 2_000_000);
        assert_eq!(decimal_to_micros(Decimal::new(15, 1)), 1_500_000);
    }
}
