//! The PostgreSQL backend's catalog and identity halves against a real server, side by side
//! with the SQLite backend: the same calls must give the same answers and write the same
//! events, and the concurrency cases must hold under READ COMMITTED.
//!
//! Gated on `BAZAAR_TEST_POSTGRES_URL` (a URL of a database the user may `CREATE DATABASE`
//! from, e.g. `postgres://postgres@127.0.0.1:5432/postgres`); each test creates its own
//! databases and drops them afterwards. Without the variable the tests print that they were
//! skipped and pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tokio::sync::Barrier;

use super::*;
use crate::postgres::PostgresConfig;

const URL_VAR: &str = "BAZAAR_TEST_POSTGRES_URL";

/// Scratch databases of one test, dropped (even after a panic) when this goes out of scope.
struct Scratch {
    admin_url: String,
    urls: Vec<String>,
    names: Vec<String>,
}

impl Scratch {
    /// `count` fresh databases, or `None` (with a notice) when no server is configured.
    async fn create(test: &str, count: usize) -> Option<Self> {
        let Ok(admin_url) = std::env::var(URL_VAR) else {
            eprintln!("skipped {test}: set {URL_VAR} to run it against PostgreSQL");
            return None;
        };
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut admin = PgConnection::connect(&admin_url).await.unwrap();
        let run = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
        let mut scratch = Self {
            admin_url: admin_url.clone(),
            urls: Vec::new(),
            names: Vec::new(),
        };
        for i in 0..count {
            let name = format!("pgcat_{}_{run}_{i}", std::process::id());
            // One statement each: PostgreSQL runs a multi-statement string as one
            // transaction, which neither may run in.
            for statement in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name}"),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
            scratch.urls.push(with_database(&admin_url, &name));
            scratch.names.push(name);
        }
        admin.close().await.unwrap();
        Some(scratch)
    }

    async fn store(&self) -> Store {
        let config = PostgresConfig {
            shards: self.urls.clone(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            write_events: true,
        };
        Store::open_postgres(&config, 64, &Metrics::new())
            .await
            .unwrap()
    }

    /// A pool straight to shard `index`'s database, to inspect what the store wrote.
    async fn raw(&self, index: usize) -> PgPool {
        PgPool::connect(&self.urls[index]).await.unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let names = std::mem::take(&mut self.names);
        // A fresh runtime on its own thread: drop may run inside (or after) the test's.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                for name in names {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await?;
                }
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop scratch databases: {dropped:?}");
        }
    }
}

/// `url` with its database name replaced by `name` (the query string kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (server, _) = base.rsplit_once('/').expect("a URL with a database path");
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// An SQLite store of `shards` shards in `dir`, with enough connections for the races.
async fn sqlite_store(dir: &std::path::Path, shards: usize) -> Store {
    let config = SqliteConfig {
        max_connections: 8,
        ..config(dir)
    };
    Store::open_sqlite(&config, shards, 64, &Metrics::new())
        .await
        .unwrap()
}

/// An event as both backends must write it: everything but its id and event id.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    topic: String,
    key: String,
    payload: Value,
    created_at_ms: i64,
}

/// Every event in the outbox of the PostgreSQL database behind `pool`, oldest first.
async fn pg_events(pool: &PgPool) -> Vec<Written> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT topic, key, payload, created_at FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(topic, key, payload, created_at_ms)| Written {
            topic,
            key,
            payload: serde_json::from_str(&payload).unwrap(),
            created_at_ms,
        })
        .collect()
}

/// Every event in an SQLite shard's outbox, oldest first.
async fn sqlite_events(shard: &dyn Shard) -> Vec<Written> {
    shard
        .outbox(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| Written {
            topic: e.topic,
            key: e.key,
            payload: serde_json::from_str(&e.payload).unwrap(),
            created_at_ms: e.created_at_ms,
        })
        .collect()
}

fn count_topic(events: &[Written], topic: &str) -> usize {
    events.iter().filter(|e| e.topic == topic).count()
}

