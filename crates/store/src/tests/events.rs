//! The outbox: each change writes its event in its own transaction and a refused one writes
//! none; keys are aggregates; the relay's reads, marks, pruning and leases; consumers'
//! at-most-once records.

use std::collections::HashSet;

use serde_json::{Value, json};
use tokio::sync::Barrier;

use super::*;

/// Every event on `shard`, oldest first.
async fn events(shard: &dyn Shard) -> Vec<OutboxEvent> {
    shard.outbox(0, 100_000).await.unwrap()
}

/// Events on every shard of `store`.
async fn all_events(store: &Store) -> Vec<OutboxEvent> {
    let mut all = Vec::new();
    for shard in store.shards() {
        all.extend(events(shard).await);
    }
    all
}

fn payload(event: &OutboxEvent) -> Value {
    serde_json::from_str(&event.payload).unwrap()
}

fn topics(events: &[OutboxEvent]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

/// Events on `shard` after the first `seen`.
async fn new_events(shard: &dyn Shard, seen: usize) -> Vec<OutboxEvent> {
    events(shard).await.split_off(seen)
}

conformance! {
    async fn every_catalog_write_writes_its_event_keyed_by_its_product(backend) {
        let store = backend.open(2).await;
        let products = catalog(6);
        store.insert_products(products.clone(), 500).await.unwrap();

        // One product.created per product, on the product's shard, in one transaction per shard.
        for (index, shard) in store.shards().enumerate() {
            let created = events(shard).await;
            let mine: Vec<&ProductWithVariants> = products
                .iter()
                .filter(|p| store.shard_of(p.product.id) == index)
                .collect();
            assert_eq!(created.len(), mine.len(), "{}", shard.name());
            for (event, written) in created.iter().zip(&mine) {
                let p = &written.product;
                assert_eq!(event.topic, "product.created");
                assert_eq!(event.key, p.id.to_string());
                assert_eq!(event.created_at_ms, 500);
                let body = payload(event);
                assert_eq!(body["product_id"], json!(p.id.to_string()));
                assert_eq!(body["name"], json!(p.name));
                assert_eq!(body["seller_id"], Value::Null);
                assert_eq!(body["version"], json!(1));
                assert_eq!(
                    body["price"],
                    json!({ "amount": p.price.amount, "currency": "USD" })
                );
                let variants = body["variants"].as_array().unwrap();
                assert_eq!(variants.len(), written.variants.len());
                for (v, expected) in variants.iter().zip(&written.variants) {
                    assert_eq!(v["variant_id"], json!(expected.id.to_string()));
                    assert_eq!(v["on_hand"], json!(expected.stock_level));
                    assert_eq!(v["sku"], json!(expected.sku));
                }
            }
        }

        let id = products[0].product.id;
        let shard = &store.for_product(id);
        let other = store.shard_at(1 - store.shard_of(id)).unwrap();
        let (seen, seen_elsewhere) = (events(shard).await.len(), events(other).await.len());
        let rename = ProductPatch {
            name: Some("Renamed".into()),
            ..ProductPatch::default()
        };
        shard.update_product(id, 1, &rename, 600).await.unwrap();
        let cheap = Variant {
            id: VariantId::new(id.get() + 1_000),
            product_id: id,
            sku: "CHEAP".into(),
            color: "blue".into(),
            size: "XS".into(),
            price: Money::usd(1),
            stock_level: 4,
        };
        shard.insert_variant(&cheap, 2, 601).await.unwrap();
        let restock = VariantPatch {
            color: Some("green".into()),
            stock_level: Some(9),
            ..VariantPatch::default()
        };
        shard
            .update_variant(id, cheap.id, 3, &restock, 602)
            .await
            .unwrap();
        // The same level again is no stock change.
        let same = VariantPatch {
            stock_level: Some(9),
            ..VariantPatch::default()
        };
        shard
            .update_variant(id, cheap.id, 4, &same, 603)
            .await
            .unwrap();
        shard.delete_variant(id, cheap.id, 5, 604).await.unwrap();
        assert_eq!(
            shard.delete_product(id, 6, 605).await.unwrap(),
            WriteOutcome::Done(None)
        );

        let written = new_events(shard, seen).await;
        assert_eq!(
            topics(&written),
            [
                "product.updated",
                "variant.created",
                "variant.updated",
                "stock.changed",
                "variant.updated",
                "variant.deleted",
                "product.deleted",
            ]
        );
        for event in &written {
            assert_eq!(event.key, id.to_string(), "{}", event.topic);
            assert_eq!(payload(event)["product_id"], json!(id.to_string()));
        }
        let times: Vec<i64> = written.iter().map(|e| e.created_at_ms).collect();
        assert_eq!(times, [600, 601, 602, 602, 603, 604, 605]);

        let updated = payload(&written[0]);
        assert_eq!(updated["name"], json!("Renamed"));
        assert_eq!(updated["version"], json!(2));
        assert_eq!(updated["updated_at_ms"], json!(600));
        assert_eq!(
            updated["brand"],
            json!("Acme"),
            "unpatched fields are carried"
        );

        let created = payload(&written[1]);
        assert_eq!(created["variant_id"], json!(cheap.id.to_string()));
        assert_eq!(created["on_hand"], json!(4));
        assert_eq!(created["product_version"], json!(3));
        assert_eq!(
            created["product_price"],
            json!({ "amount": 1, "currency": "USD" })
        );

        let edited = payload(&written[2]);
        assert_eq!(edited["color"], json!("green"));
        assert_eq!(edited["sku"], json!("CHEAP"));
        assert_eq!(edited["on_hand"], json!(9));
        assert_eq!(edited["product_version"], json!(4));
        assert_eq!(
            payload(&written[3]),
            json!({
                "product_id": id.to_string(),
                "variant_id": cheap.id.to_string(),
                "on_hand_before": 4,
                "on_hand": 9,
            })
        );
        assert_eq!(payload(&written[4])["on_hand"], json!(9));

        let deleted = payload(&written[5]);
        assert_eq!(deleted["variant_id"], json!(cheap.id.to_string()));
        assert_eq!(deleted["product_version"], json!(6));
        assert_eq!(
            deleted["product_price"],
            json!({ "amount": products[0].product.price.amount, "currency": "USD" })
        );

        let original: Vec<String> = products[0]
            .variants
            .iter()
            .map(|v| v.id.to_string())
            .collect();
        assert_eq!(
            payload(&written[6]),
            json!({
                "product_id": id.to_string(),
                "seller_id": null,
                "version": 6,
                "variant_ids": original,
            })
        );

        assert_eq!(
            events(other).await.len(),
            seen_elsewhere,
            "another shard's outbox moved"
        );

        // Every event id is a distinct UUIDv7.
        let all = all_events(&store).await;
        let ids: HashSet<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids.len(), all.len());
        for event in &all {
            let parsed = uuid::Uuid::parse_str(&event.event_id).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{}", event.event_id);
        }
    }
}

