//! The PostgreSQL backend's [`OrderShard`]: the same transcript as SQLite's for one order's
//! whole life, and the concurrency cases READ COMMITTED must survive (a flash sale, racing
//! transitions, racing cart adds past the limits, racing checkouts of one cart, racing
//! settlements). Each test makes its own database and drops it.
//!
//! Gated on `BAZAAR_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`): a
//! test prints that it was skipped when it is unset.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::Barrier;

use super::*;
use postgres::{PostgresConfig, PostgresShard};

/// A scratch database, dropped (with any connection still open) when this is dropped, even by
/// a failing test.
struct TestDb {
    admin: PgConnectOptions,
    name: String,
    url: String,
    /// For seeding and for counting effects behind the store's back.
    pool: PgPool,
}

impl TestDb {
    /// `None` (after printing why) when `BAZAAR_TEST_POSTGRES_URL` is unset.
    async fn create(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var("BAZAAR_TEST_POSTGRES_URL") else {
            eprintln!("skipped {test}: BAZAAR_TEST_POSTGRES_URL is not set");
            return None;
        };
        let admin = PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
        let name = format!("bazaar_pgorders_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect_with(&admin).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (url.as_str(), String::new()),
        };
        let (server, _) = base.rsplit_once('/').expect("a URL with a database path");
        let url = format!("{server}/{name}{query}");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(admin.clone().database(&name))
            .await
            .unwrap();
        // The schema now, so tests can seed before they open a shard.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .unwrap();
        Some(Self {
            admin,
            name,
            url,
            pool,
        })
    }

    fn config(&self) -> PostgresConfig {
        PostgresConfig {
            shards: vec![self.url.clone()],
            max_connections: 16,
            connect_timeout: Duration::from_secs(60),
            statement_timeout: Duration::from_secs(60),
            write_events: true,
        }
    }

    /// The shard itself, without the store's wrapper (so without its retries: a deadlock or
    /// serialization failure is an error here).
    async fn shard(&self) -> PostgresShard {
        PostgresShard::open("shard-0", &self.url, &self.config())
            .await
            .unwrap()
    }

    /// A one-shard store over this database.
    async fn store(&self) -> Store {
        let shard: Box<dyn Shard> = Box::new(self.shard().await);
        Store::from_shards(vec![shard], 64, &Metrics::new())
            .await
            .unwrap()
    }

    /// Writes `product` with its variants and their stock, with plain SQL (the PostgreSQL
    /// catalog half is written elsewhere).
    async fn seed(&self, product: &ProductWithVariants) {
        let p = &product.product;
        sqlx::query(
            "INSERT INTO products (id, name, description, brand, category, price_amount, \
             currency, created_at, updated_at, seller_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(p.id.get() as i64)
        .bind(&p.name)
        .bind(&p.description)
        .bind(&p.brand)
        .bind(&p.category)
        .bind(p.price.amount)
        .bind(p.price.currency.as_str())
        .bind(p.created_at_ms)
        .bind(p.updated_at_ms)
        .bind(p.seller_id.map(|s| s.get() as i64))
        .execute(&self.pool)
        .await
        .unwrap();
        for v in &product.variants {
            sqlx::query(
                "INSERT INTO variants (id, product_id, sku, color, size, price_amount, currency) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(v.id.get() as i64)
            .bind(p.id.get() as i64)
            .bind(&v.sku)
            .bind(&v.color)
            .bind(&v.size)
            .bind(v.price.amount)
            .bind(v.price.currency.as_str())
            .execute(&self.pool)
            .await
            .unwrap();
            sqlx::query("INSERT INTO stock (variant_id, on_hand) VALUES ($1, $2)")
                .bind(v.id.get() as i64)
                .bind(v.stock_level)
                .execute(&self.pool)
                .await
                .unwrap();
        }
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The outbox as (topic, key, payload, created_at), oldest first.
    async fn events(&self) -> Vec<(String, String, String, i64)> {
        sqlx::query_as("SELECT topic, key, payload, created_at FROM outbox ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    if let Ok(mut conn) = sqlx::PgConnection::connect_with(&admin).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                    }
                });
        })
        .join()
        .unwrap();
    }
}

use sqlx::Connection;

