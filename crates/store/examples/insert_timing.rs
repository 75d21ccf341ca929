//! Times `Store::insert_products` of 1,000 products (three variants each) on one shard, the
//! way seeding writes a batch: `cargo run -p bazaar-store --example insert_timing [runs]`.
//!
//! It exists to check that writing each product's `product.created` event in the same
//! transaction keeps bulk loads cheap; it prints timings and asserts nothing.

use std::time::{Duration, Instant};

use bazaar_store::sqlite::{Durability, SqliteConfig};
use bazaar_store::{IdGenerator, Money, Product, ProductWithVariants, Store, Variant, id};
use bazaar_telemetry::Metrics;

const PRODUCTS: usize = 1_000;

fn catalog(ids: &IdGenerator) -> Vec<ProductWithVariants> {
    (0..PRODUCTS)
        .map(|i| {
            let id = ids.product_id();
            let variants = (0..3)
                .map(|v| Variant {
                    id: ids.variant_id(),
                    product_id: id,
                    sku: format!("SKU-{i}-{v}"),
                    color: ["red", "green", "blue"][v].into(),
                    size: ["S", "M", "L"][v].into(),
                    price: Money::usd(1_000 + i as i64),
                    stock_level: 10,
                })
                .collect();
            ProductWithVariants {
                product: Product {
                    id,
                    name: format!("Product {i}"),
                    // About as long as the demo catalog's descriptions.
                    description: format!(
                        "The sturdy tool {i} by Acme, made to last. Available in 3 colours and 3 sizes."
                    ),
                    brand: "Acme".into(),
                    category: "tools".into(),
                    price: Money::usd(1_000 + i as i64),
                    created_at_ms: 1,
                    updated_at_ms: 1,
                    seller_id: None,
                    version: 1,
                    view_count: 0,
                },
                variants,
            }
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(7);
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for run in 0..runs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = SqliteConfig {
            data_dir: dir.path().to_owned(),
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(5),
            max_connections: 2,
            write_events: true,
        };
        let store = Store::open_sqlite(&config, 1, 64, &Metrics::new())
            .await
            .expect("a store");
        let ids = IdGenerator::deterministic(0, id::EPOCH_MS + run as u64 * 1_000_000);
        let products = catalog(&ids);
        let started = Instant::now();
        store
            .insert_products(products, 1)
            .await
            .expect("the products are written");
        times.push(started.elapsed());
        store.close().await;
    }
    times.sort();
    println!(
        "insert_products of {PRODUCTS} products x 3 variants, {runs} runs: min {:?}, median {:?}, max {:?}",
        times[0],
        times[runs / 2],
        times[runs - 1]
    );
}
