//! The id log: what each checkpoint counted, packed into one `speed_log` row per checkpoint
//! instead of a row per event. Every instance reads every row, so the dedupe and session state it
//! holds in memory covers all partitions, whoever owns them.
//!
//! An entry is the event's id hash (xxh3-128 of `event_id`, 16 bytes), its event time (8 bytes)
//! and, per `sessions` metric that applied it, the metric's and the session key's hashes (8 bytes
//! each). A row is a version byte followed by entries, little-endian.

use shared_schema::time::Millis;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// The first byte of every row: how its entries are laid out.
const FORMAT: u8 = 1;

/// One counted event, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogEntry {
    pub id: IdHash,
    pub event_time: Millis,
    /// (metric hash, key hash) of each `sessions` metric the event was applied to.
    pub sessions: Vec<(u64, u64)>,
}

/// An `event_id` as the state holds it: 128 bits of xxh3, two words so that a table entry
/// needs 8-byte alignment, not 16. Two ids share a hash with probability 2^-128 per pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdHash(pub u64, pub u64);

impl std::hash::Hash for IdHash {
    /// Already a hash: one word of it is enough for a table.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

pub(crate) fn id_hash(event_id: &str) -> IdHash {
    let h = xxh3_128(event_id.as_bytes());
    IdHash(h as u64, (h >> 64) as u64)
}

/// A metric name or session key in the log: 64 bits of xxh3. Two keys of one metric collide
/// with probability about n^2 / 2^65 (1M keys: 3e-8), which would merge their sessions.
pub(crate) fn key_hash(value: &str) -> u64 {
    xxh3_64(value.as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeLogError {
    #[error("a speed_log row of format {0}, which this version cannot read")]
    Format(u8),
    #[error("a speed_log row ends inside an entry, at byte {0}")]
    Truncated(usize),
}

/// Packs entries into one row.
pub(crate) fn encode(entries: &[LogEntry]) -> Vec<u8> {
    let sessions: usize = entries.iter().map(|e| e.sessions.len()).sum();
    let mut out = Vec::with_capacity(1 + entries.len() * 25 + sessions * 16);
    out.push(FORMAT);
    for entry in entries {
        out.extend_from_slice(&entry.id.0.to_le_bytes());
        out.extend_from_slice(&entry.id.1.to_le_bytes());
        out.extend_from_slice(&entry.event_time.to_le_bytes());
        // At most one per `sessions` metric of the catalog.
        out.push(u8::try_from(entry.sessions.len()).unwrap_or(u8::MAX));
        for (metric, key) in entry.sessions.iter().take(usize::from(u8::MAX)) {
            out.extend_from_slice(&metric.to_le_bytes());
            out.extend_from_slice(&key.to_le_bytes());
        }
    }
    out
}

/// Calls `each` with every entry of a row, in order.
pub(crate) fn decode(row: &[u8], mut each: impl FnMut(LogEntry)) -> Result<(), DecodeLogError> {
    let Some((&format, mut rest)) = row.split_first() else {
        return Ok(());
    };
    if format != FORMAT {
        return Err(DecodeLogError::Format(format));
    }
    let word = |rest: &mut &[u8]| -> Result<u64, DecodeLogError> {
        let (head, tail) = rest
            .split_first_chunk::<8>()
            .ok_or(DecodeLogError::Truncated(row.len() - rest.len()))?;
        *rest = tail;
        Ok(u64::from_le_bytes(*head))
    };
    while !rest.is_empty() {
        let id = IdHash(word(&mut rest)?, word(&mut rest)?);
        let event_time = word(&mut rest)? as i64;
        let (&count, tail) = rest
            .split_first()
            .ok_or(DecodeLogError::Truncated(row.len()))?;
        rest = tail;
        let mut sessions = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            sessions.push((word(&mut rest)?, word(&mut rest)?));
        }
        each(LogEntry {
            id,
            event_time,
            sessions,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, t: Millis, sessions: Vec<(u64, u64)>) -> LogEntry {
        LogEntry {
            id: id_hash(id),
            event_time: t,
            sessions,
        }
    }

    #[test]
    fn entries_come_back_as_they_went_in() {
        let entries = vec![
            entry("a", 1_700_000_000_000, vec![]),
            entry("b", -5, vec![(key_hash("sessions"), key_hash("u1"))]),
            entry("c", i64::MAX, vec![(1, 2), (3, 4)]),
        ];
        let row = encode(&entries);
        assert_eq!(row.len(), 1 + 3 * 25 + 3 * 16);
        let mut back = Vec::new();
        decode(&row, |e| back.push(e)).expect("decodes");
        assert_eq!(back, entries);
    }

    #[test]
    fn a_cut_row_or_an_unknown_format_is_an_error() {
        let row = encode(&[entry("a", 1, vec![(1, 2)])]);
        for cut in 2..row.len() {
            assert!(decode(&row[..cut], |_| {}).is_err(), "cut at {cut}");
        }
        let mut future = row.clone();
        future[0] = 9;
        assert!(matches!(
            decode(&future, |_| {}),
            Err(DecodeLogError::Format(9))
        ));
        assert!(decode(&[], |_| panic!("no entries")).is_ok());
    }

    #[test]
    fn ids_differ_by_hash() {
        assert_ne!(id_hash("e-1"), id_hash("e-2"));
        assert_eq!(id_hash("e-1"), id_hash("e-1"));
    }
}
