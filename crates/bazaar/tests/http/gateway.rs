//! The gateway's promises, against the running server: what each request is charged, to
//! which bucket, and what is refused before any work is done.

use std::sync::Arc;
use std::time::Duration;

use bazaar::config::Config;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, email, new_product, spawn_app_with};

/// One hour per refill: within a test, a budget is only its burst.
const HOUR: Duration = Duration::from_secs(3600);

/// Limits on, every class roomy, so a test tightens only the one it is about.
fn roomy(c: &mut Config) {
    c.rate_limits.enabled = true;
    for class in [
        &mut c.rate_limits.read,
        &mut c.rate_limits.write,
        &mut c.rate_limits.auth,
        &mut c.rate_limits.login_account,
        &mut c.rate_limits.failed_auth,
    ] {
        class.rate = 1;
        class.period = HOUR;
        class.burst = 10_000;
    }
}

fn signup_body() -> Value {
    json!({ "email": email(), "password": crate::helpers::PASSWORD, "name": "Chained", "role": "customer" })
}

#[tokio::test]
async fn auth_routes_are_charged_to_the_client_address_whatever_token_they_carry() {
    let app = spawn_app_with(0, |c| {
        roomy(c);
        c.rate_limits.auth.burst = 4;
    })
    .await;
    // Each sign-up carries the token the previous one returned: before the fix every token
    // was a fresh bucket, so the chain was never refused.
    let mut token = app.signup("customer").await.access;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let response = app.post("/auth/signup", Some(&token), &signup_body()).await;
        statuses.push(response.status().as_u16());
        if response.status() == 201 {
            let tokens: Value = response.json().await.unwrap();
            token = tokens["access_token"].as_str().unwrap().to_owned();
        }
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429, 429, 429, 429, 429, 429]);
    // Sign-in and refresh with a valid token are the same address's budget.
    let login = json!({ "email": email(), "password": "whatever-it-may-be" });
    assert_problem(
        app.post("/auth/login", Some(&token), &login).await,
        429,
        "too-many-requests",
    )
    .await;
    assert_problem(
        app.post(
            "/auth/refresh",
            Some(&token),
            &json!({ "refresh_token": "nope" }),
        )
        .await,
        429,
        "too-many-requests",
    )
    .await;
}

