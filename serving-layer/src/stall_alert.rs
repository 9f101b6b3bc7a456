//! The alert `speed_stalled`: some partition of the topic has had no live speed consumer for
//! the stall timeout (`shared_io::liveness`), so answers from its speed watermark on carry
//! a gap. Fires while any partition is stalled, naming them; resolves once all move again.

use crate::alert_lifecycle::{Finding, Rules, Transition, read_firing, settle};
use crate::alerts::EvaluateError;
use crate::state::AppState;
use shared_io::liveness;
use shared_schema::metrics::encode_dims;
use shared_schema::time::to_datetime;
use sqlx::PgConnection;

pub const RULE: &str = "speed_stalled";
/// The alert concerns every metric.
const ALL_METRICS: &str = "*";

pub async fn evaluate(
    connection: &mut PgConnection,
    state: &AppState,
) -> Result<Vec<Transition>, EvaluateError> {
    let topic = &state.config.events_topic;
    let (evidence, now) = liveness::read_evidence(&mut *connection, topic)
        .await
        .map_err(|source| EvaluateError::ReadLiveness {
            topic: topic.clone(),
            source,
        })?;
    let stall_after = state.config.speed.stall_timeout.millis();
    let stalled = liveness::stalled_partitions(&evidence, now, stall_after);
    let from = liveness::stalled_from(&evidence, now, stall_after);
    let group_key = encode_dims(&[]);
    let firing = read_firing(connection, Rules::Named(RULE)).await?;
    let firing = firing.get(&(RULE.to_string(), group_key.clone()));
    // A stall with no watermark may miss anything: the window starts at the epoch. Resolving,
    // the window keeps the start it fired with.
    let start = match (stalled.is_empty(), firing) {
        (true, Some(firing)) => firing.window.0,
        _ => to_datetime(from.unwrap_or(0).max(0)),
    };
    let finding = Finding {
        rule: RULE.to_string(),
        metric: ALL_METRICS.to_string(),
        group_key,
        group: Default::default(),
        threshold: 0.0,
        holding: (!stalled.is_empty()).then_some(stalled.len() as f64),
        window: (start, to_datetime(now)),
        partitions: Some(stalled.clone()),
    };
    let transition = settle(connection, &finding, firing.is_some()).await?;
    match &transition {
        Some(t) if t.value.is_some() => tracing::warn!(%topic, partitions = ?stalled,
            "partitions have no live speed consumer; answers report a gap from their watermark"),
        Some(_) => tracing::info!(%topic, "every partition has a live speed consumer again"),
        None => {}
    }
    Ok(transition.into_iter().collect())
}
