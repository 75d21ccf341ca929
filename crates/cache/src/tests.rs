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

    #[test]
    fn a_weighed_cache_holds_at_most_its_capacity_in_the_weighers_unit() {
        let metrics = CacheMetrics::unregistered();
        let mut config = CacheConfig::new("bytes", PolicyKind::Lru, 1_000, None)
            .with_weigher(|v: &String| v.len() as u64);
        config.segments = 1;
        let cache: Cache<u32, String> = Cache::new(config, &metrics);
        for key in 0..50 {
            cache.insert(key, "x".repeat(100));
        }
        assert_eq!(cache.len(), 10, "ten values of 100 bytes fill 1,000 bytes");
        assert_eq!(cache.get(&49).as_deref().map(str::len), Some(100));
        assert_eq!(cache.get(&0), None, "the least recent went first");
        cache.insert(99, "y".repeat(1_001));
        assert_eq!(
            cache.get(&99),
            None,
            "a value heavier than the capacity is not cached"
        );
        assert_eq!(cache.len(), 10);
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
                .get_or_try_load(1, {
                    let loads = loads.clone();
                    move || slow_load(loads)
                })
                .await
                .unwrap();
            let second = cache
                .get_or_try_load(1, {
                    let loads = loads.clone();
                    move || slow_load(loads)
                })
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

/// Stale-while-revalidate, superseded loads, and the strategies of [`crate::Cached`].
mod strategies {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use crate::{Cache, CacheConfig, CacheMetrics, Cached, PolicyKind, Strategy};

    #[derive(Debug)]
    struct Never;
    impl std::fmt::Display for Never {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("never")
        }
    }
    impl std::error::Error for Never {}

    /// A load that counts itself and returns `value` once `gate` opens.
    fn gated(
        loads: &Arc<AtomicUsize>,
        gate: &Arc<Notify>,
        value: &'static str,
    ) -> impl FnOnce() -> std::pin::Pin<
        Box<dyn Future<Output = Result<String, Never>> + Send + 'static>,
    > + Send
    + 'static {
        let (loads, gate) = (loads.clone(), gate.clone());
        move || {
            Box::pin(async move {
                loads.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok(value.to_owned())
            })
        }
    }

    async fn until(mut condition: impl FnMut() -> bool) {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_while_revalidate_serves_the_old_value_at_once_and_refreshes_in_the_background() {
        let metrics = CacheMetrics::unregistered();
        let ttl = Duration::from_millis(20);
        let config = CacheConfig::new("swr", PolicyKind::Lru, 10, Some(ttl))
            .with_stale_while_revalidate(Duration::from_secs(60));
        let cache: Cache<u32, String> = Cache::new(config, &metrics);
        cache.insert(1, "old".into());
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(
            cache.get(&1),
            None,
            "a plain get never returns a stale value"
        );

        let (loads, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        // The load cannot finish until the gate opens, so these calls returning proves
        // nobody waited for it.
        for _ in 0..10 {
            let served = cache
                .get_or_try_load(1, gated(&loads, &gate, "new"))
                .await
                .unwrap();
            assert_eq!(served, "old");
        }
        until(|| loads.load(Ordering::SeqCst) == 1).await;
        gate.notify_one();
        until(|| cache.get(&1).as_deref() == Some("new")).await;
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "one background refresh for ten stale reads"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_window_an_expired_entry_is_a_miss_that_waits_for_its_load() {
        let metrics = CacheMetrics::unregistered();
        let ttl = Duration::from_millis(20);
        let cache: Cache<u32, String> = Cache::new(
            CacheConfig::new("expiring", PolicyKind::Lru, 10, Some(ttl)),
            &metrics,
        );
        cache.insert(1, "old".into());
        tokio::time::sleep(ttl * 2).await;
        let (loads, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let reader = {
            let (cache, load) = (cache.clone(), gated(&loads, &gate, "new"));
            tokio::spawn(async move { cache.get_or_try_load(1, load).await })
        };
        until(|| loads.load(Ordering::SeqCst) == 1).await;
        assert!(!reader.is_finished(), "the reader waits for the load");
        gate.notify_one();
        assert_eq!(reader.await.unwrap().unwrap(), "new");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_overtaken_by_a_write_does_not_cache_the_value_it_read_before_the_write() {
        for write_through in [false, true] {
            let metrics = CacheMetrics::unregistered();
            let cache: Cache<u32, String> = Cache::new(
                CacheConfig::new("race", PolicyKind::Lru, 10, None),
                &metrics,
            );
            let (loads, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
            let reader = {
                let (cache, load) = (cache.clone(), gated(&loads, &gate, "before the write"));
                tokio::spawn(async move { cache.get_or_try_load(1, load).await })
            };
            until(|| loads.load(Ordering::SeqCst) == 1).await;
            // The source changes while the load is out.
            if write_through {
                cache.insert(1, "after the write".into());
            } else {
                cache.invalidate(&1);
            }
            gate.notify_one();
            assert_eq!(reader.await.unwrap().unwrap(), "before the write");
            let expected = write_through.then(|| "after the write".to_owned());
            assert_eq!(cache.get(&1), expected, "write_through: {write_through}");
        }
    }

    fn cached(metrics: &CacheMetrics, strategy: Strategy) -> Cached<u32, String> {
        let l1 = Cache::new(
            CacheConfig::new(strategy.name(), PolicyKind::Lru, 100, None),
            metrics,
        );
        Cached::new(l1, strategy)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn read_through_coalesces_concurrent_misses_and_cache_aside_does_not() {
        for (strategy, expected_loads) in [(Strategy::ReadThrough, 1), (Strategy::CacheAside, 100)]
        {
            let metrics = CacheMetrics::unregistered();
            let cached = cached(&metrics, strategy);
            let (loads, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
            let readers: Vec<_> = (0..100)
                .map(|_| {
                    let (cached, load) = (cached.clone(), gated(&loads, &gate, "v"));
                    tokio::spawn(async move { cached.get(1, load).await })
                })
                .collect();
            // Let every reader miss before any load completes.
            until(|| {
                metrics.requests(strategy.name(), "miss") == 100
                    || loads.load(Ordering::SeqCst) == 100
            })
            .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            gate.notify_waiters();
            for reader in readers {
                assert_eq!(reader.await.unwrap().unwrap(), "v");
            }
            assert_eq!(loads.load(Ordering::SeqCst), expected_loads, "{strategy}");
        }
    }

    #[tokio::test]
    async fn write_through_serves_the_written_value_and_the_others_reload_it() {
        for strategy in [
            Strategy::CacheAside,
            Strategy::ReadThrough,
            Strategy::WriteThrough,
        ] {
            let metrics = CacheMetrics::unregistered();
            let cached = cached(&metrics, strategy);
            let loads = Arc::new(AtomicUsize::new(0));
            let load = |value: &'static str| {
                let loads = loads.clone();
                move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Never>(value.to_owned())
                }
            };
            assert_eq!(cached.get(1, load("v1")).await.unwrap(), "v1");
            cached.written(1, Some("v2".into())).await;
            assert_eq!(cached.get(1, load("v2")).await.unwrap(), "v2");
            let expected = if strategy == Strategy::WriteThrough {
                1
            } else {
                2
            };
            assert_eq!(loads.load(Ordering::SeqCst), expected, "{strategy}");
            // A write whose result is unknown drops the key under every strategy.
            cached.written(1, None).await;
            assert_eq!(cached.l1().get(&1), None, "{strategy}");
        }
    }
}

/// The Redis tier, against a real Redis (`BAZAAR_TEST_REDIS_URL`).
mod redis_tier {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::{
        Cache, CacheConfig, CacheMetrics, Cached, PolicyKind, RedisTier, Stored, Strategy,
        TierSettings,
    };

    #[derive(Debug)]
    struct Never;
    impl std::fmt::Display for Never {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("never")
        }
    }
    impl std::error::Error for Never {}

    /// A tier under a prefix of its own, or `None` after saying the test is skipped.
    async fn tier(test: &str, settings: TierSettings) -> Option<RedisTier> {
        let Ok(url) = std::env::var("BAZAAR_TEST_REDIS_URL") else {
            eprintln!("SKIPPED {test}: BAZAAR_TEST_REDIS_URL is not set");
            return None;
        };
        let prefix = format!("bazaar-test:{test}:{}", uuid::Uuid::now_v7().simple());
        Some(
            RedisTier::connect(&url, TierSettings { prefix, ..settings })
                .await
                .expect("the test Redis is reachable"),
        )
    }

    /// A process's view: its own L1 over the shared tier.
    fn process(
        metrics: &CacheMetrics,
        tier: &RedisTier,
        strategy: Strategy,
    ) -> Cached<u32, String> {
        let l1 = Cache::new(
            CacheConfig::new(
                "products",
                PolicyKind::Lru,
                100,
                Some(Duration::from_secs(60)),
            ),
            metrics,
        );
        Cached::new(l1, strategy).with_l2(tier.clone(), metrics)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn misses_in_two_processes_load_the_key_once_between_them() {
        let Some(tier) = tier("two_processes", TierSettings::default()).await else {
            return;
        };
        let metrics = CacheMetrics::unregistered();
        // Two L1s (two processes' worth), one Redis.
        let processes = [
            process(&metrics, &tier, Strategy::ReadThrough),
            process(&metrics, &tier, Strategy::ReadThrough),
        ];
        let loads = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..200)
            .map(|i| {
                let (cached, loads) = (processes[i % 2].clone(), loads.clone());
                tokio::spawn(async move {
                    cached
                        .get(7, move || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            // Slow enough that the other process is certainly waiting.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Ok::<_, Never>("seven".to_owned())
                        })
                        .await
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.await.unwrap().unwrap(), "seven");
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "one load across both processes"
        );
        assert_eq!(metrics.loads("products_l2"), 1);
        assert!(
            metrics.coalesced("products_l2") >= 1,
            "the other process waited for the holder's value"
        );
    }

    #[tokio::test]
    async fn only_the_holder_releases_a_lock_and_an_expired_holder_cannot() {
        let settings = TierSettings {
            lock_ttl: Duration::from_millis(100),
            ..TierSettings::default()
        };
        let Some(tier) = tier("lock_tokens", settings).await else {
            return;
        };
        let first = tier.try_lock("c", "k").await.unwrap().expect("free lock");
        assert!(tier.try_lock("c", "k").await.unwrap().is_none(), "held");
        // The first holder outlives its lock; another process takes it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = tier
            .try_lock("c", "k")
            .await
            .unwrap()
            .expect("expired lock");
        assert!(
            !tier.unlock(first).await.unwrap(),
            "the stale holder's release is refused"
        );
        assert!(
            tier.try_lock("c", "k").await.unwrap().is_none(),
            "and the second holder still has it"
        );
        assert!(tier.unlock(second).await.unwrap());
        assert!(
            tier.try_lock("c", "k").await.unwrap().is_some(),
            "free again"
        );
    }

    #[tokio::test]
    async fn a_process_locked_out_serves_a_stale_copy_instead_of_waiting() {
        let Some(tier) = tier("serve_stale", TierSettings::default()).await else {
            return;
        };
        let metrics = CacheMetrics::unregistered();
        let counters = RedisTier::counters(&metrics, "c");
        tier.write("c", "k", &"old".to_owned(), Some(Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stored: Stored<String> = tier.read("c", "k").await.unwrap().unwrap();
        assert!(!stored.fresh, "past its TTL, kept for keep_stale");
        let _holder = tier.try_lock("c", "k").await.unwrap().expect("free lock");
        let loads = AtomicUsize::new(0);
        let served = tier
            .load(
                "c",
                "k",
                &counters,
                |_: &String| None,
                || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Never>("new".to_owned())
                },
            )
            .await
            .unwrap();
        assert_eq!(served, "old");
        assert_eq!(
            loads.load(Ordering::SeqCst),
            0,
            "no load while another holds the lock"
        );
    }

    #[tokio::test]
    async fn write_through_reaches_another_process_through_redis_without_a_load() {
        let Some(tier) = tier("write_through", TierSettings::default()).await else {
            return;
        };
        let metrics = CacheMetrics::unregistered();
        let writer = process(&metrics, &tier, Strategy::WriteThrough);
        let reader = process(&metrics, &tier, Strategy::WriteThrough);
        writer.written(3, Some("written".into())).await;
        let served = reader
            .get(3, || async { Err::<String, _>(Never) })
            .await
            .expect("served from Redis, not loaded");
        assert_eq!(served, "written");
        // Invalidation drops it from Redis too: the next read in any process loads.
        writer.written(3, None).await;
        reader.forget(&3);
        let served = reader
            .get(3, || async { Ok::<_, Never>("reloaded".to_owned()) })
            .await
            .unwrap();
        assert_eq!(served, "reloaded");
    }
}
