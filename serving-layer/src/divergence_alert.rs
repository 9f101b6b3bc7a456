//! The alert `divergence:<metric>`: raised while the metric's latest comparison of a promoted
//! view with the speed layer (`divergence`) is above `batch.divergence_alert_ratio`.

use crate::alert_lifecycle::{Finding, Rules, Transition, read_firing, settle};
use crate::alerts::EvaluateError;
use crate::divergence::{above, read};
use crate::state::AppState;
use shared_schema::metrics::encode_dims;
use sqlx::PgConnection;

/// Alerts of this module are named `divergence:<metric>`.
pub const RULE_PREFIX: &str = "divergence:";

/// Raises `divergence:<metric>` while the metric's latest comparison is above the threshold,
/// and resolves it once a later one is at or below it (or the metric left the catalogue). A
/// comparison that compared nothing changes nothing. Runs inside the evaluator's transaction.
pub async fn evaluate(
    connection: &mut PgConnection,
    state: &AppState,
) -> Result<Vec<Transition>, EvaluateError> {
    let threshold = state.config.batch.divergence_alert_ratio;
    let latest = read(&mut *connection, 1)
        .await
        .map_err(|source| EvaluateError::ReadComparisons { source })?;
    let firing = read_firing(connection, Rules::Prefixed(RULE_PREFIX)).await?;
    let finding = |metric: &str, holding, window| Finding {
        rule: format!("{RULE_PREFIX}{metric}"),
        metric: metric.to_string(),
        group_key: encode_dims(&[]),
        group: Default::default(),
        threshold,
        holding,
        window,
        partitions: None,
    };
    let mut transitions = Vec::new();
    for metric in &state.catalog.metrics {
        let Some(entry) = latest.get(&metric.name).and_then(|e| e.first()) else {
            continue;
        };
        let (Some(ratio), Some(window)) = (entry.ratio, entry.compared) else {
            continue;
        };
        let finding = finding(
            &metric.name,
            above(entry, threshold).then_some(ratio),
            window,
        );
        let is_firing = firing.contains_key(&(finding.rule.clone(), finding.group_key.clone()));
        let transition = settle(connection, &finding, is_firing).await?;
        if transition.as_ref().is_some_and(|t| t.value.is_some()) {
            tracing::warn!(metric = %metric.name, ratio, threshold, version = %entry.version,
                "the speed layer diverged from the batch view");
        }
        transitions.extend(transition);
    }
    // A metric that left the catalogue has no comparison to clear its alert any more: it
    // resolves over the window it last fired for.
    for ((rule, group_key), alert) in &firing {
        let Some(metric) = rule.strip_prefix(RULE_PREFIX) else {
            continue;
        };
        if state.catalog.get(metric).is_some() {
            continue;
        }
        let finding = Finding {
            group_key: group_key.clone(),
            ..finding(metric, None, alert.window)
        };
        transitions.extend(settle(connection, &finding, true).await?);
    }
    Ok(transitions)
}
