//! Health, readiness, request ids, metrics and the OpenAPI document.

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app(1).await;
    assert_eq!(app.get_json("/healthz").await["status"], "ok");
    assert_eq!(app.get_json("/readyz").await["status"], "ready");
}

#[tokio::test]
async fn a_sane_request_id_is_echoed_and_an_insane_one_replaced() {
    let app = spawn_app(1).await;
    let sane = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-42.a_b")
        .send()
        .await
        .unwrap();
    assert_eq!(sane.headers()["x-request-id"], "trace-42.a_b");
    let insane = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "x".repeat(100))
        .send()
        .await
        .unwrap();
    let replaced = insane.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(replaced, "x".repeat(100));
    assert_eq!(replaced.len(), 36, "a generated UUID: {replaced}");
    let none = app.get("/nope").await;
    assert!(
        none.headers().contains_key("x-request-id"),
        "errors carry the id too"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = spawn_app(5).await;
    let ids = app.product_ids(3).await;
    for id in &ids {
        app.get(&format!("/products/{id}")).await;
    }
    app.get("/products/abc").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            r#"bazaar_http_requests_total{method="GET",route="/products/{id}",status="200"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"bazaar_http_requests_total{method="GET",route="/products/{id}",status="400"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"bazaar_http_request_duration_seconds_bucket{le="#),
        "{text}"
    );
    assert!(
        text.contains("# TYPE bazaar_http_requests_in_flight gauge"),
        "{text}"
    );
    assert!(
        text.contains(r#"bazaar_store_query_duration_seconds_count{shard="shard-"#),
        "{text}"
    );
    for id in &ids {
        assert!(
            !text.contains(id.as_str()),
            "a raw path leaked into a label"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_rest_route() {
    let app = spawn_app(2).await;
    let doc = app.get_json("/openapi.json").await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/products",
        "/products/{id}",
        "/products/{id}/variants",
        "/products/{id}/variants/{variant_id}",
    ] {
        assert!(
            paths[route]["get"].is_object(),
            "{route} missing from the document"
        );
    }
    // And every documented route is served: fill the path parameters with real ids.
    let id = &app.product_ids(1).await[0];
    let product = app.get_json(&format!("/products/{id}")).await;
    let variant = product["variants"][0]["id"].as_str().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", id).replace("{variant_id}", variant);
            let response = app
                .client
                .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{method} {path}");
        }
    }
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "the docs page is Swagger UI"
    );
}

#[tokio::test]
async fn graceful_shutdown_returns_cleanly_and_closes_the_store() {
    let app = spawn_app(1).await;
    let store = app.store.clone();
    app.stop().await.expect("the server stops without error");
    assert!(store.ping().await.is_err(), "the store was closed");
}
