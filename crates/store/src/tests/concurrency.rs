//! Races: many callers released together by a barrier against one stock row, one order, one
//! cart, one email, one product version, one refresh token, one range of generator numbers.
//! Each case counts the effects (units held, events written, rows created) rather than only
//! the answers, so a backend whose check-then-act is not atomic fails here, and each runs on a
//! multi-threaded runtime so the callers really overlap.
//!
//! The races whose transactions lock several rows (an order and its lines, a cart and its
//! order, stock rows named in either order) run against a bare shard
//! ([`TestStore::bare_shard`]): without the store's retries, a deadlock or serialization
//! failure fails the case instead of being retried away.

use std::future::Future;

use tokio::sync::Barrier;

use super::*;

/// Runs `call(0..count)` as `count` tasks that all start at once (a barrier releases them
/// together), and returns their results in index order.
async fn race<T, Fut>(count: usize, call: impl Fn(usize) -> Fut) -> Vec<T>
where
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(count));
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (work, barrier) = (call(i), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|done| done.expect("a racing task panicked"))
        .collect()
}

/// A product whose variants have exactly `stock` units each.
pub(super) fn stocked(stock: &[i64]) -> ProductWithVariants {
    let ids = IdGenerator::deterministic(3, id::EPOCH_MS);
    let mut item = product(&ids, 1);
    let template = item.variants[0].clone();
    item.variants = stock
        .iter()
        .enumerate()
        .map(|(i, &units)| Variant {
            id: ids.variant_id(),
            sku: format!("FLASH-{i}"),
            stock_level: units,
            ..template.clone()
        })
        .collect();
    item
}

/// Every event on `shard` about `key` (an aggregate's id), oldest first.
pub(super) async fn events_about(shard: &dyn Shard, key: impl ToString) -> Vec<OutboxEvent> {
    let key = key.to_string();
    let mut all = shard.outbox(0, 100_000).await.unwrap();
    all.retain(|e| e.key == key);
    all
}

pub(super) fn topics(events: &[OutboxEvent]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

/// The order id a `stock.*` event names.
pub(super) fn order_of(event: &OutboxEvent) -> OrderId {
    let body: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
    body["order_id"].as_str().unwrap().parse().unwrap()
}

pub(super) fn reservation(
    item: &ProductWithVariants,
    variant: usize,
    quantity: i64,
) -> ReservationLine {
    ReservationLine {
        variant_id: item.variants[variant].id,
        product_id: item.product.id,
        quantity,
    }
}

/// A pending order of `buyer` buying one unit of each of `item`'s variants, sold by `seller`.
pub(super) fn pending_order(id: OrderId, buyer: UserId, item: &ProductWithVariants) -> OrderRecord {
    let lines: Vec<OrderLine> = item
        .variants
        .iter()
        .map(|v| OrderLine {
            variant_id: v.id,
            product_id: item.product.id,
            seller_id: Some(UserId::new(7)),
            name: item.product.name.clone(),
            sku: v.sku.clone(),
            unit_price: v.price,
            quantity: 1,
            shipped_at_ms: None,
        })
        .collect();
    OrderRecord {
        id,
        buyer_id: buyer,
        status: OrderStatus::Pending,
        total: Money::usd(lines.iter().map(|l| l.unit_price.amount).sum()),
        address_ct: b"sealed address".to_vec(),
        idempotency_key: None,
        payment_ref: None,
        reason: None,
        settled: false,
        created_at_ms: 10,
        updated_at_ms: 10,
        lines,
    }
}

/// A transition of `order` from `from` to `to`, touching nothing else.
pub(super) fn status_change(
    order: OrderId,
    buyer: UserId,
    from: &'static [OrderStatus],
    to: OrderStatus,
) -> Transition<'static> {
    Transition {
        order,
        buyer,
        from,
        to,
        now_ms: 20,
        reason: None,
        payment_ref: None,
        respond: None,
        clear_cart: &[],
    }
}

