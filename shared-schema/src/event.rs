//! The event on the bus (CONTRACT §1) and its decoder.
//!
//! Decoding is the one gate every consumer passes through: anything it refuses becomes a
//! [`DecodeError`] whose text is stored as the quarantine reason. Schema version 1 is upcast to
//! version 2 here, so nothing downstream ever sees `location`.

use crate::time::{Millis, format_rfc3339, parse_rfc3339};
use crate::validity::{self, StringError, check_optional, check_string};
use serde::Deserialize;
use std::borrow::Cow;

/// The newest event schema version; every decoded event has this shape.
pub const CURRENT_SCHEMA_VERSION: i32 = 2;
/// Payloads larger than this are bad input (CONTRACT §1).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Amounts are kept as integer micro-units so sums are exact and associative in both layers.
/// This bound keeps one amount within the lake's `Decimal128(18, 6)` column.
pub const MAX_AMOUNT: f64 = 1e12;
pub const AMOUNT_SCALE: u32 = 6;
const MICROS_PER_UNIT: f64 = 1e6;

/// A decoded event in schema version 2.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub event_time: Millis,
    /// The version the producer wrote; the fields below are always in the current shape.
    pub schema_version: i32,
    pub user_id: Option<String>,
    pub product_id: Option<String>,
    /// `amount` in micro-units (`19.99` is `19_990_000`).
    pub amount_micros: Option<i64>,
    pub city: Option<String>,
    pub country: Option<String>,
    /// The buyer's profile valid at `event_time`, set by the layers' temporal join (see
    /// `profiles`), never by the decoder; `None` when there is none.
    pub profile: Option<crate::profiles::Profile>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message has no value")]
    Empty,
    #[error("message is {0} bytes, over the 1 MiB limit")]
    TooLarge(usize),
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("`event_id` must be 1 to 128 bytes, got {0}")]
    EventIdLength(usize),
    #[error("`event_type` must not be empty")]
    EmptyEventType,
    #[error("`event_time` {0:?} is neither RFC 3339 with an offset nor epoch milliseconds")]
    BadEventTime(String),
    #[error(
        "`event_time` {event_time} is more than {skew_ms} ms ahead of the message's timestamp {clock}"
    )]
    FromTheFuture {
        event_time: String,
        skew_ms: Millis,
        clock: String,
    },
    #[error(
        "`event_time` {0} (epoch ms) is outside 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
    )]
    EventTimeOutOfRange(Millis),
    #[error(transparent)]
    BadString(#[from] StringError),
    #[error("`amount` must be a number from 0 to 1e12, got {0}")]
    BadAmount(f64),
    #[error("unsupported `schema_version` {0}")]
    UnsupportedVersion(i64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTime<'a> {
    Millis(i64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    event_time: RawTime<'a>,
    schema_version: Option<i64>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(default)]
    amount: Option<f64>,
    #[serde(borrow, default)]
    city: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    country: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    location: Option<Cow<'a, str>>,
}

/// Decodes one message value. `now` and `max_skew_ms` bound how far ahead an event time may be:
/// the consumers pass the message's broker timestamp as `now` (see
/// `validity::judging_clock`), so every reader judges a message alike.
pub fn decode(
    payload: Option<&[u8]>,
    now: Millis,
    max_skew_ms: Millis,
) -> Result<Event, DecodeError> {
    let bytes = payload.ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let raw: RawEvent<'_> =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;

    if raw.event_id.is_empty() || raw.event_id.len() > MAX_EVENT_ID_BYTES {
        return Err(DecodeError::EventIdLength(raw.event_id.len()));
    }
    check_string("event_id", &raw.event_id, MAX_EVENT_ID_BYTES)?;
    if raw.event_type.is_empty() {
        return Err(DecodeError::EmptyEventType);
    }
    check_string(
        "event_type",
        &raw.event_type,
        validity::MAX_EVENT_TYPE_BYTES,
    )?;
    let event_time = match &raw.event_time {
        RawTime::Millis(ms) => *ms,
        RawTime::Text(text) => {
            parse_rfc3339(text).ok_or_else(|| DecodeError::BadEventTime(text.to_string()))?
        }
    };
    if !validity::time_in_range(event_time) {
        return Err(DecodeError::EventTimeOutOfRange(event_time));
    }
    if event_time > now.saturating_add(max_skew_ms) {
        return Err(DecodeError::FromTheFuture {
            event_time: format_rfc3339(event_time),
            skew_ms: max_skew_ms,
            clock: format_rfc3339(now),
        });
    }
    let amount_micros = match raw.amount {
        None => None,
        Some(a) if a.is_finite() && (0.0..=MAX_AMOUNT).contains(&a) => {
            Some((a * MICROS_PER_UNIT).round() as i64)
        }
        Some(a) => return Err(DecodeError::BadAmount(a)),
    };
    let schema_version = raw.schema_version.unwrap_or(1);
    let (city, country) = match schema_version {
        1 => match raw.location.as_deref() {
            Some(location) => upcast_location(location),
            None => (owned(raw.city), owned(raw.country)),
        },
        2 => (owned(raw.city), owned(raw.country)),
        other => return Err(DecodeError::UnsupportedVersion(other)),
    };
    check_optional(
        "user_id",
        raw.user_id.as_deref(),
        validity::MAX_USER_ID_BYTES,
    )?;
    check_optional(
        "product_id",
        raw.product_id.as_deref(),
        validity::MAX_PRODUCT_ID_BYTES,
    )?;
    check_optional("city", city.as_deref(), validity::MAX_CITY_BYTES)?;
    check_optional("country", country.as_deref(), validity::MAX_COUNTRY_BYTES)?;
    Ok(Event {
        event_id: raw.event_id.into_owned(),
        event_type: raw.event_type.into_owned(),
        event_time,
        schema_version: schema_version as i32,
        user_id: owned(raw.user_id),
        product_id: owned(raw.product_id),
        amount_micros,
        city,
        country,
        profile: None,
    })
}

fn owned(value: Option<Cow<'_, str>>) -> Option<String> {
    value.map(Cow::into_owned)
}

/// Version 1's `"City, CC"` becomes version 2's `city` and `country`. The split is at the last
/// comma, since city names may hold commas but country codes never do; a location without a
/// comma is taken as a city alone.
pub fn upcast_location(location: &str) -> (Option<String>, Option<String>) {
    let non_empty = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    };
    match location.rsplit_once(',') {
        Some((city, country)) => (non_empty(city), non_empty(country)),
        None => (non_empty(location), None),
    }
}

