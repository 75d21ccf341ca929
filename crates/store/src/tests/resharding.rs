//! Adding a shard online: the keys that move, what the running store sees during the move,
//! and a mover stopped at any step and run again.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrder};

use super::*;
use crate::orders::OrderLine;
use crate::reshard::{MoveOptions, Quiet, add_shard};

/// Units of every variant at the start.
const UNITS: i64 = 1_000;

fn item(ids: &IdGenerator, i: i64) -> ProductWithVariants {
    let mut product = product(ids, i);
    for variant in &mut product.variants {
        variant.stock_level = UNITS;
    }
    product
}

/// A pending order of one unit of `product`'s first variant.
fn one_unit(id: OrderId, buyer: UserId, product: &ProductWithVariants) -> OrderRecord {
    let variant = &product.variants[0];
    OrderRecord {
        id,
        buyer_id: buyer,
        status: OrderStatus::Pending,
        total: variant.price,
        address_ct: vec![1, 2, 3],
        idempotency_key: None,
        payment_ref: None,
        reason: None,
        settled: false,
        created_at_ms: 1,
        updated_at_ms: 1,
        lines: vec![OrderLine {
            variant_id: variant.id,
            product_id: product.product.id,
            seller_id: None,
            name: product.product.name.clone(),
            sku: variant.sku.clone(),
            unit_price: variant.price,
            quantity: 1,
            shipped_at_ms: None,
        }],
    }
}

/// Buys one unit of `product` for `buyer` as checkout does: the order on the buyer's shard,
/// the reservation on the product's, paid, committed. `Some(order)` once paid.
async fn buy(
    store: &Store,
    ids: &IdGenerator,
    buyer: UserId,
    product: &ProductWithVariants,
) -> Result<Option<OrderRecord>, StoreError> {
    let order = one_unit(ids.order_id(), buyer, product);
    let started = store
        .for_user(buyer)
        .start_order(&order, None, None)
        .await?;
    assert_eq!(started, StartOutcome::Started);
    let lines = [ReservationLine {
        variant_id: order.lines[0].variant_id,
        product_id: order.lines[0].product_id,
        quantity: 1,
    }];
    let reserved = store.reserve(order.id, buyer, &lines, i64::MAX, 2).await?;
    assert_eq!(reserved, ReserveOutcome::Reserved);
    let paid = Transition {
        order: order.id,
        buyer,
        from: &[OrderStatus::Pending],
        to: OrderStatus::Paid,
        now_ms: 3,
        reason: None,
        payment_ref: Some("pay"),
        respond: None,
        clear_cart: &[],
    };
    match store.for_user(buyer).transition(&paid).await? {
        TransitionOutcome::Done(_) => {}
        other => panic!("paying a fresh order: {other:?}"),
    }
    store
        .settle_reservations(&order, Settlement::Commit, 4)
        .await?;
    Ok(Some(OrderRecord {
        status: OrderStatus::Paid,
        ..order
    }))
}

/// What a checker needs to know was written.
struct Written {
    products: Vec<ProductWithVariants>,
    users: Vec<UserId>,
    orders: Vec<OrderRecord>,
}