/// A product with one variant per entry of `stock`, sold by `seller`.
fn product_with_stock(
    ids: &IdGenerator,
    seller: Option<UserId>,
    stock: &[i64],
) -> ProductWithVariants {
    let id = ids.product_id();
    ProductWithVariants {
        product: Product {
            id,
            name: "Widget".into(),
            description: String::new(),
            brand: "Acme".into(),
            category: "tools".into(),
            price: Money::usd(500),
            created_at_ms: 1,
            updated_at_ms: 1,
            seller_id: seller,
            version: 1,
            view_count: 0,
        },
        variants: stock
            .iter()
            .enumerate()
            .map(|(i, &on_hand)| Variant {
                id: ids.variant_id(),
                product_id: id,
                sku: format!("W-{i}"),
                color: "blue".into(),
                size: "M".into(),
                price: Money::usd(500 + i as i64),
                stock_level: on_hand,
            })
            .collect(),
    }
}

/// A pending order of `quantity` units of each variant of `product`.
fn pending_order(
    id: OrderId,
    buyer: UserId,
    product: &ProductWithVariants,
    quantity: i64,
    at_ms: i64,
) -> OrderRecord {
    let lines: Vec<OrderLine> = product
        .variants
        .iter()
        .map(|v| OrderLine {
            variant_id: v.id,
            product_id: product.product.id,
            seller_id: product.product.seller_id,
            name: product.product.name.clone(),
            sku: v.sku.clone(),
            unit_price: v.price,
            quantity,
            shipped_at_ms: None,
        })
        .collect();
    OrderRecord {
        id,
        buyer_id: buyer,
        status: OrderStatus::Pending,
        total: Money::usd(lines.iter().map(|l| l.unit_price.amount * l.quantity).sum()),
        address_ct: vec![1, 2, 3],
        idempotency_key: None,
        payment_ref: None,
        reason: None,
        settled: false,
        created_at_ms: at_ms,
        updated_at_ms: at_ms,
        lines,
    }
}

fn reservation_lines(order: &OrderRecord) -> Vec<ReservationLine> {
    order
        .lines
        .iter()
        .map(|l| ReservationLine {
            variant_id: l.variant_id,
            product_id: l.product_id,
            quantity: l.quantity,
        })
        .collect()
}

fn transition<'a>(
    order: &OrderRecord,
    from: &'a [OrderStatus],
    to: OrderStatus,
    now_ms: i64,
) -> Transition<'a> {
    Transition {
        order: order.id,
        buyer: order.buyer_id,
        from,
        to,
        now_ms,
        reason: None,
        payment_ref: None,
        respond: None,
        clear_cart: &[],
    }
}

