//! Committing a consumer's batch without letting one message stop the consumer.
//!
//! A failed commit is either the data's fault or the infrastructure's. Data (a value Postgres
//! or Parquet refuses) fails the same way on every retry, so retrying it stalls every partition
//! of the instance, and the next instance after a rebalance: instead the offending messages are
//! found by bisection ([`find_culprits`], each trial a transaction that is rolled back), moved
//! to the quarantine, and the rest commits as one transaction as before. Infrastructure (a
//! connection refused or dropped, a pool timeout, I/O) is retried with backoff ([`Backoff`]),
//! and shows as a failing commit in `/metrics` and `/readyz` until a commit succeeds
//! ([`CommitHealth`]).

use crate::kafka::BadMessage;
use crate::kafka::{Batch, SourcedEvent};
use crate::observe;
use crate::quarantine::printable;
use crate::readiness::readiness;
use shared_schema::event::Event;
use shared_schema::time::format_rfc3339;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

/// Why a commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The batch's content was refused; the text says how (for the quarantine reason).
    Data(String),
    /// A dependency is away or broken; the text is for the log.
    Infrastructure(String),
}

/// Postgres SQLSTATE classes raised by a value rather than by the server's state: 22 data
/// exception (a NUL in text 22021, a time out of range 22008, a number out of range 22003), 23
/// integrity constraint violation, 54 program limit exceeded (a btree key over the page limit).
const DATA_SQLSTATE_CLASSES: [&str; 3] = ["22", "23", "54"];

/// Classifies a Postgres error: a refused value is data, everything else (connection, pool,
/// I/O, protocol, server resources, serialization or deadlock) is infrastructure.
pub fn classify_sql(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            if DATA_SQLSTATE_CLASSES
                .iter()
                .any(|class| code.starts_with(class))
            {
                Failure::Data(printable(&format!(
                    "refused by Postgres (SQLSTATE {code}): {}",
                    db.message()
                )))
            } else {
                Failure::Infrastructure(error.to_string())
            }
        }
        // A value the driver cannot encode for Postgres never encodes.
        sqlx::Error::Encode(e) => {
            Failure::Data(printable(&format!("refused by the Postgres driver: {e}")))
        }
        other => Failure::Infrastructure(other.to_string()),
    }
}

/// Finds the items among `0..count` that make `trial` fail with a data error, by bisection:
/// `trial(subset)` tries a commit of just those items and undoes it. The whole set is known to
/// fail. Returns each culprit group with the reason it failed: single items, or, where a group
/// fails while each of its halves passes alone (items refused only together), that group.
/// An infrastructure failure on the way ends the search: the caller retries later.
pub async fn find_culprits<F, Fut>(
    count: usize,
    mut trial: F,
) -> Result<Vec<(Vec<usize>, String)>, String>
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let mut culprits = Vec::new();
    // Sets still to look into, each with its failure when already known.
    let mut pending: Vec<(Vec<usize>, Option<String>)> = vec![((0..count).collect(), None)];
    while let Some((set, known)) = pending.pop() {
        if set.is_empty() {
            continue;
        }
        let reason = match known {
            Some(reason) => reason,
            None => match trial(set.clone()).await {
                Ok(()) => continue,
                Err(Failure::Data(reason)) => reason,
                Err(Failure::Infrastructure(e)) => return Err(e),
            },
        };
        if set.len() == 1 {
            culprits.push((set, reason));
            continue;
        }
        let (left, right) = set.split_at(set.len() / 2);
        let left_fails = match trial(left.to_vec()).await {
            Ok(()) => None,
            Err(Failure::Data(reason)) => Some(reason),
            Err(Failure::Infrastructure(e)) => return Err(e),
        };
        let right_fails = match trial(right.to_vec()).await {
            Ok(()) => None,
            Err(Failure::Data(reason)) => Some(reason),
            Err(Failure::Infrastructure(e)) => return Err(e),
        };
        match (left_fails, right_fails) {
            (None, None) => culprits.push((set, format!("refused together: {reason}"))),
            (l, r) => {
                if let Some(reason) = l {
                    pending.push((left.to_vec(), Some(reason)));
                }
                if let Some(reason) = r {
                    pending.push((right.to_vec(), Some(reason)));
                }
            }
        }
    }
    culprits.sort();
    Ok(culprits)
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Exponential backoff between retries of an infrastructure failure.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(FIRST_BACKOFF)
    }
}

