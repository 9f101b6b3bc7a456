//! `GET /readyz` of the services without an HTTP API of their own (served beside `/metrics`,
//! see `observe::serve`): 200 while nothing is wrong, 503 naming what is.
//!
//! Parts of a service report a problem under a name of their own and clear it when it is gone.
//! A problem is a fixed phrase saying what is down (`"Postgres refuses or drops the batch
//! commit"`), never a driver's error text, which goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared_schema::time::{Millis, format_rfc3339, now_millis};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// The problems of this process, by the part that reported them.
#[derive(Debug, Default)]
pub struct Readiness {
    problems: Mutex<BTreeMap<String, (String, Millis)>>,
}

impl Readiness {
    /// `part` has `problem` from now on (or since it first reported the same one).
    pub fn set_problem(&self, part: &str, problem: &str) {
        let Ok(mut problems) = self.problems.lock() else {
            return;
        };
        match problems.get(part) {
            Some((same, _)) if same == problem => {}
            _ => {
                problems.insert(part.to_string(), (problem.to_string(), now_millis()));
            }
        }
    }

    /// `part` is fine again.
    pub fn clear(&self, part: &str) {
        if let Ok(mut problems) = self.problems.lock() {
            problems.remove(part);
        }
    }

    /// The answer to `GET /readyz`.
    pub fn answer(&self) -> (StatusCode, serde_json::Value) {
        let problems: Vec<serde_json::Value> = match self.problems.lock() {
            Ok(problems) => problems
                .iter()
                .map(|(part, (problem, since))| {
                    serde_json::json!({"part": part, "problem": problem, "since": format_rfc3339(*since)})
                })
                .collect(),
            Err(_) => vec![serde_json::json!({"part": "readiness", "problem": "unknown"})],
        };
        if problems.is_empty() {
            (StatusCode::OK, serde_json::json!({"status": "ready"}))
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "not ready", "problems": problems}),
            )
        }
    }
}

/// This process's readiness.
pub fn readiness() -> &'static Readiness {
    static READINESS: OnceLock<Readiness> = OnceLock::new();
    READINESS.get_or_init(Readiness::default)
}

/// The HTTP answer to `GET /readyz`.
pub fn readyz() -> Response {
    let (status, body) = readiness().answer();
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_shows_until_cleared_and_keeps_its_start() {
        let readiness = Readiness::default();
        assert_eq!(readiness.answer().0, StatusCode::OK);
        readiness.set_problem("commit", "Postgres refuses or drops the batch commit");
        let (status, body) = readiness.answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["problems"][0]["part"], "commit");
        let since = body["problems"][0]["since"].clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        readiness.set_problem("commit", "Postgres refuses or drops the batch commit");
        assert_eq!(readiness.answer().1["problems"][0]["since"], since);
        readiness.clear("commit");
        assert_eq!(readiness.answer().0, StatusCode::OK);
    }
}