conformance! {
    /// The flash sale: 200 buyers reserve one unit each of a variant with 10 in stock at the
    /// same instant. Exactly 10 hold a unit, nothing is oversold or lost, and the units come
    /// back exactly once when released.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flash_sale_of_ten_units_holds_exactly_ten_of_two_hundred_reservations(backend) {
        let store = backend.open(4).await;
        let item = stocked(&[10]);
        store.insert_products(vec![item.clone()], 1).await.unwrap();
        let line = reservation(&item, 0, 1);
        let (product, variant) = (line.product_id, line.variant_id);
        let order_id = |i: usize| OrderId::new(10_000 + i as u64);

        let outcomes = race(200, |i| {
            let store = store.shared();
            async move {
                let buyer = UserId::new(20_000 + i as u64);
                store.reserve(order_id(i), buyer, &[line], 60_000, 100).await.unwrap()
            }
        })
        .await;
        let winners: Vec<OrderId> = (0..200)
            .filter(|&i| outcomes[i] == ReserveOutcome::Reserved)
            .map(order_id)
            .collect();
        assert_eq!(winners.len(), 10, "{outcomes:?}");
        let sold_out = ReserveOutcome::OutOfStock {
            variant,
            wanted: 1,
            available: 0,
        };
        assert!(
            outcomes.iter().all(|o| *o == ReserveOutcome::Reserved || *o == sold_out),
            "{outcomes:?}"
        );
        let account = store.stock_account(product, variant).await.unwrap();
        assert_eq!(
            account,
            StockAccount {
                on_hand: 0,
                held: 10,
                committed: 0
            }
        );
        assert_eq!(account.total(), 10);

        // One `stock.reserved` per winner, and none for a loser.
        let shard = store.for_product(product);
        let reserved = events_about(&shard, product).await;
        let reserved: Vec<&OutboxEvent> = reserved
            .iter()
            .filter(|e| e.topic == "stock.reserved")
            .collect();
        let mut announced: Vec<OrderId> = reserved.iter().map(|e| order_of(e)).collect();
        announced.sort();
        assert_eq!(announced, winners);

        // A winner's retry holds nothing more.
        assert_eq!(
            store
                .reserve(winners[0], UserId::new(1), &[line], 60_000, 110)
                .await
                .unwrap(),
            ReserveOutcome::Reserved
        );
        assert_eq!(store.stock_account(product, variant).await.unwrap().held, 10);

        // Half the winners pay, half give up: their 5 units go back on sale, once.
        for (i, &order) in winners.iter().enumerate() {
            let settlement = if i < 5 { Settlement::Commit } else { Settlement::Release };
            assert_eq!(shard.settle_reservations(order, settlement, 120).await.unwrap(), 1);
        }
        assert_eq!(
            store.stock_account(product, variant).await.unwrap(),
            StockAccount {
                on_hand: 5,
                held: 0,
                committed: 5
            }
        );

        // A second wave of 50 buyers gets exactly those 5.
        let outcomes = race(50, |i| {
            let store = store.shared();
            async move {
                let buyer = UserId::new(30_000 + i as u64);
                store.reserve(order_id(1_000 + i), buyer, &[line], 60_000, 130).await.unwrap()
            }
        })
        .await;
        let held = outcomes.iter().filter(|o| **o == ReserveOutcome::Reserved).count();
        assert_eq!(held, 5, "{outcomes:?}");
        assert_eq!(
            store.stock_account(product, variant).await.unwrap(),
            StockAccount {
                on_hand: 0,
                held: 5,
                committed: 5
            }
        );
    }
}

