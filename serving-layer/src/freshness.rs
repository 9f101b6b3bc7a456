//! `GET /v1/freshness`: how far behind the wall clock each side of the split is, read-only.
//!
//! * the batch side: the promoted version, its cutover T and how long ago T was;
//! * the speed side: its watermark (the minimum over partitions, as every query serves it), how
//!   long ago that was, and each partition's position;
//! * the lake: each partition's landed position and the instant up to which it is complete, i.e.
//!   how far the next `batch-layer run` could move T.
//!
//! Everything is read in one snapshot, so the figures agree with one another.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared_schema::cutover::{LandedPartition, lake_complete_until};
use shared_schema::time::{Millis, format_rfc3339, now_millis};

/// One partition's row of `speed_offsets` or `lake_progress`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Position {
    partition: i32,
    next_offset: i64,
    max_event_time: Option<DateTime<Utc>>,
    /// Only the speed layer keeps a watermark.
    watermark: Option<DateTime<Utc>>,
    caught_up: bool,
    updated_at: DateTime<Utc>,
}

/// What is promoted: `serving_state`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Promoted {
    version: Option<String>,
    cutover: Option<DateTime<Utc>>,
    promoted_at: Option<DateTime<Utc>>,
}

/// How far behind each layer is: the served version and T, the speed watermark per partition,
/// and how far the lake is complete.
#[utoipa::path(get, path = "/v1/freshness", tag = "metrics",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Batch, speed and lake freshness; figures not known yet are null", body = Object),
        (status = 401, description = "serving.read_token is set and was not presented", body = crate::openapi::ErrorBody),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorBody),
    ))]
