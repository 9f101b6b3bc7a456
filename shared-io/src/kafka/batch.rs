//! What a poll of the event source hands out: decoded events with where they were read, bad
//! messages, and the positions to store with them.

use crate::positions::PartitionPosition;
use shared_schema::event::Event;
use std::collections::{BTreeMap, BTreeSet};

/// A decoded event and where it was read.
#[derive(Debug, Clone)]
pub struct SourcedEvent {
    pub partition: i32,
    pub offset: i64,
    pub event: Event,
}

/// A message that cannot be counted (undecodable, or refused by the commit), for the
/// quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage {
    pub partition: i32,
    pub offset: i64,
    pub raw: Option<Vec<u8>>,
    pub reason: String,
}

/// What one poll produced, and the positions after it (for every assigned partition).
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<SourcedEvent>,
    pub bad: Vec<BadMessage>,
    pub positions: BTreeMap<i32, PartitionPosition>,
    /// Some partition's position changed (a message read, or its end reached).
    pub advanced: bool,
    /// Offsets passed over because the broker, asked for them twice, returned a later one: not
    /// in the log (compaction, transaction markers, retention), or a broker serving a fetch
    /// that starts inside a record batch from the next batch on. Counted, never silent.
    pub missing_offsets: u64,
}

impl Batch {
    /// Drops what the batch holds of partitions not in `owned` (given up since it was read);
    /// returns whether anything was dropped.
    pub fn retain_partitions(&mut self, owned: &BTreeSet<i32>) -> bool {
        let before = (self.events.len(), self.bad.len(), self.positions.len());
        self.events.retain(|e| owned.contains(&e.partition));
        self.bad.retain(|b| owned.contains(&b.partition));
        self.positions.retain(|p, _| owned.contains(p));
        before != (self.events.len(), self.bad.len(), self.positions.len())
    }
}
