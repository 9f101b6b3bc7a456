//! The `user_profiles` dimension: its change records on the bus, its history, and the one rule
//! both layers use to join an event with it.
//!
//! A profile version is valid from its `updated_at` (the source's business time, not the commit
//! time) until the next version's `updated_at`. An event at time `t` sees the version with the
//! greatest `valid_from <= t`; among versions with the same `valid_from`, the one with the
//! greatest LSN (the later write). No version at `t`, a deleted profile, or no `user_id` at all:
//! the event's profile fields are [`UNKNOWN`]. [`version_at`] is the rule for the speed layer,
//! [`temporal_join_sql`] the same rule as SQL for the batch layer's DataFusion plan; property
//! tests in the batch layer check that the two agree.

use crate::time::{Millis, format_rfc3339, parse_rfc3339};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The profile field value of an event without a profile version at its time.
pub const UNKNOWN: &str = "unknown";

/// The source table of the dimension.
pub const SOURCE_TABLE: &str = "user_profiles";

/// The attributes of one profile version that metrics may group or filter by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Profile {
    pub tier: String,
    pub signup_country: Option<String>,
}

/// One version of one user's profile, from one change record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileVersion {
    pub user_id: String,
    /// From when it applies, by event time.
    pub valid_from: Millis,
    /// Where the change was written in the source's log: orders versions with the same
    /// `valid_from`, and identifies the change, so a change delivered twice is applied once.
    pub lsn: i64,
    /// `None`: the profile was deleted.
    pub profile: Option<Profile>,
}

/// The version that applies at `t` among one user's `versions` (in any order): the greatest
/// `(valid_from, lsn)` with `valid_from <= t`.
pub fn version_at(versions: &[ProfileVersion], t: Millis) -> Option<&ProfileVersion> {
    versions
        .iter()
        .filter(|v| v.valid_from <= t)
        .max_by_key(|v| (v.valid_from, v.lsn))
}

/// The profile an event of `user_id` at `t` sees: `None` for none (its fields are `unknown`).
pub fn profile_at(versions: &[ProfileVersion], t: Millis) -> Option<&Profile> {
    version_at(versions, t).and_then(|v| v.profile.as_ref())
}

/// Every user's versions, as the speed layer keeps them in memory.
#[derive(Debug, Clone, Default)]
pub struct ProfileHistory {
    by_user: HashMap<String, Vec<ProfileVersion>>,
}

impl ProfileHistory {
    /// Adds a version; a version already held (same user, `valid_from` and LSN) is ignored.
    /// Returns whether it was new.
    pub fn apply(&mut self, version: ProfileVersion) -> bool {
        let versions = self.by_user.entry(version.user_id.clone()).or_default();
        if versions
            .iter()
            .any(|v| v.valid_from == version.valid_from && v.lsn == version.lsn)
        {
            return false;
        }
        versions.push(version);
        true
    }

    pub fn at(&self, user_id: Option<&str>, t: Millis) -> Option<&Profile> {
        user_id
            .and_then(|user| self.by_user.get(user))
            .and_then(|versions| profile_at(versions, t))
    }

    pub fn len(&self) -> usize {
        self.by_user.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

/// The temporal join as SQL over two registered tables: `events`, which has `user_id` and
/// `event_time_ms` (epoch milliseconds), and `versions`, in the lake's changelog schema. The result is
/// every event row, once, with `tier` and `signup_country` added by the rule of [`version_at`].
pub fn temporal_join_sql(events: &str, versions: &str) -> String {
    // Identifiers come from the caller's constants, never from input.
    format!(
        "SELECT e.*,
                CASE WHEN v.user_id IS NULL OR v.deleted THEN '{UNKNOWN}' ELSE v.tier END AS tier,
                CASE WHEN v.user_id IS NULL OR v.deleted THEN '{UNKNOWN}' ELSE v.signup_country END AS signup_country
         FROM {events} e
         LEFT JOIN (
             SELECT user_id, valid_from, tier, signup_country, deleted,
                    lead(valid_from) OVER (PARTITION BY user_id ORDER BY valid_from) AS valid_to
             FROM (SELECT user_id, valid_from, tier, signup_country, deleted,
                          row_number() OVER (PARTITION BY user_id, valid_from ORDER BY lsn DESC) AS newest
                   FROM {versions})
             WHERE newest = 1) v
           ON e.user_id = v.user_id
          AND e.event_time_ms >= v.valid_from
          AND (v.valid_to IS NULL OR e.event_time_ms < v.valid_to)"
    )
}

/// A change record and where it was read.
#[derive(Debug, Clone)]
pub struct SourcedVersion {
    pub partition: i32,
    pub offset: i64,
    pub version: ProfileVersion,
}

/// A row of `user_profiles` in a change record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRow {
    pub user_id: String,
    pub tier: String,
    pub signup_country: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

/// Where a change came from, Debezium style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSource {
    pub connector: String,
    pub db: String,
    pub schema: String,
    pub table: String,
    /// The change's position in the write-ahead log, as a number.
    pub lsn: i64,
    /// The same, as Postgres writes it (`0/1526230`).
    pub lsn_text: String,
    #[serde(rename = "txId")]
    pub tx_id: Option<i64>,
    /// Commit time, epoch milliseconds.
    pub ts_ms: Millis,
    /// Read by the initial snapshot rather than from the log.
    pub snapshot: bool,
}

/// One change record on the changelog topic (a Debezium-style envelope): `op` is `c` (insert),
/// `u` (update), `d` (delete) or `r` (read by the initial snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEnvelope {
    pub before: Option<ProfileRow>,
    pub after: Option<ProfileRow>,
    pub op: String,
    /// When the publisher produced it, epoch milliseconds.
    pub ts_ms: Millis,
    pub source: ChangeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("not a change record: {0}")]
    NotJson(String),
    #[error("op `{0}` has no row image it needs")]
    MissingImage(String),
    #[error("unknown op `{0}`")]
    UnknownOp(String),
    #[error("`updated_at` {0:?} is not RFC 3339")]
    BadTime(String),
    #[error("the version's time {0} (epoch ms) is outside the event time range")]
    TimeOutOfRange(Millis),
    #[error(transparent)]
    BadString(#[from] crate::validity::StringError),
}