/// One order's whole life through every [`OrderShard`] method, written down as it goes.
/// Run on a SQLite shard and a PostgreSQL one, the two transcripts (and outboxes) must match.
async fn life_of_an_order(shard: &dyn Shard, product: &ProductWithVariants) -> Vec<String> {
    let ids = IdGenerator::deterministic(7, id::EPOCH_MS);
    let buyer = ids.user_id();
    let seller = product.product.seller_id;
    let mut log = Vec::new();
    macro_rules! note {
        ($what:expr) => {
            log.push(format!("{} => {:?}", stringify!($what), $what))
        };
    }
    let (v0, v1) = (product.variants[0].id, product.variants[1].id);
    let item = |variant: VariantId, quantity, at| CartItem {
        variant_id: variant,
        product_id: product.product.id,
        quantity,
        added_at_ms: at,
    };

    note!(shard.cart(buyer).await.unwrap());
    note!(
        shard
            .add_to_cart(buyer, &item(v0, 2, 10), 5, 2)
            .await
            .unwrap()
    );
    note!(
        shard
            .add_to_cart(buyer, &item(v0, 4, 11), 5, 2)
            .await
            .unwrap()
    );
    note!(
        shard
            .add_to_cart(buyer, &item(v1, 1, 12), 5, 2)
            .await
            .unwrap()
    );
    note!(
        shard
            .add_to_cart(buyer, &item(ids.variant_id(), 1, 13), 5, 2)
            .await
            .unwrap()
    );
    note!(shard.set_cart_quantity(buyer, v1, 2).await.unwrap());
    note!(
        shard
            .set_cart_quantity(buyer, ids.variant_id(), 2)
            .await
            .unwrap()
    );
    note!(
        shard
            .remove_from_cart(buyer, ids.variant_id())
            .await
            .unwrap()
    );
    let cart = shard.cart(buyer).await.unwrap();
    note!(cart);
    note!(shard.variant_product(v1).await.unwrap());
    note!(shard.variant_product(ids.variant_id()).await.unwrap());

    // A checkout from an old version is refused; from the current one it starts.
    let mut order = pending_order(ids.order_id(), buyer, product, 2, 100);
    order.idempotency_key = Some("key-1".into());
    let claim = IdempotencyClaim {
        key: "key-1".into(),
        request_hash: vec![9; 8],
        expires_at_ms: 1_000,
    };
    note!(
        shard
            .start_order(&order, Some(&claim), Some(cart.version - 1))
            .await
            .unwrap()
    );
    note!(shard.idempotency(buyer, "key-1").await.unwrap());
    note!(
        shard
            .start_order(&order, Some(&claim), Some(cart.version))
            .await
            .unwrap()
    );
    let other = pending_order(ids.order_id(), buyer, product, 1, 101);
    note!(
        shard
            .start_order(&other, None, Some(cart.version))
            .await
            .unwrap()
    );
    note!(
        shard
            .start_order(&other, Some(&claim), Some(cart.version))
            .await
            .unwrap()
    );
    note!(
        shard
            .add_to_cart(buyer, &item(v1, 1, 14), 5, 2)
            .await
            .unwrap()
    );
    note!(shard.remove_from_cart(buyer, v1).await.unwrap());
    note!(shard.cart(buyer).await.unwrap());

    // Reserve: too much of v1 is refused and holds nothing; then all of it, twice (once).
    let mut greedy = reservation_lines(&order);
    greedy[1].quantity = 1_000;
    note!(
        shard
            .reserve(order.id, buyer, &greedy, 500, 102)
            .await
            .unwrap()
    );
    note!(shard.stock_account(v0).await.unwrap());
    let lines = reservation_lines(&order);
    note!(
        shard
            .reserve(order.id, buyer, &lines, 500, 103)
            .await
            .unwrap()
    );
    note!(
        shard
            .reserve(order.id, buyer, &lines, 500, 104)
            .await
            .unwrap()
    );
    note!(shard.stock_account(v0).await.unwrap());
    note!(shard.stock_account(v1).await.unwrap());
    note!(shard.expired_reservations(499, 10).await.unwrap());
    note!(shard.expired_reservations(500, 10).await.unwrap());

    // Pay: clears the cart, completes the key, releases the claim.
    let response = StoredResponse {
        status: 201,
        body: b"{}".to_vec(),
    };
    let clear = [v0, v1];
    let pay = Transition {
        payment_ref: Some("pay-1"),
        respond: Some(("key-1", &response)),
        clear_cart: &clear,
        ..transition(&order, &[OrderStatus::Pending], OrderStatus::Paid, 200)
    };
    note!(shard.transition(&pay).await.unwrap());
    note!(shard.transition(&pay).await.unwrap());
    let stranger = Transition {
        buyer: ids.user_id(),
        ..transition(&order, &[OrderStatus::Paid], OrderStatus::Refunded, 201)
    };
    note!(shard.transition(&stranger).await.unwrap());
    note!(shard.cart(buyer).await.unwrap());
    note!(shard.idempotency(buyer, "key-1").await.unwrap());
    note!(
        shard
            .complete_idempotency(buyer, "key-1", &response)
            .await
            .unwrap()
    );
    note!(shard.unsettled_orders(201, 10).await.unwrap().len());
    note!(
        shard
            .settle_reservations(order.id, Settlement::Commit, 202)
            .await
            .unwrap()
    );
    note!(
        shard
            .settle_reservations(order.id, Settlement::Commit, 203)
            .await
            .unwrap()
    );
    note!(
        shard
            .settle_reservations(order.id, Settlement::Hold, 203)
            .await
            .unwrap()
    );
    note!(
        shard
            .mark_settled(order.id, OrderStatus::Pending, 204)
            .await
            .unwrap()
    );
    note!(
        shard
            .mark_settled(order.id, OrderStatus::Paid, 204)
            .await
            .unwrap()
    );
    note!(
        shard
            .mark_settled(order.id, OrderStatus::Paid, 205)
            .await
            .unwrap()
    );
    note!(shard.unsettled_orders(1_000, 10).await.unwrap().len());
    note!(shard.stock_account(v0).await.unwrap());

    // Ship: a stranger seller finds nothing; the seller ships once; no refund after.
    note!(
        shard
            .ship_lines(order.id, Some(ids.user_id()), 300)
            .await
            .unwrap()
    );
    note!(shard.ship_lines(order.id, seller, 301).await.unwrap());
    note!(shard.ship_lines(order.id, seller, 302).await.unwrap());
    let refund = transition(
        &order,
        &[OrderStatus::Paid, OrderStatus::Shipped],
        OrderStatus::Refunded,
        303,
    );
    note!(shard.transition(&refund).await.unwrap());

    // The other order: started without a cart, cancelled, released twice (once).
    let mut third = pending_order(ids.order_id(), buyer, product, 1, 400);
    third.lines.truncate(1);
    note!(shard.start_order(&third, None, None).await.unwrap());
    note!(
        shard
            .reserve(third.id, buyer, &reservation_lines(&third), 900, 401)
            .await
            .unwrap()
    );
    let cancel = Transition {
        reason: Some("payment_declined"),
        ..transition(&third, &[OrderStatus::Pending], OrderStatus::Cancelled, 402)
    };
    note!(shard.transition(&cancel).await.unwrap());
    note!(
        shard
            .settle_reservations(third.id, Settlement::Release, 403)
            .await
            .unwrap()
    );
    note!(
        shard
            .settle_reservations(third.id, Settlement::Release, 404)
            .await
            .unwrap()
    );
    note!(shard.stock_account(v0).await.unwrap());

    // Listings.
    note!(shard.order(order.id).await.unwrap());
    note!(shard.order(ids.order_id()).await.unwrap());
    note!(shard.orders_of_buyer(buyer, None, 10).await.unwrap());
    note!(
        shard
            .orders_of_buyer(buyer, Some(third.id), 10)
            .await
            .unwrap()
            .len()
    );
    note!(
        shard
            .orders_of_seller(seller.unwrap(), None, 1)
            .await
            .unwrap()
            .len()
    );
    note!(
        shard
            .orders_of_seller(ids.user_id(), None, 10)
            .await
            .unwrap()
            .len()
    );
    note!(shard.all_orders(None, 10).await.unwrap().len());
    note!(shard.all_orders(Some(order.id), 10).await.unwrap().len());
    note!(shard.purge_idempotency(999).await.unwrap());
    note!(shard.purge_idempotency(1_000).await.unwrap());
    note!(shard.idempotency(buyer, "key-1").await.unwrap());
    log
}

