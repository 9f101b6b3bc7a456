//! `{"from": ..., "to": ...}`: a range `[from, to)` in answers and alerts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared_schema::time::{Millis, format_rfc3339};
use utoipa::ToSchema;

/// A range `[from, to)`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Interval {
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
}

impl Interval {
    pub fn new(from: Millis, to: Millis) -> Self {
        Interval {
            from: format_rfc3339(from),
            to: format_rfc3339(to),
        }
    }

    pub fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        Interval::new(from.timestamp_millis(), to.timestamp_millis())
    }
}