impl ChangeEnvelope {
    pub fn decode(payload: &[u8]) -> Result<ChangeEnvelope, ChangeError> {
        serde_json::from_slice(payload).map_err(|e| ChangeError::NotJson(e.to_string()))
    }

    /// The profile version this change creates. A delete ends the deleted version: a tombstone
    /// valid from the commit time, or from the deleted version's `updated_at` if that is later.
    /// Its strings and time keep the bounds of an event's (`validity`), since the tier and
    /// country join events as dimension values.
    pub fn version(&self) -> Result<ProfileVersion, ChangeError> {
        use crate::validity::{
            MAX_COUNTRY_BYTES, MAX_TIER_BYTES, MAX_USER_ID_BYTES, check_optional, check_string,
            time_in_range,
        };
        let version = self.image_version()?;
        check_string("user_id", &version.user_id, MAX_USER_ID_BYTES)?;
        if let Some(profile) = &version.profile {
            check_string("tier", &profile.tier, MAX_TIER_BYTES)?;
            check_optional(
                "signup_country",
                profile.signup_country.as_deref(),
                MAX_COUNTRY_BYTES,
            )?;
        }
        if !time_in_range(version.valid_from) {
            return Err(ChangeError::TimeOutOfRange(version.valid_from));
        }
        Ok(version)
    }

    fn image_version(&self) -> Result<ProfileVersion, ChangeError> {
        let parse = |row: &ProfileRow| {
            parse_rfc3339(&row.updated_at)
                .ok_or_else(|| ChangeError::BadTime(row.updated_at.clone()))
        };
        match self.op.as_str() {
            "c" | "u" | "r" => {
                let after = self
                    .after
                    .as_ref()
                    .ok_or_else(|| ChangeError::MissingImage(self.op.clone()))?;
                Ok(ProfileVersion {
                    user_id: after.user_id.clone(),
                    valid_from: parse(after)?,
                    lsn: self.source.lsn,
                    profile: Some(Profile {
                        tier: after.tier.clone(),
                        signup_country: after.signup_country.clone(),
                    }),
                })
            }
            "d" => {
                let before = self
                    .before
                    .as_ref()
                    .ok_or_else(|| ChangeError::MissingImage(self.op.clone()))?;
                Ok(ProfileVersion {
                    user_id: before.user_id.clone(),
                    valid_from: parse(before)?.max(self.source.ts_ms),
                    lsn: self.source.lsn,
                    profile: None,
                })
            }
            other => Err(ChangeError::UnknownOp(other.to_string())),
        }
    }
}

impl ProfileRow {
    pub fn new(
        user_id: &str,
        tier: &str,
        signup_country: Option<&str>,
        updated_at: Millis,
    ) -> Self {
        ProfileRow {
            user_id: user_id.into(),
            tier: tier.into(),
            signup_country: signup_country.map(str::to_string),
            updated_at: format_rfc3339(updated_at),
        }
    }
}

/// Postgres's text form of an LSN (`0/1526230`) as a number.
pub fn parse_lsn(text: &str) -> Option<i64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    i64::try_from((high << 32) | low).ok()
}

pub fn format_lsn(lsn: i64) -> String {
    format!("{:X}/{:X}", (lsn as u64) >> 32, (lsn as u64) & 0xFFFF_FFFF)
}

#[cfg(test)]
#[path = "profiles_tests.rs"]
mod tests;
