//! Random interleavings of checkout, interrupted checkout, cancellation, expiry and refund,
//! against the real store: after every step, for every variant, the units on hand, held and
//! committed add up to the stock put in; committed units are exactly those of paid (or later)
//! orders and held units those of pending ones; and no order ever moved along a transition
//! the life cycle does not have.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bazaar_shop::address::AddressInput;
use bazaar_shop::authz::{Credential, Principal};
use bazaar_shop::crypto::{PiiCipher, SecretKey};
use bazaar_shop::orders::{CheckoutReply, CheckoutRequest, OrdersConfig};
use bazaar_shop::payments::{SimulatedProvider, SimulatedSettings};
use bazaar_shop::{Actor, Catalog, Orders};
use bazaar_store::prelude::*;
use bazaar_store::sqlite::{Durability, SqliteConfig};
use bazaar_store::testing::PostgresScratch;
use bazaar_store::{
    CartItem, IdGenerator, Money, OrderId, OrderLine, OrderRecord, OrderStatus, Product, ProductId,
    ProductWithVariants, ReservationLine, Role, SessionId, Store, StoredResponse, UserId, Variant,
    VariantId,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const USERS: u64 = 4;
const VARIANTS: usize = 3;
const STOCK: i64 = 6;

#[derive(Debug, Clone)]
enum Step {
    /// A buyer checks out `quantity` of a variant (payments decline a share of the time).
    Checkout {
        user: u64,
        variant: usize,
        quantity: i64,
    },
    /// A checkout that died after reserving stock: a pending order with held stock.
    Interrupted {
        user: u64,
        variant: usize,
        quantity: i64,
    },
    /// The buyer cancels the n-th order (pending ones only succeed).
    Cancel { order: usize },
    /// The buyer asks for a refund of the n-th order (paid ones only succeed).
    Refund { order: usize },
    /// The sweeper runs: every reservation has expired by now.
    Sweep,
}

fn step() -> impl Strategy<Value = Step> {
    let buy = (1..=USERS, 0..VARIANTS, 1..=3i64);
    prop_oneof![
        3 => buy.clone().prop_map(|(user, variant, quantity)| Step::Checkout { user, variant, quantity }),
        2 => buy.prop_map(|(user, variant, quantity)| Step::Interrupted { user, variant, quantity }),
        2 => (0..12usize).prop_map(|order| Step::Cancel { order }),
        2 => (0..12usize).prop_map(|order| Step::Refund { order }),
        1 => Just(Step::Sweep),
    ]
}

struct World {
    store: Arc<Store>,
    orders: Orders,
    ids: Arc<IdGenerator>,
    variants: Vec<(ProductId, VariantId)>,
    created: Vec<(UserId, OrderId)>,
    last_status: HashMap<OrderId, OrderStatus>,
    _data: Data,
}

fn actor(user: UserId) -> Actor {
    Actor {
        principal: Principal::User {
            id: user,
            role: Role::Customer,
            credential: Credential::Session(SessionId::new(1)),
        },
        request_id: None,
    }
}

fn address() -> AddressInput {
    AddressInput {
        name: Some("Ada".into()),
        line1: Some("1 Road".into()),
        city: Some("Oslo".into()),
        postal_code: Some("0150".into()),
        country: Some("NO".into()),
        ..AddressInput::default()
    }
}

/// Where a world's two shards live.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// What keeps a world's data alive: its directory, or its scratch databases.
#[expect(
    dead_code,
    reason = "held only for its Drop, which deletes the directory or drops the databases"
)]
enum Data {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresScratch),
}

