//! Every list route answers `{"items": [...], "next_cursor": ...}` and reads its query string
//! the same way: each parameter at most once, and only the parameters it knows.

use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app};
use crate::permissions::buy;

#[tokio::test]
async fn every_list_route_refuses_unknown_and_repeated_parameters_naming_them() {
    let app = spawn_app(1).await;
    let admin = app.admin().await;
    let seller = app.signup("seller").await;
    let cases = [
        ("/orders?foo=bar", &admin, "foo"),
        ("/orders?limit=1&limit=2", &admin, "limit"),
        ("/orders?scope=mine&scope=all", &admin, "scope"),
        ("/orders?before=1", &admin, "before"),
        ("/audit-events?limit=1&limit=2", &admin, "limit"),
        ("/audit-events?foo=bar", &admin, "foo"),
        ("/audit-events?limit=0", &admin, "limit"),
        ("/api-keys?foo=bar", &seller, "foo"),
        ("/api-keys?limit=5", &seller, "limit"),
        ("/products?foo=bar", &admin, "foo"),
    ];
    for (path, user, param) in cases {
        let response = app.call("GET", path, Some(&user.access), None).await;
        let body = assert_problem(response, 400, "invalid-parameter").await;
        assert_eq!(body["param"], param, "GET {path}: {body}");
    }
    let id = &app.product_ids(1).await[0];
    let body = assert_problem(
        app.get(&format!("/products/{id}/variants?limit=1")).await,
        400,
        "invalid-parameter",
    )
    .await;
    assert_eq!(body["param"], "limit", "{body}");
}

#[tokio::test]
async fn every_list_route_answers_items_and_next_cursor() {
    let app = spawn_app(1).await;
    let admin = app.admin().await;
    let seller = app.signup("seller").await;
    let created = app
        .post(
            "/api-keys",
            Some(&seller.access),
            &serde_json::json!({ "name": "sync" }),
        )
        .await;
    assert_eq!(created.status(), 201);
    for (path, user) in [
        ("/orders", &admin),
        ("/orders?scope=all", &admin),
        ("/api-keys", &seller),
        ("/audit-events", &admin),
        ("/products", &admin),
    ] {
        let page = app.get_json_as(path, user).await;
        let object = page.as_object().unwrap_or_else(|| panic!("{path}: {page}"));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["items", "next_cursor"], "GET {path}: {page}");
        assert!(page["items"].is_array(), "GET {path}: {page}");
    }
    assert_eq!(
        app.get_json_as("/api-keys", &seller).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn orders_page_through_next_cursor_newest_first() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (_, variant) = app.create_product(&seller).await;
    let buyer = app.signup("customer").await;
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(buy(&app, &buyer, &variant).await);
    }
    placed.reverse();

    let mut seen = Vec::new();
    let mut path = "/orders?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page: Value = app.get_json_as(&path, &buyer).await;
        pages += 1;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/orders?limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 5, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, placed, "every order once, newest first");
    assert_eq!(pages, 2);
    let body = assert_problem(
        app.call("GET", "/orders?cursor=zzz", Some(&buyer.access), None)
            .await,
        400,
        "invalid-parameter",
    )
    .await;
    assert_eq!(body["param"], "cursor");
}
