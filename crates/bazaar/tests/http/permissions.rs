//! The authorization matrix: every route and every mutation, run as an anonymous client, a
//! customer, another seller, the owning seller and an admin, against the status each must
//! get (OWASP API1 object-level and API5 function-level authorization).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, User, email, new_product, spawn_app};

const ACTORS: [&str; 5] = ["anonymous", "customer", "other seller", "owner", "admin"];

/// Objects created fresh for each call, owned by the owning seller; `order` is the
/// customer's paid order of the seller's product.
struct Fixture {
    product: String,
    variant: String,
    key: String,
    bystander: String,
    fresh_refresh: String,
    order: String,
}

/// A shipping address checkout accepts.
pub(crate) fn address() -> Value {
    json!({ "shipping_address": { "name": "Ada Lovelace", "line1": "12 St James's Square",
        "city": "London", "postal_code": "SW1Y 4JH", "country": "GB" } })
}

/// `customer` buys one unit of `variant`; returns the paid order's id.
pub(crate) async fn buy(app: &TestApp, customer: &User, variant: &str) -> String {
    let added = app
        .post(
            "/cart/items",
            Some(&customer.access),
            &json!({ "variant_id": variant, "quantity": 1 }),
        )
        .await;
    assert_eq!(added.status(), 200, "{}", added.text().await.unwrap());
    let response = app
        .client
        .post(app.url("/checkout"))
        .bearer_auth(&customer.access)
        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
        .json(&address())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let order: Value = response.json().await.unwrap();
    order["id"].as_str().unwrap().to_owned()
}