async fn world(backend: Backend) -> World {
    let metrics = bazaar_telemetry::Metrics::new();
    let (store, data) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let config = SqliteConfig {
                data_dir: dir.path().to_owned(),
                durability: Durability::Normal,
                busy_timeout: Duration::from_secs(5),
                max_connections: 2,
                write_events: true,
            };
            let store = Store::open_sqlite(&config, 2, 64, &metrics).await.unwrap();
            (store, Data::Sqlite(dir))
        }
        Backend::Postgres => {
            let scratch = PostgresScratch::from_env(2)
                .await
                .expect("run only with BAZAAR_TEST_POSTGRES_URL set");
            let store = Store::open_postgres(&scratch.config(), 64, &metrics)
                .await
                .unwrap();
            (store, Data::Postgres(scratch))
        }
    };
    let store = Arc::new(store);
    let ids = Arc::new(IdGenerator::new(1));
    let mut variants = Vec::new();
    for i in 0..VARIANTS {
        let (product, variant) = (ids.product_id(), ids.variant_id());
        let price = Money::usd(1000 + i64::try_from(i).unwrap());
        store
            .insert_products(
                vec![ProductWithVariants {
                    product: Product {
                        id: product,
                        name: format!("P{i}"),
                        description: String::new(),
                        brand: "B".into(),
                        category: "c".into(),
                        price,
                        created_at_ms: 0,
                        updated_at_ms: 0,
                        seller_id: None,
                        version: 1,
                        view_count: 0,
                    },
                    variants: vec![Variant {
                        id: variant,
                        product_id: product,
                        sku: format!("S{i}"),
                        color: "c".into(),
                        size: "s".into(),
                        price,
                        stock_level: STOCK,
                    }],
                }],
                0,
            )
            .await
            .unwrap();
        variants.push((product, variant));
    }
    let payments = SimulatedProvider::new(SimulatedSettings {
        decline_rate: 0.25,
        ..SimulatedSettings::default()
    });
    let orders = Orders::new(
        store.clone(),
        Catalog::new(store.clone(), ids.clone()),
        Arc::new(payments),
        PiiCipher::new([(1, SecretKey::generate())], 1),
        ids.clone(),
        OrdersConfig {
            // Every reservation is expired by the time a `Sweep` step runs; nothing is stale
            // (interrupted checkouts are left to expiry, not to crash recovery).
            reservation_ttl: Duration::from_millis(1),
            stale_after: Duration::from_secs(3600),
            ..OrdersConfig::default()
        },
    );
    World {
        store,
        orders,
        ids,
        variants,
        created: Vec::new(),
        last_status: HashMap::new(),
        _data: data,
    }
}

fn render(_: &Result<bazaar_shop::orders::Order, bazaar_shop::ShopError>) -> StoredResponse {
    StoredResponse {
        status: 200,
        body: b"{}".to_vec(),
    }
}

