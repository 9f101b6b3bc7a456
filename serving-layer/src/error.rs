//! The error answer of every endpoint: `{"error":{"code":"...","message":"..."}}` with a 4xx,
//! 500 or 503 status, and `error.limit` naming the configuration key a request went beyond.

use crate::snapshot::SnapshotError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared_schema::config::ServingConfig;
use shared_schema::sliding::MergeError;
use utoipa::ToSchema;

/// An error answer: its status and its body.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    message: String,
    /// The configuration key of the limit a request went beyond.
    pub(crate) limit: Option<&'static str>,
}

/// `{"error":{"code":"...","message":"..."}}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// Machine-readable, e.g. `bad_request`, `limit_exceeded`, `unknown_metric`, `unauthorized`.
    #[schema(value_type = String)]
    code: &'static str,
    message: String,
    /// With `limit_exceeded`: the configuration key of the limit, e.g. `serving.max_points`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    limit: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            limit: None,
        }
    }
    pub(crate) fn limit_exceeded(limit: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            limit: Some(limit),
            ..ApiError::new(StatusCode::BAD_REQUEST, "limit_exceeded", message)
        }
    }
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
    #[cfg(test)]
    pub(crate) fn limit(&self) -> Option<&'static str> {
        self.limit
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// A 503 saying which dependency is down; the driver's own text (hosts, roles, SQL) goes
    /// to the log only.
    pub(crate) fn dependency_down(what: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %error, dependency = what, "dependency unavailable");
        ApiError::unavailable(format!("{what} unavailable"))
    }
    /// A fault of the server's own, never of the request.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// A metric query past `serving.query_timeout`.
    pub(crate) fn took_too_long(limits: &ServingConfig) -> Self {
        ApiError::unavailable(format!("query took longer than {}", limits.query_timeout))
    }

    fn body(self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                limit: self.limit,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> Self {
        ApiError::dependency_down(e.dependency(), &e)
    }
}

/// A merge refused by its budget (CONTRACT §4: 400 `limit_exceeded`) or stopped by its deadline.
pub(crate) fn merge_refused(e: MergeError, limits: &ServingConfig) -> ApiError {
    match e {
        MergeError::Groups { max } => ApiError::limit_exceeded(
            "serving.max_groups",
            format!(
                "the answer holds more than {max} groups (serving.max_groups): narrow it with `filter`"
            ),
        ),
        MergeError::Points { points, max } => ApiError::limit_exceeded(
            "serving.max_answer_points",
            format!(
                "the answer may hold {points} points over its series; at most {max} are allowed (serving.max_answer_points): narrow it with `filter`, a shorter range or a longer step"
            ),
        ),
        MergeError::Deadline => ApiError::took_too_long(limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_a_limit_only_when_one_was_exceeded() {
        let plain = serde_json::to_value(ApiError::bad_request("no").body()).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"error": {"code": "bad_request", "message": "no"}})
        );
        let limited =
            serde_json::to_value(ApiError::limit_exceeded("serving.max_rows", "many").body())
                .unwrap();
        assert_eq!(limited["error"]["limit"], "serving.max_rows");
        assert_eq!(limited["error"]["code"], "limit_exceeded");
    }
}
