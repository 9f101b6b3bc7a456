//! Failure injection for the end-to-end scenarios, compiled into debug builds only: a release
//! binary never reads the variable, so production cannot be made to fail this way.
//!
//! `LAMBDA_FAILPOINTS="name=action;name=action"`, where an action is `panic` or `sleep:<ms>`.
//! A scenario uses it to widen a race window (a sleep where the race happens) or to reach a
//! panic that no input can cause.

use std::time::Duration;

/// The environment variable read in debug builds.
pub const VAR: &str = "LAMBDA_FAILPOINTS";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Panic,
    Sleep(Duration),
}

/// The action configured for `name` in `spec`, if any; malformed entries are ignored.
fn action(spec: &str, name: &str) -> Option<Action> {
    spec.split(';').find_map(|entry| {
        let (key, action) = entry.trim().split_once('=')?;
        if key.trim() != name {
            return None;
        }
        match action.trim() {
            "panic" => Some(Action::Panic),
            other => other
                .strip_prefix("sleep:")
                .and_then(|ms| ms.parse().ok())
                .map(|ms| Action::Sleep(Duration::from_millis(ms))),
        }
    })
}

/// Runs the action configured for `name` (debug builds only).
pub async fn hit(name: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(spec) = std::env::var(VAR) else {
        return;
    };
    match action(&spec, name) {
        None => {}
        Some(Action::Panic) => {
            tracing::warn!(failpoint = name, "failpoint: panicking");
            panic!("failpoint {name}");
        }
        Some(Action::Sleep(duration)) => {
            tracing::warn!(
                failpoint = name,
                ms = duration.as_millis() as u64,
                "failpoint: sleeping"
            );
            tokio::time::sleep(duration).await;
            tracing::warn!(failpoint = name, "failpoint: slept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_found_by_name() {
        let spec = "a=panic; b=sleep:250;c=bogus";
        assert_eq!(action(spec, "a"), Some(Action::Panic));
        assert_eq!(
            action(spec, "b"),
            Some(Action::Sleep(Duration::from_millis(250)))
        );
        assert_eq!(action(spec, "c"), None);
        assert_eq!(action(spec, "d"), None);
        assert_eq!(action("", "a"), None);
    }
}
