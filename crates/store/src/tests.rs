//! The store's conformance suite: every `Shard` and `Store` behaviour, run against each
//! backend.
//!
//! A case is written once, generic over a [`Backend`], and [`conformance!`] instantiates it
//! as two tests, `<case>::sqlite` (files in a temporary directory) and `<case>::postgres`
//! (scratch databases on the server named by `BAZAAR_TEST_POSTGRES_URL`; without it the
//! PostgreSQL instantiations print that they were skipped and pass). The few tests that are
//! about one backend's internals are plain tests, with a comment saying why.

use std::collections::HashSet;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;

use super::*;
use identity::Role;
use sqlite::{Durability, SqliteConfig};
use testing::PostgresScratch;

/// Instantiates a conformance case once per backend.
///
/// ```ignore
/// conformance! {
///     /// What the case promises.
///     #[tokio(flavor = "multi_thread", worker_threads = 4)] // optional runtime arguments
///     async fn case_name(backend) {
///         let store = backend.open(2).await;
///         // …
///     }
/// }
/// ```
///
/// makes a module `case_name` with the tests `sqlite` and `postgres`. The PostgreSQL one
/// returns at once, after a notice, when no server is configured.
macro_rules! conformance {
    (
        $(#[doc = $doc:literal])*
        $(#[tokio($($runtime:tt)*)])?
        async fn $case:ident($backend:ident) $body:block
    ) => {
        $(#[doc = $doc])*
        mod $case {
            use super::*;

            async fn case($backend: Backend) $body

            #[tokio::test $(($($runtime)*))?]
            async fn sqlite() {
                case(Backend::Sqlite).await;
            }

            #[tokio::test $(($($runtime)*))?]
            async fn postgres() {
                if Backend::Postgres.available() {
                    case(Backend::Postgres).await;
                }
            }
        }
    };
}

mod accounts;
mod backends_agree;
mod concurrency;
mod events;
mod orders;
mod resharding;
mod retries;

/// A store backend a conformance case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// One SQLite file per shard in a fresh temporary directory.
    Sqlite,
    /// One fresh PostgreSQL database per shard, dropped after the case.
    Postgres,
}

impl Backend {
    /// Whether this backend can run here: PostgreSQL needs `BAZAAR_TEST_POSTGRES_URL`
    /// (and says so on stderr when it is missing).
    fn available(self) -> bool {
        match self {
            Self::Sqlite => true,
            Self::Postgres => testing::postgres_server().is_some(),
        }
    }

    /// A new, empty store of `shards` shards (64 virtual nodes each).
    async fn open(self, shards: usize) -> TestStore {
        self.open_with_spares(shards, 0, PlacementConfig::ring(64))
            .await
    }

    /// A new, empty store of `shards` shards placed by `placement`, with `spares` more empty
    /// databases (PostgreSQL; SQLite creates files as it needs them) for shards a move adds:
    /// see [`TestStore::spare`].
    async fn open_with_spares(
        self,
        shards: usize,
        spares: usize,
        placement: PlacementConfig,
    ) -> TestStore {
        let data = match self {
            Self::Sqlite => Data::Sqlite(tempfile::tempdir().unwrap()),
            Self::Postgres => Data::Postgres(
                PostgresScratch::from_env(shards + spares)
                    .await
                    .expect("the postgres cases run only with BAZAAR_TEST_POSTGRES_URL set"),
            ),
        };
        let store = data.open(shards, placement).await.unwrap();
        TestStore {
            store: Arc::new(store),
            data,
            placement,
        }
    }
}

/// A store opened for one case, with the data it lives in; dereferences to the [`Store`].
///
/// Fields drop in order: the store (its connections) before its data (the directory or the
/// databases).
struct TestStore {
    store: Arc<Store>,
    data: Data,
    placement: PlacementConfig,
}

/// Where a [`TestStore`] keeps its data.
enum Data {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresScratch),
}

impl Data {
    /// Opens a store over the first `shards` shards of this data.
    async fn open(&self, shards: usize, placement: PlacementConfig) -> Result<Store, StoreError> {
        let metrics = Metrics::new();
        match self {
            Self::Sqlite(dir) => {
                Store::open_sqlite_placed(&config(dir.path()), shards, placement, &metrics).await
            }
            Self::Postgres(scratch) => {
                let mut config = scratch.config();
                assert!(
                    shards <= config.shards.len(),
                    "only {} scratch databases were created",
                    config.shards.len()
                );
                config.shards.truncate(shards);
                Store::open_postgres_placed(&config, placement, &metrics).await
            }
        }
    }
}

impl TestStore {
    /// The store, for tasks that must own a handle to it.
    fn shared(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Opens the same data again as a store of `shards` shards (for SQLite the same
    /// directory, for PostgreSQL the first `shards` of the same databases).
    async fn reopen(&self, shards: usize) -> Result<Store, StoreError> {
        self.data.open(shards, self.placement).await
    }

    /// Replaces shard `index` with a fresh, empty one, as an operator restoring the wrong
    /// backup (or none) would: the SQLite file is deleted, the PostgreSQL database dropped and
    /// created again. Close the store first.
    async fn wipe_shard(&self, index: usize) {
        match &self.data {
            Data::Sqlite(dir) => {
                for suffix in ["", "-wal", "-shm"] {
                    let path = dir.path().join(format!("shard-{index}.sqlite{suffix}"));
                    if path.exists() {
                        std::fs::remove_file(path).unwrap();
                    }
                }
            }
            Data::Postgres(scratch) => {
                use sqlx::Connection as _;
                let server = testing::postgres_server().unwrap();
                let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
                let name = &scratch.names()[index];
                for sql in [
                    format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
                    format!("CREATE DATABASE \"{name}\""),
                ] {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
            }
        }
    }

    /// Where shard `index` is for a move that adds it: the PostgreSQL URL of a spare database
    /// ([`Backend::open_with_spares`]); `None` for SQLite, which needs no telling.
    fn spare(&self, index: usize) -> Option<String> {
        match &self.data {
            Data::Sqlite(_) => None,
            Data::Postgres(scratch) => Some(scratch.urls()[index].clone()),
        }
    }

    /// The index of the shard holding `user` (for [`bare_shard`](Self::bare_shard)).
    fn user_shard(&self, user: UserId) -> usize {
        self.shard_of_user(user)
    }

    /// Shard `index` opened again on its own, without the store's wrapper and so without its
    /// retries: a deadlock, serialization failure or busy database is an error here, for the
    /// races that promise none happens.
    async fn bare_shard(&self, index: usize) -> Arc<dyn Shard> {
        let name = format!("shard-{index}");
        match &self.data {
            Data::Sqlite(dir) => Arc::new(
                sqlite::SqliteShard::open(&name, &config(dir.path()))
                    .await
                    .unwrap(),
            ),
            Data::Postgres(scratch) => Arc::new(
                postgres::PostgresShard::open(&name, &scratch.urls()[index], &scratch.config())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// The one integer `sql` selects, run straight on shard `index`'s database behind the
    /// store's back, to count effects (rows left behind) no store method reports. `sql` takes
    /// no parameters, so it reads the same on both backends.
    async fn scalar(&self, index: usize, sql: &'static str) -> i64 {
        match &self.data {
            Data::Sqlite(dir) => {
                let path = dir.path().join(format!("shard-{index}.sqlite"));
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .unwrap();
                let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                value
            }
            Data::Postgres(scratch) => {
                let mut conn = sqlx::PgConnection::connect(&scratch.urls()[index])
                    .await
                    .unwrap();
                let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                value
            }
        }
    }
}

impl Deref for TestStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

fn config(dir: &std::path::Path) -> SqliteConfig {
    SqliteConfig {
        data_dir: dir.to_owned(),
        durability: Durability::Normal,
        busy_timeout: Duration::from_secs(5),
        max_connections: 2,
        write_events: true,
    }
}

/// Product `i` of a synthetic catalog: prices repeat so that ties are broken by id, every
/// third product is out of stock, categories alternate.
fn product(ids: &IdGenerator, i: i64) -> ProductWithVariants {
    let id = ids.product_id();
    let price = 100 + (i * 37) % 1000;
    let variants = (0..2)
        .map(|v| Variant {
            id: ids.variant_id(),
            product_id: id,
            sku: format!("SKU-{i}-{v}"),
            color: "red".into(),
            size: ["S", "M"][v as usize].into(),
            price: Money::usd(price + v * 10),
            stock_level: if i % 3 == 0 { 0 } else { v + 1 },
        })
        .collect();
    ProductWithVariants {
        product: Product {
            id,
            name: format!("Product {i}"),
            description: String::new(),
            brand: "Acme".into(),
            category: ["books", "games"][(i % 2) as usize].into(),
            price: Money::usd(price),
            created_at_ms: i,
            updated_at_ms: i,
            seller_id: None,
            version: 1,
            view_count: 0,
        },
        variants,
    }
}

fn catalog(n: i64) -> Vec<ProductWithVariants> {
    let ids = IdGenerator::deterministic(0, id::EPOCH_MS);
    (0..n).map(|i| product(&ids, i)).collect()
}

conformance! {
    async fn a_product_round_trips_with_its_variants_on_its_own_shard(backend) {
        let store = backend.open(4).await;
        let products = catalog(40);
        store.insert_products(products.clone(), 0).await.unwrap();

        for expected in &products {
            let id = expected.product.id;
            assert_eq!(
                store.product_with_variants(id).await.unwrap().as_ref(),
                Some(expected)
            );
            // Only the owning shard holds it.
            for (index, shard) in store.shards().enumerate() {
                let found = shard.products(&[id]).await.unwrap();
                assert_eq!(found.len(), usize::from(index == store.shard_of(id)));
            }
            let variant = &expected.variants[1];
            assert_eq!(
                store.variant(id, variant.id).await.unwrap().as_ref(),
                Some(variant)
            );
        }
        // A variant asked for under another product is not found.
        let (a, b) = (&products[0], &products[1]);
        assert_eq!(
            store.variant(b.product.id, a.variants[0].id).await.unwrap(),
            None
        );
        assert_eq!(
            store
                .product_with_variants(ProductId::new(7))
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.count_products().await.unwrap(), 40);
    }
}

conformance! {
    async fn products_spread_over_all_shards(backend) {
        let store = backend.open(4).await;
        store.insert_products(catalog(400), 0).await.unwrap();
        for shard in store.shards() {
            let count = shard.count_products().await.unwrap();
            assert!(
                (50..=150).contains(&count),
                "{} holds {count} of 400",
                shard.name()
            );
        }
    }
}

conformance! {
    async fn reopening_with_another_shard_count_is_refused(backend) {
        let store = backend.open(4).await;
        store.close().await;
        let err = store.reopen(2).await.unwrap_err();
        assert!(matches!(err, StoreError::Layout(_)), "{err:?}");
        assert!(err.to_string().contains("shard_count = 4"), "{err}");
        // The original layout still opens.
        store.reopen(4).await.unwrap().close().await;
    }
}

conformance! {
    /// A fresh, empty shard where one held data would silently lose its rows (and, for the
    /// directory shard, the uniqueness of emails): opening the store refuses it, naming it.
    async fn a_fresh_shard_in_place_of_one_that_held_data_is_refused(backend) {
        for wiped in [2, 0] {
            let store = backend.open(3).await;
            store.insert_products(catalog(30), 0).await.unwrap();
            store.close().await;
            store.wipe_shard(wiped).await;
            let err = store.reopen(3).await.unwrap_err();
            assert!(matches!(err, StoreError::Layout(_)), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains(&format!("shard-{wiped} holds no store")),
                "{message}"
            );
            // Refused before anything was written to the fresh shard: it stays fresh, so the
            // refusal holds on every later start too.
            let again = store.reopen(3).await.unwrap_err();
            assert_eq!(again.to_string(), message);
        }
    }
}

conformance! {
    /// A shard of another store, even one of the same layout, is refused.
    async fn a_shard_of_another_store_is_refused(backend) {
        if backend == Backend::Sqlite {
            // SQLite shards are named by their place in one directory; swapping a file in
            // from another directory is the same check, exercised here on PostgreSQL where
            // a list of URLs can name any database.
            return;
        }
        let one = backend.open(2).await;
        let other = backend.open(2).await;
        one.close().await;
        other.close().await;
        let (Data::Postgres(a), Data::Postgres(b)) = (&one.data, &other.data) else {
            unreachable!("postgres cases open postgres data");
        };
        let mut mixed = a.config();
        mixed.shards[1] = b.config().shards[1].clone();
        let err = Store::open_postgres(&mixed, 64, &Metrics::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("shard-1 belongs to another store"),
            "{err}"
        );
    }
}

conformance! {
    async fn a_duplicate_product_is_a_conflict_and_writes_nothing(backend) {
        let store = backend.open(1).await;
        let products = catalog(3);
        store
            .insert_products(products[..1].to_vec(), 0)
            .await
            .unwrap();
        let err = store
            .insert_products(products.clone(), 0)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert_eq!(
            store.count_products().await.unwrap(),
            1,
            "the failed batch left rows behind"
        );
    }
}

conformance! {
    async fn negative_stock_is_refused_by_the_database(backend) {
        let store = backend.open(1).await;
        let mut products = catalog(1);
        products[0].variants[0].stock_level = -1;
        let err = store.insert_products(products, 0).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    }
}

async fn page_through(
    store: &Store,
    filter: ProductFilter,
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
        let page = store.list_products(&query).await.unwrap();
        assert!(page.items.len() <= limit);
        after = page.items.last().map(SortKey::of);
        seen.extend(page.items);
        if !page.has_more {
            return seen;
        }
    }
}

conformance! {
    async fn paging_through_ten_thousand_products_on_four_shards_returns_each_once_in_order(backend) {
        let store = backend.open(4).await;
        let products = catalog(10_000);
        store.insert_products(products.clone(), 0).await.unwrap();

        for sort in [
            ProductSort::Newest,
            ProductSort::PriceAsc,
            ProductSort::PriceDesc,
        ] {
            let listed = page_through(&store, ProductFilter::default(), sort, 97).await;
            let mut expected: Vec<&Product> = products.iter().map(|p| &p.product).collect();
            expected.sort_by(|a, b| sort.compare(&SortKey::of(a), &SortKey::of(b)));
            let listed_ids: Vec<ProductId> = listed.iter().map(|p| p.id).collect();
            let expected_ids: Vec<ProductId> = expected.iter().map(|p| p.id).collect();
            assert_eq!(listed_ids.len(), 10_000, "{sort:?}");
            assert_eq!(
                listed_ids.iter().collect::<HashSet<_>>().len(),
                10_000,
                "{sort:?} repeated ids"
            );
            assert_eq!(listed_ids, expected_ids, "{sort:?} out of order");
        }
    }
}

conformance! {
    async fn filters_narrow_a_listing_across_shards(backend) {
        let store = backend.open(3).await;
        let products = catalog(600);
        store.insert_products(products.clone(), 0).await.unwrap();

        let filter = ProductFilter {
            category: Some("games".into()),
            min_price: Some(300),
            max_price: Some(800),
            in_stock: Some(true),
        };
        let listed = page_through(&store, filter, ProductSort::PriceAsc, 25).await;
        let mut expected: Vec<ProductId> = products
            .iter()
            .filter(|p| {
                let price = p.product.price.amount;
                p.product.category == "games"
                    && (300..=800).contains(&price)
                    && p.variants.iter().any(|v| v.stock_level > 0)
            })
            .map(|p| p.product.id)
            .collect();
        let mut listed_ids: Vec<ProductId> = listed.iter().map(|p| p.id).collect();
        assert!(!expected.is_empty());
        expected.sort();
        listed_ids.sort();
        assert_eq!(listed_ids, expected);

        let out_of_stock = ProductFilter {
            in_stock: Some(false),
            ..ProductFilter::default()
        };
        let listed = page_through(&store, out_of_stock, ProductSort::Newest, 50).await;
        assert_eq!(listed.len(), 200);
    }
}

conformance! {
    async fn variants_of_many_products_take_one_round_trip_per_shard(backend) {
        let store = backend.open(4).await;
        let products = catalog(200);
        store.insert_products(products.clone(), 0).await.unwrap();
        let ids: Vec<ProductId> = products.iter().map(|p| p.product.id).collect();

        let before = store.round_trips();
        let variants = store.variants_of(&ids).await.unwrap();
        assert_eq!(store.round_trips() - before, 4);
        assert_eq!(variants.len(), 200);
        for p in &products {
            assert_eq!(variants[&p.product.id], p.variants);
        }
    }
}

#[test]
fn merging_keeps_order_and_stops_at_take() {
    let ids = IdGenerator::deterministic(0, id::EPOCH_MS);
    let all: Vec<Product> = (0..30).map(|i| product(&ids, i).product).collect();
    let mut lists = vec![Vec::new(), Vec::new(), Vec::new()];
    for (i, p) in all.iter().enumerate() {
        lists[i % 3].push(p.clone());
    }
    for list in &mut lists {
        list.sort_by(|a, b| ProductSort::PriceAsc.compare(&SortKey::of(a), &SortKey::of(b)));
    }
    let merged = merge_sorted(lists, ProductSort::PriceAsc, 10);
    let mut expected = all;
    expected.sort_by(|a, b| ProductSort::PriceAsc.compare(&SortKey::of(a), &SortKey::of(b)));
    assert_eq!(merged, expected[..10]);
}

conformance! {
    async fn conditional_writes_apply_only_at_the_expected_version(backend) {
        let store = backend.open(2).await;
        let products = catalog(3);
        store.insert_products(products.clone(), 0).await.unwrap();
        let id = products[0].product.id;
        let shard = store.shard_at(store.shard_of(id)).expect("an open shard");
        let patch = ProductPatch {
            name: Some("Renamed".into()),
            ..ProductPatch::default()
        };

        let WriteOutcome::Done(Some(updated)) = shard.update_product(id, 1, &patch, 99).await.unwrap()
        else {
            panic!("the update at the current version must apply");
        };
        assert_eq!(updated.product.name, "Renamed");
        assert_eq!(updated.product.version, 2);
        assert_eq!(updated.product.updated_at_ms, 99);
        // The same precondition again is stale now.
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

        // Variant writes bump the product's version and keep its price the lowest variant price.
        let cheap = Variant {
            id: VariantId::new(id.get() + 1_000),
            product_id: id,
            sku: "CHEAP".into(),
            color: "blue".into(),
            size: "XS".into(),
            price: Money::usd(1),
            stock_level: 4,
        };
        let WriteOutcome::Done(Some(after)) = shard.insert_variant(&cheap, 2, 101).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(after.product.version, 3);
        assert_eq!(after.product.price.amount, 1);
        assert_eq!(after.variants.len(), 3);
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
        assert_eq!(
            after
                .variants
                .iter()
                .find(|v| v.id == cheap.id)
                .unwrap()
                .stock_level,
            9
        );
        let WriteOutcome::Done(Some(after)) = shard.delete_variant(id, cheap.id, 4, 103).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(after.product.price, products[0].product.price);
        assert_eq!(
            shard.delete_variant(id, cheap.id, 5, 104).await.unwrap(),
            WriteOutcome::NotFound
        );

        assert_eq!(
            shard.delete_product(id, 5, 105).await.unwrap(),
            WriteOutcome::Done(None)
        );
        assert_eq!(store.product_with_variants(id).await.unwrap(), None);
        assert!(
            store
                .variant(id, products[0].variants[0].id)
                .await
                .unwrap()
                .is_none(),
            "variants go with the product"
        );
    }
}

fn user(id: UserId, index: &[u8]) -> UserRecord {
    UserRecord {
        id,
        email_index: index.to_vec(),
        email_ct: b"sealed".to_vec(),
        phone_ct: None,
        name: "Ada".into(),
        role: Role::Customer,
        password_hash: "$argon2id$...".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

conformance! {
    async fn an_email_is_claimed_once_and_users_round_trip(backend) {
        let store = backend.open(2).await;
        let shard = store.shard_at(0).expect("an open shard");
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
        assert_eq!(shard.lookup_email(b"idx").await.unwrap(), Some(a));
        shard.release_email(b"idx", b).await.unwrap();
        assert_eq!(
            shard.lookup_email(b"idx").await.unwrap(),
            Some(a),
            "only the holder releases"
        );
        shard.release_email(b"idx", a).await.unwrap();
        assert_eq!(shard.lookup_email(b"idx").await.unwrap(), None);
        assert_eq!(
            shard.claim_email(b"idx", b, 7).await.unwrap(),
            EmailClaim::Claimed,
            "a released email is free for anyone"
        );

        let mut record = user(a, b"idx");
        shard.insert_user(&record).await.unwrap();
        assert_eq!(shard.user(a).await.unwrap(), Some(record.clone()));
        record.role = Role::Seller;
        record.name = "Ada L.".into();
        assert!(shard.update_user(&record).await.unwrap());
        assert_eq!(shard.user(a).await.unwrap(), Some(record));
        assert_eq!(shard.users_after(None, 10).await.unwrap().len(), 1);
    }
}

conformance! {
    async fn a_reused_refresh_token_revokes_its_whole_session(backend) {
        let store = backend.open(1).await;
        let shard = store.shard_at(0).expect("an open shard");
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

        // A successor for another session is refused.
        let elsewhere = RefreshRecord {
            session: SessionId::new(999),
            ..token(b"tx", 1_000)
        };
        assert_eq!(
            shard.rotate_refresh(b"t1", &elsewhere, 10).await.unwrap(),
            RefreshOutcome::Rejected
        );
        let rotated = RefreshOutcome::Rotated {
            session,
            user: user_id,
        };
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
        let reused = shard
            .rotate_refresh(b"t1", &token(b"t4", 1_000), 12)
            .await
            .unwrap();
        assert_eq!(
            reused,
            RefreshOutcome::Reused {
                session,
                user: user_id
            }
        );
        assert_eq!(shard.active_session(session).await.unwrap(), None);
        assert!(
            !shard.revoke_session(session, "logout", 13).await.unwrap(),
            "already ended"
        );
        assert_eq!(
            store
                .scalar(
                    0,
                    "SELECT COUNT(*) FROM sessions WHERE id = 22 AND revoked_at = 12 \
                     AND revoked_reason = 'refresh token reuse'"
                )
                .await,
            1,
            "the reuse is recorded as the reason the session ended"
        );
        assert_eq!(
            shard
                .rotate_refresh(b"t3", &token(b"t5", 1_000), 13)
                .await
                .unwrap(),
            RefreshOutcome::Rejected
        );
        assert_eq!(
            shard
                .rotate_refresh(b"nope", &token(b"t6", 1_000), 13)
                .await
                .unwrap(),
            RefreshOutcome::Rejected
        );
    }
}

conformance! {
    async fn expired_refresh_tokens_are_rejected(backend) {
        let store = backend.open(1).await;
        let shard = store.shard_at(0).expect("an open shard");
        let (user_id, session) = (UserId::new(31), SessionId::new(32));
        shard.insert_user(&user(user_id, b"j")).await.unwrap();
        let first = RefreshRecord {
            token_hash: b"a".to_vec(),
            session,
            issued_at_ms: 0,
            expires_at_ms: 50,
        };
        shard
            .create_session(session, user_id, &first)
            .await
            .unwrap();
        let next = RefreshRecord {
            token_hash: b"b".to_vec(),
            ..first.clone()
        };
        assert_eq!(
            shard.rotate_refresh(b"a", &next, 50).await.unwrap(),
            RefreshOutcome::Rejected
        );
    }
}

conformance! {
    /// More calls than the quota at once: exactly `quota` are admitted, each with a count of
    /// its own, every refusal sees the quota used up, and one usage row holds the total.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn a_quota_admits_exactly_its_size_per_day_even_under_concurrency(backend) {
        let store = backend.open(1).await;
        let user_id = UserId::new(41);
        store.directory()
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
        store.directory().insert_api_key(&key).await.unwrap();
        assert_eq!(
            store.directory().api_keys_of(user_id).await.unwrap(),
            std::slice::from_ref(&key)
        );
        let tasks = 100;
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
        let calls = (0..tasks).map(|_| {
            let (store, barrier) = (store.shared(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.directory()
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
        assert_eq!(
            store
                .scalar(0, "SELECT used FROM api_key_usage WHERE key_id = 42 AND day = 7")
                .await,
            30
        );
        // A new day has a fresh quota; a quota below one refuses even the first call.
        assert_eq!(
            store.directory().consume_quota(key.id, 8, 30).await.unwrap(),
            QuotaUse {
                allowed: true,
                used: 1
            }
        );
        assert_eq!(
            store.directory().consume_quota(key.id, 9, 0).await.unwrap(),
            QuotaUse {
                allowed: false,
                used: 0
            }
        );

        assert!(
            store.directory()
                .revoke_api_key(user_id, key.id, 5)
                .await
                .unwrap()
        );
        assert!(
            !store.directory()
                .revoke_api_key(user_id, key.id, 6)
                .await
                .unwrap(),
            "revoking twice is a no-op"
        );
        assert_eq!(
            store.directory()
                .api_key(key.id)
                .await
                .unwrap()
                .unwrap()
                .revoked_at_ms,
            Some(5)
        );
    }
}

conformance! {
    async fn generator_leases_are_exclusive_renewable_released_and_reclaimed_after_expiry(backend) {
        let store = backend.open(2).await;
        let directory = store.directory();
        let (ttl, t0) = (30_000, 1_000_000);
        // The lowest free number goes to each claimant in turn; a fixed one only if free.
        assert_eq!(
            directory
                .claim_generator("a", 1..=3, t0, ttl)
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(
            directory
                .claim_generator("b", 1..=3, t0, ttl)
                .await
                .unwrap(),
            Some(2)
        );
        assert_eq!(
            directory
                .claim_generator("c", 1..=1, t0, ttl)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            directory
                .claim_generator("c", 1..=3, t0, ttl)
                .await
                .unwrap(),
            Some(3)
        );
        assert_eq!(
            directory
                .claim_generator("d", 1..=3, t0, ttl)
                .await
                .unwrap(),
            None,
            "all held"
        );
        // Only the holder renews; a renewal moves the expiry on.
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
        // Past their expiry, b's and c's leases are taken over; a's, renewed, is not.
        let later = t0 + ttl + 1;
        assert_eq!(directory.held_generators(later).await.unwrap(), [1]);
        assert_eq!(
            directory
                .claim_generator("d", 1..=3, later, ttl)
                .await
                .unwrap(),
            Some(2)
        );
        assert!(
            !directory.renew_generator(2, "b", later, ttl).await.unwrap(),
            "b lost it"
        );
        // A release by someone else does nothing; by the holder frees the number at once.
        directory.release_generator(1, "d").await.unwrap();
        assert_eq!(
            directory
                .claim_generator("e", 1..=1, later, ttl)
                .await
                .unwrap(),
            None
        );
        directory.release_generator(1, "a").await.unwrap();
        assert_eq!(
            directory
                .claim_generator("e", 1..=1, later, ttl)
                .await
                .unwrap(),
            Some(1)
        );
        store.close().await;
    }
}
