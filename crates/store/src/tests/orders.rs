//! Carts, checkouts, reservations, order life cycles and listings, one caller at a time: what
//! every [`OrderShard`] method answers and what it leaves behind (the races are in
//! `concurrency.rs`).

use super::concurrency::{
    events_about, order_of, pending_order, reservation, status_change, stocked, topics,
};
use super::*;

fn cart_item(variant: u64, quantity: i64, added_at_ms: i64) -> CartItem {
    CartItem {
        variant_id: VariantId::new(variant),
        product_id: ProductId::new(4_000),
        quantity,
        added_at_ms,
    }
}

conformance! {
    /// Adds merge into a line up to its limit, the cart's line limit holds, edits and removals
    /// of missing lines change nothing, and every change that applied moves the version by one.
    /// A checkout starts only from the version it priced, then holds the cart until its order
    /// leaves `pending`.
    async fn a_cart_changes_only_while_no_checkout_holds_it(backend) {
        let store = backend.open(2).await;
        let buyer = UserId::new(40);
        let shard = store.for_user(buyer);
        assert_eq!(shard.cart(buyer).await.unwrap(), StoredCart::default());

        let add = |variant, quantity, at| {
            let item = cart_item(variant, quantity, at);
            async move { shard.add_to_cart(buyer, &item, 10, 2).await.unwrap() }
        };
        assert_eq!(add(1, 2, 1).await, CartChange::Done { quantity: 2 });
        assert_eq!(add(1, 3, 5).await, CartChange::Done { quantity: 5 });
        assert_eq!(add(1, 6, 6).await, CartChange::TooMany { quantity: 11 });
        assert_eq!(add(2, 1, 2).await, CartChange::Done { quantity: 1 });
        assert_eq!(add(3, 1, 3).await, CartChange::TooManyLines);
        let cart = shard.cart(buyer).await.unwrap();
        assert_eq!(
            cart.items,
            [cart_item(1, 5, 1), cart_item(2, 1, 2)],
            "oldest line first, keeping when it was first added"
        );
        assert_eq!(cart.version, 3);

        let (one, two, three) = (VariantId::new(1), VariantId::new(2), VariantId::new(3));
        assert_eq!(shard.set_cart_quantity(buyer, one, 4).await.unwrap(), CartEdit::Done);
        assert_eq!(shard.set_cart_quantity(buyer, three, 4).await.unwrap(), CartEdit::NoSuchLine);
        assert_eq!(shard.remove_from_cart(buyer, two).await.unwrap(), CartEdit::Done);
        assert_eq!(shard.remove_from_cart(buyer, two).await.unwrap(), CartEdit::NoSuchLine);
        let cart = shard.cart(buyer).await.unwrap();
        assert_eq!(cart.items, [cart_item(1, 4, 1)]);
        assert_eq!(cart.version, 5, "edits of missing lines moved the version");

        let item = stocked(&[3]);
        let stale = pending_order(OrderId::new(1), buyer, &item);
        assert_eq!(
            shard.start_order(&stale, None, Some(4)).await.unwrap(),
            StartOutcome::CartChanged
        );
        assert_eq!(shard.order(stale.id).await.unwrap(), None, "a refused start wrote");
        let order = pending_order(OrderId::new(2), buyer, &item);
        assert_eq!(
            shard.start_order(&order, None, Some(5)).await.unwrap(),
            StartOutcome::Started
        );
        let held = CartChange::Busy(order.id);
        assert_eq!(add(4, 1, 9).await, held);
        assert_eq!(
            shard.set_cart_quantity(buyer, one, 1).await.unwrap(),
            CartEdit::Busy(order.id)
        );
        assert_eq!(
            shard.remove_from_cart(buyer, one).await.unwrap(),
            CartEdit::Busy(order.id)
        );
        let other = pending_order(OrderId::new(3), buyer, &item);
        assert_eq!(
            shard.start_order(&other, None, Some(5)).await.unwrap(),
            StartOutcome::CartBusy(order.id)
        );
        let cart = shard.cart(buyer).await.unwrap();
        assert_eq!((cart.version, cart.checkout), (5, Some(order.id)));

        // Cancelling releases the cart as it was: nothing bought, nothing cleared.
        let cancel = status_change(order.id, buyer, &[OrderStatus::Pending], OrderStatus::Cancelled);
        assert!(matches!(
            shard.transition(&cancel).await.unwrap(),
            TransitionOutcome::Done(_)
        ));
        let cart = shard.cart(buyer).await.unwrap();
        assert_eq!(cart.checkout, None);
        assert_eq!((cart.items.len(), cart.version), (1, 5));
        assert_eq!(add(4, 1, 9).await, CartChange::Done { quantity: 1 });
    }
}

