//! Search over HTTP: results, facets, paging, bad parameters, GraphQL, and freshness from
//! the event stream.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_problem, item_ids as ids, spawn_app, spawn_app_with, with_events,
};

#[tokio::test]
async fn search_matches_words_typos_and_prefixes_and_counts_facets_over_every_match() {
    let app = spawn_app(300).await;
    // `spawn_app` waited for the start-up rebuild, which /readyz reports.
    assert_eq!(
        app.get_json("/readyz").await["search"],
        json!({ "state": "ready" })
    );
    let page = app.get_json("/search?q=curtains&limit=100").await;
    let total = page["total"].as_u64().unwrap();
    assert!(total > 0, "{page}");
    for item in page["items"].as_array().unwrap() {
        assert!(
            item["name"].as_str().unwrap().ends_with("Curtains"),
            "{item}"
        );
        assert_eq!(item["category"], "home");
        assert!(item["score"].as_f64().unwrap() > 0.0);
        assert!(
            item["price"]["amount"].as_i64().unwrap()
                <= item["price_max"]["amount"].as_i64().unwrap()
        );
    }
    let typo = app.get_json("/search?q=curtians&limit=100").await;
    assert_eq!(
        typo["total"], page["total"],
        "one transposition away finds the same"
    );
    let partial = app.get_json("/search?q=curt&limit=100").await;
    assert_eq!(partial["total"], page["total"], "the last word is a prefix");
    assert_eq!(app.get_json("/search?q=zzqx").await["total"], 0);

    // Facets count every product that matched, not just the page.
    let all = app.get_json("/search?limit=5").await;
    assert_eq!(all["total"], 300);
    let facets = &all["facets"];
    let sum = |name: &str| -> u64 {
        facets[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("category"), 300, "every product has one category");
    assert_eq!(
        sum("price_ranges"),
        300,
        "every product is in one price bucket"
    );
    assert!(sum("color") >= 300, "a product has one or more colours");
    let home = facets["category"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["value"] == "home")
        .unwrap()["count"]
        .as_u64()
        .unwrap();
    assert_eq!(
        app.get_json("/search?category=home").await["total"]
            .as_u64()
            .unwrap(),
        home
    );

    // Filters hold for every hit, read back through the product endpoint.
    let navy = app
        .get_json("/search?color=navy&in_stock=true&limit=100")
        .await;
    assert!(navy["total"].as_u64().unwrap() > 0);
    for id in ids(&navy) {
        let product = app.get_json(&format!("/products/{id}")).await;
        let variants = product["variants"].as_array().unwrap();
        assert!(variants.iter().any(|v| v["color"] == "navy"), "{product}");
        assert!(
            variants
                .iter()
                .any(|v| v["stock_level"].as_i64().unwrap() > 0),
            "{product}"
        );
    }
    let cheap = app
        .get_json("/search?max_price=3000&sort=price_asc&limit=100")
        .await;
    let prices: Vec<i64> = cheap["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["price"]["amount"].as_i64().unwrap())
        .collect();
    assert!(
        !prices.is_empty()
            && prices.windows(2).all(|w| w[0] <= w[1])
            && prices.iter().all(|p| *p <= 3000),
        "{prices:?}"
    );
}

#[tokio::test]
async fn cursor_pages_visit_every_match_once_in_every_sort() {
    let app = spawn_app(250).await;
    for sort in ["relevance", "price_asc", "price_desc", "newest"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/search?limit=33&sort={sort}&cursor={c}"),
                None => format!("/search?limit=33&sort={sort}"),
            };
            let page = app.get_json(&path).await;
            seen.extend(ids(&page));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let distinct: HashSet<&String> = seen.iter().collect();
        assert_eq!((seen.len(), distinct.len()), (250, 250), "{sort}");
    }
}

#[tokio::test]
async fn bad_search_parameters_are_refused_naming_them() {
    let app = spawn_app(20).await;
    let long = "x".repeat(201);
    let cursor = app.get_json("/search?limit=5").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, param) in [
        ("/search?sort=cheapest".to_owned(), "sort"),
        ("/search?limit=0".to_owned(), "limit"),
        ("/search?limit=101".to_owned(), "limit"),
        ("/search?min_price=-1".to_owned(), "min_price"),
        (
            "/search?min_price=500&max_price=100".to_owned(),
            "min_price",
        ),
        ("/search?in_stock=yes".to_owned(), "in_stock"),
        ("/search?cursor=garbage".to_owned(), "cursor"),
        (format!("/search?sort=newest&cursor={cursor}"), "cursor"),
        ("/search?cursor=relevance:99999".to_owned(), "cursor"),
        ("/search?colour=red".to_owned(), "colour"),
        ("/search?q=a&q=b".to_owned(), "q"),
        (format!("/search?q={long}"), "q"),
        ("/search?brand=".to_owned(), "brand"),
        ("/search?q=%01".to_owned(), "q"),
        ("/search/suggest".to_owned(), "q"),
        ("/search/suggest?q=%20".to_owned(), "q"),
        ("/search/suggest?q=a&limit=11".to_owned(), "limit"),
    ] {
        let body = assert_problem(app.get(&path).await, 400, "invalid-parameter").await;
        assert_eq!(body["param"], param, "{path}: {body}");
    }
}