#[tokio::test]
async fn an_orders_life_reads_the_same_on_postgres_as_on_sqlite() {
    let Some(db) = TestDb::create("an_orders_life_reads_the_same_on_postgres_as_on_sqlite").await
    else {
        return;
    };
    let ids = IdGenerator::deterministic(3, id::EPOCH_MS);
    let product = product_with_stock(&ids, Some(UserId::new(42)), &[10, 4]);

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&config(dir.path()), 1, 64, &Metrics::new())
        .await
        .unwrap();
    sqlite
        .insert_products(vec![product.clone()], 0)
        .await
        .unwrap();
    let created = sqlite
        .shards()
        .next()
        .unwrap()
        .outbox(0, 1_000)
        .await
        .unwrap()
        .len();
    let expected = life_of_an_order(sqlite.shards().next().unwrap(), &product).await;
    let sqlite_events: Vec<(String, String, String, i64)> = sqlite
        .shards()
        .next()
        .unwrap()
        .outbox(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .skip(created) // the catalog's own events
        .map(|e| (e.topic, e.key, e.payload, e.created_at_ms))
        .collect();

    db.seed(&product).await;
    let store = db.store().await;
    let got = life_of_an_order(store.shards().next().unwrap(), &product).await;
    for (expected, got) in expected.iter().zip(&got) {
        assert_eq!(expected, got);
    }
    assert_eq!(expected.len(), got.len());
    assert_eq!(db.events().await, sqlite_events);
    // The refusals wrote nothing: created, reserved ×2, paid, shipped, created, reserved,
    // cancelled, released.
    assert_eq!(sqlite_events.len(), 9, "{sqlite_events:#?}");
}

