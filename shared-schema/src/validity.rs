//! What the decoder accepts as a string and as a time (CONTRACT §1), and the clock an event's
//! time is judged against.
//!
//! Every bound here exists so that an event the decoder accepts can be stored by every layer:
//! as Postgres `text` (no NUL) and btree keys (about 2 700 bytes per index tuple), as Parquet
//! values, as `timestamptz`, as chrono times and RFC 3339 text, and through the bucket
//! arithmetic of `time`, without an error that only shows at commit time.

use crate::time::Millis;

/// The first event time accepted: 1970-01-01T00:00:00Z. Kafka's own timestamps start here (a
/// negative one is refused by the broker), and an earlier time is a reset clock rather than an
/// event this platform counts.
pub const MIN_EVENT_TIME: Millis = 0;
/// The last event time accepted: 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write
/// (four-digit years). Postgres `timestamptz`, Parquet `timestamp(ms)` and chrono all hold far
/// more, and bucket arithmetic on any width up to a year stays far from `i64` overflow.
pub const MAX_EVENT_TIME: Millis = 253_402_300_799_999;

/// The longest value, in UTF-8 bytes, of each optional string field and of `event_type`.
/// `event_id` keeps its own bound (`event::MAX_EVENT_ID_BYTES`, 128).
///
/// They are keys: `user_id` keys sessions and `failed_logins`, the others group metrics, and a
/// group's values are stored together as one JSON text in a btree key of `speed_aggregates`.
/// All five at their maximum, every byte escaped twice by JSON, stay below Postgres's index
/// tuple limit: 2 × (64 + 256 + 256 + 256 + 64) + overhead < 2 700.
pub const MAX_EVENT_TYPE_BYTES: usize = 64;
/// A profile's tier (`user_profiles.tier`), which joins events as a dimension value.
pub const MAX_TIER_BYTES: usize = 64;
/// Emails (at most 254 bytes), UUIDs and hashed ids fit.
pub const MAX_USER_ID_BYTES: usize = 256;
pub const MAX_PRODUCT_ID_BYTES: usize = 256;
/// City names as people write them; the longest official ones (in Latin letters) are under 200.
pub const MAX_CITY_BYTES: usize = 256;
/// An ISO 3166 code is 2 or 3 letters; room is left for subdivision codes and names.
pub const MAX_COUNTRY_BYTES: usize = 64;

// The key bounds fit a btree tuple even when every byte is escaped.
const _: () = assert!(
    2 * (MAX_EVENT_TYPE_BYTES
        + MAX_USER_ID_BYTES
        + MAX_PRODUCT_ID_BYTES
        + MAX_CITY_BYTES
        + MAX_COUNTRY_BYTES)
        + 200
        < 2_700
);

/// Why a string field is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    #[error("`{field}` is {bytes} bytes, over its limit of {max}")]
    TooLong {
        field: &'static str,
        bytes: usize,
        max: usize,
    },
    /// Unicode category Cc: U+0000 to U+001F, U+007F and U+0080 to U+009F. Postgres `text`
    /// cannot hold U+0000, and the others have no place in an identifier or a group label
    /// (logs, CSV exports and Prometheus labels break on them).
    #[error("`{field}` holds the control character U+{code:04X} at byte {at}")]
    ControlCharacter {
        field: &'static str,
        code: u32,
        at: usize,
    },
}

/// Checks one string field against its byte bound and for control characters.
pub fn check_string(field: &'static str, value: &str, max: usize) -> Result<(), StringError> {
    if value.len() > max {
        return Err(StringError::TooLong {
            field,
            bytes: value.len(),
            max,
        });
    }
    match value.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(StringError::ControlCharacter {
            field,
            code: u32::from(c),
            at,
        }),
        None => Ok(()),
    }
}

/// Checks an optional string field.
pub fn check_optional(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<(), StringError> {
    value.map_or(Ok(()), |v| check_string(field, v, max))
}

/// Whether `event_time` lies in the accepted range.
pub fn time_in_range(event_time: Millis) -> bool {
    (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&event_time)
}

/// The clock an event is judged "from the future" against: the message's broker timestamp
/// (CreateTime as the producer set it, or LogAppendTime on a topic configured for it), which
/// every consumer reads the same whenever it reads the message, so the speed layer and the
/// lander reach one verdict. Only a message without a usable timestamp falls back to the
/// reader's wall clock.
pub fn judging_clock(broker_timestamp: Option<Millis>, wall_clock: Millis) -> Millis {
    match broker_timestamp {
        Some(t) if t >= 0 => t,
        _ => wall_clock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{HumanDuration, bucket_ceil, bucket_start, format_rfc3339, parse_rfc3339};

    #[test]
    fn the_time_range_is_what_rfc_3339_writes() {
        assert_eq!(format_rfc3339(MIN_EVENT_TIME), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(MAX_EVENT_TIME), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            parse_rfc3339("9999-12-31T23:59:59.999Z"),
            Some(MAX_EVENT_TIME)
        );
        assert!(time_in_range(0) && time_in_range(MAX_EVENT_TIME));
        for outside in [-1, MAX_EVENT_TIME + 1, i64::MIN, i64::MAX] {
            assert!(!time_in_range(outside), "{outside}");
        }
    }

    #[test]
    fn bucket_arithmetic_cannot_overflow_in_range() {
        // The widest bucket or window a definition or query may plausibly use: a year.
        let year = HumanDuration::parse("366d").unwrap().millis();
        for t in [MIN_EVENT_TIME, MAX_EVENT_TIME] {
            for width in [1, 60_000, year] {
                let start = bucket_start(t, width);
                assert!(start <= t && t < start.checked_add(width).unwrap());
                assert!(bucket_ceil(t, width).checked_add(2 * year).is_some());
                assert!(start.checked_sub(2 * year).is_some());
            }
        }
        // Chrono holds every instant of the range.
        assert!(chrono::DateTime::from_timestamp_millis(MAX_EVENT_TIME).is_some());
    }

    #[test]
    fn strings_are_bounded_and_free_of_control_characters() {
        assert_eq!(check_string("user_id", "u-1 é 漢字", 256), Ok(()));
        assert_eq!(
            check_string("user_id", "ab\0c", 256),
            Err(StringError::ControlCharacter {
                field: "user_id",
                code: 0,
                at: 2
            })
        );
        for c in ['\n', '\t', '\u{7f}', '\u{85}'] {
            assert!(
                check_string("city", &format!("x{c}"), 256).is_err(),
                "{c:?}"
            );
        }
        assert_eq!(
            check_string("country", &"x".repeat(65), 64),
            Err(StringError::TooLong {
                field: "country",
                bytes: 65,
                max: 64
            })
        );
        // Bytes, not characters: 22 three-byte characters are 66 bytes.
        assert!(check_string("country", &"漢".repeat(22), 64).is_err());
        assert_eq!(check_optional("city", None, 1), Ok(()));
        // The reason never carries the control character itself (quarantine stores it as text).
        let reason = check_string("user_id", "\0", 8).unwrap_err().to_string();
        assert!(!reason.contains('\0'), "{reason}");
    }

    #[test]
    fn the_broker_timestamp_is_the_clock_when_there_is_one() {
        assert_eq!(judging_clock(Some(1_000), 5_000), 1_000);
        assert_eq!(judging_clock(None, 5_000), 5_000);
        assert_eq!(judging_clock(Some(-1), 5_000), 5_000);
    }
}