conformance! {
    /// Orders of two lines, half naming them in the other order (the way two transactions
    /// deadlock if they lock rows in the order given), on a bare shard: none deadlocks, each
    /// order holds both lines or neither, and only the scarce variant's 5 units decide how many
    /// succeed.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_multi_line_reservations_are_all_or_nothing(backend) {
        let store = backend.open(2).await;
        let item = stocked(&[5, 100]);
        store.insert_products(vec![item.clone()], 1).await.unwrap();
        let (scarce, plenty) = (reservation(&item, 0, 1), reservation(&item, 1, 1));
        let bare = store.bare_shard(store.shard_of(item.product.id)).await;

        let outcomes = race(40, |i| {
            let shard = bare.clone();
            let lines = if i % 2 == 0 { [scarce, plenty] } else { [plenty, scarce] };
            async move {
                let (order, buyer) = (OrderId::new(500 + i as u64), UserId::new(900 + i as u64));
                shard.reserve(order, buyer, &lines, 60_000, 100).await.unwrap()
            }
        })
        .await;
        let reserved = outcomes.iter().filter(|o| **o == ReserveOutcome::Reserved).count();
        assert_eq!(reserved, 5, "{outcomes:?}");
        for outcome in outcomes.iter().filter(|o| **o != ReserveOutcome::Reserved) {
            assert_eq!(
                *outcome,
                ReserveOutcome::OutOfStock {
                    variant: scarce.variant_id,
                    wanted: 1,
                    available: 0
                }
            );
        }
        let product = item.product.id;
        let account = |variant| store.stock_account(product, variant);
        assert_eq!(
            account(scarce.variant_id).await.unwrap(),
            StockAccount {
                on_hand: 0,
                held: 5,
                committed: 0
            }
        );
        assert_eq!(
            account(plenty.variant_id).await.unwrap(),
            StockAccount {
                on_hand: 95,
                held: 5,
                committed: 0
            },
            "a refused order kept a line"
        );
        let shard = store.for_product(product);
        let reserved_events = events_about(&shard, product)
            .await
            .into_iter()
            .filter(|e| e.topic == "stock.reserved")
            .count();
        assert_eq!(reserved_events, 10, "two per order that holds its lines");
        let index = store.shard_of(product);
        assert_eq!(store.scalar(index, "SELECT COUNT(*) FROM reservations").await, 10);
        assert_eq!(
            store.scalar(index, "SELECT COUNT(DISTINCT order_id) FROM reservations").await,
            5,
            "a refused order kept a reservation row"
        );
        bare.close().await;
    }
}

conformance! {
    /// Settling one order from many callers at once (the checkout and the sweeper, twice
    /// over), some committing and some releasing, on a bare shard: every unit moves back to
    /// stock exactly once.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_settlements_of_one_order_move_each_unit_once(backend) {
        let store = backend.open(2).await;
        let item = stocked(&[5, 5]);
        store.insert_products(vec![item.clone()], 1).await.unwrap();
        let product = item.product.id;
        let shard_index = store.shard_of(product);
        let lines = [reservation(&item, 0, 2), reservation(&item, 1, 3)];

        let bare = store.bare_shard(shard_index).await;
        for (round, mix) in [false, true].into_iter().enumerate() {
            let order = OrderId::new(700 + round as u64);
            let reserved = store.reserve(order, UserId::new(5), &lines, 60_000, 10).await;
            assert_eq!(reserved.unwrap(), ReserveOutcome::Reserved);
            let moved = race(10, |i| {
                let shard = bare.clone();
                // The second round races commits against releases.
                let settlement = if mix && i % 2 == 0 { Settlement::Commit } else { Settlement::Release };
                async move {
                    (settlement, shard.settle_reservations(order, settlement, 20).await.unwrap())
                }
            })
            .await;
            let released: u64 = moved
                .iter()
                .filter(|(s, _)| *s == Settlement::Release)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(released, 2, "round {round}: {moved:?}");
            for line in &lines {
                assert_eq!(
                    store.stock_account(product, line.variant_id).await.unwrap(),
                    StockAccount {
                        on_hand: 5,
                        held: 0,
                        committed: 0
                    },
                    "round {round}"
                );
            }
            let released_events: Vec<OutboxEvent> = events_about(&store.for_product(product), product)
                .await
                .into_iter()
                .filter(|e| e.topic == "stock.released" && order_of(e) == order)
                .collect();
            assert_eq!(released_events.len(), 2, "round {round}");
            // And once more, alone: nothing is left to move.
            for settlement in [Settlement::Commit, Settlement::Release] {
                assert_eq!(bare.settle_reservations(order, settlement, 30).await.unwrap(), 0);
            }
        }
        assert_eq!(
            store
                .scalar(shard_index, "SELECT COUNT(*) FROM reservations WHERE state <> 'released'")
                .await,
            0
        );
        bare.close().await;
    }
}

