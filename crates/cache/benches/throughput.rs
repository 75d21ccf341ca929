//! Concurrent throughput of the cache under each eviction policy, beside moka, in one run.
//!
//! `cargo bench -p bazaar-cache --bench throughput`
//!
//! Two threads (the machine's cores) each replay 100,000 Zipf(0.99) lookups over 100,000
//! keys against one shared cache of 10,000 entries, inserting on a miss — the read-through
//! pattern of the product cache.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_cache::{Cache, CacheConfig, CacheMetrics, PolicyKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

const KEYS: usize = 100_000;
const CAPACITY: u64 = 10_000;
const OPS_PER_THREAD: usize = 100_000;
const THREADS: usize = 2;

fn zipf_stream(seed: u64) -> Vec<u64> {
    let weights: Vec<f64> = (1..=KEYS).map(|k| 1.0 / (k as f64).powf(0.99)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cdf: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..OPS_PER_THREAD)
        .map(|_| {
            cdf.partition_point(|&p| p < rng.random::<f64>())
                .min(KEYS - 1) as u64
        })
        .collect()
}

/// Runs every thread's stream against `cache` and returns the wall time.
fn replay<C: Sync>(cache: &C, streams: &[Vec<u64>], op: impl Fn(&C, u64) + Sync) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for stream in streams {
            let op = &op;
            scope.spawn(move || {
                for &key in stream {
                    op(cache, key);
                }
            });
        }
    });
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let streams: Vec<Vec<u64>> = (0..THREADS as u64).map(zipf_stream).collect();
    let mut group = c.benchmark_group("cache_get_or_insert");
    group.throughput(Throughput::Elements((THREADS * OPS_PER_THREAD) as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));

    for kind in PolicyKind::ALL {
        group.bench_function(kind.name(), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let cache: Cache<u64, Arc<u64>> = Cache::new(
                        CacheConfig::new("bench", kind, CAPACITY, None),
                        &CacheMetrics::unregistered(),
                    );
                    total += replay(&cache, &streams, |cache, key| {
                        if black_box(cache.get(&key)).is_none() {
                            cache.insert(key, Arc::new(key));
                        }
                    });
                }
                total
            });
        });
    }
    group.bench_function("moka", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let cache: moka::sync::Cache<u64, Arc<u64>> = moka::sync::Cache::new(CAPACITY);
                total += replay(&cache, &streams, |cache, key| {
                    if black_box(cache.get(&key)).is_none() {
                        cache.insert(key, Arc::new(key));
                    }
                });
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
