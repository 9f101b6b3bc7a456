//! Event-time arithmetic: bucket boundaries, human durations and RFC 3339 formatting.
//!
//! All instants are UTC epoch milliseconds (`i64`). Buckets are half-open `[start, start + width)`
//! and aligned to the Unix epoch, so every layer computes the same boundaries without sharing
//! state.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Epoch milliseconds, UTC.
pub type Millis = i64;

pub const SECOND_MS: Millis = 1_000;
pub const MINUTE_MS: Millis = 60 * SECOND_MS;
pub const HOUR_MS: Millis = 60 * MINUTE_MS;
pub const DAY_MS: Millis = 24 * HOUR_MS;

/// Start of the bucket of `width` that contains `ts`. Floors towards negative infinity, so
/// instants before 1970 land in the right bucket too.
pub fn bucket_start(ts: Millis, width: Millis) -> Millis {
    debug_assert!(width > 0);
    ts.div_euclid(width) * width
}

/// The first bucket boundary at or after `ts`.
pub fn bucket_ceil(ts: Millis, width: Millis) -> Millis {
    let start = bucket_start(ts, width);
    if start == ts { ts } else { start + width }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("duration `{0}` is not a positive whole number followed by ms, s, m, h or d")]
    Malformed(String),
}

/// A positive duration written like `500ms`, `30s`, `1m`, `15m`, `1h` or `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(Millis);

impl HumanDuration {
    pub const fn from_millis(ms: Millis) -> Self {
        HumanDuration(ms)
    }
    pub const fn millis(self) -> Millis {
        self.0
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }

    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let malformed = || DurationError::Malformed(text.to_string());
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(malformed)?;
        let (digits, unit) = text.split_at(split);
        let n: i64 = digits.parse().map_err(|_| malformed())?;
        let unit_ms = match unit {
            "ms" => 1,
            "s" => SECOND_MS,
            "m" => MINUTE_MS,
            "h" => HOUR_MS,
            "d" => DAY_MS,
            _ => return Err(malformed()),
        };
        match n.checked_mul(unit_ms) {
            Some(ms) if ms > 0 => Ok(HumanDuration(ms)),
            _ => Err(malformed()),
        }
    }
}

impl fmt::Display for HumanDuration {
    /// The largest unit that divides the duration exactly, so `parse(display(d)) == d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, size) in [
            ("d", DAY_MS),
            ("h", HOUR_MS),
            ("m", MINUTE_MS),
            ("s", SECOND_MS),
        ] {
            if ms != 0 && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// RFC 3339 in UTC with a `Z`, milliseconds only when they are not zero.
pub fn format_rfc3339(ts: Millis) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ts) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => ts.to_string(),
    }
}

/// Parses RFC 3339 with an offset into epoch milliseconds (sub-millisecond digits are dropped).
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

pub fn to_datetime(ts: Millis) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ts).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(HumanDuration::parse("1m").unwrap().millis(), MINUTE_MS);
        assert_eq!(
            HumanDuration::parse("15m").unwrap().millis(),
            15 * MINUTE_MS
        );
        assert_eq!(HumanDuration::parse("1d").unwrap().millis(), DAY_MS);
        assert_eq!(HumanDuration::parse("250ms").unwrap().millis(), 250);
        for bad in [
            "",
            "m",
            "0m",
            "1",
            "1w",
            "-1m",
            "1.5m",
            " 1m",
            "99999999999999999d",
        ] {
            assert!(
                HumanDuration::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            HumanDuration::from_millis(90 * MINUTE_MS).to_string(),
            "90m"
        );
        assert_eq!(HumanDuration::from_millis(2 * HOUR_MS).to_string(), "2h");
    }

    #[test]
    fn rfc3339_round_trip() {
        let ts = parse_rfc3339("2026-11-21T13:45:12.345Z").unwrap();
        assert_eq!(format_rfc3339(ts), "2026-11-21T13:45:12.345Z");
        assert_eq!(parse_rfc3339("2026-11-21T14:45:12.345+01:00"), Some(ts));
        assert_eq!(
            format_rfc3339(bucket_start(ts, MINUTE_MS)),
            "2026-11-21T13:45:00Z"
        );
    }

    proptest! {
        #[test]
        fn bucket_contains_its_instant(ts in -10_000_000_000_000i64..10_000_000_000_000, width in 1i64..10 * DAY_MS) {
            let start = bucket_start(ts, width);
            prop_assert!(start <= ts && ts < start + width);
            prop_assert_eq!(start.rem_euclid(width), 0);
            prop_assert_eq!(bucket_start(start, width), start);
            let ceil = bucket_ceil(ts, width);
            prop_assert!(ceil >= ts && ceil - ts < width && ceil.rem_euclid(width) == 0);
        }

        #[test]
        fn boundary_belongs_to_the_later_bucket(k in -1_000_000i64..1_000_000, width in 1i64..DAY_MS) {
            let boundary = k * width;
            prop_assert_eq!(bucket_start(boundary, width), boundary);
            prop_assert_eq!(bucket_start(boundary - 1, width), boundary - width);
        }

        #[test]
        fn durations_round_trip(ms in 1i64..100 * DAY_MS) {
            let d = HumanDuration::from_millis(ms);
            prop_assert_eq!(HumanDuration::parse(&d.to_string()), Ok(d));
        }
    }
}
