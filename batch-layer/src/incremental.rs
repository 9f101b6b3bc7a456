//! Which lake hours a batch run must recompute, and which rows of the promoted view it can keep.
//!
//! The lake is partitioned by the hour of event time, and copies of an event share its event
//! time, so every copy of an id lands in the same hour: deduplicating the files of a set of
//! hours gives exactly the rows a full recompute gives for those hours. A run therefore
//! recomputes
//! - the hours whose files differ from those the promoted view read (late events, new files),
//! - the hours the cutover newly covers, and an operator's backfill range,
//!
//! widened where a metric needs it:
//! - a bucket wider than an hour is recomputed whole, all its hours together;
//! - an event can end the session gap of the next event of its key, so a changed hour also
//!   changes session starts up to one gap after it; the sessions plan reads one gap of context
//!   before each recomputed hour, to find each event's predecessor, without counting it.
//!
//! Every other row is copied from the promoted view. Anything that breaks the link between the
//! two, a changed catalogue or an unreadable view, makes the run a full one.

use shared_schema::catalog::MetricCatalog;
use shared_schema::time::{HOUR_MS, Millis, bucket_start};
use std::collections::{BTreeMap, BTreeSet};

/// A digest of the files of each lake hour, keyed by the hour's start.
pub type HourDigests = BTreeMap<Millis, String>;

/// The hour that holds `time`.
pub fn hour_of(time: Millis) -> Millis {
    bucket_start(time, HOUR_MS)
}

/// Every hour that overlaps `[from, to)`.
fn hours_overlapping(from: Millis, to: Millis) -> impl Iterator<Item = Millis> {
    let first = hour_of(from);
    (0..)
        .map(move |i| first + i * HOUR_MS)
        .take_while(move |h| *h < to)
}

/// A stable digest of one hour's files: their sorted paths and row counts. Lake files are
/// immutable once recorded, so a new file is the only way an hour changes.
pub fn digest_files<'a>(files: impl IntoIterator<Item = (&'a str, i64)>) -> String {
    let mut files: Vec<(&str, i64)> = files.into_iter().collect();
    files.sort_unstable();
    let mut text = String::new();
    for (path, rows) in files {
        text.push_str(path);
        text.push('\t');
        text.push_str(&rows.to_string());
        text.push('\n');
    }
    format!("{}:{:x}", text.lines().count(), fnv1a_128(text.as_bytes()))
}

/// FNV-1a over 128 bits: stable across builds and platforms, unlike `DefaultHasher`, and
/// collision-proof enough for telling one list of paths from the next.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u128::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The digest of every hour of a lake, from its files as (hour, path, rows).
pub fn hour_digests<'a>(files: impl IntoIterator<Item = (Millis, &'a str, i64)>) -> HourDigests {
    let mut by_hour: BTreeMap<Millis, Vec<(&str, i64)>> = BTreeMap::new();
    for (hour, path, rows) in files {
        by_hour.entry(hour).or_default().push((path, rows));
    }
    by_hour
        .into_iter()
        .map(|(hour, files)| (hour, digest_files(files)))
        .collect()
}

/// What the run was asked for, beside the lake itself.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--full`: recompute everything.
    pub full: bool,
    /// `--from`/`--to`: recompute this range even if its files did not change.
    pub backfill: Option<(Millis, Millis)>,
}

/// The promoted view a run may build on.
#[derive(Debug, Clone)]
pub struct Previous {
    pub cutover: Millis,
    pub hours: HourDigests,
}

/// The outcome of planning: `None` hours means a full recompute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Full,
    Hours {
        /// Hours whose buckets are recomputed; the promoted view's rows for every other hour
        /// are kept.
        recompute: BTreeSet<Millis>,
        /// Hours whose files the run reads: the recomputed ones and the sessions context.
        read: BTreeSet<Millis>,
    },
}

