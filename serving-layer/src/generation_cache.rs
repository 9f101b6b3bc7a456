//! Values computed from what Postgres held under one state generation (see `state_changes`):
//! query snapshots, and whole answers, which are a function of their snapshot and the immutable
//! view it names. Reused until a change is heard or `max_age` passes.
//!
//! Requests that miss on the same key together share one computation. Without that, every
//! expiry of a hot answer sends all the connections asking for it to compute it at once, each
//! slowed by the others: at 2 000 requests a second that stampede, every `max_age`, doubled
//! the p99 of a repeated merged query (BENCHMARKS.md, sixth run).
//!
//! A generation's values are capped by their size in bytes (`Weigh`), not by their number: a
//! cached snapshot or answer can be a few bytes or tens of megabytes.

use shared_io::observe;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// The memory a cached value holds, roughly: what its budget is counted in.
pub trait Weigh {
    fn bytes(&self) -> usize;
}

/// What an entry costs beyond its value: key, slot and map overhead.
const ENTRY_OVERHEAD: usize = 256;

pub struct GenerationCache<K, V> {
    /// Which cache this is, for `lambda_serving_cache_lookups_total`.
    name: &'static str,
    max_age: Duration,
    /// Most bytes of one generation's values; beyond it the cache starts over, and a value
    /// larger than this alone is not kept.
    budget_bytes: usize,
    entries: Mutex<GenerationEntries<K, V>>,
}

struct GenerationEntries<K, V> {
    generation: u64,
    by_key: HashMap<K, Arc<Slot<V>>>,
    /// The bytes of the computed values in `by_key`.
    used_bytes: usize,
}

/// One key's value, being computed or computed.
struct Slot<V> {
    created: Instant,
    value: OnceCell<V>,
    /// Its bytes once computed and counted in `used_bytes`.
    bytes: std::sync::atomic::AtomicUsize,
}

