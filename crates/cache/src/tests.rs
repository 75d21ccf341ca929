//! Property tests of the eviction policies against simple reference models.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use crate::{PolicyKind, RemovalCause, Store};

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Insert(u8, u64),
    Remove(u8),
}

fn ops(max_weight: u64) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => any::<u8>().prop_map(|k| Op::Get(k % 40)),
            3 => (any::<u8>(), 1..=max_weight).prop_map(|(k, w)| Op::Insert(k % 40, w)),
            1 => any::<u8>().prop_map(|k| Op::Remove(k % 40)),
        ],
        1..400,
    )
}

fn config() -> Config {
    Config {
        cases: 64,
        rng_seed: RngSeed::Fixed(0xCAC4E),
        ..Config::default()
    }
}

/// The reference model: every live key with its use count and last-use tick.
#[derive(Default)]
struct Model {
    entries: HashMap<u8, (u64, u64)>,
    tick: u64,
}

impl Model {
    fn touch(&mut self, key: u8) {
        self.tick += 1;
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.0 += 1;
            entry.1 = self.tick;
        }
    }

    fn insert(&mut self, key: u8) {
        self.tick += 1;
        self.entries.insert(key, (1, self.tick));
    }

    /// LRU's victim: the least recently used key.
    fn lru_victim(&self) -> u8 {
        *self
            .entries
            .iter()
            .min_by_key(|(_, (_, tick))| *tick)
            .expect("non-empty")
            .0
    }

    /// LFU's victim: the least used key, ties broken by least recently used.
    fn lfu_victim(&self) -> u8 {
        *self
            .entries
            .iter()
            .min_by_key(|(_, (count, tick))| (*count, *tick))
            .expect("non-empty")
            .0
    }
}

fn check_against_model(kind: PolicyKind, ops: &[Op], capacity: u64) -> Result<(), TestCaseError> {
    let mut store = Store::new(kind, capacity);
    let mut model = Model::default();
    let now = Instant::now();
    let mut removed = Vec::new();
    for op in ops {
        removed.clear();
        match *op {
            Op::Get(key) => {
                let hit = store.get(&key, now, &mut removed).is_some();
                prop_assert_eq!(hit, model.entries.contains_key(&key));
                model.touch(key);
            }
            Op::Insert(key, _) => {
                let expected_victim = if model.entries.contains_key(&key)
                    || (model.entries.len() as u64) < capacity
                {
                    None
                } else if kind == PolicyKind::Lru {
                    Some(model.lru_victim())
                } else {
                    Some(model.lfu_victim())
                };
                store.insert(key, key, 1, None, &mut removed);
                let evicted: Vec<u8> = removed
                    .iter()
                    .filter(|r| r.2 == RemovalCause::Size)
                    .map(|r| r.0)
                    .collect();
                prop_assert_eq!(
                    evicted.first().copied(),
                    expected_victim,
                    "{:?} evicted the wrong key",
                    kind
                );
                if let Some(victim) = expected_victim {
                    model.entries.remove(&victim);
                }
                model.insert(key);
            }
            Op::Remove(key) => {
                prop_assert_eq!(
                    store.remove(&key).is_some(),
                    model.entries.remove(&key).is_some()
                );
            }
        }
        prop_assert_eq!(store.len(), model.entries.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lru_evicts_what_the_reference_model_evicts(ops in ops(1), capacity in 1u64..12) {
        check_against_model(PolicyKind::Lru, &ops, capacity)?;
    }

    #[test]
    fn lfu_evicts_what_the_reference_model_evicts(ops in ops(1), capacity in 1u64..12) {
        check_against_model(PolicyKind::Lfu, &ops, capacity)?;
    }

    #[test]
    fn no_policy_ever_exceeds_its_capacity(ops in ops(5), capacity in 1u64..30) {
        for kind in PolicyKind::ALL {
            let mut store = Store::new(kind, capacity);
            let now = Instant::now();
            let mut removed = Vec::new();
            for op in &ops {
                match *op {
                    Op::Get(key) => { store.get(&key, now, &mut removed); }
                    Op::Insert(key, weight) => store.insert(key, (), weight, None, &mut removed),
                    Op::Remove(key) => { store.remove(&key); }
                }
                prop_assert!(store.weight() <= capacity, "{:?} holds {} > {capacity}", kind, store.weight());
            }
        }
    }

    #[test]
    fn ttl_never_serves_an_expired_entry(
        steps in prop::collection::vec((any::<u8>(), 0u64..50, 0u64..20, any::<bool>()), 1..300),
    ) {
        for kind in PolicyKind::ALL {
            let mut store = Store::new(kind, 1_000);
            let start = Instant::now();
            let mut now = start;
            let mut expiry: HashMap<u8, Instant> = HashMap::new();
            let mut removed = Vec::new();
            for &(key, ttl_ms, advance_ms, is_insert) in &steps {
                let key = key % 16;
                now += Duration::from_millis(advance_ms);
                if is_insert {
                    let at = now + Duration::from_millis(ttl_ms);
                    store.insert(key, at, 1, Some(at), &mut removed);
                    expiry.insert(key, at);
                } else if let Some(&expires_at) = store.get(&key, now, &mut removed) {
                    prop_assert!(expires_at > now, "{:?} served an entry expired at {:?}", kind, expires_at - start);
                    prop_assert_eq!(Some(&expires_at), expiry.get(&key));
                }
            }
        }
    }
}

#[test]
fn w_tinylfu_keeps_a_popular_key_through_a_scan_that_flushes_lru() {
    for (kind, survives) in [(PolicyKind::WTinyLfu, true), (PolicyKind::Lru, false)] {
        let mut store = Store::new(kind, 100);
        let now = Instant::now();
        let mut removed = Vec::new();
        store.insert(0u32, (), 1, None, &mut removed);
        for _ in 0..20 {
            store.get(&0, now, &mut removed);
        }
        // A scan: 1,000 new keys, each seen once, and the popular key not touched meanwhile.
        for key in 1..1_000u32 {
            store.insert(key, (), 1, None, &mut removed);
        }
        assert_eq!(store.contains(&0, now), survives, "{kind:?}");
        assert_eq!(store.len(), 100);
    }
}

#[test]
fn entries_heavier_than_the_capacity_are_refused() {
    let mut store = Store::new(PolicyKind::Lru, 10);
    let mut removed = Vec::new();
    store.insert("big", (), 11, None, &mut removed);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].2, RemovalCause::Size);
    assert!(store.is_empty());
}