conformance! {
    /// The checkout's idempotency record is claimed with its order, shown to a retry, and
    /// completed by the transition to `paid`, which also clears the bought lines; settling
    /// and the transition rules are conditional on the stored status.
    async fn a_paid_checkout_completes_its_record_and_clears_what_it_bought(backend) {
        let store = backend.open(2).await;
        let buyer = UserId::new(41);
        let shard = store.for_user(buyer);
        for (variant, at) in [(1, 1), (2, 2)] {
            let item = cart_item(variant, 1, at);
            shard.add_to_cart(buyer, &item, 10, 10).await.unwrap();
        }
        let version = shard.cart(buyer).await.unwrap().version;
        let claim = IdempotencyClaim {
            key: "checkout-1".into(),
            request_hash: b"hash".to_vec(),
            expires_at_ms: 5_000,
        };
        let order = pending_order(OrderId::new(10), buyer, &stocked(&[3]));
        assert_eq!(
            shard.start_order(&order, Some(&claim), Some(version)).await.unwrap(),
            StartOutcome::Started
        );
        let record = IdempotencyRecord {
            user_id: buyer,
            key: claim.key.clone(),
            request_hash: claim.request_hash.clone(),
            order_id: Some(order.id),
            response: None,
            created_at_ms: order.created_at_ms,
            expires_at_ms: claim.expires_at_ms,
        };
        assert_eq!(shard.idempotency(buyer, &claim.key).await.unwrap(), Some(record.clone()));
        assert_eq!(
            shard.idempotency(UserId::new(42), &claim.key).await.unwrap(),
            None,
            "keys are per user"
        );
        let retry = pending_order(OrderId::new(11), buyer, &stocked(&[3]));
        assert_eq!(
            shard.start_order(&retry, Some(&claim), None).await.unwrap(),
            StartOutcome::Duplicate(record.clone())
        );
        assert_eq!(shard.order(retry.id).await.unwrap(), None);
        let stored = shard.order(order.id).await.unwrap().unwrap();
        assert_eq!(stored.idempotency_key.as_deref(), Some("checkout-1"));
        assert_eq!(
            stored,
            OrderRecord {
                idempotency_key: Some("checkout-1".into()),
                ..order.clone()
            }
        );

        let response = StoredResponse {
            status: 201,
            body: b"{\"id\":\"10\"}".to_vec(),
        };
        let pay = Transition {
            payment_ref: Some("pay-1"),
            respond: Some((&claim.key, &response)),
            clear_cart: &[VariantId::new(1)],
            ..status_change(order.id, buyer, &[OrderStatus::Pending], OrderStatus::Paid)
        };
        let TransitionOutcome::Done(paid) = shard.transition(&pay).await.unwrap() else {
            panic!("a pending order pays");
        };
        assert_eq!(paid.status, OrderStatus::Paid);
        assert_eq!(paid.payment_ref.as_deref(), Some("pay-1"));
        assert_eq!((paid.settled, paid.updated_at_ms), (false, pay.now_ms));
        assert_eq!(shard.order(order.id).await.unwrap(), Some(paid.clone()));
        let cart = shard.cart(buyer).await.unwrap();
        assert_eq!(cart.items, [cart_item(2, 1, 2)], "only the bought line goes");
        assert_eq!((cart.version, cart.checkout), (version + 1, None));
        let completed = shard.idempotency(buyer, &claim.key).await.unwrap().unwrap();
        assert_eq!(completed.response, Some(response.clone()));
        let other = StoredResponse {
            status: 500,
            body: Vec::new(),
        };
        assert!(
            !shard.complete_idempotency(buyer, &claim.key, &other).await.unwrap(),
            "the first response stays"
        );
        assert_eq!(
            shard.idempotency(buyer, &claim.key).await.unwrap().unwrap().response,
            Some(response)
        );

        // The transition rules: the buyer must match, the status must be one of `from`.
        let mut wrong_buyer = status_change(order.id, UserId::new(42), &[OrderStatus::Paid], OrderStatus::Refunded);
        assert_eq!(shard.transition(&wrong_buyer).await.unwrap(), TransitionOutcome::NotFound);
        wrong_buyer.order = OrderId::new(999);
        wrong_buyer.buyer = buyer;
        assert_eq!(shard.transition(&wrong_buyer).await.unwrap(), TransitionOutcome::NotFound);
        let again = status_change(order.id, buyer, &[OrderStatus::Pending], OrderStatus::Cancelled);
        assert_eq!(
            shard.transition(&again).await.unwrap(),
            TransitionOutcome::Refused(OrderStatus::Paid)
        );

        // Settling is conditional on the status it was decided for, and happens once.
        assert!(!shard.mark_settled(order.id, OrderStatus::Pending, 30).await.unwrap());
        assert!(shard.mark_settled(order.id, OrderStatus::Paid, 30).await.unwrap());
        assert!(!shard.mark_settled(order.id, OrderStatus::Paid, 31).await.unwrap());
        let settled = shard.order(order.id).await.unwrap().unwrap();
        assert!(settled.settled);
        assert_eq!(
            topics(&events_about(&shard, order.id).await),
            ["order.created", "order.paid"]
        );

        // Expired records go, live ones stay.
        assert_eq!(shard.purge_idempotency(claim.expires_at_ms - 1).await.unwrap(), 0);
        assert_eq!(shard.purge_idempotency(claim.expires_at_ms).await.unwrap(), 1);
        assert_eq!(shard.idempotency(buyer, &claim.key).await.unwrap(), None);
    }
}

