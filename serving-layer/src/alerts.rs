//! Alert evaluation: every `alert_interval`, each rule's metric is computed over its sliding
//! window ending at the last bucket the speed watermark has closed, through the same merged
//! read as every query. Groups above the threshold fire, firing groups no longer above it
//! resolve, and each transition is stored and sent to the webhook once, retried with backoff.
//!
//! Several serving instances may run; a transaction-scoped advisory lock lets one evaluate
//! at a time, so a transition is stored and announced once.

use crate::api::{AppState, Group, merged_points};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared_schema::alerts::AlertRule;
use shared_schema::metrics::encode_dims;
use shared_schema::query::SeriesQuery;
use shared_schema::time::{Millis, bucket_start, format_rfc3339, to_datetime};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

const EVALUATOR_LOCK_KEY: i64 = 0x616c_6572_7473; // "alerts"
const WEBHOOK_ATTEMPTS: u32 = 6;

/// An alert that fired or resolved, as stored and as sent to the webhook.
#[derive(Debug, Clone)]
pub struct Transition {
    pub body: Value,
}

pub async fn run_evaluator(state: AppState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(state.config.serving.alert_interval.as_std());
    let webhook = state.config.serving.webhook_url.clone();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        match evaluate_once(&state).await {
            Ok(transitions) => {
                if let Some(url) = &webhook {
                    for transition in transitions {
                        tokio::spawn(deliver(url.clone(), transition));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "alert evaluation failed; will retry"),
        }
    }
}

/// The window of `rule` at the current watermark: `(point time, window start, window end)`.
fn window_at(rule: &AlertRule, bucket: Millis, watermark: Millis) -> (Millis, Millis, Millis) {
    // Buckets ending at or before the watermark are closed; the window ends at the last one.
    let end = bucket_start(watermark, bucket);
    (end - bucket, end - rule.window.millis(), end)
}

pub async fn evaluate_once(state: &AppState) -> Result<Vec<Transition>, anyhow::Error> {
    let mut transitions = Vec::new();
    // Alert state is written, so not through the read-only request pool.
    let mut tx = state.writer.begin().await?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(EVALUATOR_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !leader {
        return Ok(transitions);
    }
    // Divergence alerts follow the batch layer's comparisons, not the watermark.
    transitions.extend(crate::divergence::evaluate(&mut tx, state).await?);
    // Partitions without a live speed consumer: the gap answers report.
    transitions.extend(crate::stall_alert::evaluate(&mut tx, state).await?);
    // One watermark for every rule of this evaluation.
    let watermark: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(watermark) FROM speed_offsets WHERE topic = $1")
            .bind(&state.config.events_topic)
            .fetch_one(&mut *tx)
            .await?;
    let Some(watermark) = watermark.map(|w| w.timestamp_millis()) else {
        tx.commit().await?;
        return Ok(transitions);
    };
    for rule in &state.catalog.alerts {
        let Some((_, metric)) = state.catalog.get(&rule.metric) else {
            continue;
        };
        let bucket = metric.bucket.millis();
        let (t, window_start, window_end) = window_at(rule, bucket, watermark);
        let query = SeriesQuery {
            from: t,
            to: t + bucket,
            step: bucket,
            window: rule.window.millis(),
            group_by: rule.group_by.and_then(|d| metric.dimension_index(d)),
            filter: None,
        };
        let (_, points) = merged_points(state, metric, &query)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let above: BTreeMap<String, f64> = points
            .into_iter()
            .filter(|(_, p)| {
                p.value > rule.above
                    && rule
                        .min_denominator
                        .is_none_or(|min| p.denominator.is_some_and(|d| d >= min))
            })
            .map(|((group, _), p)| (group_key(&group), p.value))
            .collect();
        let firing: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT group_key, fired_at FROM alerts WHERE rule = $1 AND state = 'firing'",
        )
        .bind(&rule.name)
        .fetch_all(&mut *tx)
        .await?;
        let firing: BTreeMap<String, DateTime<Utc>> = firing.into_iter().collect();
        let describe = |group: &str, state: &str, value: Option<f64>| Transition {
            body: json!({
                "rule": rule.name,
                "metric": rule.metric,
                "group": group_json(rule, group),
                "state": state,
                "value": value,
                "threshold": rule.above,
                "window": {"from": format_rfc3339(window_start), "to": format_rfc3339(window_end)},
            }),
        };
        for (group, value) in &above {
            if firing.contains_key(group) {
                sqlx::query(
                    "UPDATE alerts SET value = $3, window_start = $4, window_end = $5
                     WHERE rule = $1 AND group_key = $2 AND state = 'firing'",
                )
                .bind(&rule.name)
                .bind(group)
                .bind(value)
                .bind(to_datetime(window_start))
                .bind(to_datetime(window_end))
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "INSERT INTO alerts (rule, metric, group_key, state, value, threshold, window_start, window_end)
                     VALUES ($1, $2, $3, 'firing', $4, $5, $6, $7)",
                )
                .bind(&rule.name)
                .bind(&rule.metric)
                .bind(group)
                .bind(value)
                .bind(rule.above)
                .bind(to_datetime(window_start))
                .bind(to_datetime(window_end))
                .execute(&mut *tx)
                .await?;
                transitions.push(describe(group, "firing", Some(*value)));
            }
        }
        for group in firing.keys().filter(|g| !above.contains_key(*g)) {
            sqlx::query(
                "UPDATE alerts SET state = 'resolved', resolved_at = now(), window_start = $3, window_end = $4
                 WHERE rule = $1 AND group_key = $2 AND state = 'firing'",
            )
            .bind(&rule.name)
            .bind(group)
            .bind(to_datetime(window_start))
            .bind(to_datetime(window_end))
            .execute(&mut *tx)
            .await?;
            transitions.push(describe(group, "resolved", None));
        }
    }
    tx.commit().await?;
    for t in &transitions {
        tracing::info!(alert = %t.body, "alert transition");
    }
    Ok(transitions)
}