conformance! {
    async fn a_refused_write_writes_no_event(backend) {
        let store = backend.open(1).await;
        let products = catalog(2);
        store.insert_products(products.clone(), 1).await.unwrap();
        let shard = store.directory();
        let before = events(shard).await.len();
        assert_eq!(before, 2);

        let (id, variant) = (products[0].product.id, products[0].variants[0].id);
        let stale = 7;
        let mismatch = WriteOutcome::VersionMismatch { current: 1 };
        let patch = ProductPatch {
            name: Some("Nope".into()),
            ..ProductPatch::default()
        };
        let restock = VariantPatch {
            stock_level: Some(50),
            ..VariantPatch::default()
        };
        let extra = Variant {
            id: VariantId::new(id.get() + 77),
            ..products[0].variants[0].clone()
        };
        assert_eq!(
            shard.update_product(id, stale, &patch, 2).await.unwrap(),
            mismatch
        );
        assert_eq!(shard.delete_product(id, stale, 2).await.unwrap(), mismatch);
        assert_eq!(
            shard.insert_variant(&extra, stale, 2).await.unwrap(),
            mismatch
        );
        assert_eq!(
            shard
                .update_variant(id, variant, stale, &restock, 2)
                .await
                .unwrap(),
            mismatch
        );
        assert_eq!(
            shard.delete_variant(id, variant, stale, 2).await.unwrap(),
            mismatch
        );
        // Not found, at the right version: the variant write ran and was rolled back.
        let missing = VariantId::new(999_999);
        assert_eq!(
            shard
                .update_variant(id, missing, 1, &restock, 2)
                .await
                .unwrap(),
            WriteOutcome::NotFound
        );
        assert_eq!(
            shard.delete_variant(id, missing, 1, 2).await.unwrap(),
            WriteOutcome::NotFound
        );
        assert_eq!(
            shard
                .update_product(ProductId::new(999_999), 1, &patch, 2)
                .await
                .unwrap(),
            WriteOutcome::NotFound
        );
        // A batch that fails part-way writes neither rows nor events.
        let err = store.insert_products(catalog(3), 2).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert_eq!(store.count_products().await.unwrap(), 2);
        assert_eq!(events(shard).await.len(), before, "a refused write wrote");
        // Nothing moved either: the stock the refused edits named is as it was.
        assert_eq!(
            store.stock_account(id, variant).await.unwrap().on_hand,
            products[0].variants[0].stock_level
        );

        let record = user(UserId::new(9), b"x");
        shard.insert_user(&record).await.unwrap();
        let err = shard.insert_user(&record).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        let mut ghost = user(UserId::new(10), b"y");
        ghost.role = Role::Admin;
        assert!(!shard.update_user(&ghost).await.unwrap(), "no such user");
        assert_eq!(
            topics(&new_events(shard, before).await),
            ["user.created"],
            "only the insert that happened wrote"
        );
    }
}