impl Backoff {
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

/// Reports a consumer's commits to `/metrics` and `/readyz`.
#[derive(Debug, Clone, Copy)]
pub struct CommitHealth {
    /// The consumer's name in the metrics (`speed-layer`, `batch-lander`).
    pub consumer: &'static str,
}

impl CommitHealth {
    fn part(&self) -> String {
        format!("{} commit", self.consumer)
    }

    pub fn succeeded(&self) {
        observe::consumer().commit_succeeded(self.consumer);
        readiness().clear(&self.part());
    }

    /// An infrastructure failure of `what` (a fixed phrase naming the dependency); `error` goes
    /// to the log only.
    pub fn infrastructure_failed(&self, what: &str, error: &str) {
        tracing::warn!(consumer = self.consumer, error, "{what}; retrying");
        observe::consumer().commit_failed(self.consumer, "infrastructure");
        readiness().set_problem(&self.part(), what);
    }

    /// A data failure, about to be resolved by quarantining `culprits` messages.
    pub fn data_failed(&self, reason: &str) {
        tracing::warn!(
            consumer = self.consumer,
            reason,
            "a batch was refused for its content; isolating the offending messages"
        );
        observe::consumer().commit_failed(self.consumer, "data");
    }

    pub fn quarantined(&self, messages: usize) {
        observe::consumer().count_quarantined(self.consumer, messages as u64);
    }
}

/// `batch` with the events at `culprits` moved to its bad messages.
pub fn quarantine_culprits(batch: &Batch, culprits: &BTreeMap<String, Vec<usize>>) -> Batch {
    let mut reason_of: BTreeMap<usize, &str> = BTreeMap::new();
    for (reason, indices) in culprits {
        for &i in indices {
            reason_of.insert(i, reason);
        }
    }
    let mut bad = batch.bad.clone();
    let mut events = Vec::with_capacity(batch.events.len());
    for (i, sourced) in batch.events.iter().enumerate() {
        match reason_of.get(&i) {
            Some(reason) => bad.push(bad_message(sourced, reason)),
            None => events.push(sourced.clone()),
        }
    }
    // Every copy of a refused id goes too: a copy would be refused the same way.
    let refused: BTreeSet<&str> = reason_of
        .keys()
        .map(|&i| batch.events[i].event.event_id.as_str())
        .collect();
    let (kept, copies): (Vec<SourcedEvent>, Vec<SourcedEvent>) = events
        .into_iter()
        .partition(|e| !refused.contains(e.event.event_id.as_str()));
    for copy in &copies {
        bad.push(bad_message(copy, "a copy of an event refused at commit"));
    }
    Batch {
        events: kept,
        bad,
        positions: batch.positions.clone(),
        advanced: batch.advanced,
        missing_offsets: batch.missing_offsets,
    }
}

/// The quarantine record of an event refused at commit. The decoder kept no raw bytes, so the
/// record holds the decoded event re-encoded as schema version 2; the partition and offset
/// name the original on the bus.
fn bad_message(sourced: &SourcedEvent, reason: &str) -> BadMessage {
    BadMessage {
        partition: sourced.partition,
        offset: sourced.offset,
        raw: Some(reencode(&sourced.event)),
        reason: format!("{reason} (kept: the decoded event, re-encoded)"),
    }
}

pub fn reencode(event: &Event) -> Vec<u8> {
    let amount = event
        .amount_micros
        .map(|m| shared_schema::event::micros_to_f64(i128::from(m)));
    serde_json::json!({
        "event_id": event.event_id,
        "event_type": event.event_type,
        "event_time": format_rfc3339(event.event_time),
        "schema_version": 2,
        "user_id": event.user_id,
        "product_id": event.product_id,
        "amount": amount,
        "city": event.city,
        "country": event.country,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::positions::PartitionPosition;

    async fn culprits_of(count: usize, bad: &BTreeSet<usize>) -> (Vec<Vec<usize>>, usize) {
        let mut trials = 0;
        let found = find_culprits(count, |set| {
            trials += 1;
            let fails = set.iter().any(|i| bad.contains(i));
            async move {
                if fails {
                    Err(Failure::Data("bad".into()))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
        (found.into_iter().map(|(set, _)| set).collect(), trials)
    }

    #[tokio::test]
    async fn bisection_finds_exactly_the_bad_items_in_few_trials() {
        for (count, bad) in [
            (1, vec![0]),
            (2, vec![1]),
            (100, vec![0, 57, 99]),
            (1_000, vec![500]),
            (7, vec![0, 1, 2, 3, 4, 5, 6]),
            (10, vec![]),
        ] {
            let bad: BTreeSet<usize> = bad.into_iter().collect();
            let (found, trials) = culprits_of(count, &bad).await;
            let want: Vec<Vec<usize>> = bad.iter().map(|i| vec![*i]).collect();
            assert_eq!(found, want, "{count} items, bad {bad:?}");
            // About two trials per level of the search for each culprit.
            let levels = (count as f64).log2().ceil() as usize + 1;
            assert!(
                trials <= 1 + 2 * levels * bad.len().max(1),
                "{trials} trials"
            );
        }
    }

    #[tokio::test]
    async fn items_refused_only_together_are_isolated_as_a_group() {
        // Items 2 and 3 fail only when both are in the trial.
        let found = find_culprits(4, |set| {
            let fails = set.contains(&2) && set.contains(&3);
            async move {
                if fails {
                    Err(Failure::Data("pair".into()))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(found, vec![(vec![2, 3], "refused together: pair".into())]);
    }

    #[tokio::test]
    async fn an_infrastructure_failure_ends_the_search() {
        let found = find_culprits(8, |_| async { Err(Failure::Infrastructure("down".into())) });
        assert_eq!(found.await, Err("down".into()));
    }

    #[test]
    fn reasons_are_printable() {
        assert_eq!(printable("a\0b\nc"), "a b c");
    }

    fn sourced(id: &str, offset: i64) -> SourcedEvent {
        SourcedEvent {
            partition: 0,
            offset,
            event: shared_schema::event::decode(
                Some(
                    format!(r#"{{"event_id":"{id}","event_type":"click","event_time":60000,"amount":1.5}}"#)
                        .as_bytes(),
                ),
                60_000,
                0,
            )
            .unwrap(),
        }
    }

    #[test]
    fn culprits_and_their_copies_move_to_the_bad_messages_and_positions_stay() {
        let batch = Batch {
            events: vec![
                sourced("a", 0),
                sourced("b", 1),
                sourced("a", 2),
                sourced("c", 3),
            ],
            positions: BTreeMap::from([(
                0,
                PartitionPosition {
                    next_offset: 4,
                    ..Default::default()
                },
            )]),
            advanced: true,
            ..Batch::default()
        };
        let culprits = BTreeMap::from([("refused".to_string(), vec![0])]);
        let reduced = quarantine_culprits(&batch, &culprits);
        let kept: Vec<&str> = reduced
            .events
            .iter()
            .map(|e| e.event.event_id.as_str())
            .collect();
        assert_eq!(kept, ["b", "c"]);
        let bad: Vec<i64> = reduced.bad.iter().map(|b| b.offset).collect();
        assert_eq!(bad, [0, 2]);
        assert!(reduced.bad[0].reason.starts_with("refused"));
        assert_eq!(reduced.positions, batch.positions);
        // The re-encoded event decodes to the same event.
        let again = shared_schema::event::decode(reduced.bad[0].raw.as_deref(), 60_000, 0).unwrap();
        assert_eq!(again.event_id, "a");
        assert_eq!(again.amount_micros, Some(1_500_000));
    }
}
