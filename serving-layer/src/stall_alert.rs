//! The alert `speed_stalled`: some partition of the topic has had no live speed consumer for
//! the stall timeout (`shared_io::liveness`), so answers from its speed watermark on carry
//! a gap. Fires while any partition is stalled, naming them; resolves once all move again.

use crate::alerts::Transition;
use crate::api::AppState;
use chrono::{DateTime, Utc};
use serde_json::json;
use shared_io::liveness;
use shared_schema::metrics::encode_dims;
use shared_schema::time::{format_rfc3339, to_datetime};
use sqlx::PgConnection;

pub const RULE: &str = "speed_stalled";
/// The alert concerns every metric.
const ALL_METRICS: &str = "*";

pub async fn evaluate(
    connection: &mut PgConnection,
    state: &AppState,
) -> Result<Vec<Transition>, sqlx::Error> {
    let topic = &state.config.events_topic;
    let (evidence, now) = liveness::read_evidence(&mut *connection, topic).await?;
    let stall_after = state.config.speed.stall_timeout.millis();
    let stalled = liveness::stalled_partitions(&evidence, now, stall_after);
    let from = liveness::stalled_from(&evidence, now, stall_after);
    let group_key = encode_dims(&[]);
    let firing: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT window_start FROM alerts WHERE rule = $1 AND state = 'firing'")
            .bind(RULE)
            .fetch_optional(&mut *connection)
            .await?;
    // A stall with no watermark may miss anything: the window starts at the epoch.
    let start = to_datetime(from.unwrap_or(0).max(0));
    let end = to_datetime(now);
    let describe = |state: &str, value: Option<f64>, start: DateTime<Utc>| Transition {
        body: json!({
            "rule": RULE,
            "metric": ALL_METRICS,
            "group": {},
            "state": state,
            "value": value,
            "threshold": 0.0,
            "partitions": stalled,
            "window": {"from": format_rfc3339(start.timestamp_millis()), "to": format_rfc3339(now)},
        }),
    };
    let mut transitions = Vec::new();
    match (stalled.is_empty(), firing) {
        (false, Some(_)) => {
            sqlx::query(
                "UPDATE alerts SET value = $2, window_start = $3, window_end = $4
                 WHERE rule = $1 AND state = 'firing'",
            )
            .bind(RULE)
            .bind(stalled.len() as f64)
            .bind(start)
            .bind(end)
            .execute(&mut *connection)
            .await?;
        }
        (false, None) => {
            sqlx::query(
                "INSERT INTO alerts (rule, metric, group_key, state, value, threshold, window_start, window_end)
                 VALUES ($1, $2, $3, 'firing', $4, 0, $5, $6)",
            )
            .bind(RULE)
            .bind(ALL_METRICS)
            .bind(&group_key)
            .bind(stalled.len() as f64)
            .bind(start)
            .bind(end)
            .execute(&mut *connection)
            .await?;
            tracing::warn!(%topic, partitions = ?stalled, "partitions have no live speed consumer; answers report a gap from their watermark");
            transitions.push(describe("firing", Some(stalled.len() as f64), start));
        }
        (true, Some(started)) => {
            sqlx::query(
                "UPDATE alerts SET state = 'resolved', resolved_at = now(), window_end = $2
                 WHERE rule = $1 AND state = 'firing'",
            )
            .bind(RULE)
            .bind(end)
            .execute(&mut *connection)
            .await?;
            tracing::info!(%topic, "every partition has a live speed consumer again");
            transitions.push(describe("resolved", None, started));
        }
        (true, None) => {}
    }
    Ok(transitions)
}