conformance! {
    /// Sixteen callers move one pending order at once, half to `paid`, half to `cancelled`, on
    /// a bare shard: exactly one applies, the rest are refused with the winner's status, and
    /// one event announces it.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_transitions_of_one_order_apply_exactly_once(backend) {
        const PENDING: &[OrderStatus] = &[OrderStatus::Pending];
        let store = backend.open(2).await;
        let item = stocked(&[3]);
        let buyer = UserId::new(77);
        let shard = store.for_user(buyer);
        let bare = store.bare_shard(store.user_shard(buyer)).await;
        for round in 0..5u64 {
            let order = OrderId::new(8_000 + round);
            let record = pending_order(order, buyer, &item);
            let started = shard.start_order(&record, None, None).await.unwrap();
            assert_eq!(started, StartOutcome::Started);

            let outcomes = race(16, |i| {
                let shard = bare.clone();
                let to = if i % 2 == 0 { OrderStatus::Paid } else { OrderStatus::Cancelled };
                async move {
                    let change = status_change(order, buyer, PENDING, to);
                    shard.transition(&change).await.unwrap()
                }
            })
            .await;
            let done: Vec<&OrderRecord> = outcomes
                .iter()
                .filter_map(|o| match o {
                    TransitionOutcome::Done(record) => Some(record),
                    _ => None,
                })
                .collect();
            assert_eq!(done.len(), 1, "round {round}: {outcomes:?}");
            let winner = done[0].status;
            let refused = outcomes
                .iter()
                .filter(|o| **o == TransitionOutcome::Refused(winner))
                .count();
            assert_eq!(refused, 15, "round {round}: {outcomes:?}");
            let stored = shard.order(order).await.unwrap().unwrap();
            assert_eq!(stored.status, winner);
            assert!(!stored.settled);
            assert_eq!(
                topics(&events_about(&shard, order).await),
                ["order.created", crate::orders::status_topic(winner)],
                "round {round}"
            );
        }
        bare.close().await;
    }
}

conformance! {
    /// A paid order of two sellers' lines, refunded by some callers while others ship one
    /// seller's line, all at once: exactly one of them applies. Either the order is refunded
    /// with nothing shipped, or one line is shipped and the order, still paid, is never
    /// refunded (a shipped line is not coming back), whichever statement ran first. On a bare
    /// shard: both write the order and its lines, and must queue rather than deadlock.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn a_refund_racing_a_shipment_lets_exactly_one_apply(backend) {
        const PAID: &[OrderStatus] = &[OrderStatus::Paid];
        let store = backend.open(2).await;
        let item = stocked(&[3, 3]);
        let buyer = UserId::new(78);
        let (alice, bob) = (UserId::new(81), UserId::new(82));
        let shard = store.for_user(buyer);
        let bare = store.bare_shard(store.user_shard(buyer)).await;
        for round in 0..8u64 {
            let order = OrderId::new(9_000 + round);
            let mut record = pending_order(order, buyer, &item);
            record.lines[0].seller_id = Some(alice);
            record.lines[1].seller_id = Some(bob);
            let started = shard.start_order(&record, None, None).await.unwrap();
            assert_eq!(started, StartOutcome::Started);
            let paid = status_change(order, buyer, &[OrderStatus::Pending], OrderStatus::Paid);
            assert!(matches!(
                shard.transition(&paid).await.unwrap(),
                TransitionOutcome::Done(_)
            ));

            let outcomes = race(16, |i| {
                let shard = bare.clone();
                async move {
                    if i % 2 == 0 {
                        let refund = status_change(order, buyer, PAID, OrderStatus::Refunded);
                        shard.transition(&refund).await.unwrap()
                    } else {
                        shard.ship_lines(order, Some(alice), 30).await.unwrap()
                    }
                }
            })
            .await;
            let done = outcomes
                .iter()
                .filter(|o| matches!(o, TransitionOutcome::Done(_)))
                .count();
            assert_eq!(done, 1, "round {round}: {outcomes:?}");
            let stored = shard.order(order).await.unwrap().unwrap();
            let shipped: Vec<Option<i64>> = stored.lines.iter().map(|l| l.shipped_at_ms).collect();
            let events = topics(&events_about(&shard, order).await).join(" ");
            match stored.status {
                OrderStatus::Refunded => {
                    assert_eq!(shipped, [None, None], "round {round}: a refunded line shipped");
                    assert_eq!(events, "order.created order.paid order.refunded");
                }
                OrderStatus::Paid => {
                    assert_eq!(shipped, [Some(30), None], "round {round}");
                    assert_eq!(events, "order.created order.paid", "round {round}");
                }
                other => panic!("round {round}: the order became {other}"),
            }
        }
        bare.close().await;
    }
}

