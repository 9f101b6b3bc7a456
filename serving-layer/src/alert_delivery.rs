//! Delivering alert transitions to `serving.webhook_url` through an outbox in Postgres
//! (`alert_deliveries`, migration 0023).
//!
//! The evaluator queues each transition in the transaction that stores it ([`enqueue`]), so a
//! stored transition is queued exactly once and a restart loses none. One serving instance at a
//! time (an advisory lock) POSTs the queue oldest first; a refused or failed POST is retried
//! with a backoff doubling from a second to five minutes, and nothing after it is sent until it
//! is delivered, so a receiver sees an alert fire before it resolves. Nothing is dropped: a
//! receiver that is down for a day gets the day's transitions when it is back, and
//! `lambda_alert_deliveries_pending` shows the queue meanwhile.
//!
//! With `serving.webhook_format = "alertmanager"` the body is what Prometheus sends to
//! Alertmanager's API, and firing alerts are sent again every minute with `endsAt` four minutes
//! ahead: Alertmanager resolves an alert that is not sent again (its `resolve_timeout`).

use crate::alert_lifecycle::{AlertState, Transition};
use crate::state::AppState;
use chrono::{DateTime, Duration as Span, Utc};
use serde_json::{Value, json};
use shared_io::observe;
use shared_schema::config::WebhookFormat;
use sqlx::{PgConnection, PgPool};
use std::future::Future;
use std::time::Duration;

const DELIVERY_LOCK_KEY: i64 = 0x6465_6c69_7665; // "delive"
/// How often the queue is looked at.
const POLL: Duration = Duration::from_secs(1);
/// Transitions POSTed per look at most.
const BATCH: i64 = 20;
const MAX_BACKOFF_SECONDS: i64 = 300;
/// Alertmanager: firing alerts are sent again this often, valid for four times as long.
const RESEND: Span = Span::minutes(1);

/// The body of `transition` in `format`, queued at `now`.
pub(crate) fn body(transition: &Transition, format: WebhookFormat, now: DateTime<Utc>) -> Value {
    match format {
        WebhookFormat::Platform => serde_json::to_value(transition).unwrap_or(Value::Null),
        WebhookFormat::Alertmanager => {
            let mut labels = serde_json::Map::new();
            labels.insert("alertname".into(), json!(transition.rule));
            labels.insert("metric".into(), json!(transition.metric));
            for (dimension, value) in &transition.group {
                labels.insert(dimension.clone(), json!(value.as_deref().unwrap_or("")));
            }
            let value = transition
                .value
                .map_or_else(|| "resolved".to_string(), |v| v.to_string());
            let mut annotations = json!({
                "summary": format!(
                    "{} of {} is {value} (fires above {})",
                    transition.rule, transition.metric, transition.threshold
                ),
                "value": value,
                "threshold": transition.threshold.to_string(),
                "window_from": transition.window.from,
                "window_to": transition.window.to,
            });
            if let Some(partitions) = &transition.partitions {
                annotations["partitions"] = json!(format!("{partitions:?}"));
            }
            let ends = match transition.state {
                AlertState::Firing => now + RESEND * 4,
                AlertState::Resolved => now,
            };
            json!([{
                "labels": labels,
                "annotations": annotations,
                "startsAt": transition.window.from,
                "endsAt": ends.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }])
        }
    }
}

/// Queues `transitions` for the webhook, in the evaluator's transaction.
pub(crate) async fn enqueue(
    connection: &mut PgConnection,
    transitions: &[Transition],
    format: WebhookFormat,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    for transition in transitions {
        sqlx::query("INSERT INTO alert_deliveries (alert_key, body) VALUES ($1, $2)")
            .bind(alert_key(&transition.rule, &transition.group_key))
            .bind(body(transition, format, now))
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

fn alert_key(rule: &str, group_key: &str) -> String {
    format!("{rule}\u{1f}{group_key}")
}

/// Delivers the queue until `shutdown`, when a webhook is configured.
pub async fn run_deliveries(state: AppState, shutdown: impl Future<Output = ()>) {
    let Some(url) = state.config.serving.webhook_url.clone() else {
        return;
    };
    let format = state.config.serving.webhook_format;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    tokio::pin!(shutdown);
    let mut last_resend = Utc::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        if let Err(e) = deliver_due(&state.writer, &client, &url).await {
            tracing::warn!(error = %e, "could not deliver queued alerts; will retry");
        }
        if format == WebhookFormat::Alertmanager && Utc::now() - last_resend >= RESEND {
            last_resend = Utc::now();
            if let Err(e) = resend_firing(&state.writer, &client, &url).await {
                tracing::warn!(error = %e, "could not send the firing alerts again");
            }
        }
        match sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM alert_deliveries WHERE delivered_at IS NULL",
        )
        .fetch_one(&state.writer)
        .await
        {
            Ok(pending) => observe::serving().set_alert_deliveries_pending(pending),
            Err(e) => tracing::debug!(error = %e, "could not count the queued alerts"),
        }
    }
}

