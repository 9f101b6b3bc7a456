//! The life of every alert, written once: it fires when its condition first holds, follows the
//! condition's value and window while it holds, and resolves once it no longer does. An alert is
//! a rule and a group (`group_key`); at most one of each is firing (migration 0005). Each step is
//! stored in the evaluator's transaction; firing and resolving are also returned as a
//! `Transition`, which is logged and sent to the webhook.

use crate::interval::Interval;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    /// As `alerts.state` stores it (migration 0005 allows nothing else).
    pub fn from_stored(state: &str) -> Option<AlertState> {
        match state {
            "firing" => Some(AlertState::Firing),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// An alert's group as answers show it: the rule's grouped dimension and its value
/// (`null`: absent), or `{}`.
pub type AlertGroup = BTreeMap<String, Option<String>>;

/// An alert that fired or resolved, as logged and as sent to the webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub rule: String,
    /// The alert's group as stored (`alerts.group_key`): with `rule`, which alert this is.
    #[serde(skip)]
    pub group_key: String,
    pub metric: String,
    pub group: AlertGroup,
    pub state: AlertState,
    /// `null` once resolved.
    pub value: Option<f64>,
    pub threshold: f64,
    /// `speed_stalled` only: the partitions without a live consumer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<i32>>,
    pub window: Interval,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

/// One alert's condition, as one evaluation found it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub rule: String,
    pub metric: String,
    pub group_key: String,
    pub group: AlertGroup,
    pub threshold: f64,
    /// The condition's value while it holds; `None` once it does not.
    pub holding: Option<f64>,
    /// What the value was computed over: stored while firing and on resolving.
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub partitions: Option<Vec<i32>>,
}

/// A firing alert's stored window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Firing {
    pub window: (DateTime<Utc>, DateTime<Utc>),
}

/// Which rules' firing alerts to read.
#[derive(Debug, Clone, Copy)]
pub enum Rules<'a> {
    Named(&'a str),
    Prefixed(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum AlertStoreError {
    #[error("reading the firing alerts of {rules:?}: {source}")]
    ReadFiring { rules: String, source: sqlx::Error },
    #[error("storing step {step:?} of alert {rule} {group_key:?}: {source}")]
    Store {
        rule: String,
        group_key: String,
        step: Step,
        source: sqlx::Error,
    },
}

/// The firing alerts of `rules`, by rule and group key.
pub async fn read_firing(
    connection: &mut PgConnection,
    rules: Rules<'_>,
) -> Result<BTreeMap<(String, String), Firing>, AlertStoreError> {
    let (sql, pattern) = match rules {
        Rules::Named(rule) => ("rule = $1", rule),
        Rules::Prefixed(prefix) => ("starts_with(rule, $1)", prefix),
    };
    let rows: Vec<(String, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT rule, group_key, window_start, window_end FROM alerts
         WHERE {sql} AND state = 'firing'"
    ))
    .bind(pattern)
    .fetch_all(&mut *connection)
    .await
    .map_err(|source| AlertStoreError::ReadFiring {
        rules: format!("{rules:?}"),
        source,
    })?;
    Ok(rows
        .into_iter()
        .map(|(rule, group_key, start, end)| {
            let firing = Firing {
                window: (start, end),
            };
            ((rule, group_key), firing)
        })
        .collect())
}

/// What a finding does to its alert, given whether it is firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Fire,
    Follow,
    Resolve,
    Nothing,
}

impl Step {
    pub fn of(holding: bool, firing: bool) -> Step {
        match (holding, firing) {
            (true, false) => Step::Fire,
            (true, true) => Step::Follow,
            (false, true) => Step::Resolve,
            (false, false) => Step::Nothing,
        }
    }
}

/// Moves `finding`'s alert one step along its life and stores it; returns the transition when
/// it fired or resolved.
pub async fn settle(
    connection: &mut PgConnection,
    finding: &Finding,
    firing: bool,
) -> Result<Option<Transition>, AlertStoreError> {
    let step = Step::of(finding.holding.is_some(), firing);
    let (start, end) = finding.window;
    let (query, state) = match step {
        Step::Nothing => return Ok(None),
        Step::Fire => (
            sqlx::query(
                "INSERT INTO alerts (rule, metric, group_key, state, value, threshold, window_start, window_end)
                 VALUES ($1, $2, $3, 'firing', $4, $5, $6, $7)",
            )
            .bind(&finding.rule)
            .bind(&finding.metric)
            .bind(&finding.group_key)
            .bind(finding.holding)
            .bind(finding.threshold),
            Some(AlertState::Firing),
        ),
        Step::Follow => (
            sqlx::query(
                "UPDATE alerts SET value = $3, window_start = $4, window_end = $5
                 WHERE rule = $1 AND group_key = $2 AND state = 'firing'",
            )
            .bind(&finding.rule)
            .bind(&finding.group_key)
            .bind(finding.holding),
            None,
        ),
        Step::Resolve => (
            sqlx::query(
                "UPDATE alerts SET state = 'resolved', resolved_at = now(), window_start = $3, window_end = $4
                 WHERE rule = $1 AND group_key = $2 AND state = 'firing'",
            )
            .bind(&finding.rule)
            .bind(&finding.group_key),
            Some(AlertState::Resolved),
        ),
    };
    query
        .bind(start)
        .bind(end)
        .execute(&mut *connection)
        .await
        .map_err(|source| AlertStoreError::Store {
            rule: finding.rule.clone(),
            group_key: finding.group_key.clone(),
            step,
            source,
        })?;
    Ok(state.map(|state| Transition {
        rule: finding.rule.clone(),
        group_key: finding.group_key.clone(),
        metric: finding.metric.clone(),
        group: finding.group.clone(),
        state,
        value: finding.holding,
        threshold: finding.threshold,
        partitions: finding.partitions.clone(),
        window: Interval::between(start, end),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_fires_once_follows_while_holding_and_resolves_once() {
        assert_eq!(Step::of(true, false), Step::Fire);
        assert_eq!(Step::of(true, true), Step::Follow);
        assert_eq!(Step::of(false, true), Step::Resolve);
        assert_eq!(Step::of(false, false), Step::Nothing);
    }
}
