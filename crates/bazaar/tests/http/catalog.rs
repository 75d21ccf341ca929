//! The seed's four REST endpoints: shapes, filters, sorting, pagination and ETags.

use std::collections::HashSet;

use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn listing_products_returns_a_page_and_a_cursor() {
    let app = spawn_app(60).await;
    let page = app.get_json("/products").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 20, "the default page size is 20");
    assert!(page["next_cursor"].is_string());
    let first = &items[0];
    for field in [
        "id",
        "name",
        "description",
        "brand",
        "category",
        "created_at",
        "updated_at",
    ] {
        assert!(first[field].is_string(), "{field} missing in {first}");
    }
    assert!(first["price"]["amount"].is_i64());
    assert_eq!(first["price"]["currency"], "USD");
    // Newest first: ids (time-ordered) descend.
    let ids: Vec<u64> = items
        .iter()
        .map(|p| p["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
}

#[tokio::test]
async fn paging_with_cursors_visits_every_product_once_in_every_order() {
    let app = spawn_app(250).await;
    for sort in ["newest", "price_asc", "price_desc"] {
        let mut seen: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/products?limit=17&sort={sort}&cursor={c}"),
                None => format!("/products?limit=17&sort={sort}"),
            };
            let page = app.get_json(&path).await;
            seen.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let ids: HashSet<&str> = seen.iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert_eq!(seen.len(), 250, "{sort}");
        assert_eq!(ids.len(), 250, "{sort} repeated a product");
        let key = |p: &Value| {
            (
                p["price"]["amount"].as_i64().unwrap(),
                p["id"].as_str().unwrap().parse::<u64>().unwrap(),
            )
        };
        let in_order = seen.windows(2).all(|w| match sort {
            "newest" => key(&w[0]).1 > key(&w[1]).1,
            "price_asc" => key(&w[0]) < key(&w[1]),
            _ => key(&w[0]) > key(&w[1]),
        });
        assert!(in_order, "{sort} out of order");
    }
}

