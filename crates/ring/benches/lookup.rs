//! Lookup cost of the ring: one key hash plus a binary search over the points.
//!
//! `cargo bench -p bazaar-ring` — compare `locate` with the cost of hashing alone (the
//! baseline in the same run) to see what the search adds.

use bazaar_ring::{Node, Ring, key_hash};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    let keys: Vec<[u8; 8]> = (0u64..4096)
        .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes())
        .collect();
    group.bench_function("key_hash_only", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(key_hash(black_box(&keys[i])))
        })
    });
    for nodes in [4usize, 16, 64] {
        let ring =
            Ring::new((0..nodes).map(|i| Node::new(format!("shard-{i}")))).expect("valid ring");
        group.bench_with_input(BenchmarkId::new("locate", nodes), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(ring.locate(black_box(&keys[i])))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
