//! `bazaar seed`: write a deterministic demo catalog into an empty data directory.

use std::time::Instant;

use anyhow::bail;
use bazaar_telemetry::Metrics;
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::{Core, open_store};
use crate::config::Config;

/// Seeds the demo sellers and `products` demo products; refuses a store that already holds
/// products, since the demo ids are deterministic and would collide.
pub async fn run(config: &Config, products: u64, seed: u64) -> anyhow::Result<()> {
    let store = std::sync::Arc::new(open_store(config, &Metrics::new()).await?);
    let existing = store.count_products().await?;
    if existing > 0 {
        store.close().await;
        bail!(
            "{} already holds {existing} products; seed into an empty --data-dir",
            config.store.data_dir.display()
        );
    }
    let bar = ProgressBar::new(products);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} products ({per_sec}, eta {eta})")
            .expect("the template is valid"),
    );
    let started = Instant::now();
    // The sellers are accounts like any other (hashed passwords, sealed emails): they need the
    // key file, which is created here if this is the store's first use.
    let lease =
        crate::node::NodeLease::claim(store.clone(), config.node.id.map(|id| id.get())).await?;
    let core = Core::build(config, &store, &lease)?;
    let result = bazaar_shop::demo::seed(&store, &core.accounts, products, seed, |done| {
        bar.set_position(done);
    })
    .await;
    bar.finish();
    lease.release().await?;
    store.close().await;
    result?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {products} products into {} in {secs:.1}s ({:.0} products/s)",
        config.store.describe(),
        products as f64 / secs.max(1e-9)
    );
    let sellers: Vec<&str> = bazaar_shop::demo::SELLERS.iter().map(|s| s.email).collect();
    println!(
        "they belong to the demo sellers {} (demo-only password: {})",
        sellers.join(", "),
        bazaar_shop::demo::SELLER_PASSWORD
    );
    Ok(())
}