conformance! {
    /// Twenty different variants added to one cart at once, with room for five lines; then
    /// twenty single units of one variant, with room for seven. The limits hold exactly, and
    /// only the adds that applied moved the cart's version. On a bare shard: the cart's row
    /// lock queues the adds, none fails.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_cart_adds_never_pass_the_limits(backend) {
        let store = backend.open(2).await;
        let product = ProductId::new(4_242);
        let item = move |variant: u64| CartItem {
            variant_id: VariantId::new(variant),
            product_id: product,
            quantity: 1,
            added_at_ms: 1,
        };

        let lines_buyer = UserId::new(61);
        let bare = store.bare_shard(store.user_shard(lines_buyer)).await;
        let outcomes = race(20, |i| {
            let shard = bare.clone();
            async move {
                shard.add_to_cart(lines_buyer, &item(100 + i as u64), 10, 5).await.unwrap()
            }
        })
        .await;
        let added = outcomes
            .iter()
            .filter(|o| **o == CartChange::Done { quantity: 1 })
            .count();
        let refused = outcomes.iter().filter(|o| **o == CartChange::TooManyLines).count();
        assert_eq!((added, refused), (5, 15), "{outcomes:?}");
        let cart = store.for_user(lines_buyer).cart(lines_buyer).await.unwrap();
        assert_eq!(cart.items.len(), 5);
        assert_eq!(cart.version, 5, "a refused add moved the version");
        assert_eq!(cart.checkout, None);

        let units_buyer = UserId::new(62);
        let bare = store.bare_shard(store.user_shard(units_buyer)).await;
        let outcomes = race(20, |_| {
            let shard = bare.clone();
            async move { shard.add_to_cart(units_buyer, &item(100), 7, 5).await.unwrap() }
        })
        .await;
        let mut quantities: Vec<i64> = outcomes
            .iter()
            .filter_map(|o| match o {
                CartChange::Done { quantity } => Some(*quantity),
                _ => None,
            })
            .collect();
        quantities.sort_unstable();
        assert_eq!(quantities, (1..=7).collect::<Vec<_>>(), "{outcomes:?}");
        let too_many = outcomes
            .iter()
            .filter(|o| **o == CartChange::TooMany { quantity: 8 })
            .count();
        assert_eq!(too_many, 13, "{outcomes:?}");
        let cart = store.for_user(units_buyer).cart(units_buyer).await.unwrap();
        assert_eq!(cart.items.len(), 1);
        assert_eq!(cart.items[0].quantity, 7);
        assert_eq!(cart.version, 7);
        bare.close().await;
    }
}

