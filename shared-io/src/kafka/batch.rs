//! What a poll of the event source hands out: decoded events with where they were read, bad
//! messages, and the positions to store with them.

use crate::positions::PartitionPosition;
use shared_schema::event::Event;
use std::collections::{BTreeMap, HashMap};

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
    /// Splits the batch into at most `groups` batches that hold whole partitions (dealt in turn
    /// by partition number), each with its partitions' events, bad messages and positions. They
    /// can be committed in transactions of their own, like the batches of two instances that
    /// share the topic.
    pub fn split_by_partition(self, groups: usize) -> Vec<Batch> {
        let groups = groups.max(1).min(self.positions.len().max(1));
        let group_of: HashMap<i32, usize> = self
            .positions
            .keys()
            .enumerate()
            .map(|(i, p)| (*p, i % groups))
            .collect();
        let mut split: Vec<Batch> = (0..groups)
            .map(|_| Batch {
                advanced: self.advanced,
                ..Batch::default()
            })
            .collect();
        // A partition without a position (none in practice) goes to the first group.
        let index = |partition: i32| group_of.get(&partition).copied().unwrap_or(0);
        for event in self.events {
            split[index(event.partition)].events.push(event);
        }
        for bad in self.bad {
            split[index(bad.partition)].bad.push(bad);
        }
        for (partition, position) in self.positions {
            split[index(partition)]
                .positions
                .insert(partition, position);
        }
        split
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sourced(partition: i32, offset: i64) -> SourcedEvent {
        SourcedEvent {
            partition,
            offset,
            event: Event {
                event_id: format!("{partition}-{offset}"),
                event_type: "click".into(),
                event_time: 0,
                schema_version: 2,
                user_id: None,
                product_id: None,
                amount_micros: None,
                city: None,
                country: None,
                profile: None,
            },
        }
    }

    proptest! {
        #[test]
        fn a_split_keeps_every_message_once_with_its_partition_whole(
            messages in proptest::collection::vec((0..6i32, any::<bool>()), 0..60),
            assigned in proptest::collection::btree_set(0..6i32, 0..6),
            groups in 0usize..5,
        ) {
            let mut batch = Batch { advanced: true, ..Batch::default() };
            for p in &assigned {
                batch.positions.insert(*p, PartitionPosition { next_offset: 1, ..Default::default() });
            }
            for (offset, (partition, bad)) in messages.iter().enumerate() {
                if *bad {
                    batch.bad.push(BadMessage { partition: *partition, offset: offset as i64, raw: None, reason: "x".into() });
                } else {
                    batch.events.push(sourced(*partition, offset as i64));
                }
            }
            let (events, bad, positions) = (batch.events.clone(), batch.bad.clone(), batch.positions.clone());
            let split = batch.split_by_partition(groups);
            prop_assert!(!split.is_empty() && split.len() <= groups.max(1));
            let mut owner: HashMap<i32, usize> = HashMap::new();
            for (i, part) in split.iter().enumerate() {
                prop_assert!(part.advanced);
                let partitions = part.events.iter().map(|e| e.partition)
                    .chain(part.bad.iter().map(|b| b.partition))
                    .chain(part.positions.keys().copied());
                for p in partitions {
                    prop_assert_eq!(*owner.entry(p).or_insert(i), i, "partition {} in two groups", p);
                }
            }
            // Each partition's messages keep their order, so offsets stay increasing.
            let offsets = |v: Vec<(i32, i64)>| { let mut v = v; v.sort(); v };
            prop_assert_eq!(
                offsets(split.iter().flat_map(|b| b.events.iter().map(|e| (e.partition, e.offset))).collect()),
                offsets(events.iter().map(|e| (e.partition, e.offset)).collect())
            );
            for part in &split {
                for w in part.events.windows(2).filter(|w| w[0].partition == w[1].partition) {
                    prop_assert!(w[0].offset < w[1].offset);
                }
            }
            prop_assert_eq!(split.iter().map(|b| b.bad.len()).sum::<usize>(), bad.len());
            let merged: BTreeMap<i32, PartitionPosition> = split.into_iter().flat_map(|b| b.positions).collect();
            prop_assert_eq!(merged, positions);
        }
    }
}