#[tokio::test]
async fn pg_products_round_trip_with_their_variants_as_on_sqlite() {
    let Some(scratch) = Scratch::create("pg_products_round_trip", 3).await else {
        return;
    };
    let pg = scratch.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite_store(dir.path(), 3).await;
    let mut products = catalog(60);
    // One product without variants: its variant columns come back NULL from the join.
    products[5].variants.clear();
    pg.insert_products(products.clone(), 7).await.unwrap();
    lite.insert_products(products.clone(), 7).await.unwrap();

    assert_eq!(pg.count_products().await.unwrap(), 60);
    for expected in &products {
        let id = expected.product.id;
        let read = pg.product_with_variants(id).await.unwrap();
        assert_eq!(read.as_ref(), Some(expected));
        assert_eq!(read, lite.product_with_variants(id).await.unwrap());
        // Only the owning shard holds it.
        for (index, shard) in pg.shards().enumerate() {
            let held = shard.product_with_variants(id).await.unwrap().is_some();
            assert_eq!(held, index == pg.shard_of(id));
        }
        for v in &expected.variants {
            assert_eq!(pg.variant(id, v.id).await.unwrap().as_ref(), Some(v));
            let other = products
                [(products.iter().position(|p| p.product.id == id).unwrap() + 1) % products.len()]
            .product
            .id;
            assert_eq!(
                pg.variant(other, v.id).await.unwrap(),
                None,
                "wrong product"
            );
        }
    }
    let mut ids: Vec<ProductId> = products.iter().map(|p| p.product.id).collect();
    ids.push(ProductId::new(3));
    let listed = pg.products(&ids).await.unwrap();
    assert_eq!(listed.len(), 60, "the unknown id is skipped");
    assert_eq!(listed, lite.products(&ids).await.unwrap());
    let variants = pg.variants_of(&ids).await.unwrap();
    assert_eq!(variants, lite.variants_of(&ids).await.unwrap());
    for p in &products {
        assert_eq!(variants[&p.product.id], p.variants);
    }

    // A duplicate batch is a conflict and writes nothing, not even its new products.
    let shard = pg.shard_of(products[0].product.id);
    let raw = scratch.raw(shard).await;
    let events_before = pg_events(&raw).await.len();
    // (Shard-level, so both products go to the one shard whatever the ring says.)
    let mut batch = catalog(61).split_off(60);
    batch.push(products[0].clone());
    let err = pg.shards[shard]
        .insert_products(&batch, 8)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(pg.count_products().await.unwrap(), 60);
    assert_eq!(pg_events(&raw).await.len(), events_before);
    // Negative stock is refused by the database's CHECK.
    let mut bad = catalog(62).split_off(61);
    bad[0].variants[0].stock_level = -1;
    let err = pg.insert_products(bad, 8).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");

    // Views add up per product, duplicates included; unknown products are skipped.
    let (a, b) = (products[1].product.id, products[2].product.id);
    let views = [(a, 2), (b, 1), (a, 3), (ProductId::new(9), 4)];
    for store in [&pg, &lite] {
        store.add_views(&views).await.unwrap();
    }
    for id in [a, b] {
        let pg_views = pg.products(&[id]).await.unwrap()[&id].view_count;
        assert_eq!(pg_views, if id == a { 5 } else { 1 });
        assert_eq!(
            pg_views,
            lite.products(&[id]).await.unwrap()[&id].view_count
        );
    }
    pg.close().await;
}

/// Pages through `store` and `other` in lockstep, asserting each page (and whether more
/// follow) is the same; returns every product listed.
async fn page_both(
    pg: &Store,
    lite: &Store,
    filter: &ProductFilter,
    sort: ProductSort,
    limit: usize,
) -> Vec<Product> {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let query = ProductQuery {
            filter: filter.clone(),
            sort,
            after,
            limit,
        };
        let page = pg.list_products(&query).await.unwrap();
        let expected = lite.list_products(&query).await.unwrap();
        assert_eq!(page, expected, "{filter:?} {sort:?} after {after:?}");
        // Each shard's own answer is the same too, not only the merge.
        for (mine, theirs) in pg.shards().zip(lite.shards()) {
            assert_eq!(
                mine.list_products(&query).await.unwrap(),
                theirs.list_products(&query).await.unwrap(),
                "{} {filter:?} {sort:?}",
                mine.name()
            );
        }
        assert!(page.items.len() <= limit);
        after = page.items.last().map(SortKey::of);
        seen.extend(page.items);
        if !page.has_more {
            return seen;
        }
    }
}

#[tokio::test]
async fn pg_listings_page_exactly_as_sqlite_for_every_sort_and_filter() {
    let Some(scratch) = Scratch::create("pg_listings", 3).await else {
        return;
    };
    let pg = scratch.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite_store(dir.path(), 3).await;
    let products = catalog(1_500);
    pg.insert_products(products.clone(), 0).await.unwrap();
    lite.insert_products(products.clone(), 0).await.unwrap();

    let filters = [
        ProductFilter::default(),
        ProductFilter {
            category: Some("games".into()),
            ..ProductFilter::default()
        },
        ProductFilter {
            min_price: Some(300),
            max_price: Some(800),
            ..ProductFilter::default()
        },
        ProductFilter {
            in_stock: Some(true),
            ..ProductFilter::default()
        },
        ProductFilter {
            in_stock: Some(false),
            category: Some("books".into()),
            ..ProductFilter::default()
        },
        ProductFilter {
            category: Some("games".into()),
            min_price: Some(300),
            max_price: Some(800),
            in_stock: Some(true),
        },
        ProductFilter {
            category: Some("no such".into()),
            ..ProductFilter::default()
        },
    ];
    for filter in &filters {
        let matching: Vec<&Product> = products
            .iter()
            .filter(|p| {
                let price = p.product.price.amount;
                let in_stock = p.variants.iter().any(|v| v.stock_level > 0);
                filter
                    .category
                    .as_ref()
                    .is_none_or(|c| &p.product.category == c)
                    && filter.min_price.is_none_or(|m| price >= m)
                    && filter.max_price.is_none_or(|m| price <= m)
                    && filter.in_stock.is_none_or(|s| s == in_stock)
            })
            .map(|p| &p.product)
            .collect();
        for sort in [
            ProductSort::Newest,
            ProductSort::PriceAsc,
            ProductSort::PriceDesc,
        ] {
            for limit in [97, 400] {
                let listed = page_both(&pg, &lite, filter, sort, limit).await;
                let mut expected = matching.clone();
                expected.sort_by(|a, b| sort.compare(&SortKey::of(a), &SortKey::of(b)));
                let listed: Vec<ProductId> = listed.iter().map(|p| p.id).collect();
                let expected: Vec<ProductId> = expected.iter().map(|p| p.id).collect();
                assert_eq!(listed, expected, "{filter:?} {sort:?} {limit}");
            }
        }
    }
    pg.close().await;
}