impl Scope {
    /// Whether the run recomputes the bucket starting at `bucket_start`.
    pub fn recomputes(&self, bucket_start: Millis) -> bool {
        match self {
            Scope::Full => true,
            Scope::Hours { recompute, .. } => recompute.contains(&hour_of(bucket_start)),
        }
    }

    /// The hours recomputed, given the lake's hours: for a full run, all of them before the
    /// cutover.
    pub fn recomputed_hours(&self, lake_hours: &HourDigests, cutover: Millis) -> BTreeSet<Millis> {
        match self {
            Scope::Full => lake_hours
                .keys()
                .copied()
                .filter(|h| *h < cutover)
                .collect(),
            Scope::Hours { recompute, .. } => recompute.clone(),
        }
    }

    pub fn reads(&self, hour: Millis) -> bool {
        match self {
            Scope::Full => true,
            Scope::Hours { read, .. } => read.contains(&hour),
        }
    }
}

pub fn plan(
    catalog: &MetricCatalog,
    request: &Request,
    current: &HourDigests,
    previous: Option<&Previous>,
    cutover: Millis,
) -> Scope {
    let Some(previous) = previous.filter(|_| !request.full) else {
        return Scope::Full;
    };
    let all_hours: BTreeSet<Millis> = current
        .keys()
        .chain(previous.hours.keys())
        .copied()
        .collect();
    let mut changed: BTreeSet<Millis> = all_hours
        .iter()
        .copied()
        .filter(|h| current.get(h) != previous.hours.get(h))
        .collect();
    if let Some((from, to)) = request.backfill {
        changed.extend(hours_overlapping(from, to));
    }

    let longest_gap = catalog.max_session_gap();

    let mut recompute = changed.clone();
    for hour in &changed {
        // Session starts that a change in `hour` can move.
        recompute.extend(hours_overlapping(*hour, hour + HOUR_MS + longest_gap));
    }
    let (low, high) = (previous.cutover.min(cutover), previous.cutover.max(cutover));
    recompute.extend(hours_overlapping(low, high));
    for metric in &catalog.metrics {
        let width = metric.bucket.millis();
        if width > HOUR_MS {
            let starts: BTreeSet<Millis> = recompute
                .iter()
                .map(|h| h.div_euclid(width) * width)
                .collect();
            for start in starts {
                recompute.extend(hours_overlapping(start, start + width));
            }
        }
    }
    // Nothing at or after the cutover is in a view.
    recompute.retain(|h| *h < cutover);

    let read = with_context(&recompute, longest_gap);
    Scope::Hours { recompute, read }
}

/// The recomputed hours in groups a run computes one at a time, so that a range larger than
/// memory completes: at most `max_hours` hours each (more only where one bucket is wider),
/// never splitting a bucket, each with the hours of sessions context before it.
pub fn chunks(
    catalog: &MetricCatalog,
    recompute: &BTreeSet<Millis>,
    max_hours: usize,
) -> Vec<Scope> {
    let align = catalog.cutover_alignment().max(HOUR_MS);
    let gap = catalog.max_session_gap();
    let mut blocks: BTreeMap<Millis, BTreeSet<Millis>> = BTreeMap::new();
    for hour in recompute {
        blocks
            .entry(hour.div_euclid(align))
            .or_default()
            .insert(*hour);
    }
    let mut out: Vec<BTreeSet<Millis>> = Vec::new();
    for block in blocks.into_values() {
        match out.last_mut() {
            Some(chunk) if chunk.len() + block.len() <= max_hours.max(1) => chunk.extend(block),
            _ => out.push(block),
        }
    }
    out.into_iter()
        .map(|recompute| {
            let read = with_context(&recompute, gap);
            Scope::Hours { recompute, read }
        })
        .collect()
}