fn group_key(group: &Group) -> String {
    match group {
        None => encode_dims(&[]),
        Some(value) => encode_dims(&[value.as_deref()]),
    }
}

fn group_json(rule: &AlertRule, key: &str) -> Value {
    match (
        rule.group_by,
        shared_schema::metrics::decode_dims(key).into_iter().next(),
    ) {
        (Some(dimension), Some(value)) => json!({ dimension.name(): value }),
        _ => json!({}),
    }
}

/// Posts one transition, retrying with exponential backoff.
async fn deliver(url: String, transition: Transition) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        match client.post(&url).json(&transition.body).send().await {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                tracing::warn!(attempt, status = %response.status(), "webhook refused an alert")
            }
            Err(e) => tracing::warn!(attempt, error = %e, "webhook unreachable"),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    tracing::error!(alert = %transition.body, "webhook gave up after {WEBHOOK_ATTEMPTS} attempts");
}

/// `GET /v1/alerts`: firing alerts, and those resolved in the last 24 hours.
pub async fn list(state: &AppState) -> Result<Value, sqlx::Error> {
    type Row = (
        String,
        String,
        String,
        String,
        f64,
        f64,
        DateTime<Utc>,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT rule, metric, group_key, state, value, threshold, window_start, window_end, fired_at, resolved_at
         FROM alerts WHERE state = 'firing' OR resolved_at > now() - interval '24 hours'
         ORDER BY fired_at DESC LIMIT 1000",
    )
    .fetch_all(&state.pool)
    .await?;
    let alerts: Vec<Value> = rows
        .into_iter()
        .map(
            |(
                rule_name,
                metric,
                key,
                state_name,
                value,
                threshold,
                start,
                end,
                fired,
                resolved,
            )| {
                let group = state
                    .catalog
                    .alerts
                    .iter()
                    .find(|r| r.name == rule_name)
                    .map_or_else(|| json!({}), |rule| group_json(rule, &key));
                json!({
                    "rule": rule_name, "metric": metric, "group": group, "state": state_name,
                    "value": value, "threshold": threshold,
                    "window": {"from": start.to_rfc3339(), "to": end.to_rfc3339()},
                    "fired_at": fired.to_rfc3339(), "resolved_at": resolved.map(|r| r.to_rfc3339()),
                })
            },
        )
        .collect();
    Ok(json!({ "alerts": alerts }))
}
