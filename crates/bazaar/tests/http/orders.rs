//! Carts, checkout and orders in the running server: validation, idempotency, flash sales
//! with and without payment failures, the life cycle, expiry and the outbox.

use std::collections::BTreeMap;
use std::time::Duration;

use bazaar_store::{OrderStatus, ProductId, StockAccount, VariantId};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{TestApp, User, assert_problem, spawn_app, spawn_app_with};
use crate::permissions::address;

impl TestApp {
    /// Signs up `n` customers, a few at a time (each sign-up hashes a password).
    async fn customers(&self, n: usize) -> Vec<User> {
        let mut users = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
            users.extend(join_all(chunk.iter().map(|_| self.signup("customer"))).await);
        }
        users
    }

    async fn add(&self, user: &User, variant: &str, quantity: i64) -> reqwest::Response {
        self.post(
            "/cart/items",
            Some(&user.access),
            &json!({ "variant_id": variant, "quantity": quantity }),
        )
        .await
    }

    async fn checkout(&self, user: &User, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/checkout"))
            .bearer_auth(&user.access)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A product by `seller` with one variant of `stock` units; returns (product, variant).
    pub(crate) async fn product_with_stock(&self, seller: &User, stock: i64) -> (String, String) {
        let body = json!({ "name": "Limited Lamp", "brand": "Glow", "category": "home",
            "variants": [{ "sku": "LAMP-1", "color": "brass", "size": "one",
                "price": { "amount": 4900, "currency": "USD" }, "stock_level": stock }] });
        let response = self.post("/products", Some(&seller.access), &body).await;
        assert_eq!(response.status(), 201);
        let product: Value = response.json().await.unwrap();
        (
            product["id"].as_str().unwrap().to_owned(),
            product["variants"][0]["id"].as_str().unwrap().to_owned(),
        )
    }

    pub(crate) async fn account(&self, product: &str, variant: &str) -> StockAccount {
        let product: ProductId = product.parse().unwrap();
        let variant: VariantId = variant.parse().unwrap();
        self.store.stock_account(product, variant).await.unwrap()
    }

    /// The topics of every outbox event on every shard.
    async fn outbox_topics(&self) -> Vec<String> {
        let mut topics = Vec::new();
        for shard in self.store.shards() {
            let events = shard.outbox(0, 10_000).await.unwrap();
            topics.extend(events.into_iter().map(|e| e.topic));
        }
        topics
    }

    /// Every order on every shard, with its status.
    async fn all_orders(&self) -> Vec<bazaar_store::OrderRecord> {
        let mut orders = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .orders_everywhere(None, before, 500)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            orders.extend(page);
        }
        orders
    }
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[tokio::test]
async fn the_cart_prices_lines_and_names_every_bad_input() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (_, variant) = app.create_product(&seller).await;
    let buyer = app.signup("customer").await;

    let cart: Value = app.add(&buyer, &variant, 2).await.json().await.unwrap();
    assert_eq!(cart["lines"][0]["quantity"], 2);
    assert_eq!(cart["lines"][0]["unit_price"]["amount"], 2400);
    assert_eq!(cart["total"]["amount"], 4800, "prices are the server's");
    let cart: Value = app.add(&buyer, &variant, 1).await.json().await.unwrap();
    assert_eq!(
        cart["lines"][0]["quantity"], 3,
        "adding again adds to the line"
    );
    let patched = app
        .call(
            "PATCH",
            &format!("/cart/items/{variant}"),
            Some(&buyer.access),
            Some(&json!({ "quantity": 5 })),
        )
        .await;
    assert_eq!(
        patched.json::<Value>().await.unwrap()["total"]["amount"],
        12000
    );

    for (quantity, field) in [(0, "quantity"), (-1, "quantity"), (101, "quantity")] {
        let problem = assert_problem(
            app.add(&buyer, &variant, quantity).await,
            422,
            "invalid-field",
        )
        .await;
        assert_eq!(problem["param"], field, "quantity {quantity}");
    }
    let problem = assert_problem(app.add(&buyer, &variant, 96).await, 422, "invalid-field").await;
    assert_eq!(
        problem["param"], "quantity",
        "5 + 96 exceeds the line limit"
    );
    assert_problem(app.add(&buyer, "12345", 1).await, 404, "not-found").await;
    let problem = assert_problem(
        app.add(&buyer, "not-an-id", 1).await,
        400,
        "invalid-parameter",
    )
    .await;
    assert_eq!(problem["param"], "variant_id");
    let missing = app
        .post(
            "/cart/items",
            Some(&buyer.access),
            &json!({ "variant_id": variant }),
        )
        .await;
    assert_eq!(
        assert_problem(missing, 422, "invalid-field").await["param"],
        "quantity"
    );
    assert_problem(
        app.call("DELETE", "/cart/items/12345", Some(&buyer.access), None)
            .await,
        404,
        "not-found",
    )
    .await;
    assert_problem(app.get("/cart").await, 401, "unauthenticated").await;

    // One currency per cart.
    let euro = json!({ "name": "Mug", "brand": "B", "category": "kitchen",
        "variants": [{ "sku": "EU", "color": "red", "size": "one",
            "price": { "amount": 2000, "currency": "EUR" }, "stock_level": 3 }] });
    let euro: Value = app
        .post("/products", Some(&seller.access), &euro)
        .await
        .json()
        .await
        .unwrap();
    let euro_variant = euro["variants"][0]["id"].as_str().unwrap();
    let mixed = assert_problem(app.add(&buyer, euro_variant, 1).await, 422, "invalid-field").await;
    assert_eq!(mixed["param"], "variant_id");

    let emptied = app
        .call(
            "DELETE",
            &format!("/cart/items/{variant}"),
            Some(&buyer.access),
            None,
        )
        .await;
    assert_eq!(emptied.json::<Value>().await.unwrap()["lines"], json!([]));
}

