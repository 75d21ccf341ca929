//! The rest of the identity and catalog surface: sessions ending, API keys listed, the audit
//! log, live generator leases, view counts, variant lookups and events fetched by id.

use super::*;

conformance! {
    /// A revoked session stops authenticating and stays revoked; a user's keys list in id
    /// order; the audit log reads newest first.
    async fn sessions_end_keys_list_and_the_audit_log_reads_newest_first(backend) {
        let store = backend.open(2).await;
        let user_id = UserId::new(70);
        let shard = store.for_user(user_id);
        shard.insert_user(&user(user_id, b"acc")).await.unwrap();
        let session = SessionId::new(71);
        let first = RefreshRecord {
            token_hash: b"r1".to_vec(),
            session,
            issued_at_ms: 0,
            expires_at_ms: 1_000,
        };
        shard.create_session(session, user_id, &first).await.unwrap();
        assert!(shard.revoke_session(session, "logout", 5).await.unwrap());
        assert!(!shard.revoke_session(session, "logout", 6).await.unwrap());
        assert_eq!(shard.active_session(session).await.unwrap(), None);
        let next = RefreshRecord {
            token_hash: b"r2".to_vec(),
            ..first.clone()
        };
        assert_eq!(
            shard.rotate_refresh(b"r1", &next, 7).await.unwrap(),
            RefreshOutcome::Rejected,
            "a revoked session's token does not rotate"
        );
        assert!(!shard.revoke_session(SessionId::new(999), "x", 8).await.unwrap());

        let key = |id: u64, name: &str| ApiKeyRecord {
            id: ApiKeyId::new(id),
            user: user_id,
            name: name.into(),
            secret_hash: vec![id as u8; 32],
            daily_quota: 10,
            created_at_ms: id as i64,
            revoked_at_ms: None,
        };
        for record in [key(82, "b"), key(81, "a")] {
            shard.insert_api_key(&record).await.unwrap();
        }
        assert_eq!(shard.api_keys_of(user_id).await.unwrap(), [key(81, "a"), key(82, "b")]);
        assert!(shard.api_keys_of(UserId::new(1)).await.unwrap().is_empty());
        assert!(!shard.revoke_api_key(UserId::new(1), ApiKeyId::new(81), 9).await.unwrap(), "only the owner revokes");
        assert_eq!(shard.api_key(ApiKeyId::new(81)).await.unwrap(), Some(key(81, "a")));
        assert_eq!(shard.api_key(ApiKeyId::new(83)).await.unwrap(), None);

        let directory = store.directory();
        let audit = |at_ms: i64, action: &str| AuditEvent {
            at_ms,
            actor: format!("user:{user_id}"),
            action: action.into(),
            target: "session".into(),
            request_id: (at_ms % 2 == 0).then(|| format!("req-{at_ms}")),
            detail: String::new(),
        };
        for (at, action) in [(1, "signup"), (2, "login.success"), (3, "logout")] {
            directory.append_audit(&audit(at, action)).await.unwrap();
        }
        assert_eq!(
            directory.audit_events(2).await.unwrap(),
            [audit(3, "logout"), audit(2, "login.success")]
        );
        assert_eq!(directory.audit_events(10).await.unwrap().len(), 3);
    }
}

conformance! {
    /// The live generator numbers are those whose lease has not expired, in order.
    async fn held_generators_are_the_unexpired_leases(backend) {
        let store = backend.open(1).await;
        let directory = store.directory();
        let (ttl, t0) = (1_000, 50_000);
        assert!(directory.held_generators(t0).await.unwrap().is_empty());
        for holder in ["a", "b", "c"] {
            directory.claim_generator(holder, 1..=9, t0, ttl).await.unwrap().unwrap();
        }
        assert!(directory.renew_generator(3, "c", t0 + 500, ttl).await.unwrap());
        assert_eq!(directory.held_generators(t0).await.unwrap(), [1, 2, 3]);
        assert_eq!(directory.held_generators(t0 + ttl).await.unwrap(), [3], "expiry is exclusive");
        directory.release_generator(3, "c").await.unwrap();
        assert_eq!(directory.held_generators(t0).await.unwrap(), [1, 2]);
    }
}

conformance! {
    /// View counts add up per product in one batch per shard, unknown products are skipped,
    /// and a variant id alone finds its product on whichever shard holds it.
    async fn views_add_up_and_a_variant_finds_its_product(backend) {
        let store = backend.open(3).await;
        let products = catalog(9);
        store.insert_products(products.clone(), 1).await.unwrap();
        let views: Vec<(ProductId, i64)> = products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.product.id, i as i64 + 1))
            .chain([(ProductId::new(5), 100)])
            .collect();
        store.add_views(&views).await.unwrap();
        store.add_views(&views[..1]).await.unwrap();
        let counted = store
            .products(&products.iter().map(|p| p.product.id).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(counted.len(), 9);
        for (i, p) in products.iter().enumerate() {
            let expected = i as i64 + 1 + i64::from(i == 0);
            assert_eq!(counted[&p.product.id].view_count, expected);
        }
        assert!(store.products(&[ProductId::new(5)]).await.unwrap().is_empty());

        for p in &products {
            for v in &p.variants {
                assert_eq!(store.variant_product(v.id).await.unwrap(), Some(p.product.id));
            }
        }
        assert_eq!(store.variant_product(VariantId::new(3)).await.unwrap(), None);
    }
}

conformance! {
    /// Events fetched by event id come in outbox order; unknown ids are skipped.
    async fn events_are_fetched_by_their_ids_in_outbox_order(backend) {
        let store = backend.open(1).await;
        store.insert_products(catalog(4), 1).await.unwrap();
        let shard = store.directory();
        let all = shard.outbox(0, 100).await.unwrap();
        assert_eq!(all.len(), 4);
        let asked = vec![
            all[3].event_id.clone(),
            "no-such-event".to_owned(),
            all[1].event_id.clone(),
        ];
        assert_eq!(
            shard.events_with_ids(&asked).await.unwrap(),
            [all[1].clone(), all[3].clone()]
        );
        assert!(shard.events_with_ids(&[]).await.unwrap().is_empty());
        assert_eq!(shard.outbox(all[1].id, 2).await.unwrap(), all[2..4]);
    }
}