#[tokio::test]
async fn failed_credentials_are_charged_to_the_address_and_refused_before_the_store_is_read() {
    let app = spawn_app_with(0, |c| {
        roomy(c);
        c.rate_limits.failed_auth.burst = 5;
    })
    .await;
    let before = app.store.round_trips();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let request = app.client.get(app.url("/products"));
        let request = if i % 2 == 0 {
            request.bearer_auth("x.y.z")
        } else {
            // Well formed, so looking it up takes a store read.
            request.header("x-api-key", format!("bzk_1_{i}_{}", "ab".repeat(32)))
        };
        let response = request.send().await.unwrap();
        if response.status() == 429 {
            assert_eq!(
                response.headers()["ratelimit-policy"],
                "\"failed_auth\";q=5;w=3600"
            );
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    let mut expected = vec![401; 5];
    expected.extend([429; 15]);
    assert_eq!(statuses, expected);
    // Of the 10 bogus keys, only those sent before the budget ran out (at most 3) were looked
    // up; the refused ones cost no store read.
    let reads = app.store.round_trips() - before;
    assert!(
        reads <= 3,
        "{reads} store round trips for 20 bad credentials"
    );
    // The address's good requests are unaffected by an anonymous read...
    assert_eq!(app.get("/products").await.status(), 200);
    // ...but a credential from it is refused until the budget refills.
    assert_eq!(
        app.call("GET", "/products", Some("an.other.token"), None)
            .await
            .status(),
        429
    );
}

async fn count_products(app: &TestApp) -> u64 {
    app.store.count_products().await.unwrap()
}

fn aliased_creates(n: usize) -> Value {
    let fields: String = (0..n)
        .map(|i| format!("m{i}: createProduct(input: $p) {{ id }} "))
        .collect();
    json!({
        "query": format!("mutation Many($p: NewProductInput!) {{ {fields} }}"),
        "variables": { "p": {
            "name": "Aliased Mug", "brand": "Kiln & Co", "category": "kitchen",
            "variants": [{ "sku": "AL-1", "color": "blue", "size": "350ml", "price": 2400, "stockLevel": 5 }]
        }}
    })
}

#[tokio::test]
async fn a_graphql_document_is_charged_one_write_per_mutation_and_refused_whole() {
    let app = spawn_app_with(0, |c| {
        roomy(c);
        c.rate_limits.write.burst = 10;
    })
    .await;
    let seller = app.signup("seller").await;
    let send = |body: Value| {
        app.client
            .post(app.url("/graphql"))
            .bearer_auth(&seller.access)
            .json(&body)
            .send()
    };

    // 500 aliased mutations do not fit a budget of 10: refused whole, nothing created.
    let refused = send(aliased_creates(500)).await.unwrap();
    assert_eq!(
        refused.headers()["ratelimit-policy"],
        "\"write\";q=10;w=3600"
    );
    let problem = assert_problem(refused, 429, "too-many-requests").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("500"),
        "{problem}"
    );
    assert_eq!(count_products(&app).await, 0);

    let four = send(aliased_creates(4)).await.unwrap();
    assert_eq!(four.status(), 200);
    assert!(
        four.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"write\";r=6;"),
        "{:?}",
        four.headers()
    );
    let body: Value = four.json().await.unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(count_products(&app).await, 4);

    // Seven do not fit the six left: refused before anything runs.
    assert_problem(
        send(aliased_creates(7)).await.unwrap(),
        429,
        "too-many-requests",
    )
    .await;
    assert_eq!(count_products(&app).await, 4);
    // Fields reached through a fragment count too.
    let through_fragment = json!({
        "query": "mutation M($p: NewProductInput!) { ...F } fragment F on Mutation { a: createProduct(input: $p) { id } b: createProduct(input: $p) { id } c: createProduct(input: $p) { id } d: createProduct(input: $p) { id } e: createProduct(input: $p) { id } f: createProduct(input: $p) { id } g: createProduct(input: $p) { id } }",
        "variables": aliased_creates(1)["variables"].clone(),
    });
    assert_problem(
        send(through_fragment).await.unwrap(),
        429,
        "too-many-requests",
    )
    .await;
    assert_eq!(count_products(&app).await, 4);
    assert_eq!(send(aliased_creates(6)).await.unwrap().status(), 200);
    assert_eq!(count_products(&app).await, 10);
    // The budget is the same one REST writes spend.
    assert_problem(
        app.post("/products", Some(&seller.access), &new_product())
            .await,
        429,
        "too-many-requests",
    )
    .await;
}

fn aliased_reads(id: &str, n: usize) -> Value {
    let fields: String = (0..n)
        .map(|i| format!("p{i}: product(id: \"{id}\") {{ id }} "))
        .collect();
    json!({ "query": format!("{{ {fields} }}") })
}

async fn view_count(app: &TestApp, id: &str) -> i64 {
    let body = app
        .graphql(&format!("{{ product(id: \"{id}\") {{ viewCount }} }}"))
        .await;
    body["data"]["product"]["viewCount"].as_i64().unwrap()
}

