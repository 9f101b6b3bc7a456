//! `GET /v1/alerts`: firing alerts, and those resolved in the last 24 hours, newest first.

use crate::alert_lifecycle::{AlertGroup, AlertState};
use crate::error::{ApiError, ErrorBody};
use crate::interval::Interval;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub(crate) struct AlertList {
    alerts: Vec<Alert>,
}

#[derive(Serialize, ToSchema)]
struct Alert {
    rule: String,
    metric: String,
    /// The rule's grouped dimension and its value, or `{}`.
    #[schema(value_type = HashMap<String, Option<String>>)]
    group: AlertGroup,
    state: AlertState,
    value: f64,
    threshold: f64,
    window: Interval,
    #[schema(format = DateTime)]
    fired_at: String,
    #[schema(format = DateTime)]
    resolved_at: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    rule: String,
    metric: String,
    group_key: String,
    state: String,
    value: f64,
    threshold: f64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    fired_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

/// The alerts: firing, and resolved in the last 24 hours.
#[utoipa::path(get, path = "/v1/alerts", tag = "metrics",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Alerts, newest first", body = AlertList),
        (status = 401, description = "serving.read_token is set and was not presented", body = ErrorBody),
        (status = 503, description = "Postgres unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list_alerts(
    State(state): State<AppState>,
) -> Result<Json<AlertList>, ApiError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT rule, metric, group_key, state, value, threshold, window_start, window_end, fired_at, resolved_at
         FROM alerts WHERE state = 'firing' OR resolved_at > now() - interval '24 hours'
         ORDER BY fired_at DESC LIMIT 1000",
    )
    .fetch_all(&state.pool)
    .await
    .map_err(|e| ApiError::dependency_down("alerts (Postgres)", &e))?;
    let alerts = rows
        .into_iter()
        .map(|row| {
            let Some(alert_state) = AlertState::from_stored(&row.state) else {
                return Err(ApiError::internal(format!(
                    "alert {} is in no known state: `{}`",
                    row.rule, row.state
                )));
            };
            let group = state
                .catalog
                .alerts
                .iter()
                .find(|r| r.name == row.rule)
                .map_or_else(AlertGroup::new, |rule| {
                    crate::alerts::group_json(rule, &row.group_key)
                });
            Ok(Alert {
                rule: row.rule,
                metric: row.metric,
                group,
                state: alert_state,
                value: row.value,
                threshold: row.threshold,
                // As stored, in chrono's RFC 3339 (`+00:00`), as this list always showed them.
                window: Interval {
                    from: row.window_start.to_rfc3339(),
                    to: row.window_end.to_rfc3339(),
                },
                fired_at: row.fired_at.to_rfc3339(),
                resolved_at: row.resolved_at.map(|r| r.to_rfc3339()),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(AlertList { alerts }))
}