conformance! {
    /// Stock held for an order moves held → committed → released, each unit once, an order
    /// that cannot have every line holds none, a repeated reservation holds nothing more, and
    /// held stock past its expiry is reported until it is settled.
    async fn reservations_hold_commit_and_release_each_unit_once(backend) {
        let store = backend.open(2).await;
        let item = stocked(&[3, 1]);
        store.insert_products(vec![item.clone()], 1).await.unwrap();
        let product = item.product.id;
        let (a, b) = (reservation(&item, 0, 2), reservation(&item, 1, 1));
        let shard = store.for_product(product);
        let account = |line: ReservationLine| store.stock_account(product, line.variant_id);
        let (order, buyer) = (OrderId::new(20), UserId::new(21));

        assert_eq!(
            store.reserve(order, buyer, &[a, b], 1_000, 10).await.unwrap(),
            ReserveOutcome::Reserved
        );
        let held_a = StockAccount { on_hand: 1, held: 2, committed: 0 };
        assert_eq!(account(a).await.unwrap(), held_a);
        assert_eq!(account(b).await.unwrap(), StockAccount { on_hand: 0, held: 1, committed: 0 });
        let short = [reservation(&item, 0, 1), reservation(&item, 1, 1)];
        assert_eq!(
            store.reserve(OrderId::new(22), buyer, &short, 1_000, 11).await.unwrap(),
            ReserveOutcome::OutOfStock { variant: b.variant_id, wanted: 1, available: 0 }
        );
        assert_eq!(account(a).await.unwrap(), held_a, "the refused order kept a line");
        assert_eq!(
            store.reserve(order, buyer, &[a, b], 1_000, 12).await.unwrap(),
            ReserveOutcome::Reserved
        );
        assert_eq!(account(a).await.unwrap(), held_a, "a repeat held more");
        assert_eq!(
            shard.stock_account(VariantId::new(123_456)).await.unwrap(),
            StockAccount::default()
        );

        assert!(shard.expired_reservations(999, 10).await.unwrap().is_empty());
        assert_eq!(shard.expired_reservations(1_000, 10).await.unwrap(), [(order, buyer)]);
        assert_eq!(shard.settle_reservations(order, Settlement::Hold, 20).await.unwrap(), 0);
        assert_eq!(shard.settle_reservations(order, Settlement::Commit, 20).await.unwrap(), 2);
        assert_eq!(shard.settle_reservations(order, Settlement::Commit, 21).await.unwrap(), 0);
        assert_eq!(account(a).await.unwrap(), StockAccount { on_hand: 1, held: 0, committed: 2 });
        assert!(
            shard.expired_reservations(5_000, 10).await.unwrap().is_empty(),
            "committed stock is not expired"
        );
        assert_eq!(shard.settle_reservations(order, Settlement::Release, 30).await.unwrap(), 2);
        assert_eq!(shard.settle_reservations(order, Settlement::Release, 31).await.unwrap(), 0);
        assert_eq!(account(a).await.unwrap(), StockAccount { on_hand: 3, held: 0, committed: 0 });
        assert_eq!(account(b).await.unwrap(), StockAccount { on_hand: 1, held: 0, committed: 0 });

        let written: Vec<OutboxEvent> = events_about(&shard, product)
            .await
            .into_iter()
            .filter(|e| e.topic.starts_with("stock."))
            .collect();
        assert_eq!(
            topics(&written),
            ["stock.reserved", "stock.reserved", "stock.released", "stock.released"]
        );
        assert!(written.iter().all(|e| order_of(e) == order));
        for released in &written[2..] {
            let body: serde_json::Value = serde_json::from_str(&released.payload).unwrap();
            assert_eq!(body["from"], "committed");
        }
    }
}

