use super::*;
use proptest::prelude::*;

fn of(items: impl IntoIterator<Item = String>) -> Hll {
    let mut h = Hll::default();
    for item in items {
        h.insert(&item);
    }
    h
}

/// SplitMix64: uniform 64-bit values, standing in for the hashes of distinct values.
struct Hashes(u64);

impl Hashes {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Cardinalities from 1 to `max`, each `ratio` times the one before (rounded up).
fn cardinalities(max: u64, ratio: f64) -> Vec<u64> {
    let mut out = vec![1u64];
    while let Some(&last) = out.last() {
        let next = ((last as f64 * ratio).ceil() as u64).max(last + 1);
        if next > max {
            break;
        }
        out.push(next);
    }
    out
}

/// Inserts distinct hashes for each seed and compares the estimate with the truth at every
/// cardinality; returns the answers checked, the misses of the documented bound per
/// cardinality, and the worst relative error.
fn sweep(seeds: u64, max: u64, ratio: f64) -> (usize, BTreeMap<u64, usize>, f64) {
    let checkpoints = cardinalities(max, ratio);
    let mut misses = BTreeMap::new();
    let (mut answers, mut worst) = (0usize, 0f64);
    for seed in 0..seeds {
        let mut hashes = Hashes(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ max);
        let mut sketch = Hll::default();
        let mut inserted = 0u64;
        for &n in &checkpoints {
            while inserted < n {
                sketch.insert_hash(hashes.next());
                inserted += 1;
            }
            let error = (sketch.estimate() - n as f64).abs() / n as f64;
            worst = worst.max(error);
            answers += 1;
            if error > DOCUMENTED_RELATIVE_ERROR {
                *misses.entry(n).or_default() += 1;
            }
        }
    }
    (answers, misses, worst)
}

use std::collections::BTreeMap;

/// The contract's bound (CONTRACT §4): within 2% for at least 99.9% of answers at any
/// cardinality. 400 seeds at each of 186 cardinalities from 1 to 10^5 (every 5%, through the
/// sparse range, the switch to dense and the range where plain HyperLogLog needs linear
/// counting and bias tables), and 20 seeds at each of 150 from 1 to 10^7. No answer may miss:
/// at a 0.41% standard error a miss is a five-sigma event, so one miss in 77 400 answers
/// already says the estimator is wrong somewhere.
#[test]
fn estimates_are_within_the_bound_at_every_cardinality_over_many_seeds() {
    for (seeds, max, ratio) in [(400, 100_000, 1.05), (20, 10_000_000, 1.1)] {
        let (answers, misses, worst) = sweep(seeds, max, ratio);
        println!("{seeds} seeds up to {max}: {answers} answers, worst error {worst:.4}");
        assert!(
            misses.is_empty(),
            "{seeds} seeds up to {max}: misses of the 2% bound per cardinality {misses:?}"
        );
    }
}

#[test]
fn small_sets_are_counted_exactly_and_sketches_of_strings_stay_within_the_bound() {
    for n in [1usize, 2, 7, 100, SPARSE_MAX] {
        assert_eq!(of((0..n).map(|i| format!("user-{i}"))).estimate(), n as f64);
    }
    for n in [SPARSE_MAX + 1, 10_000, 123_457, 1_000_000] {
        let estimate = of((0..n).map(|i| format!("user-{i}"))).estimate();
        let error = (estimate - n as f64).abs() / n as f64;
        assert!(
            error < DOCUMENTED_RELATIVE_ERROR,
            "n = {n}: estimate {estimate}, error {error}"
        );
    }
    assert_eq!(Hll::default().estimate(), 0.0);
}

#[test]
fn bytes_round_trip_in_both_encodings_and_bad_bytes_are_refused() {
    let sparse = of((0..50).map(|i| i.to_string()));
    let bytes = sparse.to_bytes();
    assert_eq!(bytes[0], SPARSE);
    assert!(bytes.len() < 50 * 10, "{} bytes for 50 values", bytes.len());
    assert_eq!(Hll::from_bytes(&bytes), Ok(sparse));
    let dense = of((0..5_000).map(|i| i.to_string()));
    assert_eq!(dense.to_bytes()[0], DENSE);
    assert_eq!(Hll::from_bytes(&dense.to_bytes()), Ok(dense));
    for bad in [
        &[][..],
        &[1, 14, 0],
        &[2, 16, 0],
        &[3],
        &[3, 2, 5],
        &[3, 2, 5, 0],
        &[3, 1, 5, 9],
        &[9, 9],
    ] {
        assert!(Hll::from_bytes(bad).is_err(), "{bad:?} accepted");
    }
}

/// The registers of `hashes` inserted at precision 14, as format 1 held them.
fn legacy(hashes: &[u64]) -> Hll {
    let mut registers = vec![0u8; 1 << LEGACY_PRECISION];
    for hash in hashes {
        set_max(&mut registers, LEGACY_PRECISION, *hash);
    }
    Hll::from_legacy_registers(registers).expect("legacy registers")
}

#[test]
fn a_legacy_sketch_merges_with_a_new_one_as_the_legacy_sketch_of_the_union() {
    let mut generator = Hashes(7);
    let a: Vec<u64> = (0..30_000).map(|_| generator.next()).collect();
    let b: Vec<u64> = (0..40).map(|_| generator.next()).collect();
    let c: Vec<u64> = (0..9_000).map(|_| generator.next()).collect();
    let new = |hashes: &[u64]| {
        let mut h = Hll::default();
        for hash in hashes {
            h.insert_hash(*hash);
        }
        h
    };
    let all: Vec<u64> = a.iter().chain(&b).chain(&c).copied().collect();
    // Legacy first, then a sparse and a dense new one; and the other way round.
    let mut merged = legacy(&a);
    merged.merge(&new(&b));
    merged.merge(&new(&c));
    assert_eq!(merged, legacy(&all));
    let mut merged = new(&c);
    merged.merge(&legacy(&a));
    merged.merge(&new(&b));
    assert_eq!(merged, legacy(&all));
    let old_bytes = legacy(&a).to_bytes();
    assert_eq!(&old_bytes[..2], &[1, 14]);
    assert_eq!(Hll::from_bytes(&old_bytes), Ok(legacy(&a)));
}

proptest! {
    /// Merging is exact across encodings: the merge of two sketches is the sketch of the union
    /// (whichever encoding each side has), in either order, and merging twice changes nothing.
    #[test]
    fn union_of_sketches_is_the_sketch_of_the_union(
        a in proptest::collection::vec(0u32..6_000, 0..2_600),
        b in proptest::collection::vec(0u32..6_000, 0..300),
    ) {
        let sa = of(a.iter().map(|i| i.to_string()));
        let sb = of(b.iter().map(|i| i.to_string()));
        let mut merged = sa.clone();
        merged.merge(&sb);
        let mut reversed = sb.clone();
        reversed.merge(&sa);
        prop_assert_eq!(&merged, &reversed);
        prop_assert_eq!(&merged, &of(a.iter().chain(b.iter()).map(|i| i.to_string())));
        let mut twice = merged.clone();
        twice.merge(&merged);
        prop_assert_eq!(&twice, &merged);
    }
}

/// View bytes per cell, before (format 1: every sketch 16 KiB) and after (printed for
/// BENCHMARKS.md with `cargo test -p shared-schema hll -- --nocapture`).
#[test]
fn encoded_sizes_grow_with_the_set_until_dense() {
    let mut sizes = Vec::new();
    for n in [1usize, 10, 100, 1_000, SPARSE_MAX, SPARSE_MAX + 1, 100_000] {
        let bytes = of((0..n).map(|i| format!("u{i}"))).to_bytes().len();
        sizes.push((n, bytes));
    }
    println!("distinct values -> sketch bytes (format 1: 16 386 each): {sizes:?}");
    assert!(sizes[0].1 <= 12 && sizes[2].1 <= 100 * 9 + 3);
    assert_eq!(sizes[6].1, (1 << PRECISION) + 2);
}
