//! Which partitions this instance may checkpoint: those the group assigned to it, each under the
//! epoch it raised when it took them (see `state::store`). A checkpoint refused for a partition
//! marks it fenced: its events are dropped until the group assigns it here again.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub(crate) struct Ownership {
    /// Off for a replay, which writes only its own tables and reads every partition itself.
    pub fencing: bool,
    /// The epoch held for each partition taken.
    pub epochs: BTreeMap<i32, i64>,
    /// Partitions another instance took since: not claimed again until the next assignment.
    pub fenced: BTreeSet<i32>,
    /// The source's assignment count when the epochs were last claimed.
    pub assignments_seen: u64,
}

impl Ownership {
    /// Of `partitions`, those to claim: neither held nor fenced.
    pub(crate) fn unclaimed(&self, partitions: impl IntoIterator<Item = i32>) -> Vec<i32> {
        partitions
            .into_iter()
            .filter(|p| !self.epochs.contains_key(p) && !self.fenced.contains(p))
            .collect()
    }

    /// The epochs held for `partitions`; a partition not held is refused as fenced.
    pub(crate) fn held(
        &self,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<BTreeMap<i32, i64>, Vec<i32>> {
        let mut held = BTreeMap::new();
        let mut missing = Vec::new();
        for p in partitions {
            match self.epochs.get(&p) {
                Some(epoch) => {
                    held.insert(p, *epoch);
                }
                None => missing.push(p),
            }
        }
        if missing.is_empty() {
            Ok(held)
        } else {
            Err(missing)
        }
    }

    /// Another instance took `partitions`.
    pub(crate) fn fence(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.epochs.remove(p);
            self.fenced.insert(*p);
        }
    }

    /// The group assigned partitions again (`count` is the source's assignment count): every
    /// owned partition is claimed anew.
    pub(crate) fn reassigned(&mut self, count: u64) -> bool {
        if count == self.assignments_seen {
            return false;
        }
        self.assignments_seen = count;
        self.epochs.clear();
        self.fenced.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_partition_is_not_claimed_again_until_the_group_reassigns() {
        let mut ownership = Ownership::default();
        assert_eq!(ownership.unclaimed([0, 1]), vec![0, 1]);
        ownership.epochs.extend([(0, 3), (1, 7)]);
        assert_eq!(ownership.held([0, 1]), Ok(BTreeMap::from([(0, 3), (1, 7)])));
        ownership.fence(&[1]);
        assert_eq!(ownership.held([0, 1]), Err(vec![1]));
        assert!(ownership.unclaimed([0, 1]).is_empty());
        assert!(!ownership.reassigned(0));
        assert!(ownership.reassigned(1));
        assert_eq!(ownership.unclaimed([0, 1]), vec![0, 1]);
    }
}