conformance! {
    /// Twelve checkouts of one cart at once, each with its own order and idempotency key:
    /// exactly one order is written and holds the cart; then twelve requests with one
    /// idempotency key: exactly one order again, and every other caller is shown its claim.
    /// On a bare shard: the checkouts all write the cart, a claim and an order, and must queue
    /// rather than deadlock.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checkouts_of_one_cart_start_exactly_one_order(backend) {
        let store = backend.open(2).await;
        let item = stocked(&[3, 3]);
        let buyer = UserId::new(63);
        let shard = store.for_user(buyer);
        for variant in &item.variants {
            let line = CartItem {
                variant_id: variant.id,
                product_id: item.product.id,
                quantity: 1,
                added_at_ms: 1,
            };
            let added = shard.add_to_cart(buyer, &line, 10, 10).await.unwrap();
            assert_eq!(added, CartChange::Done { quantity: 1 });
        }
        let version = shard.cart(buyer).await.unwrap().version;
        let claim = |key: String| IdempotencyClaim {
            key,
            request_hash: b"same request".to_vec(),
            expires_at_ms: 1_000_000,
        };

        let checkout = |i: usize| OrderId::new(60_000 + i as u64);
        let bare = store.bare_shard(store.user_shard(buyer)).await;
        let outcomes = race(12, |i| {
            let (shard, item) = (bare.clone(), item.clone());
            let claim = claim(format!("key-{i}"));
            async move {
                let order = pending_order(checkout(i), buyer, &item);
                shard.start_order(&order, Some(&claim), Some(version)).await.unwrap()
            }
        })
        .await;
        let started: Vec<usize> = (0..12)
            .filter(|&i| outcomes[i] == StartOutcome::Started)
            .collect();
        assert_eq!(started.len(), 1, "{outcomes:?}");
        let winner = checkout(started[0]);
        for (i, outcome) in outcomes.iter().enumerate() {
            if i != started[0] {
                assert_eq!(*outcome, StartOutcome::CartBusy(winner), "caller {i}");
                let lost = shard.idempotency(buyer, &format!("key-{i}")).await.unwrap();
                assert_eq!(lost, None, "a refused checkout kept its key");
            }
        }
        let kept = shard.idempotency(buyer, &format!("key-{}", started[0])).await;
        assert_eq!(kept.unwrap().unwrap().order_id, Some(winner));
        let orders = shard.orders_of_buyer(buyer, None, 100).await.unwrap();
        assert_eq!(orders.iter().map(|o| o.id).collect::<Vec<_>>(), [winner]);
        assert_eq!(shard.cart(buyer).await.unwrap().checkout, Some(winner));
        let mut created = 0;
        for i in 0..12 {
            created += events_about(&shard, checkout(i)).await.len();
        }
        assert_eq!(created, 1, "one order.created in all");
        // While the order holds the cart, the cart cannot change.
        let extra = CartItem {
            variant_id: VariantId::new(1),
            product_id: item.product.id,
            quantity: 1,
            added_at_ms: 2,
        };
        assert_eq!(
            shard.add_to_cart(buyer, &extra, 10, 10).await.unwrap(),
            CartChange::Busy(winner)
        );

        // One idempotency key, twelve requests (no cart: a retried API call).
        let retried = |i: usize| OrderId::new(70_000 + i as u64);
        let outcomes = race(12, |i| {
            let (shard, item) = (bare.clone(), item.clone());
            let claim = claim("the-key".to_owned());
            async move {
                let order = pending_order(retried(i), buyer, &item);
                shard.start_order(&order, Some(&claim), None).await.unwrap()
            }
        })
        .await;
        let started: Vec<usize> = (0..12)
            .filter(|&i| outcomes[i] == StartOutcome::Started)
            .collect();
        assert_eq!(started.len(), 1, "{outcomes:?}");
        let first = retried(started[0]);
        for outcome in &outcomes {
            if let StartOutcome::Duplicate(record) = outcome {
                assert_eq!(record.order_id, Some(first));
                assert_eq!(record.key, "the-key");
                assert_eq!(record.response, None);
            } else {
                assert_eq!(*outcome, StartOutcome::Started);
            }
        }
        let orders = shard.orders_of_buyer(buyer, None, 100).await.unwrap();
        assert_eq!(orders.len(), 2, "{orders:?}");
        // One idempotency record per order: the losers' claims were rolled back.
        let index = store.user_shard(buyer);
        assert_eq!(store.scalar(index, "SELECT COUNT(*) FROM idempotency").await, 2);
        bare.close().await;
    }
}

conformance! {
    /// Forty users claim one email at once, five emails over: each time one gets it, every
    /// other is told who has it, and one directory row is written per email.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_email_claims_leave_one_holder(backend) {
        let store = backend.open(2).await;
        for round in 0..5u64 {
            let index = format!("email-{round}").into_bytes();
            let outcomes = race(40, |i| {
                let (store, index) = (store.shared(), index.clone());
                async move {
                    let user = UserId::new(1_000 * round + i as u64 + 1);
                    (user, store.directory().claim_email(&index, user, 5).await.unwrap())
                }
            })
            .await;
            let holders: Vec<UserId> = outcomes
                .iter()
                .filter(|(_, claim)| *claim == EmailClaim::Claimed)
                .map(|(user, _)| *user)
                .collect();
            assert_eq!(holders.len(), 1, "round {round}: {outcomes:?}");
            for (_, claim) in &outcomes {
                if *claim != EmailClaim::Claimed {
                    assert_eq!(
                        *claim,
                        EmailClaim::Taken {
                            by: holders[0],
                            claimed_at_ms: 5
                        }
                    );
                }
            }
            assert_eq!(store.directory().lookup_email(&index).await.unwrap(), Some(holders[0]));
        }
        assert_eq!(store.scalar(0, "SELECT COUNT(*) FROM email_directory").await, 5);
    }
}