conformance! {
    async fn user_events_carry_the_id_and_role_only(backend) {
        let store = backend.open(1).await;
        let shard = store.directory();
        let id = UserId::new(501);
        let mut record = UserRecord {
            phone_ct: Some(b"sealed-phone".to_vec()),
            created_at_ms: 10,
            updated_at_ms: 10,
            ..user(id, b"email-index")
        };
        shard.insert_user(&record).await.unwrap();

        // A change to anything but the role writes nothing.
        record.name = "Ada Lovelace".into();
        record.email_ct = b"resealed".to_vec();
        record.updated_at_ms = 20;
        assert!(shard.update_user(&record).await.unwrap());
        record.role = Role::Seller;
        record.updated_at_ms = 30;
        assert!(shard.update_user(&record).await.unwrap());
        assert_eq!(shard.user(id).await.unwrap(), Some(record.clone()));

        // Eight processes promote the seller to admin at once: the stored role is compared in
        // each one's transaction, so exactly one of them saw `seller` and writes the change.
        let barrier = Arc::new(Barrier::new(8));
        let promotions = (0..8).map(|_| {
            let (store, barrier) = (store.shared(), barrier.clone());
            let mut admin = record.clone();
            admin.role = Role::Admin;
            admin.updated_at_ms = 40;
            tokio::spawn(async move {
                barrier.wait().await;
                store.directory().update_user(&admin).await.unwrap()
            })
        });
        for done in futures::future::join_all(promotions).await {
            assert!(done.unwrap());
        }

        let written = events(shard).await;
        assert_eq!(
            topics(&written),
            ["user.created", "user.role_changed", "user.role_changed"]
        );
        let key = id.to_string();
        assert_eq!(
            payload(&written[0]),
            json!({ "user_id": key, "role": "customer" })
        );
        assert_eq!(
            payload(&written[1]),
            json!({ "user_id": key, "from": "customer", "to": "seller" })
        );
        assert_eq!(
            payload(&written[2]),
            json!({ "user_id": key, "from": "seller", "to": "admin" })
        );
        assert_eq!(
            written.iter().map(|e| e.created_at_ms).collect::<Vec<_>>(),
            [10, 30, 40]
        );
        for event in &written {
            assert_eq!(event.key, key);
            for secret in ["Ada", "sealed", "resealed", "email-index", "argon2"] {
                assert!(
                    !event.payload.contains(secret),
                    "{} carries {secret}: {}",
                    event.topic,
                    event.payload
                );
            }
        }
    }
}

