//! Accounts, sessions, tokens, API keys, rate limits, personal data and security events.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, new_product, spawn_app, spawn_app_with};

#[tokio::test]
async fn signup_login_refresh_and_logout() {
    let app = spawn_app(0).await;
    let address = email();
    let body = json!({ "email": address.to_uppercase(), "password": PASSWORD, "name": "Ada" });
    let response = app.post("/auth/signup", None, &body).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["user"]["email"], address, "emails are normalised");
    assert_eq!(
        tokens["user"]["role"], "customer",
        "customer is the default role"
    );
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);

    let user = app.login(&address, PASSWORD).await;
    let me = app.call("GET", "/users/me", Some(&user.access), None).await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap()["email"], address);

    // Refresh rotates the pair; the new access token works.
    let refreshed: Value = app
        .post(
            "/auth/refresh",
            None,
            &json!({ "refresh_token": user.refresh }),
        )
        .await
        .json()
        .await
        .unwrap();
    let access = refreshed["access_token"].as_str().unwrap();
    assert_ne!(refreshed["refresh_token"], user.refresh.as_str());
    assert_eq!(
        app.call("GET", "/users/me", Some(access), None)
            .await
            .status(),
        200
    );

    // Sign-out ends the session at once: its access token and refresh token stop working.
    assert_eq!(
        app.call("POST", "/auth/logout", Some(access), None)
            .await
            .status(),
        204
    );
    let after = app.call("GET", "/users/me", Some(access), None).await;
    assert_eq!(
        after.headers()["www-authenticate"],
        "Bearer realm=\"bazaar\""
    );
    assert_problem(after, 401, "unauthenticated").await;
    let refresh = app
        .post(
            "/auth/refresh",
            None,
            &json!({ "refresh_token": refreshed["refresh_token"] }),
        )
        .await;
    assert_problem(refresh, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_reused_refresh_token_ends_the_whole_session() {
    let app = spawn_app(0).await;
    let user = app.signup("customer").await;
    let first: Value = app
        .post(
            "/auth/refresh",
            None,
            &json!({ "refresh_token": user.refresh }),
        )
        .await
        .json()
        .await
        .unwrap();
    // The old token again: reuse. Both it and its successor are now dead, and so is the
    // access token of the session.
    assert_problem(
        app.post(
            "/auth/refresh",
            None,
            &json!({ "refresh_token": user.refresh }),
        )
        .await,
        401,
        "unauthenticated",
    )
    .await;
    assert_problem(
        app.post(
            "/auth/refresh",
            None,
            &json!({ "refresh_token": first["refresh_token"] }),
        )
        .await,
        401,
        "unauthenticated",
    )
    .await;
    assert_eq!(
        app.call(
            "GET",
            "/users/me",
            Some(first["access_token"].as_str().unwrap()),
            None
        )
        .await
        .status(),
        401
    );
    for garbage in ["", "x", "1.2.3", "abc.def.ghi"] {
        assert_problem(
            app.post("/auth/refresh", None, &json!({ "refresh_token": garbage }))
                .await,
            401,
            "unauthenticated",
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let app = spawn_app(0).await;
    let user = app.signup("customer").await;
    let wrong = app
        .post(
            "/auth/login",
            None,
            &json!({ "email": user.email, "password": "not-the-password-at-all" }),
        )
        .await;
    let unknown = app
        .post(
            "/auth/login",
            None,
            &json!({ "email": email(), "password": "not-the-password-at-all" }),
        )
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let (wrong, unknown): (Value, Value) =
        (wrong.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(wrong, unknown, "the answers must not tell the cases apart");
}

#[tokio::test]
async fn bad_signups_are_422_naming_the_field_and_duplicates_409() {
    let app = spawn_app(0).await;
    let cases = [
        (
            json!({ "email": "not-an-email", "password": PASSWORD, "name": "A" }),
            "email",
        ),
        (
            json!({ "email": email(), "password": "short", "name": "A" }),
            "password",
        ),
        (
            json!({ "email": email(), "password": "password1234", "name": "A" }),
            "password",
        ),
        (
            json!({ "email": email(), "password": PASSWORD, "name": "" }),
            "name",
        ),
        (
            json!({ "email": email(), "password": PASSWORD, "name": "A", "role": "admin" }),
            "role",
        ),
        (
            json!({ "email": email(), "password": PASSWORD, "name": "A", "role": "wizard" }),
            "role",
        ),
        (json!({ "email": email(), "name": "A" }), "password"),
    ];
    for (body, field) in cases {
        let problem = assert_problem(
            app.post("/auth/signup", None, &body).await,
            422,
            "invalid-field",
        )
        .await;
        assert_eq!(problem["param"], field, "{body}: {problem}");
    }
    let user = app.signup("customer").await;
    let again = json!({ "email": format!("  {}  ", user.email.to_uppercase()), "password": PASSWORD, "name": "B" });
    assert_problem(
        app.post("/auth/signup", None, &again).await,
        409,
        "conflict",
    )
    .await;
    let text = app
        .client
        .post(app.url("/auth/signup"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(text, 415, "unsupported-media-type").await;
}

#[tokio::test]
async fn fifty_concurrent_signups_with_one_email_create_exactly_one_account() {
    let app = spawn_app(0).await;
    let address = email();
    let attempts = (0..50).map(|i| {
        let client = app.client.clone();
        let url = app.url("/auth/signup");
        let body = json!({ "email": address, "password": PASSWORD, "name": format!("Racer {i}") });
        tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let statuses: Vec<u16> = futures_join(attempts).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        49,
        "{statuses:?}"
    );
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn writes_honour_if_match_and_the_next_read_sees_them() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let (id, variant) = app.create_product(&seller).await;
    let read = app.get(&format!("/products/{id}")).await;
    let etag = read.headers()["etag"].to_str().unwrap().to_owned();

    let patch = json!({ "name": "Wheel-thrown Mug" });
    let updated = app
        .client
        .patch(app.url(&format!("/products/{id}")))
        .bearer_auth(&seller.access)
        .header("if-match", &etag)
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let new_etag = updated.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(
        app.get_json(&format!("/products/{id}")).await["name"],
        "Wheel-thrown Mug",
        "the next GET shows the write"
    );

    // The old tag is stale now.
    let stale = app
        .client
        .patch(app.url(&format!("/products/{id}")))
        .bearer_auth(&seller.access)
        .header("if-match", &etag)
        .json(&json!({ "name": "Lost update" }))
        .send()
        .await
        .unwrap();
    assert_problem(stale, 412, "precondition-failed").await;
    assert_eq!(
        app.get_json(&format!("/products/{id}")).await["name"],
        "Wheel-thrown Mug"
    );

    // Variants: restock with the variant's own tag; the product's price follows its variants.
    let path = format!("/products/{id}/variants/{variant}");
    let variant_tag = app.get(&path).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let restock = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&seller.access)
        .header("if-match", &variant_tag)
        .json(&json!({ "stock_level": 40, "price": { "amount": 1500, "currency": "USD" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(restock.status(), 200);
    assert_eq!(app.get_json(&path).await["stock_level"], 40);
    assert_eq!(
        app.get_json(&format!("/products/{id}")).await["price"]["amount"],
        1500
    );

    // Bad bodies name the field.
    let bad = app
        .call(
            "PATCH",
            &path,
            Some(&seller.access),
            Some(&json!({ "stock_level": -1 })),
        )
        .await;
    assert_eq!(
        assert_problem(bad, 422, "invalid-field").await["param"],
        "stock_level"
    );
    let bad = app
        .post(
            "/products",
            Some(&seller.access),
            &json!({ "name": "x", "brand": "b", "category": "c", "variants": [] }),
        )
        .await;
    assert_eq!(
        assert_problem(bad, 422, "invalid-field").await["param"],
        "variants"
    );
    let mut body = new_product();
    body["variants"][1]["price"]["amount"] = json!(-5);
    let bad = app.post("/products", Some(&seller.access), &body).await;
    assert_eq!(
        assert_problem(bad, 422, "invalid-field").await["param"],
        "variants[1].price.amount"
    );
}

#[tokio::test]
async fn api_keys_authenticate_count_a_daily_quota_and_can_be_revoked() {
    let app = spawn_app_with(0, |c| c.auth.api_key_daily_quota = 3).await;
    let seller = app.signup("seller").await;
    let created = app
        .post(
            "/api-keys",
            Some(&seller.access),
            &json!({ "name": "inventory-sync" }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let key: Value = created.json().await.unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("bzk_"));

    let listed: Value = app
        .call("GET", "/api-keys", Some(&seller.access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["next_cursor"], Value::Null, "{listed}");
    assert_eq!(listed["items"][0]["id"], key["id"]);
    assert!(
        listed["items"][0].get("secret").is_none(),
        "a secret is shown once, at creation"
    );

    // X-Api-Key and Bearer both work, and each call spends quota.
    let by_header = app
        .client
        .post(app.url("/products"))
        .header("x-api-key", &secret)
        .json(&new_product())
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 201);
    assert_eq!(by_header.headers()["x-quota-limit"], "3");
    assert_eq!(by_header.headers()["x-quota-remaining"], "2");
    let product: Value = by_header.json().await.unwrap();
    assert_eq!(
        product["seller_id"],
        seller.id.as_str(),
        "a key acts as its owner"
    );
    let by_bearer = app.call("GET", "/users/me", Some(&secret), None).await;
    assert_eq!(by_bearer.status(), 200);
    assert_eq!(by_bearer.headers()["x-quota-remaining"], "1");
    assert_eq!(
        app.call("GET", "/products?limit=1", Some(&secret), None)
            .await
            .status(),
        200
    );
    let spent = app
        .call("GET", "/products?limit=1", Some(&secret), None)
        .await;
    assert!(spent.headers().contains_key("retry-after"));
    assert_eq!(spent.headers()["x-quota-remaining"], "0");
    assert_problem(spent, 429, "quota-exhausted").await;

    let id = key["id"].as_str().unwrap();
    assert_eq!(
        app.call(
            "DELETE",
            &format!("/api-keys/{id}"),
            Some(&seller.access),
            None
        )
        .await
        .status(),
        204
    );
    assert_problem(
        app.call("GET", "/products", Some(&secret), None).await,
        401,
        "unauthenticated",
    )
    .await;
    assert_problem(
        app.call(
            "DELETE",
            &format!("/api-keys/{id}"),
            Some(&seller.access),
            None,
        )
        .await,
        404,
        "not-found",
    )
    .await;
    let forged = format!("{}0", &secret[..secret.len() - 1]);
    assert_problem(
        app.call("GET", "/products", Some(&forged), None).await,
        401,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_ratelimit_headers() {
    let app = spawn_app_with(1, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.auth.burst = 3;
        c.rate_limits.auth.rate = 1;
        c.rate_limits.auth.period = Duration::from_secs(3600);
    })
    .await;
    let body = json!({ "email": email(), "password": "whatever-it-may-be" });
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = app.post("/auth/login", None, &body).await;
        if response.status() == 429 {
            assert!(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    > 3000
            );
            assert_eq!(
                response.headers()["ratelimit-policy"],
                "\"auth\";q=3;w=3600"
            );
            assert!(
                response.headers()["ratelimit"]
                    .to_str()
                    .unwrap()
                    .starts_with("\"auth\";r=0;t=")
            );
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Reads are another class with their own budget.
    let read = app.get("/products").await;
    assert_eq!(read.status(), 200);
    assert!(
        read.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"read\";r=")
    );
}

#[tokio::test]
async fn sign_in_attempts_are_also_limited_per_account() {
    let app = spawn_app_with(0, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.login_account.burst = 2;
        c.rate_limits.login_account.period = Duration::from_secs(3600);
    })
    .await;
    let user = app.signup("customer").await;
    let wrong = json!({ "email": user.email, "password": "definitely-wrong-password" });
    assert_eq!(app.post("/auth/login", None, &wrong).await.status(), 401);
    assert_eq!(app.post("/auth/login", None, &wrong).await.status(), 401);
    // The account is throttled now — even with the right password — while others are not.
    let right = json!({ "email": user.email, "password": PASSWORD });
    assert_problem(
        app.post("/auth/login", None, &right).await,
        429,
        "too-many-requests",
    )
    .await;
    let other = app.signup("customer").await;
    assert_eq!(
        app.post(
            "/auth/login",
            None,
            &json!({ "email": other.email, "password": PASSWORD })
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn disabled_rate_limits_never_refuse() {
    let app = spawn_app_with(1, |c| {
        c.rate_limits.enabled = false;
        c.rate_limits.read.burst = 1;
    })
    .await;
    for _ in 0..20 {
        let response = app.get("/healthz").await;
        assert_eq!(response.status(), 200);
        assert!(!response.headers().contains_key("ratelimit"));
    }
}

#[tokio::test]
async fn profiles_show_personal_data_only_to_their_owner_and_admins() {
    let app = spawn_app(0).await;
    let ada = app.signup("customer").await;
    let bob = app.signup("seller").await;
    let admin = app.admin().await;
    let patch = json!({ "name": "Ada L.", "phone": "+44 20 7946 0958" });
    let mine: Value = app
        .call("PATCH", "/users/me", Some(&ada.access), Some(&patch))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["phone"], "+442079460958");

    let path = format!("/users/{}", ada.id);
    for (viewer, sees_private) in [
        (Some(&ada), true),
        (Some(&admin), true),
        (Some(&bob), false),
        (None, false),
    ] {
        let body: Value = app
            .call("GET", &path, viewer.map(|u| u.access.as_str()), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["name"], "Ada L.");
        assert_eq!(body.get("email").is_some(), sees_private, "{body}");
        assert_eq!(body.get("phone").is_some(), sees_private, "{body}");
    }
    let cleared: Value = app
        .call(
            "PATCH",
            "/users/me",
            Some(&ada.access),
            Some(&json!({ "phone": null })),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["phone"], Value::Null);
    let bad = app
        .call(
            "PATCH",
            "/users/me",
            Some(&ada.access),
            Some(&json!({ "phone": "12" })),
        )
        .await;
    assert_eq!(
        assert_problem(bad, 422, "invalid-field").await["param"],
        "phone"
    );
    assert_problem(app.get("/users/12345").await, 404, "not-found").await;
}

#[tokio::test]
async fn personal_data_is_encrypted_at_rest() {
    let app = spawn_app(0).await;
    let user = app.signup("customer").await;
    app.call(
        "PATCH",
        "/users/me",
        Some(&user.access),
        Some(&json!({ "phone": "+15551234567" })),
    )
    .await;
    app.store.close().await;
    let local = user.email.split('@').next().unwrap().to_owned();
    for bytes in app.bytes_at_rest().await {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&local),
            "an email appears in clear in the data directory"
        );
        assert!(
            !text.contains("15551234567"),
            "a phone number appears in clear in the data directory"
        );
    }
}

#[tokio::test]
async fn security_events_are_audited_with_their_request_ids() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    app.post(
        "/auth/login",
        None,
        &json!({ "email": seller.email, "password": "wrong-password-here" }),
    )
    .await;
    let refresh = json!({ "refresh_token": seller.refresh });
    app.post("/auth/refresh", None, &refresh).await;
    app.post("/auth/refresh", None, &refresh).await;
    let admin = app.admin().await;
    let key: Value = app
        .post("/api-keys", Some(&admin.access), &json!({ "name": "ops" }))
        .await
        .json()
        .await
        .unwrap();
    app.call(
        "DELETE",
        &format!("/api-keys/{}", key["id"].as_str().unwrap()),
        Some(&admin.access),
        None,
    )
    .await;
    let role = app
        .client
        .patch(app.url(&format!("/users/{}", seller.id)))
        .bearer_auth(&admin.access)
        .header("x-request-id", "role-change-1")
        .json(&json!({ "role": "customer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 200);
    assert_eq!(role.json::<Value>().await.unwrap()["role"], "customer");

    let events: Value = app
        .call("GET", "/audit-events?limit=100", Some(&admin.access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["next_cursor"], Value::Null, "{events}");
    let actions: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "signup",
        "login.failure",
        "refresh.reuse",
        "admin.create",
        "login.success",
        "api_key.create",
        "api_key.revoke",
        "role.change",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    let change = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "role.change")
        .unwrap();
    assert_eq!(change["request_id"], "role-change-1");
    assert_eq!(change["actor"], format!("user:{}", admin.id));
    assert_eq!(change["detail"], "seller -> customer");
    assert!(
        !events.to_string().contains(&seller.email),
        "audit events must not hold emails"
    );
    assert_eq!(
        app.call("GET", "/audit-events?limit=0", Some(&admin.access), None)
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn every_response_carries_security_headers_and_cors_follows_the_allow_list() {
    let app = spawn_app_with(1, |c| {
        c.http.cors_origins = vec!["https://shop.example".into()]
    })
    .await;
    for path in ["/products", "/nope", "/healthz"] {
        let response = app.get(path).await;
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    }
    let allowed = app
        .client
        .get(app.url("/products"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let refused = app
        .client
        .get(app.url("/products"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/products"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert!(
        preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
}

#[tokio::test]
async fn graphql_mutations_follow_the_same_permissions() {
    let app = spawn_app(0).await;
    let seller = app.signup("seller").await;
    let other = app.signup("seller").await;
    let customer = app.signup("customer").await;
    let create = r#"mutation { createProduct(input: { name: "Linen Apron", brand: "Atelier", category: "kitchen",
        variants: [{ sku: "AP-1", color: "natural", size: "One Size", price: 3900, stockLevel: 5 }] }) { id version sellerId } }"#;
    let gql = |token: Option<String>, query: String| {
        let app = &app;
        async move {
            let mut request = app
                .client
                .post(app.url("/graphql"))
                .json(&json!({ "query": query }));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    let code = |v: &Value| {
        v["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(code(&gql(None, create.into()).await), "UNAUTHENTICATED");
    assert_eq!(
        code(&gql(Some(customer.access.clone()), create.into()).await),
        "FORBIDDEN"
    );
    let created = gql(Some(seller.access.clone()), create.into()).await;
    let id = created["data"]["createProduct"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        created["data"]["createProduct"]["sellerId"],
        seller.id.as_str()
    );

    let rename = |version: i64| {
        format!(
            r#"mutation {{ updateProduct(id: "{id}", expectedVersion: {version}, input: {{ name: "Linen Apron II" }}) {{ name version }} }}"#
        )
    };
    assert_eq!(
        code(&gql(Some(other.access.clone()), rename(1)).await),
        "FORBIDDEN"
    );
    let renamed = gql(Some(seller.access.clone()), rename(1)).await;
    assert_eq!(renamed["data"]["updateProduct"]["version"], 2, "{renamed}");
    assert_eq!(
        code(&gql(Some(seller.access.clone()), rename(1)).await),
        "PRECONDITION_FAILED"
    );
    assert_eq!(
        app.get_json(&format!("/products/{id}")).await["name"],
        "Linen Apron II",
        "REST reads see GraphQL writes"
    );
    let delete = format!(r#"mutation {{ deleteProduct(id: "{id}") }}"#);
    assert_eq!(
        gql(Some(seller.access.clone()), delete).await["data"]["deleteProduct"],
        true
    );
    assert_eq!(app.get(&format!("/products/{id}")).await.status(), 404);
}
