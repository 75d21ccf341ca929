//! Every error is an RFC 9457 problem document with a stable type, naming what was wrong.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let app = spawn_app(30).await;
    let id = &app.product_ids(1).await[0];
    let cases = [
        ("/products/abc".to_owned(), "id"),
        ("/products/-1".to_owned(), "id"),
        ("/products/0012".to_owned(), "id"),
        ("/products/99999999999999999999".to_owned(), "id"),
        (format!("/products/{id}/variants/x1"), "variant_id"),
        ("/products?limit=0".to_owned(), "limit"),
        ("/products?limit=101".to_owned(), "limit"),
        ("/products?limit=many".to_owned(), "limit"),
        ("/products?cursor=not-a-cursor".to_owned(), "cursor"),
        ("/products?min_price=-5".to_owned(), "min_price"),
        ("/products?max_price=9.99".to_owned(), "max_price"),
        (
            "/products?min_price=500&max_price=100".to_owned(),
            "min_price",
        ),
        ("/products?in_stock=maybe".to_owned(), "in_stock"),
        ("/products?sort=popular".to_owned(), "sort"),
        ("/products?colour=red".to_owned(), "colour"),
        ("/products?limit=5&limit=6".to_owned(), "limit"),
    ];
    for (path, param) in cases {
        let body = assert_problem(app.get(&path).await, 400, "invalid-parameter").await;
        assert_eq!(body["param"], param, "GET {path}: {body}");
    }
}

#[tokio::test]
async fn a_cursor_from_another_sort_order_is_rejected() {
    let app = spawn_app(30).await;
    let page = app.get_json("/products?limit=5&sort=price_asc").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let body = assert_problem(
        app.get(&format!("/products?cursor={cursor}")).await,
        400,
        "invalid-parameter",
    )
    .await;
    assert_eq!(body["param"], "cursor");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let app = spawn_app(1).await;
    assert_problem(app.get("/nope").await, 404, "not-found").await;
    let response = app
        .client
        .delete(app.url("/products"))
        .send()
        .await
        .unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert_problem(response, 405, "method-not-allowed").await;
}

#[tokio::test]
async fn graphql_bodies_must_be_json_of_bounded_size() {
    let app = spawn_app_with(1, |c| c.http.body_limit = 4096).await;
    let text = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "text/plain")
        .body("{ products { edges { cursor } } }")
        .send()
        .await
        .unwrap();
    assert_problem(text, 415, "unsupported-media-type").await;

    let malformed = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("{\"query\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400, "malformed-body").await;

    let huge = serde_json::json!({ "query": format!("{{ products {{ edges {{ cursor }} }} }} #{}", "x".repeat(8192)) });
    let too_large = app
        .client
        .post(app.url("/graphql"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_problem(too_large, 413, "payload-too-large").await;
}

#[tokio::test]
async fn a_request_over_the_timeout_is_a_408_problem() {
    let app = spawn_app_with(1, |c| c.http.request_timeout = Duration::from_millis(200)).await;
    // A body that promises 100 bytes and sends 10 keeps the handler waiting for ever: only
    // the timeout can answer it.
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let head = "POST /graphql HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"query\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("}") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed without an answer");
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("application/problem+json") && text.contains("/problems/request-timeout"),
        "{text}"
    );
}

#[tokio::test]
async fn store_failures_are_500s_that_reveal_nothing_internal() {
    let app = spawn_app(3).await;
    let id = &app.product_ids(1).await[0];
    app.store.close().await;
    let body = assert_problem(app.get(&format!("/products/{id}")).await, 500, "internal").await;
    let detail = body["detail"].as_str().unwrap();
    for secret in ["sqlx", "pool", "closed", "shard", "sqlite"] {
        assert!(
            !detail.to_lowercase().contains(secret),
            "500 detail leaks `{secret}`: {detail}"
        );
    }
    assert_problem(app.get("/readyz").await, 503, "unavailable").await;
    // Liveness does not depend on the store.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_path_segment_that_is_not_utf8_is_a_400_naming_the_parameter() {
    let app = spawn_app(1).await;
    let id = &app.product_ids(1).await[0];
    let seller = app.signup("seller").await;
    let cases = [
        ("GET", "/products/%FF".to_owned(), "id"),
        ("GET", "/products/%C3%28/variants".to_owned(), "id"),
        (
            "GET",
            format!("/products/{id}/variants/%C3%28"),
            "variant_id",
        ),
        ("GET", "/orders/%C3%28".to_owned(), "id"),
        ("POST", "/orders/%FF/cancel".to_owned(), "id"),
        ("DELETE", "/cart/items/%FF".to_owned(), "variant_id"),
        ("DELETE", "/api-keys/%FF".to_owned(), "id"),
        ("GET", "/users/%FF".to_owned(), "id"),
    ];
    for (method, path, param) in cases {
        let response = app.call(method, &path, Some(&seller.access), None).await;
        let body = assert_problem(response, 400, "invalid-parameter").await;
        assert_eq!(body["param"], param, "{method} {path}: {body}");
    }
}

/// Sends a request whose one extra header holds `size` bytes and returns what came back.
async fn send_with_header_of(app: &crate::helpers::TestApp, size: usize) -> String {
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "GET /products HTTP/1.1\r\nhost: test\r\nx-padding: {}\r\n\r\n",
        "a".repeat(size)
    );
    // hyper may answer and close before it has read the whole head; a reset while writing is
    // not a failure of the test, the answer is what counts.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&response);
        if text.contains('}') || text.contains("content-length: 0\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn oversized_headers_are_a_431_problem() {
    let app = spawn_app(0).await;
    let text = send_with_header_of(&app, 100 * 1024).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(
        text.contains("application/problem+json")
            && text.contains("/problems/request-header-fields-too-large"),
        "{text}"
    );
    // Under the limit the same request is answered.
    let text = send_with_header_of(&app, 16 * 1024).await;
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
}