#[tokio::test]
async fn checkout_pays_reserves_and_records_an_order_only_its_people_see() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 5).await;
    let buyer = app.signup("customer").await;

    // Bad requests first: nothing is reserved or charged by any of them.
    let no_key = app.post("/checkout", Some(&buyer.access), &address()).await;
    assert_eq!(
        assert_problem(no_key, 400, "invalid-parameter").await["param"],
        "Idempotency-Key"
    );
    let empty = app.checkout(&buyer, &key(), &address()).await;
    assert_eq!(
        assert_problem(empty, 422, "invalid-field").await["param"],
        "cart"
    );
    app.add(&buyer, &variant, 2).await;
    for (body, field) in [
        (json!({}), "shipping_address"),
        (
            json!({ "shipping_address": { "name": "A", "line1": "1 Road", "city": "X", "postal_code": "1", "country": "XX" } }),
            "shipping_address.country",
        ),
        (
            json!({ "shipping_address": { "name": "A", "line1": "1 Road", "postal_code": "1", "country": "US" } }),
            "shipping_address.city",
        ),
    ] {
        let response = app.checkout(&buyer, &key(), &body).await;
        assert_eq!(
            assert_problem(response, 422, "invalid-field").await["param"],
            field
        );
    }
    assert_eq!(app.account(&product, &variant).await.on_hand, 5);

    let response = app.checkout(&buyer, &key(), &address()).await;
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "paid");
    assert_eq!(order["total"]["amount"], 9800);
    assert_eq!(order["shipping_address"]["line1"], "12 St James's Square");
    let id = order["id"].as_str().unwrap();
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 3,
            held: 0,
            committed: 2
        }
    );
    let cart: Value = app
        .call("GET", "/cart", Some(&buyer.access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cart["lines"], json!([]), "the ordered lines leave the cart");

    // The buyer and an admin see the address; the seller sees where, not who or which door;
    // anyone else cannot tell the order exists.
    let path = format!("/orders/{id}");
    let own: Value = app
        .call("GET", &path, Some(&buyer.access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["shipping_address"]["name"], "Ada Lovelace");
    let sellers: Value = app
        .call("GET", &path, Some(&seller.access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sellers["shipping_address"]["name"], "A***");
    assert_eq!(sellers["shipping_address"]["line1"], "***");
    assert_eq!(sellers["shipping_address"]["city"], "London");
    let stranger = app.signup("customer").await;
    assert_problem(
        app.call("GET", &path, Some(&stranger.access), None).await,
        404,
        "not-found",
    )
    .await;
    let admin = app.admin().await;
    let all: Value = app
        .call("GET", "/orders?scope=all", Some(&admin.access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"][0]["shipping_address"]["name"], "Ada Lovelace");
    let selling: Value = app
        .call("GET", "/orders?scope=selling", Some(&seller.access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(selling["items"][0]["id"], *id);
    assert_problem(
        app.call("GET", "/orders?scope=all", Some(&buyer.access), None)
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        app.call("GET", "/orders?scope=everything", Some(&buyer.access), None)
            .await,
        400,
        "invalid-parameter",
    )
    .await;

    // GraphQL shows the same order and cart.
    let graphql: Value = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&buyer.access)
        .json(&json!({ "query": "{ orders { id status total lines { quantity } } cart { total lines { quantity } } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(graphql["data"]["orders"][0]["id"], *id, "{graphql}");
    assert_eq!(graphql["data"]["orders"][0]["status"], "paid");
    assert_eq!(graphql["data"]["orders"][0]["lines"][0]["quantity"], 2);
    assert_eq!(graphql["data"]["cart"]["total"]["amount"], 0);

    // The address is sealed at rest: no shard file holds it in clear.
    let files = app.bytes_at_rest().await;
    assert!(
        files
            .iter()
            .all(|bytes| !bytes.windows(12).any(|w| w == b"St James's S")),
        "the shipping address is stored in clear"
    );
}

#[tokio::test]
async fn the_same_key_replays_the_same_response_and_a_different_body_is_refused() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 10).await;
    let buyer = app.signup("customer").await;
    app.add(&buyer, &variant, 1).await;
    let key = key();
    // Ten identical requests at once: one runs, the others wait for or replay its result.
    let body = address();
    let responses = join_all((0..10).map(|_| app.checkout(&buyer, &key, &body))).await;
    let mut bodies = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 201);
        bodies.push(response.bytes().await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every answer is the same bytes"
    );
    assert_eq!(app.all_orders().await.len(), 1, "one order for one key");
    assert_eq!(app.account(&product, &variant).await.committed, 1);

    let replay = app.checkout(&buyer, &key, &address()).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), bodies[0]);
    let mut other = address();
    other["shipping_address"]["city"] = json!("Paris");
    let reused = app.checkout(&buyer, &key, &other).await;
    assert_problem(reused, 422, "idempotency-key-reused").await;

    // A failed checkout is replayed too: its stored 409 comes back.
    let (_, sold_out) = app.product_with_stock(&seller, 0).await;
    app.add(&buyer, &sold_out, 1).await;
    let key = self::key();
    let first = app.checkout(&buyer, &key, &address()).await;
    let problem = assert_problem(first, 409, "out-of-stock").await;
    assert_eq!(problem["variant_id"], *sold_out);
    let again = app.checkout(&buyer, &key, &address()).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(assert_problem(again, 409, "out-of-stock").await, problem);
}

/// 500 buyers, 10 units: exactly 10 orders, 490 `out-of-stock`, stock 0.
async fn flash_sale(shards: usize) {
    let app = spawn_app_with(0, |c| c.store.shards = shards).await;
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 10).await;
    let buyers = app.customers(500).await;
    for chunk in buyers.chunks(50) {
        join_all(chunk.iter().map(|b| app.add(b, &variant, 1))).await;
    }
    let responses = join_all(
        buyers
            .iter()
            .map(|b| async { app.checkout(b, &key(), &address()).await }),
    )
    .await;
    let mut statuses = BTreeMap::new();
    for response in responses {
        let status = response.status().as_u16();
        if status == 409 {
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["type"], "/problems/out-of-stock");
            assert_eq!(problem["variant_id"], *variant);
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([(201, 10), (409, 490)]),
        "{shards} shards"
    );
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 0,
            held: 0,
            committed: 10
        },
        "{shards} shards"
    );
    let orders = app.all_orders().await;
    let paid = orders
        .iter()
        .filter(|o| o.status == OrderStatus::Paid)
        .count();
    assert_eq!(paid, 10);
    assert!(orders.iter().all(|o| o.settled), "every order settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_sells_exactly_the_stock_on_four_shards() {
    flash_sale(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_sells_exactly_the_stock_on_one_shard() {
    flash_sale(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_declines_and_timeouts_every_unit_is_accounted_for_and_every_201_is_paid() {
    let app = spawn_app_with(0, |c| {
        c.payments.decline_rate = 0.3;
        c.payments.timeout_rate = 0.05;
    })
    .await;
    let seller = app.signup("seller").await;
    let mut variants = Vec::new();
    for stock in [10, 25] {
        variants.push(app.product_with_stock(&seller, stock).await);
    }
    let buyers = app.customers(120).await;
    for (i, buyer) in buyers.iter().enumerate() {
        app.add(buyer, &variants[i % 2].1, 1).await;
        if i % 3 == 0 {
            app.add(buyer, &variants[(i + 1) % 2].1, 2).await;
        }
    }
    let responses = join_all(
        buyers
            .iter()
            .map(|b| async { app.checkout(b, &key(), &address()).await }),
    )
    .await;
    let mut statuses = BTreeMap::new();
    let mut acknowledged = Vec::new();
    for response in responses {
        let status = response.status().as_u16();
        *statuses.entry(status).or_insert(0) += 1;
        assert!(
            [201, 402, 409, 503].contains(&status),
            "unexpected {status}: {}",
            response.text().await.unwrap()
        );
        if status == 201 {
            let order: Value = response.json().await.unwrap();
            acknowledged.push(order["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(statuses.get(&402).copied().unwrap_or(0) > 0, "{statuses:?}");
    let orders = app.all_orders().await;
    for id in &acknowledged {
        let order = orders
            .iter()
            .find(|o| o.id.to_string() == *id)
            .expect("a 201 has its order");
        assert_eq!(order.status, OrderStatus::Paid);
    }
    let mut sold: BTreeMap<String, i64> = BTreeMap::new();
    for order in orders.iter().filter(|o| o.status == OrderStatus::Paid) {
        for line in &order.lines {
            *sold.entry(line.variant_id.to_string()).or_default() += line.quantity;
        }
    }
    for ((product, variant), initial) in variants.iter().zip([10, 25]) {
        let account = app.account(product, variant).await;
        assert_eq!(
            account.total(),
            initial,
            "{account:?}: no unit lost or doubled"
        );
        assert_eq!(
            account.held, 0,
            "nothing left held once every checkout answered"
        );
        assert_eq!(account.committed, sold.get(variant).copied().unwrap_or(0));
    }
}

#[tokio::test]
async fn orders_follow_their_life_cycle_and_return_stock_exactly_once() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 4).await;
    let buyer = app.signup("customer").await;
    let admin = app.admin().await;
    let buy = || async {
        app.add(&buyer, &variant, 1).await;
        let order: Value = app
            .checkout(&buyer, &key(), &address())
            .await
            .json()
            .await
            .unwrap();
        format!("/orders/{}", order["id"].as_str().unwrap())
    };
    let app = &app;
    let post = |path: String, user: &User| {
        let token = user.access.clone();
        async move { app.call("POST", &path, Some(&token), None).await }
    };

    // paid → refunded: the unit returns once; a second refund is a conflict.
    let refunded = buy().await;
    assert_eq!(app.account(&product, &variant).await.on_hand, 3);
    let response = post(format!("{refunded}/refund"), &buyer).await;
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "refunded"
    );
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 4,
            held: 0,
            committed: 0
        }
    );
    let again = post(format!("{refunded}/refund"), &admin).await;
    assert_problem(again, 409, "invalid-transition").await;
    assert_eq!(
        app.account(&product, &variant).await.on_hand,
        4,
        "returned exactly once"
    );

    // paid → shipped → delivered; cancel, refund and re-delivery are refused on the way.
    let shipped = buy().await;
    assert_problem(
        post(format!("{shipped}/cancel"), &buyer).await,
        409,
        "invalid-transition",
    )
    .await;
    assert_problem(
        post(format!("{shipped}/deliver"), &admin).await,
        409,
        "invalid-transition",
    )
    .await;
    let response = post(format!("{shipped}/ship"), &seller).await;
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "shipped");
    assert!(order["lines"][0]["shipped_at"].is_string());
    assert_problem(
        post(format!("{shipped}/refund"), &buyer).await,
        409,
        "invalid-transition",
    )
    .await;
    assert_problem(
        post(format!("{shipped}/deliver"), &buyer).await,
        403,
        "forbidden",
    )
    .await;
    let response = post(format!("{shipped}/deliver"), &admin).await;
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "delivered"
    );
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 3,
            held: 0,
            committed: 1
        }
    );

    // Every change is in the outbox, written with the change.
    let topics = app.outbox_topics().await;
    for topic in [
        "order.created",
        "stock.reserved",
        "order.paid",
        "order.refunded",
        "stock.released",
        "order.shipped",
        "order.delivered",
    ] {
        assert!(
            topics.iter().any(|t| t == topic),
            "no {topic} in {topics:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_reservations_expire_and_their_stock_returns() {
    // Payment takes longer than a reservation lives, so the sweeper expires the order while
    // the buyer waits; the captured payment is refunded and the stock returns.
    let app = spawn_app_with(0, |c| {
        c.orders.reservation_ttl = Duration::from_millis(50);
        c.orders.sweep_interval = Duration::from_millis(20);
        c.payments.latency = Duration::from_millis(200);
    })
    .await;
    let seller = app.signup("seller").await;
    let (product, variant) = app.product_with_stock(&seller, 3).await;
    let buyer = app.signup("customer").await;
    app.add(&buyer, &variant, 2).await;
    let response = app.checkout(&buyer, &key(), &address()).await;
    let problem = assert_problem(response, 409, "conflict").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );
    let orders = app.all_orders().await;
    assert_eq!(orders[0].status, OrderStatus::Expired);
    assert_eq!(
        app.account(&product, &variant).await,
        StockAccount {
            on_hand: 3,
            held: 0,
            committed: 0
        }
    );
    let topics = app.outbox_topics().await;
    assert_eq!(topics.iter().filter(|t| *t == "stock.released").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_forgotten_after_their_configured_lifetime() {
    let app = spawn_app_with(0, |c| {
        c.orders.idempotency_ttl = Duration::from_millis(200);
        c.orders.sweep_interval = Duration::from_millis(50);
    })
    .await;
    let seller = app.signup("seller").await;
    let (_, variant) = app.product_with_stock(&seller, 5).await;
    let buyer = app.signup("customer").await;
    app.add(&buyer, &variant, 1).await;
    let key = key();
    assert_eq!(app.checkout(&buyer, &key, &address()).await.status(), 201);
    let mut other = address();
    other["shipping_address"]["city"] = json!("Paris");
    // While the key is remembered, another body under it is refused...
    assert_problem(
        app.checkout(&buyer, &key, &other).await,
        422,
        "idempotency-key-reused",
    )
    .await;
    // ...and once it has expired (and been purged), the key starts a new checkout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.add(&buyer, &variant, 1).await;
    let response = app.checkout(&buyer, &key, &other).await;
    assert_eq!(response.status(), 201);
    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.all_orders().await.len(), 2);
}
