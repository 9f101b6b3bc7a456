//! Late events: an event whose bucket closed (by the watermark before its batch) is counted
//! under every late policy, per metric, bucket and partition (`speed_late_counts`, which the
//! serving layer reports), kept as a record under `side_output` (`speed_late_events`), and
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

/// Late events of one batch: counts per metric, bucket and partition, and the `side_output`
/// records.
#[derive(Default)]
pub(crate) struct LateEvents<'a> {
    /// (seen, late) per metric, bucket and partition.
    counts: BTreeMap<(usize, Millis, i32), (i64, i64)>,
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
            .entry((index, metric.bucket_of(&sourced.event), sourced.partition))
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
        for ((metric, _, _), (_, late)) in &self.counts {
            *per_metric.entry(*metric).or_default() += late;
        }
        for (metric, late) in per_metric.into_iter().filter(|(_, late)| *late > 0) {
            observe::speed().count_late(&catalog.metrics[metric].name, late.unsigned_abs());
        }
    }

    pub(crate) async fn write(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        catalog: &MetricCatalog,
    ) -> Result<(), sqlx::Error> {
        if !self.counts.is_empty() {
            let metrics: Vec<&str> = self
                .counts
                .keys()
                .map(|(m, _, _)| catalog.metrics[*m].name.as_str())
                .collect();
            let buckets: Vec<DateTime<Utc>> = self
                .counts
                .keys()
                .map(|(_, b, _)| to_datetime(*b))
                .collect();
            let partitions: Vec<i32> = self.counts.keys().map(|(_, _, p)| *p).collect();
            let seen: Vec<i64> = self.counts.values().map(|(seen, _)| *seen).collect();
            let late: Vec<i64> = self.counts.values().map(|(_, late)| *late).collect();
            sqlx::query(
                "INSERT INTO speed_late_counts (metric, bucket_start, partition, seen_count, late_count)
                 SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int[], $4::bigint[], $5::bigint[])
                 ON CONFLICT (metric, bucket_start, partition) DO UPDATE SET
                     seen_count = speed_late_counts.seen_count + EXCLUDED.seen_count,
                     late_count = speed_late_counts.late_count + EXCLUDED.late_count",
            )
            .bind(&metrics)
            .bind(&buckets)
            .bind(&partitions)
            .bind(&seen)
            .bind(&late)
            .execute(&mut **tx)
            .await?;
        }
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
