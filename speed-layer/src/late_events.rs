//! Late events: an event whose bucket closed (by the watermark before its batch) is counted
//! under every late policy, per metric and bucket (on the checkpoint's `speed_cells` rows, which
//! the serving layer reports), kept as a record under `side_output` (`speed_late_events`), and
//! folded only under `update`.

use chrono::{DateTime, Utc};
use shared_io::kafka::SourcedEvent;
use shared_io::observe;
use shared_schema::time::{Millis, to_datetime};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{LatePolicy, MetricDef},
};
use std::collections::BTreeMap;

/// Late events of one batch: counts per metric and bucket, and the `side_output` records.
#[derive(Default)]
pub(crate) struct LateEvents<'a> {
    /// (seen, late) per metric and bucket.
    pub(crate) counts: BTreeMap<(usize, Millis), (i64, i64)>,
    side_output: Vec<(usize, &'a SourcedEvent)>,
}

impl<'a> LateEvents<'a> {
    pub(crate) fn record(
        &mut self,
        index: usize,
        metric: &MetricDef,
        sourced: &'a SourcedEvent,
        is_late: bool,
    ) {
        let counts = self
            .counts
            .entry((index, metric.bucket_of(&sourced.event)))
            .or_default();
        counts.0 += 1;
        if !is_late {
            return;
        }
        counts.1 += 1;
        if metric.late_policy == LatePolicy::SideOutput {
            self.side_output.push((index, sourced));
        }
    }

    /// Counts the late events of a committed batch on `/metrics`.
    pub(crate) fn count(&self, catalog: &MetricCatalog) {
        let mut per_metric: BTreeMap<usize, i64> = BTreeMap::new();
        for ((metric, _), (_, late)) in &self.counts {
            *per_metric.entry(*metric).or_default() += late;
        }
        for (metric, late) in per_metric.into_iter().filter(|(_, late)| *late > 0) {
            observe::speed().count_late(&catalog.metrics[metric].name, late.unsigned_abs());
        }
    }

    /// Writes the `side_output` records (the counts go with the cells, `cells::write_cells`).
    pub(crate) async fn write_side_output(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        catalog: &MetricCatalog,
    ) -> Result<(), sqlx::Error> {
        if !self.side_output.is_empty() {
            let records = &self.side_output;
            let metrics: Vec<&str> = records
                .iter()
                .map(|(m, _)| catalog.metrics[*m].name.as_str())
                .collect();
            let ids: Vec<&str> = records
                .iter()
                .map(|(_, s)| s.event.event_id.as_str())
                .collect();
            let times: Vec<DateTime<Utc>> = records
                .iter()
                .map(|(_, s)| to_datetime(s.event.event_time))
                .collect();
            let partitions: Vec<i32> = records.iter().map(|(_, s)| s.partition).collect();
            let offsets: Vec<i64> = records.iter().map(|(_, s)| s.offset).collect();
            sqlx::query(
                "INSERT INTO speed_late_events (metric, event_id, event_time, partition, kafka_offset)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::bigint[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&metrics)
            .bind(&ids)
            .bind(&times)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}