conformance! {
    /// An order whose lines sit on several shards is reserved and settled on each of them by
    /// the store, one call per shard.
    async fn the_store_settles_an_order_on_every_shard_its_lines_touch(backend) {
        let store = backend.open(4).await;
        let products = catalog(12);
        store.insert_products(products.clone(), 1).await.unwrap();
        // Two products with stock on two different shards.
        let first = products.iter().find(|p| p.variants[1].stock_level > 0).unwrap();
        let second = products
            .iter()
            .find(|p| p.variants[1].stock_level > 0 && store.shard_of(p.product.id) != store.shard_of(first.product.id))
            .expect("12 products span at least two shards");
        let lines = [reservation(first, 1, 1), reservation(second, 1, 1)];
        let (id, buyer) = (OrderId::new(30), UserId::new(31));
        assert_eq!(
            store.reserve(id, buyer, &lines, 1_000, 10).await.unwrap(),
            ReserveOutcome::Reserved
        );
        let mut order = pending_order(id, buyer, first);
        order.lines.truncate(0);
        for (item, line) in [first, second].into_iter().zip(&lines) {
            order.lines.push(OrderLine {
                variant_id: line.variant_id,
                product_id: item.product.id,
                seller_id: None,
                name: item.product.name.clone(),
                sku: item.variants[1].sku.clone(),
                unit_price: item.variants[1].price,
                quantity: 1,
                shipped_at_ms: None,
            });
        }
        assert_eq!(store.settle_reservations(&order, Settlement::Commit, 20).await.unwrap(), 2);
        assert_eq!(store.settle_reservations(&order, Settlement::Release, 30).await.unwrap(), 2);
        for (item, line) in [first, second].into_iter().zip(&lines) {
            assert_eq!(
                store.stock_account(item.product.id, line.variant_id).await.unwrap(),
                StockAccount {
                    on_hand: item.variants[1].stock_level,
                    held: 0,
                    committed: 0
                }
            );
        }
    }
}

conformance! {
    /// Sellers ship their own lines of a paid order; the order becomes `shipped` with its
    /// last line, and from its first shipped line it can no longer be refunded.
    async fn lines_ship_by_seller_and_a_shipped_line_is_never_refunded(backend) {
        let store = backend.open(2).await;
        let buyer = UserId::new(50);
        let shard = store.for_user(buyer);
        let (alice, bob) = (UserId::new(51), UserId::new(52));
        let mut order = pending_order(OrderId::new(55), buyer, &stocked(&[1, 1]));
        order.lines[0].seller_id = Some(alice);
        order.lines[1].seller_id = Some(bob);
        shard.start_order(&order, None, None).await.unwrap();
        assert_eq!(
            shard.ship_lines(order.id, Some(alice), 15).await.unwrap(),
            TransitionOutcome::Refused(OrderStatus::Pending),
            "a pending order does not ship"
        );
        let pay = status_change(order.id, buyer, &[OrderStatus::Pending], OrderStatus::Paid);
        shard.transition(&pay).await.unwrap();

        assert_eq!(
            shard.ship_lines(order.id, Some(UserId::new(53)), 30).await.unwrap(),
            TransitionOutcome::NotFound,
            "no line of this seller"
        );
        assert_eq!(
            shard.ship_lines(OrderId::new(999), None, 30).await.unwrap(),
            TransitionOutcome::NotFound
        );
        let TransitionOutcome::Done(part) = shard.ship_lines(order.id, Some(alice), 30).await.unwrap() else {
            panic!("alice ships her line");
        };
        assert_eq!(part.status, OrderStatus::Paid);
        assert_eq!(
            part.lines.iter().map(|l| l.shipped_at_ms).collect::<Vec<_>>(),
            [Some(30), None]
        );
        assert_eq!(shard.order(order.id).await.unwrap().unwrap().lines, part.lines);
        assert_eq!(
            shard.ship_lines(order.id, Some(alice), 31).await.unwrap(),
            TransitionOutcome::Refused(OrderStatus::Paid),
            "shipped already"
        );
        let refund = status_change(order.id, buyer, &[OrderStatus::Paid], OrderStatus::Refunded);
        assert_eq!(
            shard.transition(&refund).await.unwrap(),
            TransitionOutcome::Refused(OrderStatus::Shipped)
        );
        let TransitionOutcome::Done(all) = shard.ship_lines(order.id, Some(bob), 40).await.unwrap() else {
            panic!("bob ships his line");
        };
        assert_eq!((all.status, all.updated_at_ms), (OrderStatus::Shipped, 40));
        assert_eq!(
            all.lines.iter().map(|l| l.shipped_at_ms).collect::<Vec<_>>(),
            [Some(30), Some(40)]
        );
        assert_eq!(shard.order(order.id).await.unwrap(), Some(all));
        let deliver = status_change(order.id, buyer, &[OrderStatus::Shipped], OrderStatus::Delivered);
        assert!(matches!(
            shard.transition(&deliver).await.unwrap(),
            TransitionOutcome::Done(OrderRecord { status: OrderStatus::Delivered, .. })
        ));
        assert_eq!(
            topics(&events_about(&shard, order.id).await),
            ["order.created", "order.paid", "order.shipped", "order.delivered"]
        );
    }
}