#[tokio::test]
async fn a_graphql_query_is_charged_its_complexity_in_read_units() {
    let app = spawn_app_with(1, |c| {
        roomy(c);
        c.rate_limits.read.burst = 40;
        c.rate_limits.graphql_complexity_per_read = 2;
    })
    .await;
    let id = app.product_ids(1).await[0].clone(); // 1 read
    let views = view_count(&app, &id).await; // complexity 2: 1 read
    // 100 aliases of `product { id }`: complexity 200, 100 reads; more than the 38 left.
    let refused = app
        .client
        .post(app.url("/graphql"))
        .json(&aliased_reads(&id, 100))
        .send()
        .await
        .unwrap();
    assert_problem(refused, 429, "too-many-requests").await;
    // 30 aliases: 30 reads, and one view however many aliases read the product.
    let admitted = app
        .client
        .post(app.url("/graphql"))
        .json(&aliased_reads(&id, 30))
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status(), 200);
    assert!(
        admitted.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"read\";r=8;"),
        "{:?}",
        admitted.headers()
    );
    // What is not GraphQL at all, or does not parse, costs one read unit.
    let remaining = |response: &reqwest::Response| {
        response.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .split(';')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let garbage = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (garbage.status().as_u16(), remaining(&garbage)),
        (400, "r=7".into())
    );
    let unparsable = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ product(" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (unparsable.status().as_u16(), remaining(&unparsable)),
        (200, "r=6".into())
    );
    // The refused query recorded no view; the admitted one recorded one; this read one more.
    assert_eq!(view_count(&app, &id).await, views + 2);
}

#[tokio::test]
async fn aliased_product_reads_record_one_view_per_product_per_request() {
    let app = spawn_app_with(2, |_| {}).await;
    let ids = app.product_ids(2).await;
    let before = view_count(&app, &ids[0]).await;
    let other_before = view_count(&app, &ids[1]).await;
    let mut fields: String = (0..999)
        .map(|i| format!("p{i}: product(id: \"{}\") {{ id }} ", ids[0]))
        .collect();
    fields.push_str(&format!("q: product(id: \"{}\") {{ id }}", ids[1]));
    let body = app.graphql(&format!("{{ {fields} }}")).await;
    assert!(body.get("errors").is_none(), "{body}");
    // +1 for the aliases, +1 for this read itself.
    assert_eq!(view_count(&app, &ids[0]).await, before + 2);
    assert_eq!(view_count(&app, &ids[1]).await, other_before + 2);
}