#[tokio::test]
async fn filters_narrow_the_listing() {
    let app = spawn_app(200).await;
    let page = app
        .get_json("/products?category=footwear&min_price=5000&max_price=15000&limit=100")
        .await;
    let items = page["items"].as_array().unwrap();
    assert!(
        !items.is_empty(),
        "the demo catalog has mid-priced footwear"
    );
    for p in items {
        assert_eq!(p["category"], "footwear");
        let price = p["price"]["amount"].as_i64().unwrap();
        assert!((5000..=15000).contains(&price), "{price}");
    }
    for (flag, wants_stock) in [("true", true), ("false", false)] {
        let page = app
            .get_json(&format!("/products?in_stock={flag}&limit=100"))
            .await;
        for p in page["items"].as_array().unwrap() {
            let detail = app
                .get_json(&format!("/products/{}", p["id"].as_str().unwrap()))
                .await;
            let has_stock = detail["variants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["stock_level"].as_i64().unwrap() > 0);
            assert_eq!(has_stock, wants_stock, "in_stock={flag} listed {}", p["id"]);
        }
    }
}

#[tokio::test]
async fn a_product_comes_with_its_variants_and_an_etag() {
    let app = spawn_app(20).await;
    let id = &app.product_ids(1).await[0];
    let response = app.get(&format!("/products/{id}")).await;
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let product: Value = response.json().await.unwrap();
    assert_eq!(product["id"], id.as_str());
    let variants = product["variants"].as_array().unwrap();
    assert!((2..=12).contains(&variants.len()));
    for v in variants {
        for field in ["id", "product_id", "sku", "color", "size"] {
            assert!(v[field].is_string(), "{field} in {v}");
        }
        assert_eq!(v["product_id"], id.as_str());
        assert!(v["price"]["amount"].is_i64() && v["stock_level"].is_i64());
    }

    let not_modified = app
        .client
        .get(app.url(&format!("/products/{id}")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert!(not_modified.bytes().await.unwrap().is_empty());

    let stale = app
        .client
        .get(app.url(&format!("/products/{id}")))
        .header("if-none-match", "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
}

#[tokio::test]
async fn variants_are_listed_and_fetched_one_by_one() {
    let app = spawn_app(20).await;
    let ids = app.product_ids(2).await;
    let product = app.get_json(&format!("/products/{}", ids[0])).await;
    let listed = app
        .get_json(&format!("/products/{}/variants", ids[0]))
        .await;
    assert_eq!(listed["items"], product["variants"]);
    assert_eq!(listed["next_cursor"], Value::Null);

    let variant = &product["variants"][0];
    let path = format!(
        "/products/{}/variants/{}",
        ids[0],
        variant["id"].as_str().unwrap()
    );
    let response = app.get(&path).await;
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(&response.json::<Value>().await.unwrap(), variant);
    let cached = app
        .client
        .get(app.url(&path))
        .header("if-none-match", format!("W/{etag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);

    // The same variant under another product does not exist.
    let wrong = format!(
        "/products/{}/variants/{}",
        ids[1],
        variant["id"].as_str().unwrap()
    );
    assert_problem(app.get(&wrong).await, 404, "not-found").await;
}

#[tokio::test]
async fn unknown_products_and_variants_are_404_problems() {
    let app = spawn_app(5).await;
    let id = &app.product_ids(1).await[0];
    assert_problem(app.get("/products/12345").await, 404, "not-found").await;
    assert_problem(app.get("/products/12345/variants").await, 404, "not-found").await;
    assert_problem(
        app.get(&format!("/products/{id}/variants/999")).await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn prices_are_refused_in_a_currency_the_shop_does_not_sell_in() {
    let app = crate::helpers::spawn_app(0).await;
    let seller = app.signup("seller").await;
    let mut body = crate::helpers::new_product();
    body["variants"][1]["price"]["currency"] = "ZZZ".into();
    let refused = assert_problem(
        app.post("/products", Some(&seller.access), &body).await,
        422,
        "invalid-field",
    )
    .await;
    assert_eq!(refused["param"], "variants[1].price.currency", "{refused}");
    assert_eq!(
        app.get_json("/products").await["items"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing was listed"
    );

    let (product, variant) = app.create_product(&seller).await;
    let path = format!("/products/{product}/variants");
    let new_variant = serde_json::json!({ "sku": "MUG-RED", "color": "red", "size": "350ml",
        "price": { "amount": 2400, "currency": "ZZZ" } });
    let refused = assert_problem(
        app.post(&path, Some(&seller.access), &new_variant).await,
        422,
        "invalid-field",
    )
    .await;
    assert_eq!(refused["param"], "price.currency", "{refused}");
    let patch = serde_json::json!({ "price": { "amount": 100, "currency": "ZZZ" } });
    let refused = assert_problem(
        app.call(
            "PATCH",
            &format!("{path}/{variant}"),
            Some(&seller.access),
            Some(&patch),
        )
        .await,
        422,
        "invalid-field",
    )
    .await;
    assert_eq!(refused["param"], "price.currency", "{refused}");
    let stored = app.get_json(&format!("{path}/{variant}")).await;
    assert_eq!(stored["price"]["amount"], 2400, "the price is unchanged");
    assert_eq!(
        app.get_json(&path).await["items"].as_array().unwrap().len(),
        2
    );

    // GraphQL refuses the same, naming the same field.
    let gql = |query: String| {
        let app = &app;
        let token = seller.access.clone();
        async move {
            app.client
                .post(app.url("/graphql"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "query": query }))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    for (query, param) in [
        (
            r#"mutation { createProduct(input: { name: "Apron", brand: "A", category: "kitchen",
                variants: [{ sku: "AP-1", color: "red", size: "M", price: 3900, currency: "ZZZ" }] }) { id } }"#
                .to_owned(),
            "variants[0].price.currency",
        ),
        (
            format!(
                r#"mutation {{ addVariant(productId: "{product}", input: {{ sku: "AP-2", color: "red",
                    size: "M", price: 3900, currency: "ZZZ" }}) {{ id }} }}"#
            ),
            "price.currency",
        ),
        (
            format!(
                r#"mutation {{ updateVariant(productId: "{product}", variantId: "{variant}",
                    input: {{ price: 5, currency: "ZZZ" }}) {{ id }} }}"#
            ),
            "price.currency",
        ),
    ] {
        let answer = gql(query).await;
        let extensions = &answer["errors"][0]["extensions"];
        assert_eq!(extensions["code"], "BAD_USER_INPUT", "{answer}");
        assert_eq!(extensions["param"], param, "{answer}");
    }
    assert_eq!(
        app.get_json(&path).await["items"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        app.get_json(&format!("{path}/{variant}")).await["price"]["amount"],
        2400
    );
}

#[tokio::test]
async fn the_shop_sells_in_the_configured_currencies_only() {
    let app = crate::helpers::spawn_app_with(0, |c| {
        c.shop.currencies = vec!["JPY".parse().unwrap()];
    })
    .await;
    let seller = app.signup("seller").await;
    let mut body = crate::helpers::new_product();
    let refused = assert_problem(
        app.post("/products", Some(&seller.access), &body).await,
        422,
        "invalid-field",
    )
    .await;
    assert_eq!(refused["param"], "variants[0].price.currency", "{refused}");
    for v in body["variants"].as_array_mut().unwrap() {
        v["price"]["currency"] = "JPY".into();
    }
    let created = app.post("/products", Some(&seller.access), &body).await;
    assert_eq!(created.status(), 201);
}