conformance! {
    async fn stock_events_are_keyed_by_product_and_name_the_variant(backend) {
        let store = backend.open(3).await;
        let products = catalog(3);
        store.insert_products(products.clone(), 1).await.unwrap();
        // Product 1 has stock (every third product has none).
        let (product, variant) = (products[1].product.id, products[1].variants[1].id);
        let shard = &store.for_product(product);
        let seen = events(shard).await.len();
        let (order, buyer) = (OrderId::new(900), UserId::new(901));
        let line = ReservationLine {
            variant_id: variant,
            product_id: product,
            quantity: 2,
        };
        assert_eq!(
            store
                .reserve(order, buyer, &[line], 10_000, 50)
                .await
                .unwrap(),
            ReserveOutcome::Reserved
        );
        assert_eq!(
            shard
                .settle_reservations(order, Settlement::Release, 60)
                .await
                .unwrap(),
            1
        );
        let written = new_events(shard, seen).await;
        assert_eq!(topics(&written), ["stock.reserved", "stock.released"]);
        for event in &written {
            assert_eq!(event.key, product.to_string(), "{}", event.topic);
        }
        assert_eq!(
            payload(&written[0]),
            json!({
                "order_id": order.to_string(),
                "variant_id": variant.to_string(),
                "product_id": product.to_string(),
                "quantity": 2,
            })
        );
        assert_eq!(
            payload(&written[1]),
            json!({
                "order_id": order.to_string(),
                "variant_id": variant.to_string(),
                "product_id": product.to_string(),
                "quantity": 2,
                "from": "held",
            })
        );
    }
}

conformance! {
    async fn an_unpublished_row_is_returned_after_later_rows_were_published(backend) {
        let store = backend.open(1).await;
        let shard = store.directory();
        assert_eq!(
            shard.outbox_backlog().await.unwrap(),
            OutboxBacklog::default()
        );
        let products = catalog(5);
        store.insert_products(products.clone(), 100).await.unwrap();
        let rows: Vec<i64> = events(shard).await.iter().map(|e| e.id).collect();
        assert_eq!(rows.len(), 5);
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
        assert_eq!(
            shard.outbox_backlog().await.unwrap(),
            OutboxBacklog {
                unpublished: 5,
                oldest_created_at_ms: Some(100)
            }
        );

        // Rows 2..5 were published first: the way a lower id that committed late looks.
        assert_eq!(shard.mark_published(&rows[2..], 1_000).await.unwrap(), 3);
        let unpublished = shard.unpublished_events(100).await.unwrap();
        assert_eq!(
            unpublished.iter().map(|e| e.id).collect::<Vec<_>>(),
            rows[..2]
        );
        assert_eq!(
            shard.unpublished_events(1).await.unwrap()[0].id,
            rows[0],
            "oldest first"
        );
        assert_eq!(shard.outbox_backlog().await.unwrap().unpublished, 2);

        // A published id is not marked again; an unknown one is skipped.
        assert_eq!(
            shard
                .mark_published(&[rows[1], rows[4], 9_999], 2_000)
                .await
                .unwrap(),
            1
        );
        assert_eq!(shard.mark_published(&[], 2_000).await.unwrap(), 0);
        let patch = ProductPatch {
            name: Some("Later".into()),
            ..ProductPatch::default()
        };
        let first = products[0].product.id;
        shard.update_product(first, 1, &patch, 3_000).await.unwrap();
        let unpublished = shard.unpublished_events(100).await.unwrap();
        assert_eq!(unpublished.len(), 2);
        assert_eq!(unpublished[0].id, rows[0]);
        assert_eq!(unpublished[1].topic, "product.updated");
        assert!(unpublished[1].id > rows[4]);

        assert_eq!(
            store.outbox_backlog().await.unwrap(),
            [(
                "shard-0".to_owned(),
                OutboxBacklog {
                    unpublished: 2,
                    oldest_created_at_ms: Some(100)
                }
            )]
        );
        shard
            .mark_published(&unpublished.iter().map(|e| e.id).collect::<Vec<_>>(), 4_000)
            .await
            .unwrap();
        assert_eq!(
            shard.outbox_backlog().await.unwrap(),
            OutboxBacklog::default()
        );
        assert!(shard.unpublished_events(100).await.unwrap().is_empty());
    }
}