mod concurrent {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::{Cache, CacheConfig, CacheMetrics, PolicyKind};

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Failed(&'static str);
    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Failed {}

    fn cache(metrics: &CacheMetrics) -> Cache<u32, Arc<String>> {
        Cache::new(
            CacheConfig::new("test", PolicyKind::WTinyLfu, 1_000, None),
            metrics,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_thousand_concurrent_misses_cause_exactly_one_load() {
        let metrics = CacheMetrics::unregistered();
        let cache = cache(&metrics);
        let loads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let callers: Vec<_> = (0..1_000)
            .map(|_| {
                let (cache, loads, gate) = (cache.clone(), loads.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_try_load(7, || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            // Hold the load open until every caller has had the chance to miss.
                            gate.notified().await;
                            Ok::<_, Failed>(Arc::new("seven".to_owned()))
                        })
                        .await
                })
            })
            .collect();
        // Release the load only once the other 999 callers are waiting on its flight.
        while metrics.coalesced("test") < 999 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        gate.notify_one();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().as_str(), "seven");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.loads("test"), 1);
        // And the value is now cached.
        assert_eq!(cache.get(&7).unwrap().as_str(), "seven");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_waiter_gets_the_loads_error_and_errors_are_not_cached() {
        let metrics = CacheMetrics::unregistered();
        let cache = cache(&metrics);
        let gate = Arc::new(tokio::sync::Notify::new());
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let (cache, gate) = (cache.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_try_load(1, || async move {
                            gate.notified().await;
                            Err::<Arc<String>, _>(Failed("source down"))
                        })
                        .await
                })
            })
            .collect();
        while metrics.coalesced("test") < 49 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for caller in callers {
            assert_eq!(
                caller.await.unwrap().unwrap_err().to_string(),
                "source down"
            );
        }
        assert_eq!(metrics.loads("test"), 1);
        assert!(cache.get(&1).is_none(), "an error must not be cached");
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_leader_is_cancelled() {
        let metrics = CacheMetrics::unregistered();
        let cache = cache(&metrics);
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_try_load(3, std::future::pending::<Result<Arc<String>, Failed>>)
                    .await
            })
        };
        while metrics.requests("test", "miss") < 1 {
            tokio::task::yield_now().await;
        }
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_try_load(3, || async { Ok::<_, Failed>(Arc::new("three".into())) })
                    .await
            })
        };
        while metrics.coalesced("test") < 1 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        assert_eq!(waiter.await.unwrap().unwrap().as_str(), "three");
    }

    #[tokio::test]
    async fn expiry_is_decided_per_value_and_invalidation_drops_entries() {
        let metrics = CacheMetrics::unregistered();
        let config = CacheConfig::<Option<u32>>::new("neg", PolicyKind::Lru, 100, None)
            .with_expiry(|v| {
                if v.is_none() {
                    Some(Duration::ZERO)
                } else {
                    None
                }
            });
        let cache: Cache<u32, Option<u32>> = Cache::new(config, &metrics);
        cache.insert(1, None);
        cache.insert(2, Some(2));
        assert_eq!(cache.get(&1), None, "a zero lifetime is expired at once");
        assert_eq!(cache.get(&2), Some(Some(2)));
        cache.invalidate(&2);
        assert_eq!(cache.get(&2), None);
        assert!(cache.is_empty());
    }

    /// A loader that takes a little while, so XFetch has a load time to scale by.
    async fn slow_load(loads: Arc<AtomicUsize>) -> Result<Arc<String>, Failed> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Arc::new(format!("load {n}")))
    }

    #[tokio::test]
    async fn xfetch_refreshes_a_hit_ahead_of_expiry_only_as_eagerly_as_beta_says() {
        for (beta, early) in [(0.0, false), (1e15, true)] {
            let metrics = CacheMetrics::unregistered();
            let config = CacheConfig::new("x", PolicyKind::Lru, 10, Some(Duration::from_secs(60)))
                .with_xfetch_beta(beta);
            let cache: Cache<u32, Arc<String>> = Cache::new(config, &metrics);
            let loads = Arc::new(AtomicUsize::new(0));
            let first = cache
                .get_or_try_load(1, || slow_load(loads.clone()))
                .await
                .unwrap();
            let second = cache
                .get_or_try_load(1, || slow_load(loads.clone()))
                .await
                .unwrap();
            assert_eq!(first.as_str(), "load 1");
            // With β = 0 the hit is served; with an enormous β the same hit, 60 s before
            // expiry, is refreshed (and the caller gets the fresh value).
            let expected = if early { "load 2" } else { "load 1" };
            assert_eq!(second.as_str(), expected, "beta {beta}");
            assert_eq!(metrics.loads("x"), if early { 2 } else { 1 });
            assert_eq!(
                metrics.requests("x", "hit"),
                1,
                "the early refresh still counts as a hit"
            );
        }
    }
}
