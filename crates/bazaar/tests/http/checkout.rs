//! Checkout under attack: many checkouts of one cart released at once (REST, GraphQL and
//! both), a price changed between the cart and the checkout, and stock read back through
//! every path right after each change to it.

use std::sync::Arc;
use std::time::Duration;

use bazaar_store::prelude::*;
use bazaar_store::{OrderStatus, StockAccount, UserId};
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::helpers::{TestApp, User, assert_problem, spawn_app, spawn_app_with};
use crate::permissions::address;

/// How one racer sends its checkout.
#[derive(Debug, Clone, Copy)]
enum Way {
    Rest,
    Graphql,
}

/// What one checkout answered, reduced to what the promise is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Created(String),
    /// Another checkout of the cart holds it (409 `checkout-in-progress`).
    InProgress,
    /// The cart was already paid and emptied (422 naming `cart`).
    CartEmpty,
}

const GRAPHQL_CHECKOUT: &str = r#"mutation($key: String!) { checkout(idempotencyKey: $key,
    shippingAddress: { name: "Ada Lovelace", line1: "12 St James's Square", city: "London",
    postalCode: "SW1Y 4JH", country: "GB" }) { id status total } }"#;

fn request(app: &TestApp, buyer: &User, way: Way, key: String) -> reqwest::RequestBuilder {
    match way {
        Way::Rest => app
            .client
            .post(app.url("/checkout"))
            .bearer_auth(&buyer.access)
            .header("idempotency-key", key)
            .json(&address()),
        Way::Graphql => app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(&buyer.access)
            .json(&json!({ "query": GRAPHQL_CHECKOUT, "variables": { "key": key } })),
    }
}

async fn answer(way: Way, response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let (kind, param) = match way {
        Way::Rest if status == 201 => return Answer::Created(body["id"].as_str().unwrap().into()),
        Way::Rest => (body["type"].clone(), body["param"].clone()),
        Way::Graphql => {
            if let Some(id) = body["data"]["checkout"]["id"].as_str() {
                return Answer::Created(id.to_owned());
            }
            let extensions = &body["errors"][0]["extensions"];
            (extensions["type"].clone(), extensions["param"].clone())
        }
    };
    match (kind.as_str(), param.as_str()) {
        (Some("/problems/checkout-in-progress"), _) => Answer::InProgress,
        (Some("/problems/invalid-field"), Some("cart")) => Answer::CartEmpty,
        _ => panic!("unexpected answer to a racing checkout ({status}): {body}"),
    }
}