#[tokio::test]
async fn a_flash_sale_of_ten_units_to_two_hundred_buyers_sells_exactly_ten() {
    let Some(db) = TestDb::create("a_flash_sale").await else {
        return;
    };
    let ids = IdGenerator::deterministic(1, id::EPOCH_MS);
    let product = product_with_stock(&ids, None, &[10]);
    db.seed(&product).await;
    let store = Arc::new(db.store().await);
    let variant = product.variants[0].id;
    let tasks = 200;
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let (order, buyer) = (ids.order_id(), ids.user_id());
            let line = ReservationLine {
                variant_id: variant,
                product_id: product.product.id,
                quantity: 1,
            };
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .reserve(order, buyer, &[line], 10_000, 5)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut sold = 0;
    for handle in handles {
        match handle.await.unwrap() {
            ReserveOutcome::Reserved => sold += 1,
            ReserveOutcome::OutOfStock {
                wanted, available, ..
            } => {
                assert_eq!((wanted, available), (1, 0));
            }
        }
    }
    assert_eq!(sold, 10);
    let account = store
        .for_product(product.product.id)
        .stock_account(variant)
        .await
        .unwrap();
    assert_eq!(
        account,
        StockAccount {
            on_hand: 0,
            held: 10,
            committed: 0
        }
    );
    assert_eq!(account.total(), 10);
    assert_eq!(db.count("SELECT COUNT(*) FROM reservations").await, 10);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE topic = 'stock.reserved'")
            .await,
        10
    );
}

