//! The README's "send your own event" command (issue 19, item 9): `event-generator --event JSON`
//! sends that one event, and the merged answer counts it.

use anyhow::{Result, ensure};
use platform_tests::{Platform, first_series_total, purchases_path, wait_until};
use shared_schema::time::{MINUTE_MS, bucket_start, format_rfc3339, now_millis};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_sent_by_hand_is_counted() -> Result<()> {
    let platform = Platform::new("own_event", 1).await?;
    let _speed = platform.spawn("speed-layer", &["run"])?;
    let _serving = platform.spawn("serving-layer", &["run"])?;
    platform.wait_for_http().await?;
    let now = now_millis();
    let event = serde_json::json!({
        "event_id": "mine-1", "event_type": "purchase", "event_time": format_rfc3339(now),
        "user_id": "me", "amount": 12.5, "country": "DE", "schema_version": 2,
    });
    let (ok, output) = platform
        .run("event-generator", &["--event", &event.to_string()])
        .await?;
    ensure!(ok && output.contains("offset 0"), "{output}");
    let from = bucket_start(now, MINUTE_MS) - MINUTE_MS;
    let url = purchases_path(from, from + 3 * MINUTE_MS);
    wait_until(
        Duration::from_secs(60),
        "the event to be counted",
        || async {
            platform
                .get(&url)
                .await
                .is_ok_and(|(status, body)| status == 200 && first_series_total(&body) == 1.0)
        },
    )
    .await
}