/// Sends one checkout per entry of `ways`, each with its own `Idempotency-Key`, all released
/// together by a barrier once every request is built.
async fn race(app: &Arc<TestApp>, buyer: &User, ways: &[Way]) -> Vec<Answer> {
    let barrier = Arc::new(Barrier::new(ways.len()));
    let tasks: Vec<_> = ways
        .iter()
        .enumerate()
        .map(|(i, &way)| {
            let request = request(app, buyer, way, format!("race-{}-{i}", buyer.id));
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                answer(way, request.send().await.unwrap()).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

async fn add(app: &TestApp, buyer: &User, variant: &str, quantity: i64) -> Value {
    let response = app
        .post(
            "/cart/items",
            Some(&buyer.access),
            &json!({ "variant_id": variant, "quantity": quantity }),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits (bounded, 1 s) until a checkout in flight holds `units` of `variant`: it has
/// reserved, so it holds the cart's claim.
async fn until_held(app: &TestApp, product: &str, variant: &str, units: i64) {
    for _ in 0..200 {
        if app.account(product, variant).await.held == units {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the checkout never held {units} units of {variant}");
}

async fn orders_of(app: &TestApp, buyer: &User) -> Vec<bazaar_store::OrderRecord> {
    let id: UserId = buyer.id.parse().unwrap();
    app.store
        .for_user(id)
        .orders_of_buyer(id, None, 1_000)
        .await
        .unwrap()
}

/// The promise: of all the racers exactly one order is created and charged, every other
/// racer is told the cart is being checked out or is empty, and stock moves by the cart.
async fn one_cart_is_one_order(ways: &[Way]) {
    let app = Arc::new(spawn_app(0).await);
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 100).await;
    let buyer = app.signup("customer").await;
    add(&app, &buyer, &variant, 2).await;

    let answers = race(&app, &buyer, ways).await;

    let created: Vec<&String> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Created(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let orders = orders_of(&app, &buyer).await;
    assert_eq!(orders.len(), 1, "one order row: {orders:?}");
    assert_eq!(orders[0].id.to_string(), *created[0]);
    assert_eq!(orders[0].status, OrderStatus::Paid);
    assert_eq!(app.payments.captures(), 1, "one charge");
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 98,
            held: 0,
            committed: 2
        },
        "stock moved by exactly the cart's quantity"
    );
    let cart = app.get_json_as("/cart", &buyer).await;
    assert_eq!(cart["lines"], json!([]), "the paid cart is empty");
    // The buyer may check out again once the cart holds something new: the claim is gone.
    add(&app, &buyer, &variant, 1).await;
    let again = race(&app, &buyer, &[ways[0]]).await;
    assert!(matches!(again[..], [Answer::Created(_)]), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_rest_checkouts_of_one_cart_with_different_keys_make_one_order() {
    one_cart_is_one_order(&[Way::Rest; 20]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_graphql_checkouts_of_one_cart_with_different_keys_make_one_order() {
    one_cart_is_one_order(&[Way::Graphql; 20]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_and_graphql_checkouts_racing_on_one_cart_make_one_order() {
    let ways: Vec<Way> = (0..24)
        .map(|i| if i % 2 == 0 { Way::Rest } else { Way::Graphql })
        .collect();
    one_cart_is_one_order(&ways).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_refused_while_another_holds_the_cart_says_so_and_takes_nothing() {
    // A slow payment keeps the first checkout holding the cart while the second arrives.
    let app =
        Arc::new(spawn_app_with(0, |c| c.payments.latency = Duration::from_millis(300)).await);
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 10).await;
    let buyer = app.signup("customer").await;
    add(&app, &buyer, &variant, 2).await;
    let first = {
        let request = request(&app, &buyer, Way::Rest, "first".into());
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    // Wait until the first checkout has reserved (so it holds the claim), then try again.
    until_held(&app, &product, &variant, 2).await;
    let second = request(&app, &buyer, Way::Rest, "second".into())
        .send()
        .await
        .unwrap();
    let problem = assert_problem(second, 409, "checkout-in-progress").await;
    let first = first.await.unwrap();
    assert_eq!(first.status(), 201);
    let order: Value = first.json().await.unwrap();
    assert_eq!(problem["order_id"], order["id"], "{problem}");
    assert_eq!(orders_of(&app, &buyer).await.len(), 1);
    assert_eq!(app.payments.captures(), 1);
}

#[tokio::test]
async fn a_price_raised_after_the_cart_was_read_is_refused_before_anything_is_taken() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 10).await;
    let buyer = app.signup("customer").await;
    let cart = add(&app, &buyer, &variant, 1).await;
    let expected = cart["total"].clone();
    assert_eq!(expected, json!({ "amount": 4900, "currency": "USD" }));

    // The seller raises the price between the buyer's cart and checkout.
    let raised = app
        .call(
            "PATCH",
            &format!("/products/{product}/variants/{variant}"),
            Some(&seller.access),
            Some(&json!({ "price": { "amount": 999_999, "currency": "USD" } })),
        )
        .await;
    assert_eq!(raised.status(), 200);

    let mut body = address();
    body["expected_total"] = expected.clone();
    let response = app
        .client
        .post(app.url("/checkout"))
        .bearer_auth(&buyer.access)
        .header("idempotency-key", "price-guard-rest")
        .json(&body)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 409, "price-changed").await;
    assert_eq!(
        problem["total"],
        json!({ "amount": 999_999, "currency": "USD" })
    );
    // Over GraphQL the same.
    let query = r#"mutation { checkout(idempotencyKey: "price-guard-graphql",
        shippingAddress: { name: "Ada Lovelace", line1: "12 St James's Square", city: "London",
        postalCode: "SW1Y 4JH", country: "GB" }, expectedTotal: { amount: 4900, currency: "USD" })
        { id } }"#;
    let answer: Value = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&buyer.access)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let extensions = &answer["errors"][0]["extensions"];
    assert_eq!(extensions["code"], "PRICE_CHANGED", "{answer}");
    assert_eq!(extensions["type"], "/problems/price-changed");
    assert_eq!(extensions["total"]["amount"], 999_999);

    // Nothing was reserved, ordered or charged.
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 10,
            held: 0,
            committed: 0
        }
    );
    assert!(orders_of(&app, &buyer).await.is_empty());
    assert_eq!(app.payments.captures(), 0);

    // The cart shows the total to send; with it, checkout goes through.
    let cart = app.get_json_as("/cart", &buyer).await;
    body["expected_total"] = cart["total"].clone();
    let response = app
        .client
        .post(app.url("/checkout"))
        .bearer_auth(&buyer.access)
        .header("idempotency-key", "price-guard-accepted")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["total"]["amount"], 999_999);
    assert_eq!(app.payments.captures(), 1);
}

#[tokio::test]
async fn a_malformed_expected_total_names_the_field() {
    let app = spawn_app(0).await;
    let buyer = app.signup("customer").await;
    let mut body = address();
    body["expected_total"] = json!({ "amount": 1, "currency": "dollars" });
    let response = app
        .client
        .post(app.url("/checkout"))
        .bearer_auth(&buyer.access)
        .header("idempotency-key", "bad-total")
        .json(&body)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 422, "invalid-field").await;
    assert_eq!(problem["param"], "expected_total.currency");
}

/// The variant's stock level as REST's product route, REST's variant route, GraphQL and the
/// cart (for a buyer holding it) each report it.
async fn stock_everywhere(app: &TestApp, product: &str, variant: &str, buyer: &User) -> [i64; 4] {
    let rest = app.get_json(&format!("/products/{product}")).await["variants"][0]["stock_level"]
        .as_i64()
        .unwrap();
    let route = app
        .get_json(&format!("/products/{product}/variants/{variant}"))
        .await["stock_level"]
        .as_i64()
        .unwrap();
    let graphql = app
        .graphql(&format!(
            r#"{{ product(id: "{product}") {{ variants {{ stockLevel }} }} }}"#
        ))
        .await["data"]["product"]["variants"][0]["stockLevel"]
        .as_i64()
        .unwrap();
    let cart = app.get_json_as("/cart", buyer).await;
    let available = cart["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["variant_id"] == variant)
        .map_or(-1, |l| l["available"].as_i64().unwrap());
    [rest, route, graphql, available]
}

#[tokio::test]
async fn stock_reads_follow_checkout_and_refund_through_every_path() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 5).await;
    let buyer = app.signup("customer").await;
    let watcher = app.signup("customer").await;
    add(&app, &watcher, &variant, 1).await;
    // Every path has read (and so cached) the level before the change.
    assert_eq!(
        stock_everywhere(&app, &product, &variant, &watcher).await,
        [5; 4]
    );

    add(&app, &buyer, &variant, 2).await;
    let response = request(&app, &buyer, Way::Rest, "stock-reads".into())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    assert_eq!(
        stock_everywhere(&app, &product, &variant, &watcher).await,
        [3; 4],
        "the next read after a 201 shows the reduced level"
    );

    let id = order["id"].as_str().unwrap();
    let refunded = app
        .post(
            &format!("/orders/{id}/refund"),
            Some(&buyer.access),
            &json!({}),
        )
        .await;
    assert_eq!(refunded.status(), 200);
    assert_eq!(
        stock_everywhere(&app, &product, &variant, &watcher).await,
        [5; 4],
        "the next read after a refund shows the returned units"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_reads_follow_the_sweeper_releasing_an_expired_reservation() {
    // Payment takes far longer than a reservation lives: the sweeper expires the order and
    // releases its stock while the buyer waits.
    let app = Arc::new(
        spawn_app_with(0, |c| {
            c.orders.reservation_ttl = Duration::from_millis(400);
            c.orders.sweep_interval = Duration::from_millis(20);
            c.payments.latency = Duration::from_millis(1_000);
        })
        .await,
    );
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 3).await;
    let buyer = app.signup("customer").await;
    let watcher = app.signup("customer").await;
    add(&app, &watcher, &variant, 1).await;
    add(&app, &buyer, &variant, 2).await;
    let checkout = {
        let request = request(&app, &buyer, Way::Rest, "swept".into());
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    until_held(&app, &product, &variant, 2).await;
    // Read (and cache) the level while the units are held.
    assert_eq!(
        stock_everywhere(&app, &product, &variant, &watcher).await,
        [1; 4]
    );
    assert_problem(checkout.await.unwrap(), 409, "conflict").await;
    assert_eq!(app.account(&product, &variant).await.on_hand, 3);
    assert_eq!(
        stock_everywhere(&app, &product, &variant, &watcher).await,
        [3; 4],
        "the next read after the sweeper released the reservation shows the released units"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cart_edits_while_a_checkout_holds_the_cart_are_refused_not_lost() {
    let app =
        Arc::new(spawn_app_with(0, |c| c.payments.latency = Duration::from_millis(400)).await);
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 10).await;
    let (_, other) = app.product_with_stock(&seller, 10).await;
    let buyer = app.signup("customer").await;
    add(&app, &buyer, &variant, 1).await;
    let checkout = {
        let request = request(&app, &buyer, Way::Rest, "held".into());
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    until_held(&app, &product, &variant, 1).await;
    // Each edit would be wiped when the paid order clears the cart: refused instead.
    let edits = [
        (
            "POST",
            "/cart/items".to_owned(),
            Some(json!({ "variant_id": variant, "quantity": 2 })),
        ),
        (
            "POST",
            "/cart/items".to_owned(),
            Some(json!({ "variant_id": other, "quantity": 1 })),
        ),
        (
            "PATCH",
            format!("/cart/items/{variant}"),
            Some(json!({ "quantity": 7 })),
        ),
        ("DELETE", format!("/cart/items/{variant}"), None),
    ];
    for (method, path, body) in &edits {
        let response = app
            .call(method, path, Some(&buyer.access), body.as_ref())
            .await;
        assert_problem(response, 409, "checkout-in-progress").await;
    }
    let paid = checkout.await.unwrap();
    assert_eq!(paid.status(), 201);
    let order: Value = paid.json().await.unwrap();
    assert_eq!(
        order["lines"][0]["quantity"], 1,
        "the order bought what was claimed"
    );
    let cart = app.get_json_as("/cart", &buyer).await;
    assert_eq!(cart["lines"], json!([]));
    // Once the order is paid the cart is the buyer's to edit again.
    let cart = add(&app, &buyer, &other, 1).await;
    assert_eq!(cart["lines"][0]["quantity"], 1);
}

#[tokio::test]
async fn an_order_with_a_shipped_line_is_not_refunded_and_its_units_stay_sold() {
    let app = spawn_app(0).await;
    let (shipper, waiter) = (app.signup("seller").await, app.signup("seller").await);
    let (product, variant) = app.product_with_stock(&shipper, 5).await;
    let (_, later) = app.product_with_stock(&waiter, 5).await;
    let buyer = app.signup("customer").await;
    add(&app, &buyer, &variant, 1).await;
    add(&app, &buyer, &later, 1).await;
    let response = request(&app, &buyer, Way::Rest, "partly-shipped".into())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    let id = order["id"].as_str().unwrap();
    let shipped = app
        .post(
            &format!("/orders/{id}/ship"),
            Some(&shipper.access),
            &json!({}),
        )
        .await;
    assert_eq!(shipped.status(), 200);
    // One seller shipped, the other has not: the order is still `paid`, but not refundable.
    let refused = app
        .post(
            &format!("/orders/{id}/refund"),
            Some(&buyer.access),
            &json!({}),
        )
        .await;
    assert_problem(refused, 409, "invalid-transition").await;
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 4,
            held: 0,
            committed: 1
        },
        "the shipped unit stays sold"
    );
}