conformance! {
    async fn pruning_removes_only_published_rows_older_than_the_bound(backend) {
        let store = backend.open(1).await;
        store.insert_products(catalog(4), 1).await.unwrap();
        let shard = store.directory();
        let rows: Vec<i64> = events(shard).await.iter().map(|e| e.id).collect();
        shard.mark_published(&rows[..1], 100).await.unwrap();
        shard.mark_published(&rows[1..2], 200).await.unwrap();
        shard.mark_published(&rows[2..3], 300).await.unwrap();
        // Marking again does not move a row's first publication time: row 0 stays at 100.
        assert_eq!(shard.mark_published(&rows[..1], 900).await.unwrap(), 0);

        // The bound is exclusive: a row published at 200 stays.
        assert_eq!(shard.prune_published(200).await.unwrap(), 1);
        let left: Vec<i64> = events(shard).await.iter().map(|e| e.id).collect();
        assert_eq!(left, rows[1..]);
        assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 2);
        let left = events(shard).await;
        assert_eq!(
            left.iter().map(|e| e.id).collect::<Vec<_>>(),
            rows[3..],
            "the unpublished row is never pruned"
        );
        assert_eq!(shard.unpublished_events(10).await.unwrap(), left);

        // Pruning the newest row does not let its id be handed out again.
        shard.mark_published(&rows[3..], 400).await.unwrap();
        assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 1);
        assert!(events(shard).await.is_empty());
        store
            .insert_products(
                vec![product(&IdGenerator::deterministic(1, id::EPOCH_MS), 9)],
                500,
            )
            .await
            .unwrap();
        let next = events(shard).await;
        assert_eq!(next.len(), 1);
        assert!(next[0].id > rows[3], "{} reused", next[0].id);
    }
}

conformance! {
    async fn leases_are_exclusive_renewable_and_reclaimed_after_expiry(backend) {
        let store = backend.open(2).await;
        let shard = store.shard_at(0).unwrap();
        let (name, ttl, t0) = ("outbox-relay", 10_000, 1_000_000);
        assert!(shard.claim_lease(name, "a", t0, ttl).await.unwrap());
        assert!(!shard.claim_lease(name, "b", t0 + 1, ttl).await.unwrap());
        // The holder renews: its expiry moves on, so b still cannot take it at the old expiry.
        assert!(shard.claim_lease(name, "a", t0 + 5_000, ttl).await.unwrap());
        assert!(!shard.claim_lease(name, "b", t0 + ttl, ttl).await.unwrap());
        // Past the renewed expiry it is b's, and a no longer holds it: the lease is free again
        // at exactly its expiry (`expires_at <= now`), not before.
        let later = t0 + 5_000 + ttl;
        assert!(!shard.claim_lease(name, "b", later - 1, ttl).await.unwrap());
        assert!(shard.claim_lease(name, "b", later, ttl).await.unwrap());
        assert!(!shard.claim_lease(name, "a", later, ttl).await.unwrap());
        // Only the holder releases; then anyone may take it at once.
        assert!(!shard.release_lease(name, "a").await.unwrap());
        assert!(!shard.claim_lease(name, "c", later + 1, ttl).await.unwrap());
        assert!(shard.release_lease(name, "b").await.unwrap());
        assert!(!shard.release_lease(name, "b").await.unwrap());
        assert!(shard.claim_lease(name, "c", later + 1, ttl).await.unwrap());
        // Leases are per name and per shard.
        assert!(
            shard
                .claim_lease("other", "a", later + 1, ttl)
                .await
                .unwrap()
        );
        assert!(
            store
                .shard_at(1)
                .unwrap()
                .claim_lease(name, "a", later + 1, ttl)
                .await
                .unwrap()
        );
        assert!(store.shard_at(2).is_none());

    }
}

conformance! {
    /// Twenty claimants of a free lease, or of an expired one, released together: exactly one
    /// holds it, and it is the one the lease names (it renews, nobody else gets it, and once
    /// it releases it the lease is anyone's).
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn of_twenty_claimants_released_together_exactly_one_holds_the_lease(backend) {
        const CLAIMANTS: usize = 20;
        let store = backend.open(1).await;
        let (ttl, t0) = (10_000, 1_000_000);
        let now = t0 + 100_000;
        // Even rounds race for a lease that never existed, odd rounds for one that expired.
        for round in 0..10 {
            let race = format!("race-{round}");
            if round % 2 == 1 {
                assert!(
                    store
                        .directory()
                        .claim_lease(&race, "gone", t0, ttl)
                        .await
                        .unwrap()
                );
            }
            let barrier = Arc::new(Barrier::new(CLAIMANTS));
            let claims = (0..CLAIMANTS).map(|i| {
                let (store, barrier, race) = (store.shared(), barrier.clone(), race.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .directory()
                        .claim_lease(&race, &format!("claimant-{i}"), now, ttl)
                        .await
                        .unwrap()
                })
            });
            let won: Vec<bool> = futures::future::join_all(claims)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            let winners: Vec<usize> = (0..CLAIMANTS).filter(|i| won[*i]).collect();
            assert_eq!(winners.len(), 1, "round {round}: {won:?}");
            let shard = store.directory();
            let winner = format!("claimant-{}", winners[0]);
            let loser = format!("claimant-{}", (winners[0] + 1) % CLAIMANTS);
            assert!(
                shard
                    .claim_lease(&race, &winner, now + 1, ttl)
                    .await
                    .unwrap()
            );
            assert!(
                !shard
                    .claim_lease(&race, &loser, now + 1, ttl)
                    .await
                    .unwrap()
            );
            assert!(!shard.release_lease(&race, &loser).await.unwrap());
            assert!(shard.release_lease(&race, &winner).await.unwrap());
            assert!(
                shard
                    .claim_lease(&race, &loser, now + 2, ttl)
                    .await
                    .unwrap()
            );
        }
    }
}