conformance! {
    /// Orders list newest first, paged by id, per buyer, per seller and across all shards;
    /// an order is found with or without its buyer; the sweeper sees unsettled orders only.
    async fn orders_list_newest_first_by_buyer_seller_and_everywhere(backend) {
        let store = backend.open(3).await;
        let seller = UserId::new(99);
        let item = stocked(&[1]);
        let mut all = Vec::new();
        for (n, buyer) in [(5, UserId::new(60)), (2, UserId::new(61)), (2, UserId::new(62))] {
            for i in 0..n {
                let id = OrderId::new(100 + all.len() as u64);
                let mut order = pending_order(id, buyer, &item);
                order.lines[0].seller_id = (i % 2 == 0).then_some(seller);
                order.updated_at_ms = 10 + all.len() as i64;
                let started = store.for_user(buyer).start_order(&order, None, None).await;
                assert_eq!(started.unwrap(), StartOutcome::Started);
                all.push(order);
            }
        }
        let ids = |orders: &[OrderRecord]| orders.iter().map(|o| o.id.get()).collect::<Vec<_>>();
        let first = UserId::new(60);
        let shard = store.for_user(first);
        assert_eq!(ids(&shard.orders_of_buyer(first, None, 3).await.unwrap()), [104, 103, 102]);
        assert_eq!(
            ids(&shard.orders_of_buyer(first, Some(OrderId::new(102)), 3).await.unwrap()),
            [101, 100]
        );
        assert_eq!(
            shard.orders_of_buyer(first, None, 10).await.unwrap(),
            all[..5].iter().rev().cloned().collect::<Vec<_>>(),
            "listed orders come with their lines"
        );
        let mut sold: Vec<u64> = all
            .iter()
            .filter(|o| o.lines[0].seller_id == Some(seller))
            .map(|o| o.id.get())
            .collect();
        sold.reverse();
        assert_eq!(ids(&store.orders_everywhere(Some(seller), None, 100).await.unwrap()), sold);
        let everything: Vec<u64> = (100..109).rev().collect();
        assert_eq!(ids(&store.orders_everywhere(None, None, 100).await.unwrap()), everything);
        assert_eq!(
            ids(&store.orders_everywhere(None, Some(OrderId::new(105)), 2).await.unwrap()),
            [104, 103]
        );
        for order in &all {
            let found = Some(order.clone());
            assert_eq!(store.order(order.id, Some(order.buyer_id)).await.unwrap(), found);
            assert_eq!(store.order(order.id, None).await.unwrap(), found);
        }
        assert_eq!(store.order(OrderId::new(1), None).await.unwrap(), None);

        // Unsettled and updated before the bound (exclusive), oldest update first.
        let unsettled = |bound| {
            let store = &store;
            async move {
                let mut found = Vec::new();
                for shard in store.shards() {
                    let page = shard.unsettled_orders(bound, 100).await.unwrap();
                    assert!(page.windows(2).all(|w| w[0].updated_at_ms <= w[1].updated_at_ms));
                    found.extend(page.iter().map(|o| o.id.get()));
                }
                found.sort_unstable();
                found
            }
        };
        assert_eq!(unsettled(10).await, Vec::<u64>::new());
        assert_eq!(unsettled(13).await, [100, 101, 102]);
        assert!(shard.mark_settled(OrderId::new(101), OrderStatus::Pending, 5).await.unwrap());
        assert_eq!(unsettled(13).await, [100, 102]);
        assert_eq!(unsettled(i64::MAX).await.len(), 8);
    }
}