#[tokio::test]
async fn overlapping_multi_line_reservations_neither_deadlock_nor_split() {
    let Some(db) = TestDb::create("overlapping_multi_line_reservations").await else {
        return;
    };
    let ids = IdGenerator::deterministic(1, id::EPOCH_MS);
    let product = product_with_stock(&ids, None, &[20, 20]);
    db.seed(&product).await;
    // The bare shard: no retries, so a deadlock would fail the test.
    let shard = Arc::new(db.shard().await);
    let tasks = 60;
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (shard, barrier) = (shard.clone(), barrier.clone());
            let (order, buyer) = (ids.order_id(), ids.user_id());
            let mut lines = reservation_lines(&pending_order(order, buyer, &product, 1, 0));
            if i % 2 == 1 {
                lines.reverse(); // half ask for B then A
            }
            tokio::spawn(async move {
                barrier.wait().await;
                shard
                    .reserve(order, buyer, &lines, 10_000, 5)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut reserved = 0;
    for handle in handles {
        if handle.await.unwrap() == ReserveOutcome::Reserved {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 20);
    for variant in &product.variants {
        let account = shard.stock_account(variant.id).await.unwrap();
        assert_eq!((account.on_hand, account.held), (0, 20), "{variant:?}");
    }
    // All or nothing: every order holding anything holds both lines.
    assert_eq!(db.count("SELECT COUNT(*) FROM reservations").await, 40);
    assert_eq!(
        db.count("SELECT COUNT(DISTINCT order_id) FROM reservations")
            .await,
        20
    );
}

#[tokio::test]
async fn of_twenty_racing_transitions_of_one_order_exactly_one_applies() {
    let Some(db) = TestDb::create("racing_transitions").await else {
        return;
    };
    let ids = IdGenerator::deterministic(1, id::EPOCH_MS);
    let product = product_with_stock(&ids, None, &[5]);
    db.seed(&product).await;
    let shard = Arc::new(db.shard().await);
    let order = pending_order(ids.order_id(), ids.user_id(), &product, 1, 1);
    assert_eq!(
        shard.start_order(&order, None, None).await.unwrap(),
        StartOutcome::Started
    );

    let tasks = 20;
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (shard, barrier, order) = (shard.clone(), barrier.clone(), order.clone());
            let to = if i % 2 == 0 {
                OrderStatus::Paid
            } else {
                OrderStatus::Cancelled
            };
            tokio::spawn(async move {
                barrier.wait().await;
                let change = transition(&order, &[OrderStatus::Pending], to, 10 + i as i64);
                (to, shard.transition(&change).await.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refusals = Vec::new();
    for handle in handles {
        match handle.await.unwrap() {
            (to, TransitionOutcome::Done(record)) => {
                assert_eq!(record.status, to);
                winners.push(to);
            }
            (_, TransitionOutcome::Refused(status)) => refusals.push(status),
            (_, TransitionOutcome::NotFound) => panic!("the order vanished"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(refusals, vec![winners[0]; tasks - 1]);
    let stored = shard.order(order.id).await.unwrap().unwrap();
    assert_eq!(stored.status, winners[0]);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE topic IN ('order.paid', 'order.cancelled')")
            .await,
        1
    );

    // Paid: racing refunds and shipments of the same order; one of them wins.
    if winners[0] == OrderStatus::Paid {
        let barrier = Arc::new(Barrier::new(tasks));
        let handles: Vec<_> = (0..tasks)
            .map(|i| {
                let (shard, barrier, order) = (shard.clone(), barrier.clone(), order.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    if i % 2 == 0 {
                        let change =
                            transition(&order, &[OrderStatus::Paid], OrderStatus::Refunded, 100);
                        shard.transition(&change).await.unwrap()
                    } else {
                        shard.ship_lines(order.id, None, 100).await.unwrap()
                    }
                })
            })
            .collect();
        let mut done = 0;
        for handle in handles {
            if let TransitionOutcome::Done(_) = handle.await.unwrap() {
                done += 1;
            }
        }
        assert_eq!(done, 1);
        assert_eq!(
            db.count(
                "SELECT COUNT(*) FROM outbox WHERE topic IN ('order.refunded', 'order.shipped')"
            )
            .await,
            1
        );
    }
}

#[tokio::test]
async fn racing_cart_adds_never_pass_the_cart_limits() {
    let Some(db) = TestDb::create("racing_cart_adds").await else {
        return;
    };
    let ids = IdGenerator::deterministic(1, id::EPOCH_MS);
    let shard = Arc::new(db.shard().await);
    let product = ids.product_id();
    let tasks = 30;

    // Thirty different variants into a cart of at most five lines.
    let buyer = ids.user_id();
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (shard, barrier) = (shard.clone(), barrier.clone());
            let item = CartItem {
                variant_id: ids.variant_id(),
                product_id: product,
                quantity: 1,
                added_at_ms: i as i64,
            };
            tokio::spawn(async move {
                barrier.wait().await;
                shard.add_to_cart(buyer, &item, 10, 5).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.unwrap());
    }
    let added = outcomes
        .iter()
        .filter(|o| matches!(o, CartChange::Done { quantity: 1 }))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| **o == CartChange::TooManyLines)
        .count();
    assert_eq!((added, refused), (5, tasks - 5));
    let cart = shard.cart(buyer).await.unwrap();
    assert_eq!(cart.items.len(), 5);
    assert_eq!(cart.version, 5, "a refused add takes its bump back");

    // Thirty single units of one variant into a line of at most ten.
    let buyer = ids.user_id();
    let variant = ids.variant_id();
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (shard, barrier) = (shard.clone(), barrier.clone());
            let item = CartItem {
                variant_id: variant,
                product_id: product,
                quantity: 1,
                added_at_ms: i as i64,
            };
            tokio::spawn(async move {
                barrier.wait().await;
                shard.add_to_cart(buyer, &item, 10, 5).await.unwrap()
            })
        })
        .collect();
    let mut quantities = Vec::new();
    let mut too_many = 0;
    for handle in handles {
        match handle.await.unwrap() {
            CartChange::Done { quantity } => quantities.push(quantity),
            CartChange::TooMany { quantity } => {
                assert_eq!(quantity, 11);
                too_many += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    quantities.sort_unstable();
    assert_eq!(
        quantities,
        (1..=10).collect::<Vec<_>>(),
        "each add saw the one before"
    );
    assert_eq!(too_many, tasks - 10);
    let cart = shard.cart(buyer).await.unwrap();
    assert_eq!(cart.items.len(), 1);
    assert_eq!(cart.items[0].quantity, 10);
    assert_eq!(cart.version, 10);
}

#[tokio::test]
async fn of_twenty_racing_checkouts_of_one_cart_exactly_one_starts_an_order() {
    let Some(db) = TestDb::create("racing_checkouts").await else {
        return;
    };
    let ids = IdGenerator::deterministic(1, id::EPOCH_MS);
    let product = product_with_stock(&ids, None, &[5]);
    db.seed(&product).await;
    let shard = Arc::new(db.shard().await);
    let tasks = 20;

    for same_key in [false, true] {
        let buyer = ids.user_id();
        let item = CartItem {
            variant_id: product.variants[0].id,
            product_id: product.product.id,
            quantity: 1,
            added_at_ms: 1,
        };
        shard.add_to_cart(buyer, &item, 10, 10).await.unwrap();
        let version = shard.cart(buyer).await.unwrap().version;
        let barrier = Arc::new(Barrier::new(tasks));
        let handles: Vec<_> = (0..tasks)
            .map(|i| {
                let (shard, barrier) = (shard.clone(), barrier.clone());
                let mut order = pending_order(ids.order_id(), buyer, &product, 1, 2);
                let key = if same_key {
                    "k".to_owned()
                } else {
                    format!("k{i}")
                };
                order.idempotency_key = Some(key.clone());
                let claim = IdempotencyClaim {
                    key,
                    request_hash: vec![1],
                    expires_at_ms: 1_000,
                };
                tokio::spawn(async move {
                    barrier.wait().await;
                    let outcome = shard
                        .start_order(&order, Some(&claim), Some(version))
                        .await
                        .unwrap();
                    (order.id, outcome)
                })
            })
            .collect();
        let mut started = Vec::new();
        let mut losers = Vec::new();
        for handle in handles {
            match handle.await.unwrap() {
                (id, StartOutcome::Started) => started.push(id),
                (_, outcome) => losers.push(outcome),
            }
        }
        assert_eq!(started.len(), 1, "same key: {same_key}");
        let winner = started[0];
        for outcome in &losers {
            match outcome {
                StartOutcome::CartBusy(holder) => assert!(!same_key && *holder == winner),
                StartOutcome::Duplicate(record) => {
                    assert!(same_key);
                    assert_eq!(record.order_id, Some(winner));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            shard.orders_of_buyer(buyer, None, 100).await.unwrap().len(),
            1
        );
        assert_eq!(shard.cart(buyer).await.unwrap().checkout, Some(winner));
    }
    // One order and one idempotency record per cart: the losers' claims were rolled back.
    assert_eq!(db.count("SELECT COUNT(*) FROM orders").await, 2);
    assert_eq!(db.count("SELECT COUNT(*) FROM idempotency").await, 2);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE topic = 'order.created'")
            .await,
        2
    );
}

#[tokio::test]
async fn racing_settlements_move_each_unit_once() {
    let Some(db) = TestDb::create("racing_settlements").await else {
        return;
    };
    let ids = IdGenerator::deterministic(1, id::EPOCH_MS);
    let product = product_with_stock(&ids, None, &[10, 10]);
    db.seed(&product).await;
    let shard = Arc::new(db.shard().await);
    let tasks = 10;

    for settlements in [
        vec![Settlement::Release],
        vec![Settlement::Commit, Settlement::Release],
    ] {
        let order = pending_order(ids.order_id(), ids.user_id(), &product, 3, 1);
        let lines = reservation_lines(&order);
        assert_eq!(
            shard
                .reserve(order.id, order.buyer_id, &lines, 100, 1)
                .await
                .unwrap(),
            ReserveOutcome::Reserved
        );
        for settlement in settlements {
            let barrier = Arc::new(Barrier::new(tasks));
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let (shard, barrier) = (shard.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        shard
                            .settle_reservations(order.id, settlement, 2)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut moved = 0;
            for handle in handles {
                moved += handle.await.unwrap();
            }
            assert_eq!(moved, 2, "{settlement:?}");
            // And once more, alone: nothing left to move.
            assert_eq!(
                shard
                    .settle_reservations(order.id, settlement, 3)
                    .await
                    .unwrap(),
                0
            );
        }
        for variant in &product.variants {
            assert_eq!(
                shard.stock_account(variant.id).await.unwrap(),
                StockAccount {
                    on_hand: 10,
                    held: 0,
                    committed: 0
                }
            );
        }
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE topic = 'stock.released'")
            .await,
        4
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM reservations WHERE state <> 'released'")
            .await,
        0
    );
}