/// Runs `apply_tally` for every event id in `ids` at once, released together by a barrier.
async fn apply_all(store: &TestStore, ids: Vec<String>, topic: &'static str) -> Vec<bool> {
    let barrier = Arc::new(Barrier::new(ids.len()));
    let calls = ids.into_iter().map(|event_id| {
        let (store, barrier) = (store.shared(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            store
                .directory()
                .apply_tally("tally", &event_id, topic, 7)
                .await
                .unwrap()
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

conformance! {
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn a_tally_applies_each_event_once_however_many_deliveries_race(backend) {
        let store = backend.open(1).await;
        let directory = store.directory();

        // Ten events, each delivered twenty times at once: each is counted once.
        for round in 0..10 {
            let applied = apply_all(&store, vec![format!("ev-{round}"); 20], "order.paid").await;
            assert_eq!(
                applied.iter().filter(|a| **a).count(),
                1,
                "round {round}: {applied:?}"
            );
        }
        assert_eq!(
            directory.tally().await.unwrap(),
            [("order.paid".to_owned(), 10)]
        );
        assert!(directory.is_processed("tally", "ev-1").await.unwrap());
        assert!(
            !directory.is_processed("other", "ev-1").await.unwrap(),
            "records are per consumer"
        );

        let ids: Vec<String> = (0..50).map(|i| format!("ev-{}", i + 100)).collect();
        let applied = apply_all(&store, ids.clone(), "product.created").await;
        assert!(applied.iter().all(|a| *a), "{applied:?}");
        // Redelivering all of them counts nothing.
        let again = apply_all(&store, ids, "product.created").await;
        assert!(again.iter().all(|a| !*a), "{again:?}");
        assert_eq!(
            directory.tally().await.unwrap(),
            [
                ("order.paid".to_owned(), 10),
                ("product.created".to_owned(), 50)
            ]
        );
        assert_eq!(
            directory.processed("tally", "", 1_000).await.unwrap().len(),
            60,
            "one record per event applied"
        );
    }
}

conformance! {
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn processed_records_are_kept_once_and_pruned_by_age(backend) {
        let store = backend.open(1).await;
        let directory = store.directory();
        assert!(
            directory
                .record_processed("cache", "e1", 100)
                .await
                .unwrap()
        );
        assert!(
            !directory
                .record_processed("cache", "e1", 150)
                .await
                .unwrap()
        );
        assert!(
            directory
                .record_processed("search", "e1", 150)
                .await
                .unwrap()
        );
        assert!(
            directory
                .record_processed("cache", "e2", 300)
                .await
                .unwrap()
        );
        assert!(directory.is_processed("cache", "e1").await.unwrap());
        assert!(!directory.is_processed("cache", "e3").await.unwrap());
        // An event recorded by record_processed counts as applied for apply_tally, too.
        assert!(
            !directory
                .apply_tally("cache", "e2", "x", 310)
                .await
                .unwrap()
        );
        assert!(directory.tally().await.unwrap().is_empty());
        // Each consumer's records, with when they were applied, paged in event id order.
        assert_eq!(
            directory.processed("cache", "", 10).await.unwrap(),
            [("e1".to_owned(), 100), ("e2".to_owned(), 300)]
        );
        assert_eq!(
            directory.processed("cache", "", 1).await.unwrap(),
            [("e1".to_owned(), 100)]
        );
        assert_eq!(
            directory.processed("cache", "e1", 10).await.unwrap(),
            [("e2".to_owned(), 300)]
        );
        assert_eq!(
            directory.processed("search", "", 10).await.unwrap(),
            [("e1".to_owned(), 150)]
        );
        assert!(
            directory
                .processed("tally", "", 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Twenty racing records of one event: exactly one is new.
        let barrier = Arc::new(Barrier::new(20));
        let records = (0..20).map(|_| {
            let (store, barrier) = (store.shared(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .directory()
                    .record_processed("race", "e9", 400)
                    .await
                    .unwrap()
            })
        });
        let new = futures::future::join_all(records)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(new, 1);

        assert_eq!(directory.prune_processed(150).await.unwrap(), 1);
        assert!(!directory.is_processed("cache", "e1").await.unwrap());
        assert!(directory.is_processed("search", "e1").await.unwrap());
        assert!(directory.is_processed("cache", "e2").await.unwrap());
        assert_eq!(directory.prune_processed(i64::MAX).await.unwrap(), 3);
    }
}

conformance! {
    /// Eight relays mark the same 200 rows at once, half of them in reverse order, on a bare
    /// shard (no retries, so two marks locking rows in opposite orders must queue, not
    /// deadlock): every row is newly marked exactly once.
    #[tokio(flavor = "multi_thread", worker_threads = 4)]
    async fn relays_marking_overlapping_batches_at_once_mark_each_row_once(backend) {
        let store = backend.open(1).await;
        store.insert_products(catalog(200), 1).await.unwrap();
        let rows: Vec<i64> = events(store.directory()).await.iter().map(|e| e.id).collect();
        assert_eq!(rows.len(), 200);
        let shard = store.bare_shard(0).await;
        let barrier = Arc::new(Barrier::new(8));
        let marks = (0..8).map(|relay: i64| {
            let (shard, barrier) = (shard.clone(), barrier.clone());
            let mut batch = rows.clone();
            if relay % 2 == 1 {
                batch.reverse();
            }
            tokio::spawn(async move {
                barrier.wait().await;
                shard.mark_published(&batch, 1_000 + relay).await.unwrap()
            })
        });
        let marked: u64 = futures::future::join_all(marks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .sum();
        assert_eq!(marked, 200, "every row is newly marked exactly once");
        shard.close().await;
        let directory = store.directory();
        assert_eq!(
            directory.outbox_backlog().await.unwrap(),
            OutboxBacklog::default()
        );
        // Everything was published at or after 1_000, so a bound below that prunes nothing.
        assert_eq!(directory.prune_published(1_000).await.unwrap(), 0);
        assert_eq!(directory.prune_published(i64::MAX).await.unwrap(), 200);
    }
}

/// SQLite only: it replays this backend's own migration history (the PostgreSQL schema was
/// born with event ids, so it has no such step).
#[tokio::test]
async fn the_migration_gives_existing_rows_unique_ids_and_new_rows_must_have_one() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-0.sqlite");
    let connect = || {
        SqlitePoolOptions::new().max_connections(1).connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
    };
    // A shard as it was before 0007, with events in its outbox.
    let pool = connect().await.unwrap();
    sqlx::migrate!("./migrations/sqlite")
        .run_to(6, &pool)
        .await
        .unwrap();
    for i in 0..3 {
        sqlx::query("INSERT INTO outbox (topic, key, payload, created_at) VALUES (?, ?, '{}', ?)")
            .bind("order.created")
            .bind(i.to_string())
            .bind(i)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let shard = sqlite::SqliteShard::open("shard-0", &config(dir.path()))
        .await
        .unwrap();
    let old = shard.outbox(0, 10).await.unwrap();
    assert_eq!(old.len(), 3);
    let ids: HashSet<&str> = old.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{old:?}");
    assert!(
        old.iter()
            .all(|e| e.event_id.len() == 32 && e.event_id.bytes().all(|b| b.is_ascii_hexdigit())),
        "{old:?}"
    );
    assert_eq!(shard.unpublished_events(10).await.unwrap(), old);
    shard.close().await;

    // A writer that forgets the id is refused by the database.
    let pool = connect().await.unwrap();
    let err = sqlx::query(
        "INSERT INTO outbox (topic, key, payload, created_at) VALUES ('t', 'k', '{}', 1)",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("event_id is required"), "{err}");
    let err = sqlx::query(
        "INSERT INTO outbox (event_id, topic, key, payload, created_at) VALUES (?, 't', 'k', '{}', 1)",
    )
    .bind(&old[0].event_id)
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    pool.close().await;
}

fn new_event(key: &str) -> crate::events::NewEvent {
    crate::events::NewEvent {
        topic: "test.written",
        key: key.to_owned(),
        payload: format!("{{\"key\":\"{key}\"}}"),
    }
}

/// PostgreSQL only: its outbox ids come from a sequence, drawn before the writing transaction
/// commits, so a lower id can become visible after a higher one was published (SQLite's one
/// writer at a time commits ids in order). The relay must still return the late row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lower_id_committed_after_a_higher_one_was_published_is_still_relayed() {
    use postgres::{PostgresConfig, PostgresShard};

    let Some(scratch) = PostgresScratch::from_env(1).await else {
        return;
    };
    let config = scratch.config();
    let url = &scratch.urls()[0];
    let store = Store::open_postgres(&config, 64, &Metrics::new())
        .await
        .unwrap();
    // A pool beside the store's for the transactions held open here, and the shard's own
    // event writers to write into them.
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let writer = PostgresShard::open("shard-0", url, &config).await.unwrap();
    let shard = store.directory();

    // A batch through `write_events` keeps its order.
    let mut tx = pool.begin().await.unwrap();
    writer
        .write_events(
            &mut tx,
            vec![new_event("b0"), new_event("b1"), new_event("b2")],
            5,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let batch = events(shard).await;
    assert_eq!(
        batch.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["b0", "b1", "b2"]
    );
    assert!(
        batch
            .iter()
            .all(|e| e.created_at_ms == 5 && e.topic == "test.written")
    );
    let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
    shard.mark_published(&ids, 6).await.unwrap();

    // `slow` draws its id first and holds its transaction open; `fast` draws a higher id,
    // commits, and is published while `slow` is still in flight.
    let mut slow = pool.begin().await.unwrap();
    writer
        .write_event(&mut slow, new_event("slow"), 10)
        .await
        .unwrap();
    let mut fast = pool.begin().await.unwrap();
    writer
        .write_event(&mut fast, new_event("fast"), 20)
        .await
        .unwrap();
    fast.commit().await.unwrap();

    let visible = shard.unpublished_events(100).await.unwrap();
    assert_eq!(
        visible.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["fast"],
        "an uncommitted row is not read"
    );
    assert_eq!(
        shard.outbox_backlog().await.unwrap(),
        OutboxBacklog {
            unpublished: 1,
            oldest_created_at_ms: Some(20)
        }
    );
    let fast_id = visible[0].id;
    assert_eq!(shard.mark_published(&[fast_id], 30).await.unwrap(), 1);
    // Pruning meanwhile removes published rows only.
    assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 4);
    slow.commit().await.unwrap();

    // The late row has the lower id, and the relay's next read returns it.
    let late = shard.unpublished_events(100).await.unwrap();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].key, "slow");
    assert!(late[0].id < fast_id, "{} vs {fast_id}", late[0].id);
    assert_eq!(
        shard.outbox_backlog().await.unwrap(),
        OutboxBacklog {
            unpublished: 1,
            oldest_created_at_ms: Some(10)
        }
    );
    assert_eq!(
        shard.prune_published(i64::MAX).await.unwrap(),
        0,
        "the late row is not pruned"
    );
    assert_eq!(shard.mark_published(&[late[0].id], 40).await.unwrap(), 1);
    assert!(shard.unpublished_events(100).await.unwrap().is_empty());
    assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 1);

    // With events switched off nothing is written.
    let quiet = PostgresShard::open(
        "shard-0",
        url,
        &PostgresConfig {
            write_events: false,
            ..config
        },
    )
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    quiet
        .write_event(&mut tx, new_event("q"), 50)
        .await
        .unwrap();
    quiet
        .write_events(&mut tx, vec![new_event("q1")], 50)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(events(shard).await.is_empty());

    quiet.close().await;
    writer.close().await;
    pool.close().await;
    store.close().await;
    scratch.drop_databases().await.unwrap();
}