/// The catalog's writes in one sequence, run on `store`; the product is on shard `index`.
async fn edit_sequence(store: &Store, products: &[ProductWithVariants]) {
    let id = products[0].product.id;
    let shard = &store.shards[store.shard_of(id)];
    let first = products[0].variants[0].id;
    let patch = ProductPatch {
        name: Some("Renamed".into()),
        category: Some("toys".into()),
        ..ProductPatch::default()
    };
    let WriteOutcome::Done(Some(after)) = shard.update_product(id, 1, &patch, 99).await.unwrap()
    else {
        panic!("the update at the current version must apply");
    };
    assert_eq!(
        (after.product.name.as_str(), after.product.version),
        ("Renamed", 2)
    );
    assert_eq!(after.product.updated_at_ms, 99);
    // Stale and missing: refused, nothing written.
    assert_eq!(
        shard.update_product(id, 1, &patch, 100).await.unwrap(),
        WriteOutcome::VersionMismatch { current: 2 }
    );
    assert_eq!(
        shard
            .update_product(ProductId::new(5), 1, &patch, 100)
            .await
            .unwrap(),
        WriteOutcome::NotFound
    );
    let cheap = Variant {
        id: VariantId::new(id.get() + 1_000),
        product_id: id,
        sku: "CHEAP".into(),
        color: "blue".into(),
        size: "XS".into(),
        price: Money::usd(1),
        stock_level: 4,
    };
    assert_eq!(
        shard.insert_variant(&cheap, 1, 101).await.unwrap(),
        WriteOutcome::VersionMismatch { current: 2 }
    );
    let WriteOutcome::Done(Some(after)) = shard.insert_variant(&cheap, 2, 101).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((after.product.version, after.product.price.amount), (3, 1));
    assert_eq!(after.variants.len(), 3);
    // A duplicate variant id is a conflict and changes nothing, the version included.
    let err = shard.insert_variant(&cheap, 3, 101).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");

    // Restock: stock.changed. The same level again: no stock.changed. No stock in the
    // patch: none either. A price edit reprices the product.
    let restock = VariantPatch {
        stock_level: Some(9),
        ..VariantPatch::default()
    };
    let WriteOutcome::Done(Some(after)) = shard
        .update_variant(id, cheap.id, 3, &restock, 102)
        .await
        .unwrap()
    else {
        panic!()
    };
    let level = |p: &ProductWithVariants, v: VariantId| {
        p.variants.iter().find(|x| x.id == v).unwrap().stock_level
    };
    assert_eq!(level(&after, cheap.id), 9);
    let same = VariantPatch {
        sku: Some("CHEAP-2".into()),
        stock_level: Some(9),
        ..VariantPatch::default()
    };
    assert!(matches!(
        shard
            .update_variant(id, cheap.id, 4, &same, 103)
            .await
            .unwrap(),
        WriteOutcome::Done(Some(_))
    ));
    let reprice = VariantPatch {
        price: Some(Money::usd(5_000)),
        ..VariantPatch::default()
    };
    let WriteOutcome::Done(Some(after)) = shard
        .update_variant(id, cheap.id, 5, &reprice, 104)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(after.product.price, products[0].product.price);
    assert_eq!(level(&after, cheap.id), 9, "an edit without stock keeps it");
    // The first variant (out of stock) restocked, then an unknown variant: not found, no
    // write.
    let fill = VariantPatch {
        stock_level: Some(5),
        ..VariantPatch::default()
    };
    assert!(matches!(
        shard
            .update_variant(id, first, 6, &fill, 105)
            .await
            .unwrap(),
        WriteOutcome::Done(Some(_))
    ));
    assert_eq!(
        shard
            .update_variant(id, VariantId::new(77), 7, &fill, 106)
            .await
            .unwrap(),
        WriteOutcome::NotFound
    );
    assert_eq!(
        shard
            .update_variant(id, first, 6, &fill, 106)
            .await
            .unwrap(),
        WriteOutcome::VersionMismatch { current: 7 }
    );
    let WriteOutcome::Done(Some(after)) = shard.delete_variant(id, cheap.id, 7, 107).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(after.product.version, 8);
    assert_eq!(
        shard.delete_variant(id, cheap.id, 8, 108).await.unwrap(),
        WriteOutcome::NotFound
    );
    assert_eq!(
        shard.delete_product(id, 7, 109).await.unwrap(),
        WriteOutcome::VersionMismatch { current: 8 }
    );
    assert_eq!(
        shard.delete_product(id, 8, 109).await.unwrap(),
        WriteOutcome::Done(None)
    );
    assert_eq!(
        shard.delete_product(id, 8, 110).await.unwrap(),
        WriteOutcome::NotFound
    );
    assert_eq!(store.product_with_variants(id).await.unwrap(), None);
    assert_eq!(store.variant(id, first).await.unwrap(), None);
}