impl World {
    async fn run(&mut self, step: &Step) {
        match *step {
            Step::Checkout {
                user,
                variant,
                quantity,
            } => {
                let user = UserId::new(user);
                let (product, variant) = self.variants[variant];
                let item = CartItem {
                    variant_id: variant,
                    product_id: product,
                    quantity,
                    added_at_ms: 0,
                };
                self.store
                    .for_user(user)
                    .add_to_cart(user, &item, 100, 50)
                    .await
                    .unwrap();
                let request = CheckoutRequest {
                    idempotency_key: self.ids.order_id().to_string(),
                    request_hash: vec![1],
                    expected_total: None,
                    shipping_address: address(),
                };
                let reply = self.orders.checkout(&actor(user), request, &render).await;
                if let Ok(CheckoutReply::Fresh(outcome)) = reply
                    && let Ok(order) = *outcome
                {
                    self.created.push((user, order.id));
                }
                // Whatever happened, the cart is emptied for the next step.
                self.store
                    .for_user(user)
                    .remove_from_cart(user, variant)
                    .await
                    .unwrap();
                self.record_new_orders(user).await;
            }
            Step::Interrupted {
                user,
                variant,
                quantity,
            } => {
                let user = UserId::new(user);
                let (product, variant) = self.variants[variant];
                let id = self.ids.order_id();
                let record = OrderRecord {
                    id,
                    buyer_id: user,
                    status: OrderStatus::Pending,
                    total: Money::usd(1000 * quantity),
                    address_ct: PiiCipher::new([(1, SecretKey::generate())], 1).seal("{}"),
                    idempotency_key: None,
                    payment_ref: None,
                    reason: None,
                    settled: false,
                    created_at_ms: 0,
                    updated_at_ms: bazaar_shop::now_ms(),
                    lines: vec![OrderLine {
                        variant_id: variant,
                        product_id: product,
                        seller_id: None,
                        name: "P".into(),
                        sku: "S".into(),
                        unit_price: Money::usd(1000),
                        quantity,
                        shipped_at_ms: None,
                    }],
                };
                self.store
                    .for_user(user)
                    .start_order(&record, None, None)
                    .await
                    .unwrap();
                let line = ReservationLine {
                    variant_id: variant,
                    product_id: product,
                    quantity,
                };
                // Out of stock or not, the process "dies" here.
                self.store
                    .reserve(
                        id,
                        user,
                        &[line],
                        bazaar_shop::now_ms(),
                        bazaar_shop::now_ms(),
                    )
                    .await
                    .unwrap();
                self.created.push((user, id));
            }
            Step::Cancel { order } => {
                if let Some(&(user, id)) = self.created.get(order) {
                    let _ = self.orders.cancel(&actor(user), id).await;
                }
            }
            Step::Refund { order } => {
                if let Some(&(user, id)) = self.created.get(order) {
                    let _ = self.orders.refund(&actor(user), id).await;
                }
            }
            Step::Sweep => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.orders.sweep().await.unwrap();
            }
        }
    }

    /// Orders a checkout created but did not return (declined or out of stock ones).
    async fn record_new_orders(&mut self, user: UserId) {
        let known: Vec<OrderId> = self.created.iter().map(|&(_, id)| id).collect();
        for order in self
            .store
            .for_user(user)
            .orders_of_buyer(user, None, 1000)
            .await
            .unwrap()
        {
            if !known.contains(&order.id) {
                self.created.push((user, order.id));
            }
        }
    }

    /// The invariants, checked after every step.
    async fn check(&mut self, after: &Step) -> Result<(), TestCaseError> {
        let mut committed: BTreeMap<VariantId, i64> = BTreeMap::new();
        for &(user, id) in &self.created {
            let order = self.store.order(id, Some(user)).await.unwrap().unwrap();
            if let Some(&before) = self.last_status.get(&id) {
                prop_assert!(
                    before == order.status || before.may_become(order.status),
                    "order {id} went {before} -> {} after {after:?}",
                    order.status
                );
            }
            self.last_status.insert(id, order.status);
            if matches!(
                order.status,
                OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered
            ) {
                for line in &order.lines {
                    *committed.entry(line.variant_id).or_default() += line.quantity;
                }
            }
        }
        for &(product, variant) in &self.variants {
            let account = self.store.stock_account(product, variant).await.unwrap();
            prop_assert_eq!(account.total(), STOCK, "{:?} after {:?}", account, after);
            prop_assert!(account.on_hand >= 0);
            prop_assert_eq!(
                account.committed,
                committed.get(&variant).copied().unwrap_or(0),
                "committed units are exactly those of paid orders, after {:?}",
                after
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 32,
        rng_seed: RngSeed::Fixed(0x0DE5),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn stock_is_conserved_and_orders_only_move_along_the_life_cycle(
        steps in proptest::collection::vec(step(), 1..24)
    ) {
        run_steps(Backend::Sqlite, &steps)?;
    }

    /// The same property with both shards on PostgreSQL (skipped without
    /// `BAZAAR_TEST_POSTGRES_URL`).
    #[test]
    fn on_postgres_stock_is_conserved_and_orders_only_move_along_the_life_cycle(
        steps in proptest::collection::vec(step(), 1..24)
    ) {
        if bazaar_store::testing::postgres_server().is_some() {
            run_steps(Backend::Postgres, &steps)?;
        }
    }
}

fn run_steps(backend: Backend, steps: &[Step]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut world = world(backend).await;
        for step in steps {
            world.run(step).await;
            world.check(step).await?;
        }
        // Once the sweeper has run, nothing is held for an order that is not pending.
        world.orders.sweep().await.unwrap();
        for &(product, variant) in &world.variants {
            let account = world.store.stock_account(product, variant).await.unwrap();
            prop_assert_eq!(account.held, 0, "{:?}", account);
        }
        Ok(())
    })
}
