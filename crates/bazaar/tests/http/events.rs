//! Events end to end: every change is relayed from the outbox and applied once by effect,
//! synchronous side effects run before the answer (and fail it when they fail), the
//! dead-letter queue is operated over REST by admins only, and the queue's figures are on
//! `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bazaar_queue::{GroupSpec, Message};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, new_product, spawn_app_with, with_events};

/// Every outbox row on every shard, counted by type.
async fn outbox_by_type(app: &TestApp) -> (BTreeMap<String, i64>, u64) {
    let mut counts = BTreeMap::new();
    let mut unpublished = 0;
    for shard in app.store.shards() {
        for row in shard.outbox(0, 1_000_000).await.unwrap() {
            *counts.entry(row.topic).or_insert(0) += 1;
        }
        unpublished += shard.outbox_backlog().await.unwrap().unpublished;
    }
    (counts, unpublished)
}

async fn tally(app: &TestApp) -> BTreeMap<String, i64> {
    app.store
        .directory()
        .tally()
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Waits until every outbox row is published and tallied, or fails saying what is missing.
async fn until_tallied(app: &TestApp) -> BTreeMap<String, i64> {
    let started = Instant::now();
    loop {
        let (written, unpublished) = outbox_by_type(app).await;
        let counted = tally(app).await;
        if unpublished == 0 && counted == written {
            return counted;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "after 20 s: {unpublished} rows unpublished; written {written:?}, tallied {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_relayed_and_applied_exactly_once() {
    let app = spawn_app_with(5, with_events).await;
    let seller = app.signup("seller").await;
    app.signup("customer").await;
    let (product, variant) = app.create_product(&seller).await;
    let patched = app
        .call(
            "PATCH",
            &format!("/products/{product}"),
            Some(&seller.access),
            Some(&json!({ "name": "Renamed Mug" })),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let edited = app
        .call(
            "PATCH",
            &format!("/products/{product}/variants/{variant}"),
            Some(&seller.access),
            Some(&json!({ "stock_level": 40 })),
        )
        .await;
    assert_eq!(edited.status(), 200, "{}", edited.text().await.unwrap());
    let counted = until_tallied(&app).await;
    for (kind, at_least) in [
        ("user.created", 2 + 4),
        ("product.created", 1 + 5),
        ("product.updated", 1),
        ("variant.updated", 1),
        ("stock.changed", 1),
    ] {
        assert!(
            counted.get(kind).copied().unwrap_or(0) >= at_least,
            "{kind}: {counted:?}"
        );
    }
    // Once more after a while: nothing was applied twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tally(&app).await, counted);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_side_effects_are_applied_before_the_answer() {
    let app = spawn_app_with(0, |config| {
        with_events(config);
        config.events.side_effects = bazaar::config::SideEffects::Sync;
        // Only the request path can have applied an effect by the time the answer arrives.
        config.events.relay_interval = Duration::from_secs(3600);
    })
    .await;
    let seller = app.signup("seller").await;
    assert_eq!(tally(&app).await.get("user.created"), Some(&1));
    app.create_product(&seller).await;
    let counted = tally(&app).await;
    assert_eq!(counted.get("product.created"), Some(&1), "{counted:?}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sync_side_effect_fails_the_request_but_keeps_the_change() {
    let app = spawn_app_with(0, |config| {
        with_events(config);
        config.events.side_effects = bazaar::config::SideEffects::Sync;
        config.events.consumers.tally.fail_rate = 1.0;
    })
    .await;
    let signup = app
        .post(
            "/auth/signup",
            None,
            &json!({ "email": "sync@example.com", "password": crate::helpers::PASSWORD,
                     "name": "Sync", "role": "seller" }),
        )
        .await;
    let problem = assert_problem(signup, 503, "side-effect-failed").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("tally"),
        "{problem}"
    );
    // The account exists: the change committed before its side effect failed.
    let seller = app
        .login("sync@example.com", crate::helpers::PASSWORD)
        .await;
    let created = app
        .post("/products", Some(&seller.access), &new_product())
        .await;
    assert_problem(created, 503, "side-effect-failed").await;
    let listed = app.get_json("/products").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert!(tally(&app).await.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_show_replay_and_delete_dead_letters() {
    let app = spawn_app_with(0, |_| {}).await;
    let queue = bazaar::events::open_queue(&app.config).await.unwrap();
    let spec = GroupSpec {
        name: "test-poison".into(),
        lease: Duration::from_secs(5),
        max_attempts: 1,
    };
    let group = queue.declare(&spec).await.unwrap();
    let event = json!({ "specversion": "1.0", "id": "e-1", "type": "order.paid" });
    queue
        .publish(&Message {
            id: "e-1".into(),
            key: "42".into(),
            topic: "order.paid".into(),
            payload: Bytes::from(event.to_string()),
            delay: None,
        })
        .await
        .unwrap();
    let delivery = group
        .receive(1, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("the message is delivered");
    group
        .dead_letter(&delivery, "boom: the consumer failed")
        .await
        .unwrap();

    let admin = app.admin().await;
    let seller = app.signup("seller").await;
    assert_problem(app.get("/admin/dlq").await, 401, "unauthenticated").await;
    let refused = app
        .call("GET", "/admin/dlq", Some(&seller.access), None)
        .await;
    assert_problem(refused, 403, "forbidden").await;
    let bad = app
        .call("GET", "/admin/dlq?limit=0", Some(&admin.access), None)
        .await;
    let problem = assert_problem(bad, 400, "invalid-parameter").await;
    assert_eq!(problem["param"], "limit");

    let page = app.get_json_as("/admin/dlq", &admin).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    let dead = &items[0];
    assert_eq!(dead["consumer"], "test-poison");
    assert_eq!(dead["event_id"], "e-1");
    assert_eq!(dead["type"], "order.paid");
    assert_eq!(dead["key"], "42");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["last_error"], "boom: the consumer failed");
    assert_eq!(dead["event"]["type"], "order.paid");
    let id = dead["id"].as_str().unwrap().to_owned();
    let shown = app.get_json_as(&format!("/admin/dlq/{id}"), &admin).await;
    assert_eq!(&shown, dead);
    let missing = app
        .call(
            "GET",
            "/admin/dlq/no-such-letter",
            Some(&admin.access),
            None,
        )
        .await;
    assert_problem(missing, 404, "not-found").await;
    let refused = app
        .call(
            "POST",
            &format!("/admin/dlq/{id}/replay"),
            Some(&seller.access),
            None,
        )
        .await;
    assert_problem(refused, 403, "forbidden").await;

    // Replayed: delivered again to its group, and out of the dead-letter queue.
    let replayed = app
        .call(
            "POST",
            &format!("/admin/dlq/{id}/replay"),
            Some(&admin.access),
            None,
        )
        .await;
    assert_eq!(replayed.status(), 202);
    let again = group
        .receive(1, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("a replayed message is delivered again");
    assert_eq!(again.message.id, "e-1");
    assert_eq!(again.attempt, 1, "a replay starts a fresh count");
    let page = app.get_json_as("/admin/dlq", &admin).await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");

    // Dead again, then deleted for good.
    group.dead_letter(&again, "boom again").await.unwrap();
    let page = app.get_json_as("/admin/dlq", &admin).await;
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let deleted = app
        .call(
            "DELETE",
            &format!("/admin/dlq/{id}"),
            Some(&admin.access),
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    let deleted = app
        .call(
            "DELETE",
            &format!("/admin/dlq/{id}"),
            Some(&admin.access),
            None,
        )
        .await;
    assert_problem(deleted, 404, "not-found").await;
    assert!(
        group
            .receive(1, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_and_the_outbox_are_on_metrics() {
    let app = spawn_app_with(3, with_events).await;
    until_tallied(&app).await;
    // The statistics worker samples once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for series in [
        "bazaar_queue_depth{queue=\"tally\"}",
        "bazaar_queue_oldest_age_seconds{queue=\"tally\"}",
        "bazaar_queue_in_flight{queue=\"tally\"}",
        "bazaar_dlq_size",
        "bazaar_outbox_unpublished{shard=\"shard-0\"} 0",
        "bazaar_outbox_lag_seconds{shard=\"shard-0\"}",
        "bazaar_queue_redeliveries_total{consumer=\"tally\"}",
        "bazaar_consumer_duplicates_skipped_total{consumer=\"tally\"}",
        "bazaar_event_effect_lag_seconds_count{consumer=\"tally\"}",
    ] {
        assert!(text.contains(series), "{series} missing from /metrics");
    }
    let ready: Value = app.get_json("/readyz").await;
    let workers = ready.to_string();
    for worker in [
        "outbox-relay",
        "consumer-tally",
        "consumer-cache",
        "event-stats",
    ] {
        assert!(workers.contains(worker), "{worker} not on /readyz: {ready}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_group_of_a_node_that_is_gone_is_removed() {
    // A server killed before it could give its cache group up left `cache-node-999` behind.
    let dir = tempfile::tempdir().unwrap();
    let mut config = bazaar::Config::default();
    config.store.data_dir = dir.path().to_owned();
    config.queue.durability = bazaar::config::Durability::Normal;
    let queue = bazaar::events::open_queue(&config).await.unwrap();
    let orphan = GroupSpec {
        name: "cache-node-999".into(),
        lease: Duration::from_secs(30),
        max_attempts: 8,
    };
    queue.declare(&orphan).await.unwrap();
    let path = dir.path().to_owned();
    let app = spawn_app_with(0, move |config| {
        with_events(config);
        config.store.data_dir = path;
    })
    .await;
    let started = Instant::now();
    loop {
        let groups: Vec<String> = queue
            .stats()
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.group)
            .collect();
        if !groups.contains(&"cache-node-999".to_owned()) {
            // The running server's own group stays.
            assert!(
                groups.iter().any(|g| g.starts_with("cache-node-")),
                "{groups:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dead node's group is still there: {groups:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();
}
