//! Alert evaluation: every `alert_interval`, each rule's metric is computed over its sliding
//! window ending at the last bucket the speed watermark has closed, through the same merged
//! read as every query. Groups above the threshold fire, firing groups no longer above it
//! resolve (`alert_lifecycle`), and each transition is queued for the webhook in the same
//! transaction (`alert_delivery`).
//!
//! Several serving instances may run; a transaction-scoped advisory lock lets one evaluate
//! at a time, so a transition is stored and announced once.

use crate::alert_lifecycle::{
    AlertGroup, AlertStoreError, Finding, Rules, Transition, read_firing, settle,
};
use crate::metric_query::{PointsError, merged_points};
use crate::state::AppState;
use shared_schema::alerts::AlertRule;
use shared_schema::metrics::{decode_dims, encode_dims};
use shared_schema::query::{Group, SeriesQuery};
use shared_schema::time::{Millis, bucket_start, to_datetime};
use sqlx::PgConnection;
use std::collections::BTreeMap;
use std::future::Future;

const EVALUATOR_LOCK_KEY: i64 = 0x616c_6572_7473; // "alerts"

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("taking the alert evaluator's lock: {source}")]
    TakeLock { source: sqlx::Error },
    #[error("reading the speed watermark of topic {topic}: {source}")]
    ReadWatermark { topic: String, source: sqlx::Error },
    #[error("computing alert rule {rule}: {source}")]
    ComputeRule { rule: String, source: PointsError },
    #[error("reading the divergence comparisons: {source}")]
    ReadComparisons { source: sqlx::Error },
    #[error("reading the liveness of topic {topic}: {source}")]
    ReadLiveness { topic: String, source: sqlx::Error },
    #[error(transparent)]
    Store(#[from] AlertStoreError),
    #[error("opening or committing the alert evaluation's transaction: {source}")]
    Transaction { source: sqlx::Error },
    #[error("queueing alert transitions for the webhook: {source}")]
    Enqueue { source: sqlx::Error },
}

pub async fn run_evaluator(state: AppState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(state.config.serving.alert_interval.as_std());
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = evaluate_once(&state).await {
            tracing::warn!(error = %e, "alert evaluation failed; will retry");
        }
    }
}

/// The window of `rule` at the current watermark: `(point time, window start, window end)`.
fn window_at(rule: &AlertRule, bucket: Millis, watermark: Millis) -> (Millis, Millis, Millis) {
    // Buckets ending at or before the watermark are closed; the window ends at the last one.
    let end = bucket_start(watermark, bucket);
    (end - bucket, end - rule.window.millis(), end)
}

pub async fn evaluate_once(state: &AppState) -> Result<Vec<Transition>, EvaluateError> {
    let mut transitions = Vec::new();
    // Alert state is written, so not through the read-only request pool.
    let transaction = |source| EvaluateError::Transaction { source };
    let mut tx = state.writer.begin().await.map_err(transaction)?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(EVALUATOR_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await
        .map_err(|source| EvaluateError::TakeLock { source })?;
    if !leader {
        return Ok(transitions);
    }
    // Divergence alerts follow the batch layer's comparisons, not the watermark.
    transitions.extend(crate::divergence_alert::evaluate(&mut tx, state).await?);
    // Partitions without a live speed consumer: the gap answers report.
    transitions.extend(crate::stall_alert::evaluate(&mut tx, state).await?);
    // One watermark for every rule of this evaluation.
    let topic = &state.config.events_topic;
    let watermark: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT min(watermark) FROM speed_offsets WHERE topic = $1")
            .bind(topic)
            .fetch_one(&mut *tx)
            .await
            .map_err(|source| EvaluateError::ReadWatermark {
                topic: topic.clone(),
                source,
            })?;
    if let Some(watermark) = watermark.map(|w| w.timestamp_millis()) {
        for rule in &state.catalog.alerts {
            transitions.extend(evaluate_rule(&mut tx, state, rule, watermark).await?);
        }
    }
    if state.config.serving.webhook_url.is_some() {
        crate::alert_delivery::enqueue(&mut tx, &transitions, state.config.serving.webhook_format)
            .await
            .map_err(|source| EvaluateError::Enqueue { source })?;
    }
    tx.commit().await.map_err(transaction)?;
    for t in &transitions {
        tracing::info!(alert = %t, "alert transition");
    }
    Ok(transitions)
}

/// Fires, follows and resolves the alerts of `rule`, one per group, at `watermark`.
async fn evaluate_rule(
    connection: &mut PgConnection,
    state: &AppState,
    rule: &AlertRule,
    watermark: Millis,
) -> Result<Vec<Transition>, EvaluateError> {
    let Some((_, metric)) = state.catalog.get(&rule.metric) else {
        return Ok(Vec::new());
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
        .map_err(|source| EvaluateError::ComputeRule {
            rule: rule.name.clone(),
            source,
        })?;
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
    let firing = read_firing(connection, Rules::Named(&rule.name)).await?;
    // Every group above the threshold, then every firing group that no longer is.
    let resolving = firing
        .keys()
        .map(|(_, group)| group)
        .filter(|group| !above.contains_key(*group));
    let groups: Vec<(String, Option<f64>)> = above
        .iter()
        .map(|(group, value)| (group.clone(), Some(*value)))
        .chain(resolving.map(|group| (group.clone(), None)))
        .collect();
    let mut transitions = Vec::new();
    for (group_key, holding) in groups {
        let is_firing = firing.contains_key(&(rule.name.clone(), group_key.clone()));
        let finding = Finding {
            rule: rule.name.clone(),
            metric: rule.metric.clone(),
            group: group_json(rule, &group_key),
            group_key,
            threshold: rule.above,
            holding,
            window: (to_datetime(window_start), to_datetime(window_end)),
            partitions: None,
        };
        transitions.extend(settle(connection, &finding, is_firing).await?);
    }
    Ok(transitions)
}

fn group_key(group: &Group) -> String {
    match group {
        None => encode_dims(&[]),
        Some(value) => encode_dims(&[value.as_deref()]),
    }
}

/// The group of `rule`'s alert stored under `key`.
pub(crate) fn group_json(rule: &AlertRule, key: &str) -> AlertGroup {
    match (rule.group_by, decode_dims(key).into_iter().next()) {
        (Some(dimension), Some(value)) => AlertGroup::from([(dimension.name().to_string(), value)]),
        _ => AlertGroup::new(),
    }
}