/// `hours` and, before each, the hours holding one session gap of predecessors.
fn with_context(hours: &BTreeSet<Millis>, gap: Millis) -> BTreeSet<Millis> {
    let mut read = hours.clone();
    if gap > 0 {
        for hour in hours {
            read.extend(hours_overlapping(hour - gap, *hour));
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Millis = 1_700_000_000_000 / HOUR_MS * HOUR_MS;

    fn catalog(toml: &str) -> MetricCatalog {
        MetricCatalog::from_toml(toml).expect("test catalogue")
    }

    fn counts() -> MetricCatalog {
        catalog(
            r#"[[metric]]
name = "views"
aggregation = "count"
bucket = "1m""#,
        )
    }

    fn digests(hours: &[(Millis, &str)]) -> HourDigests {
        hours.iter().map(|(h, d)| (*h, d.to_string())).collect()
    }

    fn hours(scope: &Scope) -> (Vec<Millis>, Vec<Millis>) {
        match scope {
            Scope::Full => panic!("expected an incremental scope"),
            Scope::Hours { recompute, read } => (
                recompute.iter().map(|h| (h - T0) / HOUR_MS).collect(),
                read.iter().map(|h| (h - T0) / HOUR_MS).collect(),
            ),
        }
    }

    #[test]
    fn only_changed_and_newly_covered_hours_are_recomputed() {
        let previous = Previous {
            cutover: T0 + 3 * HOUR_MS,
            hours: digests(&[(T0, "a"), (T0 + HOUR_MS, "b"), (T0 + 2 * HOUR_MS, "c")]),
        };
        let current = digests(&[
            (T0, "a"),
            (T0 + HOUR_MS, "b2"),
            (T0 + 2 * HOUR_MS, "c"),
            (T0 + 3 * HOUR_MS, "d"),
            (T0 + 4 * HOUR_MS, "e"),
        ]);
        let scope = plan(
            &counts(),
            &Request::default(),
            &current,
            Some(&previous),
            T0 + 4 * HOUR_MS,
        );
        assert_eq!(hours(&scope), (vec![1, 3], vec![1, 3]));
        assert!(scope.recomputes(T0 + HOUR_MS + 59 * 60_000));
        assert!(!scope.recomputes(T0 + 2 * HOUR_MS));
    }

    #[test]
    fn no_previous_view_or_full_means_full() {
        let current = digests(&[(T0, "a")]);
        assert_eq!(
            plan(&counts(), &Request::default(), &current, None, T0 + HOUR_MS),
            Scope::Full
        );
        let previous = Previous {
            cutover: T0,
            hours: HourDigests::new(),
        };
        let full = Request {
            full: true,
            backfill: None,
        };
        assert_eq!(
            plan(&counts(), &full, &current, Some(&previous), T0 + HOUR_MS),
            Scope::Full
        );
    }

    #[test]
    fn a_backfill_range_is_recomputed_unchanged() {
        let same = digests(&[(T0, "a"), (T0 + HOUR_MS, "b"), (T0 + 2 * HOUR_MS, "c")]);
        let previous = Previous {
            cutover: T0 + 3 * HOUR_MS,
            hours: same.clone(),
        };
        let request = Request {
            full: false,
            backfill: Some((T0 + 30 * 60_000, T0 + HOUR_MS + 1)),
        };
        let scope = plan(
            &counts(),
            &request,
            &same,
            Some(&previous),
            T0 + 3 * HOUR_MS,
        );
        assert_eq!(hours(&scope), (vec![0, 1], vec![0, 1]));
    }

    #[test]
    fn sessions_widen_forward_and_read_context_backward() {
        let sessions = catalog(
            r#"[[metric]]
name = "sessions"
aggregation = "sessions"
field = "user_id"
gap = "30m""#,
        );
        let previous = Previous {
            cutover: T0 + 6 * HOUR_MS,
            hours: digests(&[(T0 + 2 * HOUR_MS, "x")]),
        };
        let current = digests(&[(T0 + 2 * HOUR_MS, "y")]);
        let scope = plan(
            &sessions,
            &Request::default(),
            &current,
            Some(&previous),
            T0 + 6 * HOUR_MS,
        );
        // Hour 2 changed; its last events can end the gap of events up to 30 minutes into hour 3.
        // Both read 30 minutes of hour 1 for predecessors.
        assert_eq!(hours(&scope), (vec![2, 3], vec![1, 2, 3]));
    }

    #[test]
    fn wide_buckets_are_recomputed_whole() {
        let daily = catalog(
            r#"[[metric]]
name = "views"
aggregation = "count"
bucket = "6h""#,
        );
        let previous = Previous {
            cutover: T0 + 24 * HOUR_MS,
            hours: digests(&[(T0, "a")]),
        };
        let current = digests(&[(T0, "b")]);
        let scope = plan(
            &daily,
            &Request::default(),
            &current,
            Some(&previous),
            T0 + 24 * HOUR_MS,
        );
        let first = (T0.div_euclid(6 * HOUR_MS) * 6 * HOUR_MS - T0) / HOUR_MS;
        let expected: Vec<Millis> = (first..first + 6).collect();
        assert_eq!(hours(&scope).0, expected);
    }

    #[test]
    fn digests_ignore_order_and_see_new_files() {
        let a = digest_files([("x.parquet", 1), ("y.parquet", 2)]);
        assert_eq!(a, digest_files([("y.parquet", 2), ("x.parquet", 1)]));
        assert_ne!(
            a,
            digest_files([("x.parquet", 1), ("y.parquet", 2), ("z.parquet", 1)])
        );
        assert_ne!(a, digest_files([("x.parquet", 1)]));
    }

    #[test]
    fn chunks_bound_hours_and_carry_session_context() {
        let sessions = catalog(
            r#"[[metric]]
name = "sessions"
aggregation = "sessions"
field = "user_id"
gap = "30m""#,
        );
        let hours: BTreeSet<Millis> = (0..5).map(|h| T0 + h * HOUR_MS).collect();
        let chunks = chunks(&sessions, &hours, 2);
        let shapes: Vec<(Vec<Millis>, Vec<Millis>)> = chunks.iter().map(self::hours).collect();
        assert_eq!(
            shapes,
            vec![
                (vec![0, 1], vec![-1, 0, 1]),
                (vec![2, 3], vec![1, 2, 3]),
                (vec![4], vec![3, 4]),
            ]
        );
    }

    #[test]
    fn chunks_never_split_a_bucket() {
        let wide = catalog(
            r#"[[metric]]
name = "views"
aggregation = "count"
bucket = "6h""#,
        );
        let start = T0.div_euclid(6 * HOUR_MS) * 6 * HOUR_MS;
        let hours: BTreeSet<Millis> = (0..12).map(|h| start + h * HOUR_MS).collect();
        let chunks = chunks(&wide, &hours, 4);
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|c| match c {
                Scope::Hours { recompute, .. } => recompute.len(),
                Scope::Full => 0,
            })
            .collect();
        assert_eq!(sizes, vec![6, 6]);
    }

    proptest! {
        /// Whatever changed, every changed hour below the cutover is recomputed and read, and
        /// every recomputed hour is read.
        #[test]
        fn changed_hours_are_always_recomputed(
            changed in proptest::collection::btree_set(0i64..48, 0..10),
            cutover_hours in 1i64..60,
        ) {
            let cutover = T0 + cutover_hours * HOUR_MS;
            let previous = Previous {
                cutover,
                hours: (0..48).map(|h| (T0 + h * HOUR_MS, "same".to_string())).collect(),
            };
            let current: HourDigests = (0..48)
                .map(|h| (T0 + h * HOUR_MS, if changed.contains(&h) { "new" } else { "same" }.to_string()))
                .collect();
            let scope = plan(&counts(), &Request::default(), &current, Some(&previous), cutover);
            let (recompute, read) = hours(&scope);
            for h in &changed {
                if T0 + h * HOUR_MS < cutover {
                    prop_assert!(recompute.contains(h));
                }
            }
            for h in &recompute {
                prop_assert!(read.contains(h));
                prop_assert!(T0 + h * HOUR_MS < cutover);
            }
        }
    }
}
