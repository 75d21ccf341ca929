//! Races at the store level: many callers released together by a barrier against one stock
//! row, one order, one cart, one email. Each case counts the effects (units held, events
//! written, rows created) rather than only the answers, so a backend whose check-then-act
//! is not atomic fails here, and each runs on a multi-threaded runtime so the callers
//! really overlap.

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
        let reserved = events_about(shard, product).await;
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
    /// deadlock if they lock rows in the order given): each order holds both lines or neither,
    /// and only the scarce variant's 5 units decide how many succeed.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_multi_line_reservations_are_all_or_nothing(backend) {
        let store = backend.open(2).await;
        let item = stocked(&[5, 100]);
        store.insert_products(vec![item.clone()], 1).await.unwrap();
        let (scarce, plenty) = (reservation(&item, 0, 1), reservation(&item, 1, 1));

        let outcomes = race(40, |i| {
            let store = store.shared();
            let lines = if i % 2 == 0 { [scarce, plenty] } else { [plenty, scarce] };
            async move {
                let (order, buyer) = (OrderId::new(500 + i as u64), UserId::new(900 + i as u64));
                store.reserve(order, buyer, &lines, 60_000, 100).await.unwrap()
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
        let reserved_events = events_about(shard, product)
            .await
            .into_iter()
            .filter(|e| e.topic == "stock.reserved")
            .count();
        assert_eq!(reserved_events, 10, "two per order that holds its lines");
    }
}

conformance! {
    /// Settling one order from many callers at once (the checkout and the sweeper, twice
    /// over), some committing and some releasing: every unit moves back to stock exactly once.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_settlements_of_one_order_move_each_unit_once(backend) {
        let store = backend.open(2).await;
        let item = stocked(&[5, 5]);
        store.insert_products(vec![item.clone()], 1).await.unwrap();
        let product = item.product.id;
        let shard_index = store.shard_of(product);
        let lines = [reservation(&item, 0, 2), reservation(&item, 1, 3)];

        for (round, mix) in [false, true].into_iter().enumerate() {
            let order = OrderId::new(700 + round as u64);
            let reserved = store.reserve(order, UserId::new(5), &lines, 60_000, 10).await;
            assert_eq!(reserved.unwrap(), ReserveOutcome::Reserved);
            let moved = race(10, |i| {
                let store = store.shared();
                // The second round races commits against releases.
                let settlement = if mix && i % 2 == 0 { Settlement::Commit } else { Settlement::Release };
                async move {
                    let shard = store.shard_at(shard_index).unwrap();
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
            let released_events: Vec<OutboxEvent> = events_about(store.for_product(product), product)
                .await
                .into_iter()
                .filter(|e| e.topic == "stock.released" && order_of(e) == order)
                .collect();
            assert_eq!(released_events.len(), 2, "round {round}");
        }
    }
}

conformance! {
    /// Sixteen callers move one pending order at once, half to `paid`, half to `cancelled`:
    /// exactly one applies, the rest are refused with the winner's status, and one event
    /// announces it.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_transitions_of_one_order_apply_exactly_once(backend) {
        const PENDING: &[OrderStatus] = &[OrderStatus::Pending];
        let store = backend.open(2).await;
        let item = stocked(&[3]);
        let buyer = UserId::new(77);
        let shard = store.for_user(buyer);
        for round in 0..5u64 {
            let order = OrderId::new(8_000 + round);
            let record = pending_order(order, buyer, &item);
            let started = shard.start_order(&record, None, None).await.unwrap();
            assert_eq!(started, StartOutcome::Started);

            let outcomes = race(16, |i| {
                let store = store.shared();
                let to = if i % 2 == 0 { OrderStatus::Paid } else { OrderStatus::Cancelled };
                async move {
                    let change = status_change(order, buyer, PENDING, to);
                    store.for_user(buyer).transition(&change).await.unwrap()
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
                topics(&events_about(shard, order).await),
                ["order.created", crate::orders::status_topic(winner)],
                "round {round}"
            );
        }
    }
}

conformance! {
    /// A paid order of two sellers' lines, refunded by some callers while others ship one
    /// seller's line, all at once: exactly one of them applies. Either the order is refunded
    /// with nothing shipped, or one line is shipped and the order, still paid, is never
    /// refunded (a shipped line is not coming back), whichever statement ran first.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn a_refund_racing_a_shipment_lets_exactly_one_apply(backend) {
        const PAID: &[OrderStatus] = &[OrderStatus::Paid];
        let store = backend.open(2).await;
        let item = stocked(&[3, 3]);
        let buyer = UserId::new(78);
        let (alice, bob) = (UserId::new(81), UserId::new(82));
        let shard = store.for_user(buyer);
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
                let store = store.shared();
                async move {
                    let shard = store.for_user(buyer);
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
            let events = topics(&events_about(shard, order).await).join(" ");
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
    }
}

conformance! {
    /// Twenty different variants added to one cart at once, with room for five lines; then
    /// twenty single units of one variant, with room for seven. The limits hold exactly, and
    /// only the adds that applied moved the cart's version.
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
        let outcomes = race(20, |i| {
            let store = store.shared();
            async move {
                let shard = store.for_user(lines_buyer);
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
        let outcomes = race(20, |_| {
            let store = store.shared();
            async move {
                let shard = store.for_user(units_buyer);
                shard.add_to_cart(units_buyer, &item(100), 7, 5).await.unwrap()
            }
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
    }
}

conformance! {
    /// Twelve checkouts of one cart at once, each with its own order and idempotency key:
    /// exactly one order is written and holds the cart; then twelve requests with one
    /// idempotency key: exactly one order again, and every other caller is shown its claim.
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
        let outcomes = race(12, |i| {
            let (store, item) = (store.shared(), item.clone());
            let claim = claim(format!("key-{i}"));
            async move {
                let order = pending_order(checkout(i), buyer, &item);
                let shard = store.for_user(buyer);
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
            created += events_about(shard, checkout(i)).await.len();
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
            let (store, item) = (store.shared(), item.clone());
            let claim = claim("the-key".to_owned());
            async move {
                let order = pending_order(retried(i), buyer, &item);
                let shard = store.for_user(buyer);
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
    }
}

conformance! {
    /// Ten users claim one email at once: one gets it, the other nine are told who has it.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_email_claims_leave_one_holder(backend) {
        let store = backend.open(2).await;
        let outcomes = race(10, |i| {
            let store = store.shared();
            async move {
                let user = UserId::new(300 + i as u64);
                (user, store.directory().claim_email(b"shared", user, 5).await.unwrap())
            }
        })
        .await;
        let holders: Vec<UserId> = outcomes
            .iter()
            .filter(|(_, claim)| *claim == EmailClaim::Claimed)
            .map(|(user, _)| *user)
            .collect();
        assert_eq!(holders.len(), 1, "{outcomes:?}");
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
        assert_eq!(store.directory().lookup_email(b"shared").await.unwrap(), Some(holders[0]));
    }
}
