//! The two backends side by side: the same calls on an SQLite store and a PostgreSQL one
//! must give the same answers and write the same events in the same order, compared with each
//! other (not only each with a fixed expectation), so a difference the other cases do not
//! think of asking about still shows.
//!
//! Each test runs only with `BAZAAR_TEST_POSTGRES_URL` set (it prints that it was skipped
//! otherwise); the stores are [`Backend::open`]'s, so the scratch databases are dropped after.

use serde_json::Value;

use super::*;

/// Both stores of one comparison, of `shards` shards each, or `None` (after the skip notice)
/// when no PostgreSQL server is configured.
async fn both(shards: usize) -> Option<(TestStore, TestStore)> {
    if !Backend::Postgres.available() {
        return None;
    }
    let (pg, lite) = tokio::join!(Backend::Postgres.open(shards), Backend::Sqlite.open(shards));
    Some((pg, lite))
}

/// An event as both backends must write it: everything but its id and event id.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    topic: String,
    key: String,
    payload: Value,
    created_at_ms: i64,
}

/// Every event in `shard`'s outbox, oldest first.
async fn written(shard: &dyn Shard) -> Vec<Written> {
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

#[tokio::test]
async fn products_round_trip_with_their_variants_alike() {
    let Some((pg, lite)) = both(3).await else {
        return;
    };
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
    let events_before = written(&pg.for_product(products[0].product.id)).await.len();
    // (Shard-level, so both products go to the one shard whatever the ring says.)
    let mut batch = catalog(61).split_off(60);
    batch.push(products[0].clone());
    let err = pg
        .shard_at(shard)
        .expect("an open shard")
        .insert_products(&batch, 8)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(pg.count_products().await.unwrap(), 60);
    assert_eq!(
        written(&pg.for_product(products[0].product.id)).await.len(),
        events_before
    );
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
async fn listings_page_alike_for_every_sort_and_filter() {
    let Some((pg, lite)) = both(3).await else {
        return;
    };
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
    let shard = store.shard_at(store.shard_of(id)).expect("an open shard");
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
async fn version_checked_writes_write_the_same_events_in_the_same_order() {
    let Some((pg, lite)) = both(2).await else {
        return;
    };
    let products = catalog(4);
    pg.insert_products(products.clone(), 50).await.unwrap();
    lite.insert_products(products.clone(), 50).await.unwrap();
    edit_sequence(&pg, &products).await;
    edit_sequence(&lite, &products).await;

    let id = products[0].product.id;
    let index = pg.shard_of(id);
    let events = written(pg.shard_at(index).unwrap()).await;
    let expected = written(lite.shard_at(index).unwrap()).await;
    assert_eq!(events, expected);
    let topics: Vec<&str> = events
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
    let changed: Vec<(i64, i64)> = events
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

#[tokio::test]
async fn users_round_trip_and_a_role_change_writes_the_same_events() {
    let Some((pg, lite)) = both(1).await else {
        return;
    };
    for store in [&pg, &lite] {
        let shard = store.directory();
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
    let events = written(pg.shard_at(0).unwrap()).await;
    assert_eq!(events, written(lite.shard_at(0).unwrap()).await);
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["user.created", "user.role_changed", "user.created"]
    );
    assert_eq!(events[1].created_at_ms, 3);
    pg.close().await;
}

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
async fn an_orders_life_reads_the_same_on_both() {
    let Some((pg, lite)) = both(1).await else {
        return;
    };
    let ids = IdGenerator::deterministic(3, id::EPOCH_MS);
    let product = product_with_stock(&ids, Some(UserId::new(42)), &[10, 4]);
    let mut transcripts = Vec::new();
    let mut outboxes = Vec::new();
    for store in [&lite, &pg] {
        store
            .insert_products(vec![product.clone()], 0)
            .await
            .unwrap();
        let shard = store.shard_at(0).unwrap();
        let created = written(shard).await.len(); // the catalog's own events
        transcripts.push(life_of_an_order(shard, &product).await);
        outboxes.push(written(shard).await.split_off(created));
    }
    let (expected, got) = (&transcripts[0], &transcripts[1]);
    for (expected, got) in expected.iter().zip(got) {
        assert_eq!(expected, got);
    }
    assert_eq!(expected.len(), got.len());
    assert_eq!(outboxes[1], outboxes[0]);
    // The refusals wrote nothing: created, reserved ×2, paid, shipped, created, reserved,
    // cancelled, released.
    let topics: Vec<&str> = outboxes[0].iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "order.created",
            "stock.reserved",
            "stock.reserved",
            "order.paid",
            "order.shipped",
            "order.created",
            "stock.reserved",
            "order.cancelled",
            "stock.released",
        ],
        "{:#?}",
        outboxes[0]
    );
    pg.close().await;
}
