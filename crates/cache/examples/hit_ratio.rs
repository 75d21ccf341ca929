//! Hit ratios of LRU, LFU, W-TinyLFU and moka under Zipf-distributed keys, beside the static
//! optimum (the share of requests for the `capacity` most popular keys).
//!
//! `cargo run --release -p bazaar-cache --example hit_ratio`
//!
//! Every cell replays the same seeded request stream (ChaCha8), so runs are reproducible.
//! Hits are counted after a warm-up of the first 10% of requests: the optimum and Che's
//! approximation for LRU are steady-state figures, so the comparison is too.

use std::time::Instant;

use bazaar_cache::{PolicyKind, Store};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

const KEYS: usize = 100_000;
const REQUESTS: usize = 2_000_000;
/// Requests replayed before hits are counted.
const WARM_UP: usize = REQUESTS / 10;
const ALPHAS: [f64; 4] = [0.6, 0.8, 0.99, 1.2];
const CAPACITIES: [f64; 3] = [0.001, 0.01, 0.1];

/// Cumulative probabilities of keys 0..KEYS under Zipf(α): key k has weight 1/(k+1)^α.
fn zipf_cdf(alpha: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=KEYS).map(|k| 1.0 / (k as f64).powf(alpha)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

fn stream(cdf: &[f64]) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(0xB1A5);
    (0..REQUESTS)
        .map(|_| {
            let u: f64 = rng.random();
            cdf.partition_point(|&p| p < u).min(KEYS - 1) as u32
        })
        .collect()
}

fn ours(kind: PolicyKind, capacity: u64, requests: &[u32]) -> f64 {
    let mut store = Store::new(kind, capacity);
    let now = Instant::now();
    let mut removed = Vec::new();
    let mut hits = 0usize;
    for (i, &key) in requests.iter().enumerate() {
        if store.get(&key, now, &mut removed).is_some() {
            hits += usize::from(i >= WARM_UP);
        } else {
            store.insert(key, (), 1, None, &mut removed);
        }
        removed.clear();
    }
    hits as f64 / (requests.len() - WARM_UP) as f64
}

fn moka(capacity: u64, requests: &[u32]) -> f64 {
    let cache: moka::sync::Cache<u32, ()> =
        moka::sync::Cache::builder().max_capacity(capacity).build();
    let mut hits = 0usize;
    for (i, &key) in requests.iter().enumerate() {
        if cache.get(&key).is_some() {
            hits += usize::from(i >= WARM_UP);
        } else {
            cache.insert(key, ());
        }
        // moka applies evictions in batches; keep it at its capacity as the others are.
        if i % 1024 == 0 {
            cache.run_pending_tasks();
        }
    }
    hits as f64 / (requests.len() - WARM_UP) as f64
}

fn main() {
    println!("| policy | alpha | capacity | hit_ratio | optimal |");
    println!("|---|---:|---:|---:|---:|");
    for alpha in ALPHAS {
        let cdf = zipf_cdf(alpha);
        let requests = stream(&cdf);
        for share in CAPACITIES {
            let capacity = (KEYS as f64 * share) as u64;
            let optimal = cdf[capacity as usize - 1];
            let mut rows: Vec<(&str, f64)> = PolicyKind::ALL
                .iter()
                .map(|&kind| (kind.name(), ours(kind, capacity, &requests)))
                .collect();
            rows.push(("moka", moka(capacity, &requests)));
            for (name, ratio) in rows {
                println!(
                    "| {name} | {alpha} | {capacity} ({:.1}%) | {:.1}% | {:.1}% |",
                    share * 100.0,
                    ratio * 100.0,
                    optimal * 100.0
                );
            }
        }
    }
}
