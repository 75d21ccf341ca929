//! Health, readiness, request ids, metrics and the OpenAPI document.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app(1).await;
    assert_eq!(app.get_json("/healthz").await["status"], "ok");
    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
    // The detail lists every background worker with its state and counts.
    let workers: Vec<&str> = ready["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        workers,
        [
            "node-lease",
            "order-sweeper",
            "rate-limit-pruner",
            "search-indexer",
            "search-rebuild",
            "view-flusher"
        ],
        "{ready}"
    );
    for worker in ready["workers"].as_array().unwrap() {
        assert!(
            worker["state"].is_string() && worker["runs"].is_u64(),
            "{worker}"
        );
    }
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
    // And every documented route is served: fill the path parameters with real ids and
    // check the router knows the path and method (whatever the permission answer).
    let id = &app.product_ids(1).await[0];
    let product = app.get_json(&format!("/products/{id}")).await;
    let variant = product["variants"][0]["id"].as_str().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", id).replace("{variant_id}", variant);
            let response = app
                .client
                .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(
                !body.contains("no route matches"),
                "{method} {path} is documented but not routed"
            );
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

#[tokio::test]
async fn shutdown_finishes_a_request_already_in_flight() {
    let mut app = spawn_app(3).await;
    let id = &app.product_ids(1).await[0];
    let body = format!(r#"{{"query":"{{ product(id: \"{id}\") {{ name }} }}"}}"#);
    let (first, rest) = body.split_at(10);

    // A request whose body is half sent when the shutdown begins...
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{first}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    wait_until_in_flight(&app).await;
    app.begin_stop();

    // ...is still answered in full when the rest of the body arrives.
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"name\""), "{response}");
    app.stop().await.expect("the server stops cleanly");
}

#[tokio::test]
async fn shutdown_gives_up_on_requests_that_outlive_the_grace_period() {
    let mut app = spawn_app_with(1, |c| c.http.shutdown_grace = Duration::from_millis(100)).await;
    let mut stalled = TcpStream::connect(app.address).await.unwrap();
    let head = "POST /graphql HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
    stalled.write_all(head.as_bytes()).await.unwrap();
    wait_until_in_flight(&app).await;
    app.begin_stop();
    // The stalled request never completes; the server must stop anyway, after the grace.
    let store = app.store.clone();
    app.stop()
        .await
        .expect("the server stops after its grace period");
    assert!(store.ping().await.is_err(), "the store was closed");
}

/// Waits until the server reports a request in flight besides the `/metrics` scrape asking:
/// the half-sent request has reached its handler.
async fn wait_until_in_flight(app: &crate::helpers::TestApp) {
    for _ in 0..500 {
        let text = app.get("/metrics").await.text().await.unwrap();
        let in_flight = text
            .lines()
            .find_map(|l| l.strip_prefix("bazaar_http_requests_in_flight "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if in_flight >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the half-sent request never reached its handler");
}