conformance! {
    /// Twenty renames of one product at its version 1 at once: exactly one applies and writes
    /// its event, the rest see version 2. Then variant inserts racing deletes of the product,
    /// all at version 2: one wins, and one event is written.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_at_one_version_exactly_one_wins(backend) {
        let store = backend.open(1).await;
        let products = catalog(2);
        store.insert_products(products.clone(), 0).await.unwrap();
        let id = products[0].product.id;
        let count_topic = |events: &[OutboxEvent], topic: &str| {
            events.iter().filter(|e| e.topic == topic).count()
        };

        let outcomes = race(20, |i| {
            let store = store.shared();
            async move {
                let patch = ProductPatch {
                    name: Some(format!("Name {i}")),
                    ..ProductPatch::default()
                };
                store.for_product(id).update_product(id, 1, &patch, 10).await.unwrap()
            }
        })
        .await;
        let done = outcomes
            .iter()
            .filter(|o| matches!(o, WriteOutcome::Done(Some(_))))
            .count();
        let stale = outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::VersionMismatch { current: 2 })
            .count();
        assert_eq!((done, stale), (1, 19), "{outcomes:?}");
        let events = events_about(&store.for_product(id), id).await;
        assert_eq!(count_topic(&events, "product.updated"), 1);

        let outcomes = race(20, |i| {
            let store = store.shared();
            async move {
                let shard = store.for_product(id);
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
                    shard.insert_variant(&variant, 2, 20).await.unwrap()
                } else {
                    shard.delete_product(id, 2, 20).await.unwrap()
                }
            }
        })
        .await;
        let winners: Vec<&WriteOutcome> = outcomes
            .iter()
            .filter(|o| matches!(o, WriteOutcome::Done(_)))
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let events = events_about(&store.for_product(id), id).await;
        let new = count_topic(&events, "variant.created") + count_topic(&events, "product.deleted");
        assert_eq!(new, 1, "one write, one event");
        let losers = outcomes.iter().filter(|o| !matches!(o, WriteOutcome::Done(_)));
        match winners[0] {
            WriteOutcome::Done(None) => {
                // The delete won: every other racer found nothing.
                assert!(losers.clone().all(|o| *o == WriteOutcome::NotFound), "{outcomes:?}");
                assert_eq!(store.product_with_variants(id).await.unwrap(), None);
            }
            WriteOutcome::Done(Some(after)) => {
                assert_eq!(after.variants.len(), 3);
                assert!(
                    losers.clone().all(|o| *o == WriteOutcome::VersionMismatch { current: 3 }),
                    "{outcomes:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

conformance! {
    /// Twelve restocks of one variant at once, each retrying at the version it reads until it
    /// applies: every one lands once, and their `stock.changed` events chain, each replacing
    /// the level the previous one set.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_restocks_chain_their_stock_changed_events(backend) {
        let store = backend.open(1).await;
        let products = catalog(2);
        store.insert_products(products.clone(), 0).await.unwrap();
        let (id, variant) = (products[1].product.id, products[1].variants[1].id);
        let start = products[1].variants[1].stock_level;
        let tasks = 12;

        let attempts: Vec<usize> = race(tasks, |i| {
            let store = store.shared();
            async move {
                let patch = VariantPatch {
                    stock_level: Some(100 + i as i64),
                    ..VariantPatch::default()
                };
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let version = store
                        .product_with_variants(id)
                        .await
                        .unwrap()
                        .unwrap()
                        .product
                        .version;
                    match store
                        .for_product(id)
                        .update_variant(id, variant, version, &patch, 1)
                        .await
                        .unwrap()
                    {
                        WriteOutcome::Done(_) => return attempts,
                        WriteOutcome::VersionMismatch { .. } => continue,
                        WriteOutcome::NotFound => panic!("the variant exists"),
                    }
                }
            }
        })
        .await;
        assert!(attempts.iter().all(|a| *a >= 1));

        let events = events_about(&store.for_product(id), id).await;
        let chain: Vec<(i64, i64)> = events
            .iter()
            .filter(|e| e.topic == "stock.changed")
            .map(|e| {
                let body: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
                (
                    body["on_hand_before"].as_i64().unwrap(),
                    body["on_hand"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(chain.len(), tasks, "one stock.changed per restock");
        assert_eq!(chain[0].0, start);
        for pair in chain.windows(2) {
            assert_eq!(pair[1].0, pair[0].1, "each restock replaces the previous level");
        }
        let after = store.product_with_variants(id).await.unwrap().unwrap();
        assert_eq!(after.product.version, 1 + tasks as i64);
        let level = after.variants.iter().find(|v| v.id == variant).unwrap();
        assert_eq!(level.stock_level, chain.last().unwrap().1);
        let mut levels: Vec<i64> = chain.iter().map(|(_, to)| *to).collect();
        levels.sort_unstable();
        assert_eq!(levels, (100..100 + tasks as i64).collect::<Vec<_>>(), "each restock once");
        assert_eq!(topics(&events).iter().filter(|t| **t == "variant.updated").count(), tasks);
    }
}

conformance! {
    /// One refresh token presented twenty times at once: one rotation, one reuse (which ends
    /// the session), every other presentation rejected, and one successor stored.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_presentations_of_one_refresh_token_rotate_it_once(backend) {
        let store = backend.open(1).await;
        let shard = store.directory();
        let (user_id, session) = (UserId::new(51), SessionId::new(52));
        shard.insert_user(&user(user_id, b"r")).await.unwrap();
        let first = RefreshRecord {
            token_hash: b"race-1".to_vec(),
            session,
            issued_at_ms: 0,
            expires_at_ms: 1_000,
        };
        shard.create_session(session, user_id, &first).await.unwrap();
        let tasks = 20;
        let outcomes = race(tasks, |i| {
            let store = store.shared();
            async move {
                let next = RefreshRecord {
                    token_hash: format!("race-next-{i}").into_bytes(),
                    session,
                    issued_at_ms: 10,
                    expires_at_ms: 1_000,
                };
                store.directory().rotate_refresh(b"race-1", &next, 10).await.unwrap()
            }
        })
        .await;
        let count = |wanted: RefreshOutcome| outcomes.iter().filter(|o| **o == wanted).count();
        let user = user_id;
        assert_eq!(count(RefreshOutcome::Rotated { session, user }), 1, "{outcomes:?}");
        assert_eq!(count(RefreshOutcome::Reused { session, user }), 1, "{outcomes:?}");
        assert_eq!(count(RefreshOutcome::Rejected), tasks - 2, "{outcomes:?}");
        assert_eq!(shard.active_session(session).await.unwrap(), None);
        assert_eq!(
            store
                .scalar(0, "SELECT COUNT(*) FROM refresh_tokens WHERE session_id = 52")
                .await,
            2,
            "the first token and its one successor"
        );
    }
}

/// `tasks` claimants of generator numbers 100..=109 released at once.
async fn claim_at_once(store: &TestStore, tasks: usize, round: usize) -> Vec<Option<u16>> {
    race(tasks, |i| {
        let store = store.shared();
        async move {
            store
                .directory()
                .claim_generator(&format!("p{round}-{i}"), 100..=109, 5_000_000, 30_000)
                .await
                .unwrap()
        }
    })
    .await
}

conformance! {
    /// As many claimants as generator numbers at once: each gets its own (one that loses a
    /// number to another moves on to the next free one); then more claimants at once all get
    /// none.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_generator_claims_each_get_a_number_of_their_own(backend) {
        let store = backend.open(1).await;
        let claimed = claim_at_once(&store, 10, 0).await;
        let mut numbers: Vec<u16> = claimed.iter().flatten().copied().collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (100..=109).collect::<Vec<_>>(), "{claimed:?}");
        let late = claim_at_once(&store, 8, 1).await;
        assert!(late.iter().all(Option::is_none), "{late:?}");
        let held = store.directory().held_generators(5_000_000).await.unwrap();
        assert_eq!(held, (100..=109).collect::<Vec<_>>());
    }
}