#[tokio::test]
async fn pg_version_checked_writes_write_the_same_events_in_the_same_order_as_sqlite() {
    let Some(scratch) = Scratch::create("pg_version_checked_writes", 2).await else {
        return;
    };
    let pg = scratch.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite_store(dir.path(), 2).await;
    let products = catalog(4);
    pg.insert_products(products.clone(), 50).await.unwrap();
    lite.insert_products(products.clone(), 50).await.unwrap();
    edit_sequence(&pg, &products).await;
    edit_sequence(&lite, &products).await;

    let id = products[0].product.id;
    let index = pg.shard_of(id);
    let written = pg_events(&scratch.raw(index).await).await;
    let expected = sqlite_events(lite.shard_at(index).unwrap()).await;
    assert_eq!(written, expected);
    let topics: Vec<&str> = written
        .iter()
        .filter(|e| e.key == id.to_string())
        .map(|e| e.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        [
            "product.created",
            "product.updated",
            "variant.created",
            "variant.updated",
            "stock.changed",
            "variant.updated",
            "variant.updated",
            "variant.updated",
            "stock.changed",
            "variant.deleted",
            "product.deleted",
        ]
    );
    let changed: Vec<(i64, i64)> = written
        .iter()
        .filter(|e| e.topic == "stock.changed")
        .map(|e| {
            (
                e.payload["on_hand_before"].as_i64().unwrap(),
                e.payload["on_hand"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(products[0].variants[0].stock_level, 0);
    assert_eq!(changed, [(4, 9), (0, 5)]);
    pg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_concurrent_writers_at_one_version_exactly_one_wins() {
    let Some(scratch) = Scratch::create("pg_concurrent_writers", 1).await else {
        return;
    };
    let pg = Arc::new(scratch.store().await);
    let products = catalog(2);
    pg.insert_products(products.clone(), 0).await.unwrap();
    let raw = scratch.raw(0).await;
    let id = products[0].product.id;

    // Twenty renames expecting version 1, released at once.
    let tasks = 20;
    let barrier = Arc::new(Barrier::new(tasks));
    let renames = (0..tasks).map(|i| {
        let (pg, barrier) = (pg.clone(), barrier.clone());
        tokio::spawn(async move {
            let patch = ProductPatch {
                name: Some(format!("Name {i}")),
                ..ProductPatch::default()
            };
            barrier.wait().await;
            pg.shards[0]
                .update_product(id, 1, &patch, 10)
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<WriteOutcome> = futures::future::join_all(renames)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let done = outcomes
        .iter()
        .filter(|o| matches!(o, WriteOutcome::Done(Some(_))))
        .count();
    let stale = outcomes
        .iter()
        .filter(|o| **o == WriteOutcome::VersionMismatch { current: 2 })
        .count();
    assert_eq!((done, stale), (1, tasks - 1), "{outcomes:?}");
    let events = pg_events(&raw).await;
    assert_eq!(count_topic(&events, "product.updated"), 1);

    // Variant inserts racing deletes of the product, all expecting version 2: one wins.
    let barrier = Arc::new(Barrier::new(tasks));
    let racers = (0..tasks).map(|i| {
        let (pg, barrier) = (pg.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            if i % 2 == 0 {
                let variant = Variant {
                    id: VariantId::new(id.get() + 10_000 + i as u64),
                    product_id: id,
                    sku: format!("NEW-{i}"),
                    color: "green".into(),
                    size: "L".into(),
                    price: Money::usd(50),
                    stock_level: 1,
                };
                pg.shards[0].insert_variant(&variant, 2, 20).await.unwrap()
            } else {
                pg.shards[0].delete_product(id, 2, 20).await.unwrap()
            }
        })
    });
    let outcomes: Vec<WriteOutcome> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<&WriteOutcome> = outcomes
        .iter()
        .filter(|o| matches!(o, WriteOutcome::Done(_)))
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let events = pg_events(&raw).await;
    let new = count_topic(&events, "variant.created") + count_topic(&events, "product.deleted");
    assert_eq!(new, 1, "one write, one event");
    match winners[0] {
        WriteOutcome::Done(None) => {
            // The delete won: every other racer found nothing.
            assert!(
                outcomes
                    .iter()
                    .filter(|o| !matches!(o, WriteOutcome::Done(_)))
                    .all(|o| *o == WriteOutcome::NotFound),
                "{outcomes:?}"
            );
            assert_eq!(pg.product_with_variants(id).await.unwrap(), None);
        }
        WriteOutcome::Done(Some(after)) => {
            assert_eq!(after.variants.len(), 3);
            assert!(
                outcomes
                    .iter()
                    .filter(|o| !matches!(o, WriteOutcome::Done(_)))
                    .all(|o| *o == WriteOutcome::VersionMismatch { current: 3 }),
                "{outcomes:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    pg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_concurrent_restocks_chain_their_stock_changed_events() {
    let Some(scratch) = Scratch::create("pg_concurrent_restocks", 1).await else {
        return;
    };
    let pg = Arc::new(scratch.store().await);
    let products = catalog(1);
    pg.insert_products(products.clone(), 0).await.unwrap();
    let (id, variant) = (products[0].product.id, products[0].variants[1].id);
    let start = products[0].variants[1].stock_level;

    // Each task retries at the version it reads until its restock applies: every restock
    // lands once, each replacing the level the previous one set.
    let tasks = 12;
    let barrier = Arc::new(Barrier::new(tasks));
    let restocks = (0..tasks).map(|i| {
        let (pg, barrier) = (pg.clone(), barrier.clone());
        tokio::spawn(async move {
            let patch = VariantPatch {
                stock_level: Some(100 + i as i64),
                ..VariantPatch::default()
            };
            barrier.wait().await;
            let mut attempts = 0;
            loop {
                attempts += 1;
                let version = pg
                    .product_with_variants(id)
                    .await
                    .unwrap()
                    .unwrap()
                    .product
                    .version;
                match pg.shards[0]
                    .update_variant(id, variant, version, &patch, 1)
                    .await
                    .unwrap()
                {
                    WriteOutcome::Done(_) => return attempts,
                    WriteOutcome::VersionMismatch { .. } => continue,
                    WriteOutcome::NotFound => panic!("the variant exists"),
                }
            }
        })
    });
    let attempts: usize = futures::future::join_all(restocks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert!(attempts >= tasks);

    let events = pg_events(&scratch.raw(0).await).await;
    let chain: Vec<(i64, i64)> = events
        .iter()
        .filter(|e| e.topic == "stock.changed")
        .map(|e| {
            (
                e.payload["on_hand_before"].as_i64().unwrap(),
                e.payload["on_hand"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(chain.len(), tasks, "one stock.changed per restock");
    assert_eq!(chain[0].0, start);
    for pair in chain.windows(2) {
        assert_eq!(
            pair[1].0, pair[0].1,
            "each restock replaces the previous level"
        );
    }
    let after = pg.product_with_variants(id).await.unwrap().unwrap();
    assert_eq!(after.product.version, 1 + tasks as i64);
    let level = after.variants.iter().find(|v| v.id == variant).unwrap();
    assert_eq!(level.stock_level, chain.last().unwrap().1);
    assert_eq!(count_topic(&events, "variant.updated"), tasks);
    pg.close().await;
}

/// Many claims of one email at once: exactly one wins, every other sees the winner.
async fn email_race(store: Arc<Store>, round: u64) {
    let tasks = 40;
    let index = format!("email-{round}").into_bytes();
    let barrier = Arc::new(Barrier::new(tasks));
    let claims = (0..tasks).map(|i| {
        let (store, barrier, index) = (store.clone(), barrier.clone(), index.clone());
        tokio::spawn(async move {
            let user = UserId::new(1_000 * round + i as u64 + 1);
            barrier.wait().await;
            let claim = store
                .directory()
                .claim_email(&index, user, i as i64)
                .await
                .unwrap();
            (user, claim)
        })
    });
    let claims: Vec<(UserId, EmailClaim)> = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<UserId> = claims
        .iter()
        .filter(|(_, c)| *c == EmailClaim::Claimed)
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    let winner = winners[0];
    for (user, claim) in &claims {
        if *user != winner {
            assert!(
                matches!(claim, EmailClaim::Taken { by, .. } if *by == winner),
                "{claim:?}"
            );
        }
    }
    assert_eq!(
        store.directory().lookup_email(&index).await.unwrap(),
        Some(winner)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_many_claims_of_one_email_at_once_elect_exactly_one_holder() {
    let Some(scratch) = Scratch::create("pg_email_race", 1).await else {
        return;
    };
    let pg = Arc::new(scratch.store().await);
    let dir = tempfile::tempdir().unwrap();
    let lite = Arc::new(sqlite_store(dir.path(), 1).await);
    for round in 0..5 {
        email_race(pg.clone(), round).await;
        email_race(lite.clone(), round).await;
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM email_directory")
        .fetch_one(&scratch.raw(0).await)
        .await
        .unwrap();
    assert_eq!(rows, 5);

    // Release and lookup as on SQLite: only the holder releases.
    let shard = pg.directory();
    let (a, b) = (UserId::new(11), UserId::new(12));
    assert_eq!(
        shard.claim_email(b"idx", a, 5).await.unwrap(),
        EmailClaim::Claimed
    );
    assert_eq!(
        shard.claim_email(b"idx", b, 6).await.unwrap(),
        EmailClaim::Taken {
            by: a,
            claimed_at_ms: 5
        }
    );
    shard.release_email(b"idx", b).await.unwrap();
    assert_eq!(shard.lookup_email(b"idx").await.unwrap(), Some(a));
    shard.release_email(b"idx", a).await.unwrap();
    assert_eq!(shard.lookup_email(b"idx").await.unwrap(), None);
    assert_eq!(
        shard.claim_email(b"idx", b, 7).await.unwrap(),
        EmailClaim::Claimed
    );
    pg.close().await;
}

#[tokio::test]
async fn pg_users_round_trip_and_a_role_change_writes_its_event_as_on_sqlite() {
    let Some(scratch) = Scratch::create("pg_users", 1).await else {
        return;
    };
    let pg = scratch.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite_store(dir.path(), 1).await;
    for store in [&pg, &lite] {
        let shard = &store.shards[0];
        let a = UserId::new(11);
        let mut record = user(a, b"idx");
        record.phone_ct = Some(b"phone".to_vec());
        shard.insert_user(&record).await.unwrap();
        assert_eq!(shard.user(a).await.unwrap(), Some(record.clone()));
        let err = shard.insert_user(&record).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        // A rename alone writes no event; a role change writes one.
        record.name = "Ada L.".into();
        record.updated_at_ms = 2;
        assert!(shard.update_user(&record).await.unwrap());
        record.role = Role::Seller;
        record.updated_at_ms = 3;
        assert!(shard.update_user(&record).await.unwrap());
        assert_eq!(shard.user(a).await.unwrap(), Some(record.clone()));
        assert!(
            !shard
                .update_user(&user(UserId::new(99), b"x"))
                .await
                .unwrap()
        );
        shard
            .insert_user(&user(UserId::new(12), b"idy"))
            .await
            .unwrap();
        let all = shard.users_after(None, 10).await.unwrap();
        assert_eq!(all.len(), 2);
        let rest = shard.users_after(Some(a), 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|u| u.id).collect::<Vec<_>>(),
            [UserId::new(12)]
        );
    }
    let written = pg_events(&scratch.raw(0).await).await;
    assert_eq!(written, sqlite_events(lite.shard_at(0).unwrap()).await);
    let topics: Vec<&str> = written.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["user.created", "user.role_changed", "user.created"]
    );
    assert_eq!(written[1].created_at_ms, 3);
    pg.close().await;
}

/// More calls than the quota at once: exactly `quota` are admitted, each with its own count.
async fn quota_race(store: Arc<Store>) {
    let user_id = UserId::new(41);
    store.shards[0]
        .insert_user(&user(user_id, b"k"))
        .await
        .unwrap();
    let key = ApiKeyRecord {
        id: ApiKeyId::new(42),
        user: user_id,
        name: "ci".into(),
        secret_hash: vec![1; 32],
        daily_quota: 30,
        created_at_ms: 0,
        revoked_at_ms: None,
    };
    store.shards[0].insert_api_key(&key).await.unwrap();
    assert_eq!(
        store.shards[0].api_keys_of(user_id).await.unwrap(),
        std::slice::from_ref(&key)
    );
    let tasks = 100;
    let barrier = Arc::new(Barrier::new(tasks));
    let calls = (0..tasks).map(|_| {
        let (store, barrier) = (store.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            store.shards[0]
                .consume_quota(ApiKeyId::new(42), 7, 30)
                .await
                .unwrap()
        })
    });
    let uses: Vec<QuotaUse> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut counted: Vec<i64> = uses.iter().filter(|u| u.allowed).map(|u| u.used).collect();
    counted.sort_unstable();
    assert_eq!(
        counted,
        (1..=30).collect::<Vec<_>>(),
        "each admitted call counted once"
    );
    assert!(uses.iter().filter(|u| !u.allowed).all(|u| u.used == 30));
    // A new day has a fresh quota; a quota below one refuses even the first call.
    assert_eq!(
        store.shards[0].consume_quota(key.id, 8, 30).await.unwrap(),
        QuotaUse {
            allowed: true,
            used: 1
        }
    );
    assert_eq!(
        store.shards[0].consume_quota(key.id, 9, 0).await.unwrap(),
        QuotaUse {
            allowed: false,
            used: 0
        }
    );
    assert!(
        store.shards[0]
            .revoke_api_key(user_id, key.id, 5)
            .await
            .unwrap()
    );
    assert!(
        !store.shards[0]
            .revoke_api_key(user_id, key.id, 6)
            .await
            .unwrap()
    );
    assert_eq!(
        store.shards[0]
            .api_key(key.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        Some(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_a_quota_admits_exactly_its_size_under_concurrency() {
    let Some(scratch) = Scratch::create("pg_quota", 1).await else {
        return;
    };
    let pg = Arc::new(scratch.store().await);
    quota_race(pg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    quota_race(Arc::new(sqlite_store(dir.path(), 1).await)).await;
    let used: i64 =
        sqlx::query_scalar("SELECT used FROM api_key_usage WHERE key_id = 42 AND day = 7")
            .fetch_one(&scratch.raw(0).await)
            .await
            .unwrap();
    assert_eq!(used, 30);
    pg.close().await;
}

/// One token presented many times at once: one rotation, one reuse (which ends the session),
/// and every later presentation is rejected; one successor is stored.
async fn refresh_race(store: Arc<Store>) -> Vec<RefreshOutcome> {
    let shard = &store.shards[0];
    let (user_id, session) = (UserId::new(51), SessionId::new(52));
    shard.insert_user(&user(user_id, b"r")).await.unwrap();
    let first = RefreshRecord {
        token_hash: b"race-1".to_vec(),
        session,
        issued_at_ms: 0,
        expires_at_ms: 1_000,
    };
    shard
        .create_session(session, user_id, &first)
        .await
        .unwrap();
    let tasks = 20;
    let barrier = Arc::new(Barrier::new(tasks));
    let presentations = (0..tasks).map(|i| {
        let (store, barrier) = (store.clone(), barrier.clone());
        tokio::spawn(async move {
            let next = RefreshRecord {
                token_hash: format!("race-next-{i}").into_bytes(),
                session,
                issued_at_ms: 10,
                expires_at_ms: 1_000,
            };
            barrier.wait().await;
            store.shards[0]
                .rotate_refresh(b"race-1", &next, 10)
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<RefreshOutcome> = futures::future::join_all(presentations)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let count = |wanted: RefreshOutcome| outcomes.iter().filter(|o| **o == wanted).count();
    let user = user_id;
    assert_eq!(
        count(RefreshOutcome::Rotated { session, user }),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        count(RefreshOutcome::Reused { session, user }),
        1,
        "{outcomes:?}"
    );
    assert_eq!(count(RefreshOutcome::Rejected), tasks - 2, "{outcomes:?}");
    assert_eq!(shard.active_session(session).await.unwrap(), None);
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_refresh_tokens_rotate_once_and_a_reuse_ends_the_session() {
    let Some(scratch) = Scratch::create("pg_refresh", 1).await else {
        return;
    };
    let pg = Arc::new(scratch.store().await);
    let shard = &pg.shards[0];
    let (user_id, session) = (UserId::new(21), SessionId::new(22));
    shard.insert_user(&user(user_id, b"i")).await.unwrap();
    let token = |hash: &[u8], expires| RefreshRecord {
        token_hash: hash.to_vec(),
        session,
        issued_at_ms: 0,
        expires_at_ms: expires,
    };
    shard
        .create_session(session, user_id, &token(b"t1", 1_000))
        .await
        .unwrap();
    assert_eq!(
        shard.active_session(session).await.unwrap(),
        Some((user_id, Role::Customer))
    );
    let rotated = RefreshOutcome::Rotated {
        session,
        user: user_id,
    };
    // A successor for another session is refused, and so is an expired token.
    let elsewhere = RefreshRecord {
        session: SessionId::new(999),
        ..token(b"tx", 1_000)
    };
    assert_eq!(
        shard.rotate_refresh(b"t1", &elsewhere, 10).await.unwrap(),
        RefreshOutcome::Rejected
    );
    assert_eq!(
        shard
            .rotate_refresh(b"t1", &token(b"t2", 2_000), 1_000)
            .await
            .unwrap(),
        RefreshOutcome::Rejected
    );
    assert_eq!(
        shard
            .rotate_refresh(b"t1", &token(b"t2", 1_000), 10)
            .await
            .unwrap(),
        rotated
    );
    assert_eq!(
        shard
            .rotate_refresh(b"t2", &token(b"t3", 1_000), 11)
            .await
            .unwrap(),
        rotated
    );
    // t1 again: reuse. The family dies, so even the current t3 stops working.
    assert_eq!(
        shard
            .rotate_refresh(b"t1", &token(b"t4", 1_000), 12)
            .await
            .unwrap(),
        RefreshOutcome::Reused {
            session,
            user: user_id
        }
    );
    assert_eq!(shard.active_session(session).await.unwrap(), None);
    assert!(!shard.revoke_session(session, "logout", 13).await.unwrap());
    for presented in [&b"t3"[..], b"nope"] {
        assert_eq!(
            shard
                .rotate_refresh(presented, &token(b"t5", 1_000), 13)
                .await
                .unwrap(),
            RefreshOutcome::Rejected
        );
    }
    let raw = scratch.raw(0).await;
    let (revoked_at, reason): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT revoked_at, revoked_reason FROM sessions WHERE id = 22")
            .fetch_one(&raw)
            .await
            .unwrap();
    assert_eq!(
        (revoked_at, reason.as_deref()),
        (Some(12), Some("refresh token reuse"))
    );

    // The race, on both backends.
    refresh_race(pg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    refresh_race(Arc::new(sqlite_store(dir.path(), 1).await)).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens WHERE session_id = 52")
            .fetch_one(&raw)
            .await
            .unwrap();
    assert_eq!(stored, 2, "the first token and its one successor");

    // Revoking ends an active session once.
    let other = SessionId::new(23);
    shard
        .create_session(
            other,
            user_id,
            &RefreshRecord {
                session: other,
                ..token(b"u1", 1_000)
            },
        )
        .await
        .unwrap();
    assert!(shard.revoke_session(other, "logout", 14).await.unwrap());
    assert!(!shard.revoke_session(other, "logout", 15).await.unwrap());
    pg.close().await;
}

/// `tasks` claimants of numbers 100..=109 released at once.
async fn claim_at_once(store: &Arc<Store>, tasks: usize, round: usize) -> Vec<Option<u16>> {
    let barrier = Arc::new(Barrier::new(tasks));
    let claims = (0..tasks).map(|i| {
        let (store, barrier) = (store.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            store
                .directory()
                .claim_generator(&format!("p{round}-{i}"), 100..=109, 5_000_000, 30_000)
                .await
                .unwrap()
        })
    });
    futures::future::join_all(claims)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// As many claimants as numbers at once: each gets its own (one that loses a number to
/// another moves on to the next free one); then more claimants at once all get none.
async fn generator_race(store: Arc<Store>) {
    let claimed = claim_at_once(&store, 10, 0).await;
    let mut numbers: Vec<u16> = claimed.iter().flatten().copied().collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (100..=109).collect::<Vec<_>>(), "{claimed:?}");
    let late = claim_at_once(&store, 8, 1).await;
    assert!(late.iter().all(Option::is_none), "{late:?}");
    let held = store.directory().held_generators(5_000_000).await.unwrap();
    assert_eq!(held.iter().filter(|g| (100..=109).contains(*g)).count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_generator_leases_are_exclusive_renewable_and_reclaimed_after_expiry() {
    let Some(scratch) = Scratch::create("pg_generators", 2).await else {
        return;
    };
    let pg = Arc::new(scratch.store().await);
    let directory = pg.directory();
    let (ttl, t0) = (30_000, 1_000_000);
    let claim = |holder: &'static str, range: std::ops::RangeInclusive<u16>, at| {
        let pg = pg.clone();
        async move {
            pg.directory()
                .claim_generator(holder, range, at, ttl)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("a", 1..=3, t0).await, Some(1));
    assert_eq!(claim("b", 1..=3, t0).await, Some(2));
    assert_eq!(claim("c", 1..=1, t0).await, None);
    assert_eq!(claim("c", 1..=3, t0).await, Some(3));
    assert_eq!(claim("d", 1..=3, t0).await, None, "all held");
    assert!(
        directory
            .renew_generator(1, "a", t0 + 20_000, ttl)
            .await
            .unwrap()
    );
    assert!(
        !directory
            .renew_generator(1, "b", t0 + 20_000, ttl)
            .await
            .unwrap()
    );
    assert_eq!(directory.held_generators(t0).await.unwrap(), [1, 2, 3]);
    let later = t0 + ttl + 1;
    assert_eq!(directory.held_generators(later).await.unwrap(), [1]);
    assert_eq!(claim("d", 1..=3, later).await, Some(2));
    assert!(
        !directory.renew_generator(2, "b", later, ttl).await.unwrap(),
        "b lost it"
    );
    directory.release_generator(1, "d").await.unwrap();
    assert_eq!(claim("e", 1..=1, later).await, None);
    directory.release_generator(1, "a").await.unwrap();
    assert_eq!(claim("e", 1..=1, later).await, Some(1));

    generator_race(pg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    generator_race(Arc::new(sqlite_store(dir.path(), 1).await)).await;
    pg.close().await;
}

#[tokio::test]
async fn pg_audit_events_come_back_newest_first() {
    let Some(scratch) = Scratch::create("pg_audit", 1).await else {
        return;
    };
    let pg = scratch.store().await;
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite_store(dir.path(), 1).await;
    for store in [&pg, &lite] {
        for i in 0..5 {
            let event = AuditEvent {
                at_ms: i,
                actor: format!("user:{i}"),
                action: "login.success".into(),
                target: "session".into(),
                request_id: (i % 2 == 0).then(|| format!("req-{i}")),
                detail: String::new(),
            };
            store.directory().append_audit(&event).await.unwrap();
        }
    }
    let newest = pg.directory().audit_events(3).await.unwrap();
    assert_eq!(newest, lite.directory().audit_events(3).await.unwrap());
    assert_eq!(
        newest.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        [4, 3, 2]
    );
    pg.close().await;
}
