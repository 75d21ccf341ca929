//! The product cache in the running server: single-flight loads, hits, invalidation by
//! writes, and its metrics.

use bazaar::config::CacheStrategy;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_cold_product_requested_by_a_thousand_clients_is_loaded_once() {
    let app = spawn_app(20).await;
    let id = app.product_ids(20).await[17].clone();
    let before = app.store.round_trips();
    let requests: Vec<_> = (0..1_000)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url(&format!("/products/{id}")));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        app.store.round_trips() - before,
        1,
        "1,000 concurrent misses must cost one store query"
    );
    let text = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(&text, "bazaar_cache_loads_total{cache=\"products\"}"),
        1,
        "{text}"
    );
    let hits = metric(
        &text,
        "bazaar_cache_requests_total{cache=\"products\",result=\"hit\"}",
    );
    let misses = metric(
        &text,
        "bazaar_cache_requests_total{cache=\"products\",result=\"miss\"}",
    );
    assert_eq!(hits + misses, 1_000);
    assert!(
        text.contains("bazaar_cache_load_duration_seconds_bucket{"),
        "{text}"
    );
}

#[tokio::test]
async fn write_through_serves_the_written_product_without_reloading_it() {
    for (strategy, loads_after_write) in [
        (CacheStrategy::ReadThrough, 1),
        (CacheStrategy::WriteThrough, 0),
    ] {
        let app = spawn_app_with(0, |c| c.cache.products.strategy = strategy).await;
        let seller = app.signup("seller").await;
        let (id, _) = app.create_product(&seller).await;
        app.call(
            "PATCH",
            &format!("/products/{id}"),
            Some(&seller.access),
            Some(&json!({ "name": "Renamed Mug" })),
        )
        .await;
        let before = app.store.round_trips();
        assert_eq!(
            app.get_json(&format!("/products/{id}")).await["name"],
            "Renamed Mug",
            "{strategy:?}"
        );
        assert_eq!(
            app.store.round_trips() - before,
            loads_after_write,
            "{strategy:?}: store queries for the first read after a write"
        );
    }
}

#[tokio::test]
async fn writes_invalidate_the_cached_product_and_unknown_ids_are_cached_briefly() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (id, variant) = app.create_product(&seller).await;
    // Warm the cache, then change the product and one variant through the API.
    assert_eq!(
        app.get_json(&format!("/products/{id}")).await["name"],
        "Hand-thrown Mug"
    );
    let before = app.store.round_trips();
    app.get(&format!("/products/{id}")).await;
    app.get(&format!("/products/{id}/variants/{variant}")).await;
    assert_eq!(
        app.store.round_trips(),
        before,
        "warm reads are served from the cache"
    );

    app.call(
        "PATCH",
        &format!("/products/{id}"),
        Some(&seller.access),
        Some(&json!({ "name": "Renamed Mug" })),
    )
    .await;
    assert_eq!(
        app.get_json(&format!("/products/{id}")).await["name"],
        "Renamed Mug"
    );
    app.call(
        "PATCH",
        &format!("/products/{id}/variants/{variant}"),
        Some(&seller.access),
        Some(&json!({ "stock_level": 99 })),
    )
    .await;
    assert_eq!(
        app.get_json(&format!("/products/{id}/variants/{variant}"))
            .await["stock_level"],
        99
    );
    app.call(
        "DELETE",
        &format!("/products/{id}"),
        Some(&seller.access),
        None,
    )
    .await;
    assert_eq!(app.get(&format!("/products/{id}")).await.status(), 404);

    // "Not found" is cached too: a second miss on an unknown id does not query the store.
    app.get("/products/12345").await;
    let before = app.store.round_trips();
    assert_eq!(app.get("/products/12345").await.status(), 404);
    assert_eq!(app.store.round_trips(), before);
    let text: String = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metric(
            &text,
            "bazaar_cache_evictions_total{cache=\"products\",reason=\"explicit\"}"
        ) >= 3,
        "{text}"
    );
}

#[tokio::test]
async fn profiles_are_cached_aside_and_dropped_when_they_change() {
    let app = spawn_app(0).await;
    let ada = app.signup("customer").await;
    let admin = app.admin().await;
    let path = format!("/users/{}", ada.id);
    app.get(&path).await;
    let before = app.store.round_trips();
    assert_eq!(app.get_json(&path).await["name"], "Test User");
    assert_eq!(
        app.store.round_trips(),
        before,
        "the second read comes from the cache"
    );

    app.call(
        "PATCH",
        "/users/me",
        Some(&ada.access),
        Some(&json!({ "name": "Ada L." })),
    )
    .await;
    assert_eq!(
        app.get_json(&path).await["name"],
        "Ada L.",
        "a profile change drops the cached row"
    );
    app.call(
        "PATCH",
        &path,
        Some(&admin.access),
        Some(&json!({ "role": "seller" })),
    )
    .await;
    assert_eq!(
        app.get_json(&path).await["role"],
        "seller",
        "a role change drops the cached row"
    );
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metric(
            &text,
            "bazaar_cache_requests_total{cache=\"users\",result=\"hit\"}"
        ) >= 1,
        "{text}"
    );
}

#[tokio::test]
async fn views_are_acknowledged_at_once_and_written_back_on_shutdown() {
    let app = spawn_app_with(3, |c| {
        c.cache.views.flush_interval = std::time::Duration::from_secs(3600)
    })
    .await;
    let id = app.product_ids(1).await[0].clone();
    let path = format!("/products/{id}");
    let first = app.get(&path).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(
        first.json::<serde_json::Value>().await.unwrap()["view_count"],
        1
    );
    assert_eq!(app.get_json(&path).await["view_count"], 2);
    // The view count is not part of the validator: the product itself did not change.
    let again = app
        .client
        .get(app.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(app.get_json(&path).await["view_count"], 4);

    // Nothing reached the store yet (the flush interval is an hour)...
    let product_id: bazaar_store::ProductId = id.parse().unwrap();
    let store = app.store.clone();
    assert_eq!(
        store
            .product_with_variants(product_id)
            .await
            .unwrap()
            .unwrap()
            .product
            .view_count,
        0
    );
    // ...until the graceful stop flushes every acknowledged view.
    let config = app.config.clone();
    let dir = app.stop_keeping_data().await;
    let reopened = bazaar::app::open_store(&config, &bazaar_telemetry::Metrics::new())
        .await
        .unwrap();
    assert_eq!(
        reopened
            .product_with_variants(product_id)
            .await
            .unwrap()
            .unwrap()
            .product
            .view_count,
        4
    );
    reopened.close().await;
    drop(dir);
}

#[tokio::test]
async fn views_written_through_are_stored_before_the_read_returns() {
    let app = spawn_app_with(3, |c| c.cache.views.strategy = CacheStrategy::WriteThrough).await;
    let id = app.product_ids(1).await[0].clone();
    let product_id: bazaar_store::ProductId = id.parse().unwrap();
    for _ in 0..3 {
        app.get(&format!("/products/{id}")).await;
    }
    let stored = app
        .store
        .product_with_variants(product_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.product.view_count, 3,
        "no buffer: every view is stored"
    );
    // Each stored view changes the product under the cache, so the next read shows it.
    assert_eq!(
        app.get_json(&format!("/products/{id}")).await["view_count"],
        3
    );
}