/// POSTs `body`; the error says why it was not delivered.
async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<(), String> {
    let outcome = match client.post(url).json(body).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the webhook answered {}", response.status())),
        Err(e) => Err(format!("the webhook is unreachable: {e}")),
    };
    observe::serving().alert_delivery(outcome.is_ok());
    outcome
}

/// Delivers the queue's due head, oldest first, stopping at the first failure.
async fn deliver_due(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(DELIVERY_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !leader {
        return Ok(());
    }
    let queued: Vec<(i64, Value, i32, bool)> = sqlx::query_as(
        "SELECT id, body, attempts, next_attempt_at <= now() FROM alert_deliveries
         WHERE delivered_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    for (id, body, attempts, due) in queued {
        if !due {
            break;
        }
        match post(client, url, &body).await {
            Ok(()) => {
                sqlx::query(
                    "UPDATE alert_deliveries SET delivered_at = now(), attempts = attempts + 1
                     WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            Err(error) => {
                let backoff = 2i64
                    .saturating_pow(attempts.clamp(0, 16) as u32)
                    .min(MAX_BACKOFF_SECONDS);
                tracing::warn!(
                    id,
                    attempts = attempts + 1,
                    error,
                    backoff_seconds = backoff,
                    "alert not delivered; will retry"
                );
                sqlx::query(
                    "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = $2,
                         next_attempt_at = now() + $3 * interval '1 second'
                     WHERE id = $1",
                )
                .bind(id)
                .bind(error)
                .bind(backoff as f64)
                .execute(&mut *tx)
                .await?;
                break;
            }
        }
    }
    sqlx::query("DELETE FROM alert_deliveries WHERE delivered_at < now() - interval '7 days'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Alertmanager: the firing alerts' latest bodies again, valid for four more minutes.
async fn resend_firing(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<(), sqlx::Error> {
    let bodies: Vec<Value> = sqlx::query_scalar(
        "SELECT DISTINCT ON (d.alert_key) d.body FROM alert_deliveries d
         JOIN alerts a ON d.alert_key = a.rule || chr(31) || a.group_key AND a.state = 'firing'
         ORDER BY d.alert_key, d.id DESC",
    )
    .fetch_all(pool)
    .await?;
    let ends = (Utc::now() + RESEND * 4).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut alerts = Vec::new();
    for body in bodies {
        for mut alert in body.as_array().cloned().unwrap_or_default() {
            alert["endsAt"] = json!(ends);
            alerts.push(alert);
        }
    }
    if !alerts.is_empty()
        && let Err(error) = post(client, url, &Value::Array(alerts)).await
    {
        tracing::warn!(error, "could not send the firing alerts again");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interval::Interval;

    fn transition(state: AlertState) -> Transition {
        Transition {
            rule: "revenue_drop".into(),
            group_key: "[\"DE\"]".into(),
            metric: "revenue".into(),
            group: [("country".to_string(), Some("DE".to_string()))].into(),
            state,
            value: (state == AlertState::Firing).then_some(12.5),
            threshold: 10.0,
            partitions: None,
            window: Interval::new(0, 60_000),
        }
    }

    #[test]
    fn an_alertmanager_body_carries_labels_and_ends_by_state() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let fired = body(
            &transition(AlertState::Firing),
            WebhookFormat::Alertmanager,
            now,
        );
        let alert = &fired[0];
        assert_eq!(alert["labels"]["alertname"], "revenue_drop");
        assert_eq!(alert["labels"]["metric"], "revenue");
        assert_eq!(alert["labels"]["country"], "DE");
        assert_eq!(alert["annotations"]["value"], "12.5");
        assert_eq!(alert["endsAt"], "2026-12-03T08:04:00.000Z");
        let resolved = body(
            &transition(AlertState::Resolved),
            WebhookFormat::Alertmanager,
            now,
        );
        assert_eq!(resolved[0]["endsAt"], "2026-12-03T08:00:00.000Z");
        assert_eq!(
            resolved[0]["labels"], alert["labels"],
            "the same alert to Alertmanager"
        );
        let platform = body(
            &transition(AlertState::Firing),
            WebhookFormat::Platform,
            now,
        );
        assert_eq!(platform["state"], "firing");
        assert!(platform.get("group_key").is_none());
    }
}