/// Every product, user and order readable through the store and held by its owner only;
/// stock balancing for every variant, with each paid order's unit committed.
async fn check(store: &Store, written: &Written) {
    let count = store.shard_count();
    let on = |index: usize| store.shard_at(index).unwrap();
    // Where every product is: each shard asked once for all of them.
    let all: Vec<ProductId> = written.products.iter().map(|p| p.product.id).collect();
    let mut holders: HashMap<ProductId, Vec<usize>> = HashMap::new();
    for index in 0..count {
        for product in on(index).products(&all).await.unwrap() {
            holders.entry(product.id).or_default().push(index);
        }
    }
    for &id in &all {
        let owner = store.shard_of(id);
        assert_eq!(
            holders.get(&id),
            Some(&vec![owner]),
            "product {id} (owner {owner})"
        );
    }
    assert_eq!(store.products(&all).await.unwrap().len(), all.len());
    for product in written.products.iter().step_by(25) {
        let read = store
            .product_with_variants(product.product.id)
            .await
            .unwrap();
        assert_eq!(read.map(|p| p.variants.len()), Some(product.variants.len()));
    }
    for &user in &written.users {
        let owner = store.shard_of_user(user);
        for index in 0..count {
            assert_eq!(
                on(index).user(user).await.unwrap().is_some(),
                index == owner,
                "user {user} on shard {index} (owner {owner})"
            );
        }
    }
    let mut sold: HashMap<VariantId, i64> = HashMap::new();
    for order in &written.orders {
        let read = store
            .order(order.id, Some(order.buyer_id))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged order {} is lost", order.id));
        assert_eq!(read.status, OrderStatus::Paid);
        assert_eq!(
            store.order(order.id, None).await.unwrap().map(|o| o.id),
            Some(order.id)
        );
        *sold.entry(order.lines[0].variant_id).or_default() += 1;
    }
    // Stock of every variant sold, and of a sample of the rest.
    let sold_products: HashSet<ProductId> = written
        .orders
        .iter()
        .map(|o| o.lines[0].product_id)
        .collect();
    let audited = written
        .products
        .iter()
        .enumerate()
        .filter(|(i, p)| sold_products.contains(&p.product.id) || i % 25 == 0)
        .map(|(_, p)| p);
    for product in audited {
        for variant in &product.variants {
            let account = store
                .stock_account(product.product.id, variant.id)
                .await
                .unwrap();
            let committed = sold.get(&variant.id).copied().unwrap_or(0);
            assert_eq!(account.total(), UNITS, "{variant:?}: {account:?}");
            assert_eq!(account.committed, committed, "{variant:?}");
            assert_eq!(account.held, 0, "{variant:?}");
        }
    }
    // A listing shows every product once, however the copies lay.
    let mut listed = HashSet::new();
    let mut query = ProductQuery {
        filter: ProductFilter::default(),
        sort: ProductSort::Newest,
        after: None,
        limit: 97,
    };
    loop {
        let page = store.list_products(&query).await.unwrap();
        for p in &page.items {
            assert!(listed.insert(p.id), "{} listed twice", p.id);
        }
        query.after = page.items.last().map(SortKey::of);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(listed.len(), written.products.len());
}

/// A catalog of `products`, `users` users with one paid order each.
async fn populate(store: &Store, ids: &IdGenerator, products: i64, users: usize) -> Written {
    let catalog: Vec<_> = (0..products).map(|i| item(ids, i)).collect();
    store.insert_products(catalog.clone(), 1).await.unwrap();
    let mut written = Written {
        products: catalog,
        users: Vec::new(),
        orders: Vec::new(),
    };
    for i in 0..users {
        let id = ids.user_id();
        store
            .for_user(id)
            .insert_user(&user(id, format!("u{}", id.get()).as_bytes()))
            .await
            .unwrap();
        written.users.push(id);
        let product = &written.products[i % written.products.len()];
        let order = buy(store, ids, id, product).await.unwrap().unwrap();
        written.orders.push(order);
    }
    written
}

conformance! {
    /// 4 shards become 5 while buyers keep ordering: about a fifth of the keys move (within
    /// 10% of 1/5), every product, user and acknowledged order is readable afterwards on its
    /// owner alone, stock balances, and the store's layout is now 5 shards.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn adding_a_shard_moves_a_fifth_of_the_keys_online_and_loses_nothing(backend) {
        let store = backend
            .open_with_spares(4, 1, PlacementConfig::ring(bazaar_ring::DEFAULT_VNODES))
            .await;
        let ids = Arc::new(IdGenerator::new(1));
        // Enough keys that the share moved is measured within a few tenths of a percent.
        let mut written = populate(&store, &ids, 8_000, 300).await;

        // Buyers order throughout the move: new users, existing products.
        let stop = Arc::new(AtomicBool::new(false));
        let buyers: Vec<_> = (0..6)
            .map(|b| {
                let (store, ids, stop) = (store.shared(), ids.clone(), stop.clone());
                let products = written.products.clone();
                tokio::spawn(async move {
                    let (mut users, mut orders) = (Vec::new(), Vec::new());
                    let mut i = b;
                    while !stop.load(AtomicOrder::Relaxed) {
                        let id = ids.user_id();
                        store
                            .for_user(id)
                            .insert_user(&user(id, format!("u{}", id.get()).as_bytes()))
                            .await
                            .unwrap();
                        users.push(id);
                        let product = &products[(i * 7) % products.len()];
                        orders.push(buy(&store, &ids, id, product).await.unwrap().unwrap());
                        i += 6;
                    }
                    (users, orders)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let options = MoveOptions {
            ranges: 8,
            new_shard: store.spare(4),
            stop_after_steps: None,
        };
        // The mover is a process of its own: a second store over the same shards.
        let mover = store.reopen(4).await.unwrap();
        let report = add_shard(&mover, &options, &Quiet).await.unwrap();
        stop.store(true, AtomicOrder::Relaxed);
        for buyer in buyers {
            let (users, orders) = buyer.await.unwrap();
            assert!(!orders.is_empty(), "every buyer ordered during the move");
            written.users.extend(users);
            written.orders.extend(orders);
        }

        assert_eq!((report.from, report.to), (4, 5));
        let share = report.moved_fraction();
        assert!((share - 0.2).abs() <= 0.02, "moved {share} of the keys: {report:?}");
        assert!(report.rows_copied > 0);
        assert_eq!(store.shard_count(), 5);
        assert!(!store.is_moving());
        check(&store, &written).await;

        // The store now has five shards: four are refused, five open.
        store.close().await;
        let refused = store.reopen(4).await.unwrap_err().to_string();
        assert!(refused.contains("5 shards"), "{refused}");
        let reopened = store.reopen(5).await.unwrap();
        check(&reopened, &written).await;
    }
}

conformance! {
    /// A mover stopped after any step leaves a store that serves every read and that the
    /// next run finishes: nothing lost, nothing left behind, nothing twice.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn a_move_stopped_at_any_step_is_finished_by_the_next_run(backend) {
        let store = backend.open_with_spares(2, 1, PlacementConfig::ring(64)).await;
        let ids = IdGenerator::new(2);
        let written = populate(&store, &ids, 120, 40).await;
        // Each run stops after 1, 2 or 3 steps (fencing, copying, switching, deleting), and
        // resumes where the last one stopped, until one finishes.
        let mut stops = 0;
        let finished = loop {
            let options = MoveOptions {
                ranges: 3,
                new_shard: store.spare(2),
                stop_after_steps: Some(1 + stops % 3),
            };
            let mover = store.reopen(2).await.unwrap();
            let outcome = add_shard(&mover, &options, &Quiet).await;
            mover.close().await;
            match outcome {
                Ok(report) => break report,
                Err(StoreError::Moving(_)) => stops += 1,
                Err(other) => panic!("{other}"),
            }
            assert!(store.is_moving());
            assert!(stops < 50, "the runs make progress");
            // Reads are served mid-move, each from one shard.
            for product in &written.products {
                assert!(store.product_with_variants(product.product.id).await.unwrap().is_some());
            }
            for order in &written.orders {
                assert!(store.order(order.id, None).await.unwrap().is_some());
            }
        };
        assert!(stops >= 6, "stopped {stops} times");
        assert!(finished.resumed);
        assert_eq!(store.shard_count(), 3);
        check(&store, &written).await;
    }
}

conformance! {
    /// `hash mod N` moves most keys where the ring moves a fifth; both end consistent.
    async fn modulo_placement_moves_most_keys(backend) {
        let placed = backend
            .open_with_spares(4, 1, PlacementConfig { kind: PlacementKind::Modulo, vnodes: 64 })
            .await;
        let ids = IdGenerator::new(3);
        let written = populate(&placed, &ids, 300, 60).await;
        let report = add_shard(
            &placed.reopen(4).await.unwrap(),
            &MoveOptions { ranges: 4, new_shard: placed.spare(4), stop_after_steps: None },
            &Quiet,
        )
        .await
        .unwrap();
        let share = report.moved_fraction();
        assert!((share - 0.8).abs() <= 0.08, "modulo moved {share}");
        check(&placed, &written).await;
        // A ring configuration does not open a modulo store.
        placed.close().await;
        let refused = placed
            .data
            .open(5, PlacementConfig::ring(64))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("placement"), "{refused}");
    }
}

conformance! {
    /// A new shard that holds another store's data, or any entities, is refused before
    /// anything moves.
    async fn a_new_shard_with_data_is_refused(backend) {
        let store = backend.open_with_spares(2, 1, PlacementConfig::ring(64)).await;
        let ids = IdGenerator::new(4);
        populate(&store, &ids, 20, 4).await;
        // Put a product on the would-be third shard behind the store's back.
        let stray = match backend {
            Backend::Sqlite => {
                let Data::Sqlite(dir) = &store.data else { unreachable!() };
                Box::new(sqlite::SqliteShard::open("shard-2", &config(dir.path())).await.unwrap())
                    as Box<dyn Shard>
            }
            Backend::Postgres => {
                let Data::Postgres(scratch) = &store.data else { unreachable!() };
                Box::new(
                    postgres::PostgresShard::open("shard-2", &scratch.urls()[2], &scratch.config())
                        .await
                        .unwrap(),
                ) as Box<dyn Shard>
            }
        };
        stray.insert_products(&[item(&ids, 99)], 1).await.unwrap();
        stray.close().await;
        let refused = add_shard(
            &store.reopen(2).await.unwrap(),
            &MoveOptions { ranges: 2, new_shard: store.spare(2), stop_after_steps: None },
            &Quiet,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(refused.contains("already holds products"), "{refused}");
    }
}

conformance! {
    /// Two movers started together: one moves, the other is refused (a lease on the directory
    /// shard), and nothing is lost or left twice.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn two_movers_at_once_move_the_keys_once(backend) {
        let store = backend.open_with_spares(2, 1, PlacementConfig::ring(64)).await;
        let ids = IdGenerator::new(5);
        let written = populate(&store, &ids, 200, 20).await;
        let (a, b) = (store.reopen(2).await.unwrap(), store.reopen(2).await.unwrap());
        let options = MoveOptions { ranges: 4, new_shard: store.spare(2), stop_after_steps: None };
        let barrier = tokio::sync::Barrier::new(2);
        let (first, second) = tokio::join!(
            async {
                barrier.wait().await;
                add_shard(&a, &options, &Quiet).await
            },
            async {
                barrier.wait().await;
                add_shard(&b, &options, &Quiet).await
            }
        );
        let refused: Vec<String> = [&first, &second]
            .into_iter()
            .filter_map(|outcome| outcome.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(refused.len(), 1, "exactly one mover moves: {first:?} / {second:?}");
        assert!(
            refused[0].contains("another `bazaar shards add`") || refused[0].contains("3 shards now"),
            "{}",
            refused[0]
        );
        assert_eq!(store.shard_count(), 3);
        check(&store, &written).await;
    }
}

conformance! {
    /// While a mover that stopped leaves a range fenced, a write to a moving key of that range
    /// is held and then refused with `Moving` (writing nothing); a write to a key that does not
    /// move, and reads of the fenced key, are served at once.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn a_write_held_by_a_stopped_move_is_refused_after_the_hold_limit(backend) {
        let store = backend.open_with_spares(2, 1, PlacementConfig::ring(64)).await;
        let ids = IdGenerator::new(6);
        let written = populate(&store, &ids, 200, 0).await;
        // Stopped right after fencing range 0 of 2.
        let options = MoveOptions { ranges: 2, new_shard: store.spare(2), stop_after_steps: Some(1) };
        let stopped = add_shard(&store.reopen(2).await.unwrap(), &options, &Quiet).await;
        assert!(matches!(stopped, Err(StoreError::Moving(_))), "{stopped:?}");
        let after = Layout::new(PlacementKind::Ring, 3, 64).unwrap();
        let hash = |p: &ProductWithVariants| bazaar_ring::key_hash(&p.product.id.ring_key());
        let fenced = written
            .products
            .iter()
            .find(|p| {
                placement::range_of(hash(p), 2) == 0 && after.locate_hash(hash(p)) == 2
            })
            .expect("some product moves in range 0");
        let staying = written
            .products
            .iter()
            .find(|p| after.locate_hash(hash(p)) != 2)
            .unwrap();
        let rename = |name: &str| ProductPatch { name: Some(name.into()), ..ProductPatch::default() };

        let id = fenced.product.id;
        let started = std::time::Instant::now();
        let held = store.for_product(id).update_product(id, 1, &rename("held"), 9).await;
        assert!(matches!(held, Err(StoreError::Moving(_))), "{held:?}");
        assert!(started.elapsed() >= placement::HOLD_LIMIT, "held {:?}", started.elapsed());
        let read = store.product_with_variants(id).await.unwrap().unwrap();
        assert_eq!(read.product.name, fenced.product.name, "the held write wrote nothing");

        let other = staying.product.id;
        let started = std::time::Instant::now();
        let done = store.for_product(other).update_product(other, 1, &rename("free"), 9).await;
        assert!(matches!(done, Ok(WriteOutcome::Done(_))), "{done:?}");
        assert!(started.elapsed() < placement::HOLD_LIMIT / 2, "a non-moving key waited");
    }
}