impl<K: Eq + Hash + Clone, V: Clone + Weigh> GenerationCache<K, V> {
    pub fn new(name: &'static str, max_age: Duration, budget_bytes: usize) -> Self {
        GenerationCache {
            name,
            max_age,
            budget_bytes,
            entries: Mutex::new(GenerationEntries {
                generation: 0,
                by_key: HashMap::new(),
                used_bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GenerationEntries<K, V>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value of `key`, computed by `compute` unless this generation already has it or is
    /// computing it. `generation` is `StateGeneration::current`, read before anything the value
    /// is computed from; with `None` nothing is shared or kept. A failed computation is not
    /// kept: the next caller (or a waiting one) computes again.
    pub async fn get_or_compute<E, F, Fut>(
        &self,
        generation: Option<u64>,
        key: &K,
        compute: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        Ok(self.lookup_or_compute(generation, key, compute).await?.0)
    }

    /// [`GenerationCache::get_or_compute`], also telling whether this call computed the value
    /// (`true`) or found it computed or being computed for another caller.
    pub async fn lookup_or_compute<E, F, Fut>(
        &self,
        generation: Option<u64>,
        key: &K,
        compute: F,
    ) -> Result<(V, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let computed_here = AtomicBool::new(false);
        let compute = || {
            computed_here.store(true, Ordering::Relaxed);
            compute()
        };
        let result = match self.slot(generation, key) {
            Some(slot) => {
                let result = slot.value.get_or_try_init(compute).await.cloned();
                if let Ok(value) = &result
                    && computed_here.load(Ordering::Relaxed)
                {
                    self.account(generation, key, &slot, value.bytes());
                }
                result
            }
            None => compute().await,
        };
        let computed = computed_here.load(Ordering::Relaxed);
        observe::serving().cache_lookup(self.name, !computed);
        Ok((result?, computed))
    }

    /// Drops `key`'s value of `generation`, e.g. one too large to keep.
    pub fn forget(&self, generation: Option<u64>, key: &K) {
        let mut entries = self.lock();
        if generation == Some(entries.generation)
            && let Some(slot) = entries.by_key.remove(key)
        {
            entries.used_bytes -= slot.bytes.load(Ordering::Relaxed);
        }
    }

    /// Counts a value just computed into `slot` (still `key`'s, in `generation`) against the
    /// budget: too large alone, it is dropped; past the budget with it, the others go.
    fn account(&self, generation: Option<u64>, key: &K, slot: &Arc<Slot<V>>, bytes: usize) {
        let bytes = bytes.saturating_add(ENTRY_OVERHEAD);
        let mut entries = self.lock();
        let current = generation == Some(entries.generation)
            && entries
                .by_key
                .get(key)
                .is_some_and(|s| Arc::ptr_eq(s, slot));
        if !current {
            return;
        }
        if bytes > self.budget_bytes {
            entries.by_key.remove(key);
            return;
        }
        if entries.used_bytes + bytes > self.budget_bytes {
            entries.by_key.retain(|k, _| k == key);
            entries.used_bytes = 0;
        }
        slot.bytes.store(bytes, Ordering::Relaxed);
        entries.used_bytes += bytes;
    }

    #[cfg(test)]
    fn used_bytes(&self) -> usize {
        self.lock().used_bytes
    }

    /// The slot to find or compute `key` in; `None` when nothing may be cached: no generation,
    /// caching off, or a generation older than one the cache already holds (a change it
    /// missed is reflected there).
    fn slot(&self, generation: Option<u64>, key: &K) -> Option<Arc<Slot<V>>> {
        let generation = generation.filter(|_| !self.max_age.is_zero())?;
        let mut entries = self.lock();
        if entries.generation > generation {
            return None;
        }
        if entries.generation < generation {
            entries.generation = generation;
            entries.by_key.clear();
            entries.used_bytes = 0;
        }
        if let Some(slot) = entries.by_key.get(key)
            && slot.created.elapsed() < self.max_age
        {
            return Some(slot.clone());
        }
        let slot = Arc::new(Slot {
            created: Instant::now(),
            value: OnceCell::new(),
            bytes: Default::default(),
        });
        if let Some(stale) = entries.by_key.insert(key.clone(), slot.clone()) {
            entries.used_bytes -= stale.bytes.load(Ordering::Relaxed);
        }
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A value weighs its number of bytes, so tests choose what fits.
    impl Weigh for u64 {
        fn bytes(&self) -> usize {
            *self as usize
        }
    }

    /// Room for `capacity` entries of small values (under 100 bytes).
    fn cache(max_age: Duration, capacity: usize) -> GenerationCache<&'static str, u64> {
        GenerationCache::new("test", max_age, capacity * (ENTRY_OVERHEAD + 100))
    }

    /// `get_or_compute` with a computation that counts its runs and returns `value`.
    async fn get(
        cache: &GenerationCache<&'static str, u64>,
        generation: Option<u64>,
        key: &'static str,
        value: u64,
        runs: &AtomicUsize,
    ) -> u64 {
        cache
            .get_or_compute(generation, &key, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(value)
            })
            .await
            .expect("infallible")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_computation() {
        let cache = Arc::new(cache(Duration::from_secs(60), 8));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (cache, runs) = (cache.clone(), runs.clone());
            requests.spawn(async move {
                cache
                    .get_or_compute(Some(1), &"answer", || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ()>(7)
                    })
                    .await
            });
        }
        let results = requests.join_all().await;
        assert!(results.iter().all(|r| *r == Ok(7)), "{results:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let (value, computed) = cache
            .lookup_or_compute(Some(1), &"answer", || async { Ok::<_, ()>(8) })
            .await
            .expect("infallible");
        assert_eq!((value, computed), (7, false));
    }

    #[tokio::test]
    async fn a_new_generation_computes_again_and_an_older_one_is_not_kept() {
        let cache = cache(Duration::from_secs(60), 8);
        let runs = AtomicUsize::new(0);
        assert_eq!(get(&cache, Some(1), "k", 1, &runs).await, 1);
        assert_eq!(get(&cache, Some(1), "k", 99, &runs).await, 1);
        assert_eq!(get(&cache, Some(2), "k", 2, &runs).await, 2);
        // Asked under generation 1 after 2 was seen: computed, and not filed under either.
        assert_eq!(get(&cache, Some(1), "k", 3, &runs).await, 3);
        assert_eq!(get(&cache, Some(2), "k", 99, &runs).await, 2);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn nothing_is_kept_without_a_generation_or_with_caching_off() {
        let runs = AtomicUsize::new(0);
        let on = cache(Duration::from_secs(60), 8);
        get(&on, None, "k", 1, &runs).await;
        get(&on, None, "k", 1, &runs).await;
        let off = cache(Duration::ZERO, 8);
        get(&off, Some(1), "k", 1, &runs).await;
        get(&off, Some(1), "k", 1, &runs).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_value_older_than_max_age_is_computed_again() {
        let cache = cache(Duration::from_millis(30), 8);
        let runs = AtomicUsize::new(0);
        assert_eq!(get(&cache, Some(1), "k", 1, &runs).await, 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(get(&cache, Some(1), "k", 2, &runs).await, 2);
        assert_eq!(get(&cache, Some(1), "k", 3, &runs).await, 2);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_kept_and_forgotten_values_are_computed_again() {
        let cache = cache(Duration::from_secs(60), 8);
        let failed = cache
            .get_or_compute(Some(1), &"k", || async { Err::<u64, _>("down") })
            .await;
        assert_eq!(failed, Err("down"));
        let runs = AtomicUsize::new(0);
        assert_eq!(get(&cache, Some(1), "k", 1, &runs).await, 1);
        cache.forget(Some(1), &"k");
        assert_eq!(get(&cache, Some(1), "k", 2, &runs).await, 2);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_generation_starts_over() {
        let cache = cache(Duration::from_secs(60), 2);
        let runs = AtomicUsize::new(0);
        get(&cache, Some(1), "a", 1, &runs).await;
        get(&cache, Some(1), "b", 2, &runs).await;
        get(&cache, Some(1), "c", 3, &runs).await;
        assert_eq!(get(&cache, Some(1), "c", 99, &runs).await, 3);
        assert_eq!(get(&cache, Some(1), "a", 4, &runs).await, 4);
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn values_are_capped_by_bytes_and_one_too_large_is_not_kept() {
        let cache = cache(Duration::from_secs(60), 4);
        let runs = AtomicUsize::new(0);
        // Larger than the whole budget (4 * 356 bytes): computed, answered, not kept.
        assert_eq!(get(&cache, Some(1), "big", 5_000, &runs).await, 5_000);
        assert_eq!(get(&cache, Some(1), "big", 5_000, &runs).await, 5_000);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(cache.used_bytes(), 0);
        // Two values of 500 bytes fill it: the second starts the generation over.
        get(&cache, Some(1), "a", 500, &runs).await;
        assert_eq!(cache.used_bytes(), 756);
        get(&cache, Some(1), "b", 500, &runs).await;
        assert_eq!(cache.used_bytes(), 756);
        assert_eq!(get(&cache, Some(1), "b", 1, &runs).await, 500, "kept");
        assert_eq!(
            get(&cache, Some(1), "a", 1, &runs).await,
            1,
            "dropped for b"
        );
        cache.forget(Some(1), &"a");
        assert_eq!(cache.used_bytes(), 756);
    }
}