/// Creates the objects of one matrix call; the acting user gets the product's variant in
/// their cart.
async fn fixture(app: &TestApp, owner: &User, customer: &User, actor: Option<&User>) -> Fixture {
    let (product, variant) = app.create_product(owner).await;
    let order = buy(app, customer, &variant).await;
    if let Some(actor) = actor {
        app.post(
            "/cart/items",
            Some(&actor.access),
            &json!({ "variant_id": variant, "quantity": 1 }),
        )
        .await;
    }
    let key: Value = app
        .post(
            "/api-keys",
            Some(&owner.access),
            &json!({ "name": "matrix" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let bystander = app.signup("customer").await;
    Fixture {
        product,
        variant,
        key: key["id"].as_str().unwrap().to_owned(),
        bystander: bystander.id,
        fresh_refresh: bystander.refresh,
        order,
    }
}

struct Case {
    method: &'static str,
    path: &'static str,
    body: fn(&Fixture, &User) -> Option<Value>,
    expected: [u16; 5],
}

fn none(_: &Fixture, _: &User) -> Option<Value> {
    None
}

fn rest_cases() -> Vec<Case> {
    vec![
        Case {
            method: "GET",
            path: "/products",
            body: none,
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: "/search",
            body: none,
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: "/search/suggest",
            body: none,
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "POST",
            path: "/products",
            body: |_, _| Some(new_product()),
            expected: [401, 403, 201, 201, 201],
        },
        Case {
            method: "GET",
            path: "/products/{id}",
            body: none,
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "PATCH",
            path: "/products/{id}",
            body: |_, _| Some(json!({ "name": "Renamed" })),
            expected: [401, 403, 403, 200, 200],
        },
        Case {
            method: "DELETE",
            path: "/products/{id}",
            body: none,
            expected: [401, 403, 403, 204, 204],
        },
        Case {
            method: "GET",
            path: "/products/{id}/variants",
            body: none,
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "POST",
            path: "/products/{id}/variants",
            body: |_, _| {
                Some(
                    json!({ "sku": "NEW", "color": "red", "size": "L", "price": { "amount": 999, "currency": "USD" } }),
                )
            },
            expected: [401, 403, 403, 201, 201],
        },
        Case {
            method: "GET",
            path: "/products/{id}/variants/{variant_id}",
            body: none,
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "PATCH",
            path: "/products/{id}/variants/{variant_id}",
            body: |_, _| Some(json!({ "stock_level": 7 })),
            expected: [401, 403, 403, 200, 200],
        },
        Case {
            method: "DELETE",
            path: "/products/{id}/variants/{variant_id}",
            body: none,
            expected: [401, 403, 403, 204, 204],
        },
        Case {
            method: "POST",
            path: "/auth/signup",
            body: |_, _| Some(json!({ "email": email(), "password": PASSWORD, "name": "New" })),
            expected: [201, 201, 201, 201, 201],
        },
        Case {
            method: "POST",
            path: "/auth/login",
            body: |_, owner| Some(json!({ "email": owner.email, "password": owner.password })),
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "POST",
            path: "/auth/refresh",
            body: |f, _| Some(json!({ "refresh_token": f.fresh_refresh })),
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "POST",
            path: "/auth/logout",
            body: none,
            expected: [401, 204, 204, 204, 204],
        },
        Case {
            method: "GET",
            path: "/users/me",
            body: none,
            expected: [401, 200, 200, 200, 200],
        },
        Case {
            method: "PATCH",
            path: "/users/me",
            body: |_, _| Some(json!({ "name": "Renamed" })),
            expected: [401, 200, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: "/users/{id}",
            body: none,
            expected: [200, 200, 200, 200, 200],
        },
        Case {
            method: "PATCH",
            path: "/users/{id}",
            body: |_, _| Some(json!({ "role": "seller" })),
            expected: [401, 403, 403, 403, 200],
        },
        Case {
            method: "GET",
            path: "/api-keys",
            body: none,
            expected: [401, 403, 200, 200, 200],
        },
        Case {
            method: "POST",
            path: "/api-keys",
            body: |_, _| Some(json!({ "name": "k" })),
            expected: [401, 403, 201, 201, 201],
        },
        // Another seller's key is not theirs to see: 404, not 403, so key ids cannot be probed.
        Case {
            method: "DELETE",
            path: "/api-keys/{id}",
            body: none,
            expected: [401, 403, 404, 204, 404],
        },
        Case {
            method: "GET",
            path: "/audit-events",
            body: none,
            expected: [401, 403, 403, 403, 200],
        },
        // Carts are one's own: every signed-in user has one.
        Case {
            method: "GET",
            path: "/cart",
            body: none,
            expected: [401, 200, 200, 200, 200],
        },
        Case {
            method: "POST",
            path: "/cart/items",
            body: |f, _| Some(json!({ "variant_id": f.variant, "quantity": 1 })),
            expected: [401, 200, 200, 200, 200],
        },
        Case {
            method: "PATCH",
            path: "/cart/items/{variant_id}",
            body: |_, _| Some(json!({ "quantity": 2 })),
            expected: [401, 200, 200, 200, 200],
        },
        Case {
            method: "DELETE",
            path: "/cart/items/{variant_id}",
            body: none,
            expected: [401, 200, 200, 200, 200],
        },
        Case {
            method: "POST",
            path: "/checkout",
            body: |_, _| Some(address()),
            expected: [401, 201, 201, 201, 201],
        },
        // The order is the customer's, of the owner's product: the other seller may not even
        // learn it exists (404); the owner sees it and ships it but may not cancel or refund it.
        Case {
            method: "GET",
            path: "/orders",
            body: none,
            expected: [401, 200, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: "/orders/{id}",
            body: none,
            expected: [401, 200, 404, 200, 200],
        },
        Case {
            method: "POST",
            path: "/orders/{id}/cancel",
            body: none,
            expected: [401, 409, 404, 403, 409],
        },
        Case {
            method: "POST",
            path: "/orders/{id}/refund",
            body: none,
            expected: [401, 200, 404, 403, 200],
        },
        Case {
            method: "POST",
            path: "/orders/{id}/ship",
            body: none,
            expected: [401, 403, 404, 200, 200],
        },
        Case {
            method: "POST",
            path: "/orders/{id}/deliver",
            body: none,
            expected: [401, 403, 404, 403, 409],
        },
        // The dead-letter queue is the operators': admins only. (The id is no dead letter's,
        // so an admin gets 404: the refusal comes before the lookup for everyone else.)
        Case {
            method: "GET",
            path: "/admin/dlq",
            body: none,
            expected: [401, 403, 403, 403, 200],
        },
        Case {
            method: "GET",
            path: "/admin/dlq/{id}",
            body: none,
            expected: [401, 403, 403, 403, 404],
        },
        Case {
            method: "DELETE",
            path: "/admin/dlq/{id}",
            body: none,
            expected: [401, 403, 403, 403, 404],
        },
        Case {
            method: "POST",
            path: "/admin/dlq/{id}/replay",
            body: none,
            expected: [401, 403, 403, 403, 404],
        },
    ]
}

fn concrete(path: &str, f: &Fixture) -> String {
    let id = if path.starts_with("/users/{id}") {
        &f.bystander
    } else if path.starts_with("/api-keys/") {
        &f.key
    } else if path.starts_with("/orders/") {
        &f.order
    } else {
        &f.product
    };
    path.replace("{variant_id}", &f.variant).replace("{id}", id)
}

#[tokio::test]
async fn every_route_answers_each_role_as_the_policy_says() {
    let app = spawn_app(0).await;
    let owner = app.signup("seller").await;
    let customer = app.signup("customer").await;
    let other = app.signup("seller").await;
    let admin = app.admin().await;
    let actors: [Option<&User>; 5] = [
        None,
        Some(&customer),
        Some(&other),
        Some(&owner),
        Some(&admin),
    ];

    let mut failures = Vec::new();
    for case in rest_cases() {
        for (i, actor) in actors.iter().enumerate() {
            let fixture = fixture(&app, &owner, &customer, *actor).await;
            // Sign-out ends a session; use a separate one so the actor stays signed in.
            let token = match (case.path, actor) {
                ("/auth/logout", Some(user)) => Some(app.login(&user.email, PASSWORD).await.access),
                (_, actor) => actor.map(|u| u.access.clone()),
            };
            let body = (case.body)(&fixture, &owner);
            let mut url = app.url(&concrete(case.path, &fixture));
            if case.path == "/search/suggest" {
                // Its one required parameter.
                url.push_str("?q=a");
            }
            let mut request = app.client.request(case.method.parse().unwrap(), url);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            if case.path == "/checkout" {
                request = request.header("idempotency-key", uuid::Uuid::now_v7().to_string());
            }
            let status = request.send().await.unwrap().status().as_u16();
            if status != case.expected[i] {
                failures.push(format!(
                    "{} {} as {}: {status}, expected {}",
                    case.method, case.path, ACTORS[i], case.expected[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The matrix covers every documented route, and nothing undocumented.
    let doc = app.get_json("/openapi.json").await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let covered: BTreeSet<(String, String)> = rest_cases()
        .iter()
        .map(|c| (c.method.to_owned(), c.path.to_owned()))
        .collect();
    assert_eq!(
        documented, covered,
        "the matrix and the OpenAPI document disagree"
    );
}

#[tokio::test]
async fn every_mutation_answers_each_role_as_the_policy_says() {
    let app = spawn_app(0).await;
    let owner = app.signup("seller").await;
    let customer = app.signup("customer").await;
    let other = app.signup("seller").await;
    let admin = app.admin().await;
    let actors: [Option<&User>; 5] = [
        None,
        Some(&customer),
        Some(&other),
        Some(&owner),
        Some(&admin),
    ];
    let (denied, forbidden, ok) = ("UNAUTHENTICATED", "FORBIDDEN", "");
    let mutations: [(&str, [&str; 5]); 10] = [
        (
            r#"createProduct(input: { name: "N", brand: "B", category: "c", variants: [{ sku: "S", color: "c", size: "s", price: 100 }] }) { id }"#,
            [denied, forbidden, ok, ok, ok],
        ),
        (
            r#"updateProduct(id: "{id}", input: { name: "Renamed" }) { id }"#,
            [denied, forbidden, forbidden, ok, ok],
        ),
        (
            r#"deleteProduct(id: "{id}")"#,
            [denied, forbidden, forbidden, ok, ok],
        ),
        (
            r#"addVariant(productId: "{id}", input: { sku: "S2", color: "c", size: "s", price: 100 }) { id }"#,
            [denied, forbidden, forbidden, ok, ok],
        ),
        (
            r#"updateVariant(productId: "{id}", variantId: "{variant_id}", input: { stockLevel: 3 }) { id }"#,
            [denied, forbidden, forbidden, ok, ok],
        ),
        (
            r#"deleteVariant(productId: "{id}", variantId: "{variant_id}")"#,
            [denied, forbidden, forbidden, ok, ok],
        ),
        // Carts are one's own (the fixture put the variant in the actor's cart).
        (
            r#"addToCart(variantId: "{variant_id}", quantity: 1) { total }"#,
            [denied, ok, ok, ok, ok],
        ),
        (
            r#"updateCartItem(variantId: "{variant_id}", quantity: 3) { total }"#,
            [denied, ok, ok, ok, ok],
        ),
        (
            r#"removeFromCart(variantId: "{variant_id}") { total }"#,
            [denied, ok, ok, ok, ok],
        ),
        // Checkout is of one's own cart (the fixture put the variant in it again).
        (
            r#"addToCart(variantId: "{variant_id}", quantity: 1) { total } checkout(idempotencyKey: "matrix-{variant_id}", shippingAddress: { name: "Ada Lovelace", line1: "12 St James's Square", city: "London", postalCode: "SW1Y 4JH", country: "GB" }) { id }"#,
            [denied, ok, ok, ok, ok],
        ),
    ];
    let mut failures = Vec::new();
    for (field, expected) in mutations {
        for (i, actor) in actors.iter().enumerate() {
            let fixture = fixture(&app, &owner, &customer, *actor).await;
            let query = format!("mutation {{ {} }}", concrete(field, &fixture));
            let mut request = app
                .client
                .post(app.url("/graphql"))
                .json(&json!({ "query": query }));
            if let Some(user) = actor {
                request = request.bearer_auth(&user.access);
            }
            let response: Value = request.send().await.unwrap().json().await.unwrap();
            let code = response["errors"][0]["extensions"]["code"]
                .as_str()
                .unwrap_or_default();
            if code != expected[i] {
                failures.push(format!(
                    "{field} as {}: {code:?} ({response}), expected {:?}",
                    ACTORS[i], expected[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_seller_sees_only_their_part_of_a_multi_seller_order() {
    let app = spawn_app(0).await;
    let (alice, bob) = (app.signup("seller").await, app.signup("seller").await);
    let customer = app.signup("customer").await;
    let admin = app.admin().await;
    let (_, alice_variant) = app.create_product(&alice).await;
    let (_, bob_variant) = app.create_product(&bob).await;
    let added = app
        .post(
            "/cart/items",
            Some(&customer.access),
            &json!({ "variant_id": bob_variant, "quantity": 3 }),
        )
        .await;
    assert_eq!(added.status(), 200);
    // `buy` adds one of Alice's and checks the whole cart out: 2400 + 3 × 2400.
    let order = buy(&app, &customer, &alice_variant).await;
    let path = format!("/orders/{order}");

    for (seller, variant, units) in [(&alice, &alice_variant, 1), (&bob, &bob_variant, 3)] {
        let mine = app.get_json_as(&path, seller).await;
        let listed = app.get_json_as("/orders?scope=selling", seller).await;
        let listed = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == order.as_str())
            .cloned()
            .expect("the order is in the seller's list");
        for view in [&mine, &listed] {
            let lines = view["lines"].as_array().unwrap();
            assert_eq!(lines.len(), 1, "only their own line: {view}");
            assert_eq!(lines[0]["variant_id"], variant.as_str());
            assert_eq!(lines[0]["seller_id"], seller.id.as_str());
            assert_eq!(
                view["total"]["amount"],
                2400 * units,
                "their subtotal: {view}"
            );
            assert!(view.get("buyer_id").is_none(), "no buyer id: {view}");
            assert!(
                view["payment_ref"].is_null(),
                "no payment reference: {view}"
            );
            assert_eq!(view["shipping_address"]["line1"], "***", "masked: {view}");
            assert_eq!(view["shipping_address"]["country"], "GB");
        }
        let graphql: Value = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(&seller.access)
            .json(&json!({ "query": format!(
                r#"{{ order(id: "{order}") {{ total lines {{ variantId }} }} }}"#
            ) }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen = &graphql["data"]["order"];
        assert_eq!(
            seen["lines"],
            json!([{ "variantId": variant }]),
            "{graphql}"
        );
        assert_eq!(seen["total"]["amount"], 2400 * units);
    }
    // The buyer and admins see all of it.
    for whole in [&customer, &admin] {
        let view = app.get_json_as(&path, whole).await;
        assert_eq!(view["lines"].as_array().unwrap().len(), 2, "{view}");
        assert_eq!(view["total"]["amount"], 2400 * 4);
        assert_eq!(view["buyer_id"], customer.id.as_str());
        assert!(view["payment_ref"].is_string());
        assert!(view["shipping_address"]["line1"].is_string());
    }
}

/// A credential as Swagger UI's "Authorize" dialog would send it.
enum Credential<'a> {
    Anonymous,
    Scheme(&'a str),
}

/// Sends `case` once, with fresh objects, as the owning seller authenticated by `credential`
/// (or as nobody).
async fn send_case(
    app: &TestApp,
    owner: &User,
    customer: &User,
    owner_key: &str,
    case: &Case,
    credential: &Credential<'_>,
) -> u16 {
    let actor = match credential {
        Credential::Anonymous => None,
        Credential::Scheme(_) => Some(owner),
    };
    let fixture = fixture(app, owner, customer, actor).await;
    let mut request = app.client.request(
        case.method.parse().unwrap(),
        app.url(&concrete(case.path, &fixture)),
    );
    match credential {
        Credential::Anonymous => {}
        // Sign-out ends the session it names: use one of its own.
        Credential::Scheme("bearer") if case.path == "/auth/logout" => {
            request = request.bearer_auth(app.login(&owner.email, PASSWORD).await.access);
        }
        Credential::Scheme("bearer") => request = request.bearer_auth(&owner.access),
        Credential::Scheme("api_key") => request = request.header("x-api-key", owner_key),
        Credential::Scheme(other) => panic!("no test credential for the scheme `{other}`"),
    }
    if let Some(body) = (case.body)(&fixture, owner) {
        request = request.json(&body);
    }
    if case.path == "/checkout" {
        request = request.header("idempotency-key", uuid::Uuid::now_v7().to_string());
    }
    request.send().await.unwrap().status().as_u16()
}

/// Swagger UI's "Try it out" sends a credential only to an operation that declares a security
/// scheme; so every operation that refuses anonymous callers must declare one, each declared
/// scheme must get a request past authentication, and a public operation declares none.
#[tokio::test]
async fn the_openapi_document_declares_credentials_exactly_where_they_are_needed() {
    let app = spawn_app(0).await;
    let owner = app.signup("seller").await;
    let customer = app.signup("customer").await;
    let created: Value = app
        .post(
            "/api-keys",
            Some(&owner.access),
            &json!({ "name": "swagger" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let owner_key = created["secret"].as_str().unwrap().to_owned();

    let doc = app.get_json("/openapi.json").await;
    let known: BTreeSet<&String> = doc["components"]["securitySchemes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let cases = rest_cases();
    let mut failures = Vec::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let method = method.to_uppercase();
            let case = cases
                .iter()
                .find(|c| c.method == method && c.path == path)
                .unwrap_or_else(|| panic!("{method} {path} is not in the matrix"));
            // Each requirement object names the schemes it needs together; any one will do.
            let declared: BTreeSet<String> = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|requirement| requirement.as_object().unwrap().keys().cloned())
                .collect();
            for scheme in &declared {
                if !known.contains(scheme) {
                    failures.push(format!("{method} {path}: unknown scheme `{scheme}`"));
                }
            }

            let anonymous = send_case(
                &app,
                &owner,
                &customer,
                &owner_key,
                case,
                &Credential::Anonymous,
            )
            .await;
            match (anonymous == 401, declared.is_empty()) {
                (true, true) => failures.push(format!(
                    "{method} {path} answers 401 anonymously but declares no security"
                )),
                (false, false) => failures.push(format!(
                    "{method} {path} declares {declared:?} but answers {anonymous} anonymously"
                )),
                _ => {}
            }
            for scheme in &declared {
                let status = send_case(
                    &app,
                    &owner,
                    &customer,
                    &owner_key,
                    case,
                    &Credential::Scheme(scheme),
                )
                .await;
                if status == 401 {
                    failures.push(format!(
                        "{method} {path} declares `{scheme}` but answers 401 to it"
                    ));
                }
            }
        }
    }
    assert_eq!(operations, cases.len(), "the matrix covers every operation");
    assert!(failures.is_empty(), "{failures:#?}");
}
