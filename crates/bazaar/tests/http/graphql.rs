//! The GraphQL API: the seed's query verbatim, the products connection, batching and limits.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_seeds_query_runs_verbatim() {
    let app = spawn_app(10).await;
    let id = &app.product_ids(1).await[0];
    let rest = app.get_json(&format!("/products/{id}")).await;
    let query = format!(
        "query {{ product(id: \"{id}\") {{ id name price variants {{ id color size price stockLevel }} }} }}"
    );
    let response = app.graphql(&query).await;
    assert!(response["errors"].is_null(), "{response}");
    let product = &response["data"]["product"];
    assert_eq!(product["id"], rest["id"]);
    assert_eq!(product["name"], rest["name"]);
    assert_eq!(product["price"], rest["price"]);
    let variants = product["variants"].as_array().unwrap();
    let rest_variants = rest["variants"].as_array().unwrap();
    assert_eq!(variants.len(), rest_variants.len());
    for (g, r) in variants.iter().zip(rest_variants) {
        assert_eq!(g["id"], r["id"]);
        assert_eq!(g["color"], r["color"]);
        assert_eq!(g["size"], r["size"]);
        assert_eq!(g["price"], r["price"]);
        assert_eq!(g["stockLevel"], r["stock_level"]);
    }
}

#[tokio::test]
async fn unknown_and_malformed_product_ids() {
    let app = spawn_app(1).await;
    let missing = app.graphql("{ product(id: \"12345\") { id } }").await;
    assert_eq!(missing["data"]["product"], Value::Null);
    assert!(missing["errors"].is_null());
    let malformed = app.graphql("{ product(id: \"abc\") { id } }").await;
    let message = malformed["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("invalid `id`"), "{message}");
}

#[tokio::test]
async fn the_products_connection_pages_with_filters() {
    let app = spawn_app(120).await;
    let mut after: Option<String> = None;
    let mut names = Vec::new();
    let mut last_price = i64::MIN;
    loop {
        let after_arg = after
            .as_ref()
            .map(|a| format!(", after: \"{a}\""))
            .unwrap_or_default();
        let query = format!(
            "{{ products(first: 25{after_arg}, sort: PRICE_ASC, filter: {{ inStock: true }}) {{ edges {{ cursor node {{ name price }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
        );
        let response = app.graphql(&query).await;
        assert!(response["errors"].is_null(), "{response}");
        let connection = &response["data"]["products"];
        for edge in connection["edges"].as_array().unwrap() {
            let price = edge["node"]["price"]["amount"].as_i64().unwrap();
            assert!(price >= last_price, "not sorted by price");
            last_price = price;
            names.push(edge["node"]["name"].clone());
        }
        if connection["pageInfo"]["hasNextPage"] == true {
            after = Some(
                connection["pageInfo"]["endCursor"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        } else {
            break;
        }
    }
    let rest = app
        .get_json("/products?in_stock=true&limit=100&sort=price_asc")
        .await;
    assert!(names.len() >= rest["items"].as_array().unwrap().len());
    assert!(!names.is_empty());

    let bad = app
        .graphql("{ products(first: 0) { edges { cursor } } }")
        .await;
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid `first`"),
        "{bad}"
    );
    let bad = app
        .graphql("{ products(after: \"garbage\") { edges { cursor } } }")
        .await;
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid `after`"),
        "{bad}"
    );
}

/// Store round trips for one GraphQL query, read from the store's own counter.
async fn round_trips(app: &crate::helpers::TestApp, query: &str) -> u64 {
    let before = app.store.round_trips();
    let response = app.graphql(query).await;
    assert!(response["errors"].is_null(), "{response}");
    app.store.round_trips() - before
}

#[tokio::test]
async fn variants_of_a_page_are_loaded_in_batches_not_per_product() {
    let app = spawn_app(200).await;
    let page = |n: usize| {
        format!(
            "{{ products(first: {n}) {{ edges {{ node {{ id variants {{ id color size price stockLevel }} }} }} }} }}"
        )
    };
    // Both pages span all four shards, so the only difference between them is their size.
    let small = round_trips(&app, &page(25)).await;
    let large = round_trips(&app, &page(100)).await;
    let shards = app.store.shard_count() as u64;
    // One listing query and at most one variant query per shard, whatever the page size.
    assert!(large <= 2 * shards, "100 products took {large} round trips");
    assert_eq!(small, large, "round trips grew with the page size");
}

#[tokio::test]
async fn variants_selected_through_fragments_are_batched_too() {
    let app = spawn_app(200).await;
    let shards = app.store.shard_count() as u64;
    let inline =
        "{ products(first: 100) { edges { node { ... on Product { variants { id } } } } } }";
    let named = "query { products(first: 100) { ...page } } fragment page on ProductConnection { edges { node { variants { id stockLevel } } } }";
    for query in [inline, named] {
        let trips = round_trips(&app, query).await;
        assert!(trips <= 2 * shards, "{trips} round trips for {query}");
    }
}

#[tokio::test]
async fn abusive_queries_are_rejected_by_depth_and_complexity_limits() {
    let app = spawn_app(1).await;
    let ordinary = "{ products { edges { node { id variants { id } } } } }";
    assert!(
        app.graphql(ordinary).await["errors"].is_null(),
        "an ordinary query passes"
    );

    let nested = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } }";
    let response = app.graphql(nested).await;
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(message.contains("nested too deep"), "{response}");

    let expensive = "{ a: products(first: 100) { edges { node { id name brand category variants { id sku color size price stockLevel } } } } b: products(first: 100) { edges { node { id name brand category variants { id sku color size price stockLevel } } } } }";
    let response = app.graphql(expensive).await;
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(message.contains("complex"), "{response}");
}
