//! Session starts in the speed state: each claimed event of a `sessions` metric is kept in
//! `speed_session_events`, and the session starts it creates or removes among its key's known
//! events are added to the metric's partials (see `shared_schema::sessions`).

use chrono::{DateTime, Utc};
use shared_io::kafka::SourcedEvent;
use shared_schema::sessions;
use shared_schema::time::{Millis, bucket_start, to_datetime};
use shared_schema::{
    catalog::MetricCatalog,
    metrics::{Aggregation, Partial, PartialKey, encode_dims},
};
use std::collections::{BTreeMap, HashMap};

/// Adds the session starts that the claimed events create or remove (see
/// `shared_schema::sessions`). Each key's known events near the new ones are read under a
/// transaction lock on the key, so concurrent instances never place events on a stale view.
pub(crate) async fn apply_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    catalog: &MetricCatalog,
    applied: &[Vec<&SourcedEvent>],
    per_partition: &mut BTreeMap<i32, HashMap<PartialKey, Partial>>,
) -> Result<(), sqlx::Error> {
    for (index, metric) in catalog.stored() {
        let Aggregation::Sessions { key, gap } = &metric.aggregation else {
            continue;
        };
        let gap = gap.millis();
        // key -> (partition of its first event here, times, ids)
        let mut added: BTreeMap<&str, (i32, Vec<Millis>, Vec<&str>)> = BTreeMap::new();
        for sourced in &applied[index] {
            let Some(value) = key.value(&sourced.event) else {
                continue;
            };
            let entry = added
                .entry(value)
                .or_insert_with(|| (sourced.partition, Vec::new(), Vec::new()));
            entry.1.push(sourced.event.event_time);
            entry.2.push(sourced.event.event_id.as_str());
        }
        if added.is_empty() {
            continue;
        }
        let keys: Vec<&str> = added.keys().copied().collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || k, 0))
             FROM UNNEST($2::text[]) AS k ORDER BY k",
        )
        .bind(&metric.name)
        .bind(&keys)
        .execute(&mut **tx)
        .await?;
        let bound = |f: fn(&[Millis]) -> Option<&Millis>, shift: Millis| -> Vec<DateTime<Utc>> {
            added
                .values()
                .map(|(_, times, _)| to_datetime(f(times).copied().unwrap_or_default() + shift))
                .collect()
        };
        let (lows, highs) = (
            bound(|t| t.iter().min(), -gap),
            bound(|t| t.iter().max(), gap),
        );
        let known: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT s.session_key, s.event_time
             FROM speed_session_events s
             JOIN UNNEST($2::text[], $3::timestamptz[], $4::timestamptz[]) AS u(k, lo, hi)
               ON s.session_key = u.k AND s.event_time BETWEEN u.lo AND u.hi
             WHERE s.metric = $1",
        )
        .bind(&metric.name)
        .bind(&keys)
        .bind(&lows)
        .bind(&highs)
        .fetch_all(&mut **tx)
        .await?;
        let mut known_by_key: HashMap<String, Vec<Millis>> = HashMap::new();
        for (k, t) in known {
            known_by_key
                .entry(k)
                .or_default()
                .push(t.timestamp_millis());
        }
        let width = metric.bucket.millis();
        for (value, (partition, times, _)) in &added {
            let known = known_by_key
                .get(*value)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (t, change) in sessions::start_changes(known, times, gap) {
                let cell = PartialKey {
                    metric: index,
                    bucket_start: bucket_start(t, width),
                    dims: encode_dims(&[]),
                };
                per_partition
                    .entry(*partition)
                    .or_default()
                    .entry(cell)
                    .or_default()
                    .count += change;
            }
        }
        let (mut rows_key, mut rows_time, mut rows_id) = (Vec::new(), Vec::new(), Vec::new());
        for (value, (_, times, ids)) in &added {
            for (t, id) in times.iter().zip(ids) {
                rows_key.push(*value);
                rows_time.push(to_datetime(*t));
                rows_id.push(*id);
            }
        }
        sqlx::query(
            "INSERT INTO speed_session_events (metric, session_key, event_time, event_id)
             SELECT $1, * FROM UNNEST($2::text[], $3::timestamptz[], $4::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&metric.name)
        .bind(&rows_key)
        .bind(&rows_time)
        .bind(&rows_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