#[tokio::test]
async fn api_key_quota_is_spent_only_by_admitted_requests() {
    let app = spawn_app_with(0, |c| {
        roomy(c);
        c.rate_limits.read.burst = 20;
        c.auth.api_key_daily_quota = 1_000;
    })
    .await;
    let seller = app.signup("seller").await;
    let created: Value = app
        .post(
            "/api-keys",
            Some(&seller.access),
            &json!({ "name": "sync" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();

    let barrier = Arc::new(tokio::sync::Barrier::new(60));
    let requests: Vec<_> = (0..60)
        .map(|_| {
            let (client, url, secret, barrier) = (
                app.client.clone(),
                app.url("/products?limit=1"),
                secret.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                let request = client.get(url).header("x-api-key", secret);
                barrier.wait().await;
                request.send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for request in requests {
        match request.await.unwrap() {
            200 => admitted += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((admitted, refused), (20, 40));
    // One more call, in the write class (which has room): the quota it reports is 1,000
    // minus the admitted reads and itself — the 40 refused reads cost nothing.
    let write = app
        .client
        .post(app.url("/products"))
        .header("x-api-key", &secret)
        .json(&new_product())
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 201);
    assert_eq!(
        write.headers()["x-quota-remaining"],
        (1_000 - admitted - 1).to_string().as_str()
    );
}

#[tokio::test]
async fn protected_routes_answer_401_before_reading_the_body_or_the_path() {
    let app = spawn_app_with(1, |_| {}).await;
    for token in [None, Some("x.y.z")] {
        for (method, path, body) in [
            ("POST", "/products", Some(json!({}))),
            ("POST", "/products", Some(json!({ "name": 7 }))),
            ("DELETE", "/api-keys/0", None),
            ("PATCH", "/products/not-an-id", Some(json!([]))),
            ("PATCH", "/users/me", Some(json!({ "phone": 12 }))),
        ] {
            let response = app.call(method, path, token, body.as_ref()).await;
            let problem = assert_problem(response, 401, "unauthenticated").await;
            assert!(problem.get("param").is_none(), "{method} {path}: {problem}");
        }
    }
    // Routes that do not need a credential still parse as before.
    assert_problem(
        app.call("GET", "/products/not-an-id", None, None).await,
        400,
        "invalid-parameter",
    )
    .await;
}

#[tokio::test]
async fn an_undeclared_method_is_405_with_allow_whatever_the_credentials() {
    let app = spawn_app_with(1, |_| {}).await;
    let user = app.signup("customer").await;
    assert_eq!(
        app.call("POST", "/auth/logout", Some(&user.access), None)
            .await
            .status(),
        204
    );
    let revoked = user.access.as_str();
    for token in [None, Some("x.y.z"), Some(revoked)] {
        for (method, path, allow) in [
            ("TRACE", "/cart", "GET,HEAD"),
            ("PUT", "/products", "GET,HEAD,POST"),
            ("DELETE", "/auth/login", "POST"),
        ] {
            let response = app.call(method, path, token, None).await;
            let mut allowed: Vec<String> = response.headers()["allow"]
                .to_str()
                .unwrap()
                .split(',')
                .map(|m| m.trim().to_owned())
                .collect();
            allowed.sort();
            assert_eq!(allowed.join(","), allow, "{method} {path}");
            assert_problem(response, 405, "method-not-allowed").await;
        }
    }
}

async fn login_attempt(app: &TestApp, header: (&str, &str)) -> u16 {
    app.client
        .post(app.url("/auth/login"))
        .header(header.0, header.1)
        .json(&json!({ "email": email(), "password": "whatever-it-may-be" }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn forwarded_addresses_are_ignored_unless_the_peer_is_a_trusted_proxy() {
    let app = spawn_app_with(0, |c| {
        roomy(c);
        c.rate_limits.auth.burst = 2;
    })
    .await;
    let xff = "x-forwarded-for";
    // Every client is 127.0.0.1, whatever it claims: one bucket.
    assert_eq!(login_attempt(&app, (xff, "203.0.113.1")).await, 401);
    assert_eq!(login_attempt(&app, (xff, "203.0.113.2")).await, 401);
    assert_eq!(login_attempt(&app, (xff, "203.0.113.3")).await, 429);
    assert_eq!(
        login_attempt(&app, ("forwarded", "for=203.0.113.4")).await,
        429
    );
}

#[tokio::test]
async fn a_trusted_proxy_s_forwarded_address_is_the_client() {
    let app = spawn_app_with(0, |c| {
        roomy(c);
        c.rate_limits.auth.burst = 2;
        c.http.trusted_proxies = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
    })
    .await;
    let xff = "x-forwarded-for";
    assert_eq!(login_attempt(&app, (xff, "203.0.113.1")).await, 401);
    assert_eq!(login_attempt(&app, (xff, "203.0.113.1")).await, 401);
    assert_eq!(login_attempt(&app, (xff, "203.0.113.1")).await, 429);
    // Another client behind the proxy has its own budget.
    assert_eq!(login_attempt(&app, (xff, "203.0.113.2")).await, 401);
    // The right-most untrusted hop is the client: what it wrote to its left is not believed,
    // and trusted proxies (10.0.0.0/8) between it and us are skipped.
    assert_eq!(
        login_attempt(&app, (xff, "198.51.100.9, 203.0.113.2, 10.1.2.3")).await,
        401
    );
    assert_eq!(
        login_attempt(&app, (xff, "203.0.113.7, 203.0.113.1")).await,
        429
    );
    // `Forwarded` (RFC 7239), with a quoted address and port.
    assert_eq!(
        login_attempt(&app, ("forwarded", "for=\"203.0.113.2:4711\";proto=https")).await,
        429
    );
    assert_eq!(
        login_attempt(&app, ("forwarded", "for=\"[2001:db8::1]:4711\"")).await,
        401
    );
}