/// Converts micro-units back to a number for JSON answers.
pub fn micros_to_f64(micros: i128) -> f64 {
    micros as f64 / MICROS_PER_UNIT
}

/// One field of an event schema version, as the registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SchemaField {
    pub name: &'static str,
    /// The JSON type(s) accepted.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub required: bool,
}

/// One event schema version the decoder accepts (CONTRACT §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    pub version: i32,
    pub description: &'static str,
    pub fields: &'static [SchemaField],
}

const fn field(name: &'static str, kind: &'static str, required: bool) -> SchemaField {
    SchemaField {
        name,
        kind,
        required,
    }
}

/// Every version [`decode`] accepts, oldest first; the last is [`CURRENT_SCHEMA_VERSION`]. The
/// registry records them at every service start, and refuses a binary that means something else
/// by a version already recorded.
pub const SCHEMA_VERSIONS: [SchemaVersion; 2] = [
    SchemaVersion {
        version: 1,
        description: "`location` as \"City, CC\", upcast to `city` and `country` at its last comma; `schema_version` may be absent",
        fields: &[
            field("event_id", "string", true),
            field("event_type", "string", true),
            field("event_time", "string (RFC 3339) | integer (epoch ms)", true),
            field("schema_version", "integer (1 or absent)", false),
            field("user_id", "string", false),
            field("product_id", "string", false),
            field("amount", "number (0 to 1e12)", false),
            field("location", "string (\"City, CC\")", false),
        ],
    },
    SchemaVersion {
        version: 2,
        description: "`city` and `country` as separate fields",
        fields: &[
            field("event_id", "string", true),
            field("event_type", "string", true),
            field("event_time", "string (RFC 3339) | integer (epoch ms)", true),
            field("schema_version", "integer (2)", true),
            field("user_id", "string", false),
            field("product_id", "string", false),
            field("amount", "number (0 to 1e12)", false),
            field("city", "string", false),
            field("country", "string (ISO code)", false),
        ],
    },
];

impl SchemaVersion {
    /// The fields as canonical JSON: sorted by name, so only what they are counts.
    pub fn fields_json(&self) -> String {
        let mut fields = self.fields.to_vec();
        fields.sort_by_key(|f| f.name);
        // Static strings and booleans only: serialisation cannot fail.
        serde_json::to_string(&fields).unwrap_or_default()
    }

    /// A stable hash of the version number and its fields (the description is prose and is
    /// not covered).
    pub fn fingerprint(&self) -> String {
        let text = format!("{}:{}", self.version, self.fields_json());
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