#[tokio::test]
async fn suggestions_complete_names_and_brands_and_graphql_answers_as_rest_does() {
    let app = spawn_app(300).await;
    let found = app.get_json("/search/suggest?q=atl").await;
    let items = found["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.len() <= 10);
    assert_eq!(
        items[0],
        json!({ "text": "Atlas", "kind": "brand", "count": items[0]["count"] })
    );
    for item in &items[1..] {
        assert!(
            item["text"].as_str().unwrap().starts_with("Atlas "),
            "{item}"
        );
        assert_eq!(item["kind"], "product");
    }
    // A completion finds what it says it finds.
    let first_name = items[1]["text"].as_str().unwrap();
    let exact = app
        .get_json(&format!(
            "/search?q={}",
            first_name.replace(' ', "%20").replace('&', "%26")
        ))
        .await;
    assert_eq!(exact["items"][0]["name"], first_name);

    let rest = app
        .get_json("/search?q=boots&color=black&sort=price_desc&limit=7")
        .await;
    let answer = app
        .graphql(
            r#"{ search(query: "boots", filter: { color: "black" }, sort: PRICE_DESC, first: 7) {
                total nextCursor items { id name price inStock }
                facets { category { value count } priceRanges { from to count } } } }"#,
        )
        .await;
    let graph = &answer["data"]["search"];
    assert_eq!(graph["total"], rest["total"], "{answer}");
    assert_eq!(graph["nextCursor"], rest["next_cursor"]);
    let graph_ids: Vec<&str> = graph["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(graph_ids, ids(&rest));
    assert_eq!(
        graph["facets"]["category"][0]["count"],
        rest["facets"]["category"][0]["count"]
    );
    let bad = app.graphql(r#"{ search(first: 0) { total } }"#).await;
    assert_eq!(bad["errors"][0]["extensions"]["param"], "first", "{bad}");
    let suggest = app
        .graphql(r#"{ suggest(query: "atl", first: 3) { text kind count } }"#)
        .await;
    assert_eq!(suggest["data"]["suggest"][0]["text"], "Atlas");
}

/// Polls `path` until `done` holds, returning how long it took (at most `limit`).
async fn until(
    app: &TestApp,
    path: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let page = app.get_json(path).await;
        if done(&page) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{path} not as expected after {limit:?}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_product_is_found_within_seconds_a_sold_out_one_shows_so_and_a_deleted_one_goes() {
    let app = spawn_app_with(50, with_events).await;
    let seller = app.signup("seller").await;
    let mut body = crate::helpers::new_product();
    body["name"] = json!("Zephyrine Teapot");
    let created = app.post("/products", Some(&seller.access), &body).await;
    assert_eq!(created.status(), 201);
    let product: Value = created.json().await.unwrap();
    let id = product["id"].as_str().unwrap().to_owned();
    let found = until(&app, "/search?q=zephyrine", Duration::from_secs(5), |p| {
        ids(p) == [id.clone()]
    })
    .await;
    println!("findable {found:?} after its 201");
    let hit = &app.get_json("/search?q=zephyrine").await["items"][0];
    assert_eq!(hit["in_stock"], true);
    assert_eq!(hit["brand"], "Kiln & Co");

    // Sold out: every variant's stock to zero.
    for variant in product["variants"].as_array().unwrap() {
        let path = format!(
            "/products/{id}/variants/{}",
            variant["id"].as_str().unwrap()
        );
        let current = app.get(&path).await;
        let etag = current.headers()["etag"].to_str().unwrap().to_owned();
        let response = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&seller.access)
            .header("if-match", etag)
            .json(&json!({ "stock_level": 0 }))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }
    until(&app, "/search?q=zephyrine", Duration::from_secs(5), |p| {
        p["items"][0]["in_stock"] == false
    })
    .await;
    assert_eq!(
        app.get_json("/search?q=zephyrine&in_stock=true").await["total"],
        0
    );

    let deleted = app
        .call(
            "DELETE",
            &format!("/products/{id}"),
            Some(&seller.access),
            None,
        )
        .await;
    assert!(deleted.status().is_success());
    until(&app, "/search?q=zephyrine", Duration::from_secs(5), |p| {
        p["total"] == 0
    })
    .await;
    let gone = app.get_json("/search/suggest?q=zephyr").await;
    assert_eq!(
        gone["items"],
        json!([]),
        "a deleted product is no completion either"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for family in [
        "bazaar_search_queries_total",
        "bazaar_search_documents",
        "bazaar_search_index_lag_seconds",
        "bazaar_search_commit_duration_seconds",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
}