pub async fn get(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let unavailable = |e: sqlx::Error| ApiError::dependency_down("freshness (Postgres)", &e);
    let mut tx = state.pool.begin().await.map_err(unavailable)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let (version, cutover, promoted_at) =
        sqlx::query_as("SELECT version, cutover, promoted_at FROM serving_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
    let promoted = Promoted {
        version,
        cutover,
        promoted_at,
    };
    let speed: Vec<Position> = sqlx::query_as(
        "SELECT partition, next_offset, max_event_time, watermark, caught_up, updated_at
         FROM speed_offsets WHERE topic = $1 ORDER BY partition",
    )
    .bind(&state.config.events_topic)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let lake: Vec<Position> = sqlx::query_as(
        "SELECT partition, next_offset, max_event_time, NULL::timestamptz AS watermark, caught_up,
                updated_at
         FROM lake_progress WHERE topic = $1 ORDER BY partition",
    )
    .bind(&state.config.events_topic)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(Json(describe(
        now_millis(),
        &promoted,
        &speed,
        &lake,
        state.catalog.max_allowed_lateness(),
    )))
}

fn millis(t: DateTime<Utc>) -> Millis {
    t.timestamp_millis()
}

/// Seconds from `t` to `now`, `null` without a `t`.
fn age(now: Millis, t: Option<Millis>) -> Value {
    t.map_or(Value::Null, |t| json!((now - t) as f64 / 1000.0))
}

fn rfc3339(t: Option<Millis>) -> Value {
    t.map_or(Value::Null, |t| Value::String(format_rfc3339(t)))
}

fn partitions_json(positions: &[Position], with_watermark: bool) -> Vec<Value> {
    positions
        .iter()
        .map(|p| {
            let mut row = json!({
                "partition": p.partition,
                "next_offset": p.next_offset,
                "max_event_time": rfc3339(p.max_event_time.map(millis)),
                "caught_up": p.caught_up,
                "updated_at": format_rfc3339(millis(p.updated_at)),
            });
            if with_watermark {
                row["watermark"] = rfc3339(p.watermark.map(millis));
            }
            row
        })
        .collect()
}

/// The response body at wall-clock `now`.
fn describe(
    now: Millis,
    promoted: &Promoted,
    speed: &[Position],
    lake: &[Position],
    allowed_lateness: Millis,
) -> Value {
    let cutover = promoted.cutover.map(millis);
    // As served: partitions without a watermark (idle) do not hold it back.
    let watermark = speed.iter().filter_map(|p| p.watermark.map(millis)).min();
    let landed: Vec<LandedPartition> = lake
        .iter()
        .map(|p| LandedPartition {
            partition: p.partition,
            max_event_time: p.max_event_time.map(millis),
            caught_up: p.caught_up,
        })
        .collect();
    let complete_until = lake_complete_until(&landed, allowed_lateness);
    json!({
        "now": format_rfc3339(now),
        "batch": {
            "version": promoted.version,
            "cutover": rfc3339(cutover),
            "promoted_at": rfc3339(promoted.promoted_at.map(millis)),
            "lag_seconds": age(now, cutover),
        },
        "speed": {
            "watermark": rfc3339(watermark),
            "delay_seconds": age(now, watermark),
            "partitions": partitions_json(speed, true),
        },
        "lake": {
            "complete_until": rfc3339(complete_until),
            "lag_seconds": age(now, complete_until),
            "partitions": partitions_json(lake, false),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_schema::time::{MINUTE_MS, parse_rfc3339, to_datetime};

    fn at(text: &str) -> Millis {
        parse_rfc3339(text).expect("test instant")
    }

    fn position(partition: i32, max: Option<Millis>, watermark: Option<Millis>) -> Position {
        Position {
            partition,
            next_offset: 10 + i64::from(partition),
            max_event_time: max.map(to_datetime),
            watermark: watermark.map(to_datetime),
            caught_up: true,
            updated_at: to_datetime(at("2026-11-21T13:00:00Z")),
        }
    }

    #[test]
    fn nothing_promoted_or_read_yet_is_null_not_zero() {
        let body = describe(
            at("2026-11-21T13:00:00Z"),
            &Promoted::default(),
            &[],
            &[],
            MINUTE_MS,
        );
        for figure in [
            &body["batch"]["cutover"],
            &body["batch"]["lag_seconds"],
            &body["speed"]["watermark"],
            &body["speed"]["delay_seconds"],
            &body["lake"]["complete_until"],
            &body["lake"]["lag_seconds"],
        ] {
            assert!(figure.is_null(), "{body}");
        }
        assert_eq!(body["speed"]["partitions"], json!([]));
    }

    #[test]
    fn lags_are_measured_from_the_served_watermark_and_cutover() {
        let now = at("2026-11-21T13:00:00Z");
        let promoted = Promoted {
            version: Some("v1".into()),
            cutover: Some(to_datetime(at("2026-11-21T12:50:00Z"))),
            promoted_at: Some(to_datetime(at("2026-11-21T12:55:00Z"))),
        };
        // The slowest partition with a watermark sets it; an idle one (none) does not.
        let speed = [
            position(
                0,
                Some(at("2026-11-21T12:59:50Z")),
                Some(at("2026-11-21T12:59:45Z")),
            ),
            position(
                1,
                Some(at("2026-11-21T12:59:00Z")),
                Some(at("2026-11-21T12:58:30Z")),
            ),
            position(2, None, None),
        ];
        // The lake is complete up to its slowest partition minus the allowed lateness.
        let lake = [
            position(0, Some(at("2026-11-21T12:59:00Z")), None),
            position(1, Some(at("2026-11-21T12:58:00Z")), None),
        ];
        let body = describe(now, &promoted, &speed, &lake, MINUTE_MS);
        assert_eq!(body["batch"]["version"], "v1");
        assert_eq!(body["batch"]["cutover"], "2026-11-21T12:50:00Z");
        assert_eq!(body["batch"]["promoted_at"], "2026-11-21T12:55:00Z");
        assert_eq!(body["batch"]["lag_seconds"], 600.0);
        assert_eq!(body["speed"]["watermark"], "2026-11-21T12:58:30Z");
        assert_eq!(body["speed"]["delay_seconds"], 90.0);
        assert_eq!(body["lake"]["complete_until"], "2026-11-21T12:57:00Z");
        assert_eq!(body["lake"]["lag_seconds"], 180.0);
        let partitions = body["speed"]["partitions"].as_array().expect("partitions");
        assert_eq!(partitions.len(), 3);
        assert_eq!(partitions[1]["watermark"], "2026-11-21T12:58:30Z");
        assert_eq!(partitions[2]["watermark"], Value::Null);
        assert_eq!(partitions[1]["next_offset"], 11);
        assert!(
            body["lake"]["partitions"][0].get("watermark").is_none(),
            "the lander keeps no watermark: {body}"
        );
    }

    #[test]
    fn a_lake_partition_that_has_not_landed_anything_holds_completeness_back() {
        let mut behind = position(1, None, None);
        behind.caught_up = false;
        let lake = [position(0, Some(at("2026-11-21T12:59:00Z")), None), behind];
        let body = describe(
            at("2026-11-21T13:00:00Z"),
            &Promoted::default(),
            &[],
            &lake,
            MINUTE_MS,
        );
        assert!(body["lake"]["complete_until"].is_null(), "{body}");
    }
}
