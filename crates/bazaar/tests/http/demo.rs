//! The demo catalog's sellers: every demo product has one, who can sign in with the published
//! demo password and ship the orders of their products — and only theirs.

use bazaar_shop::demo::{SELLER_PASSWORD, SELLERS};
use serde_json::Value;

use crate::helpers::{User, spawn_app};
use crate::permissions::buy;

#[tokio::test]
async fn demo_products_belong_to_demo_sellers_who_ship_their_own_orders() {
    let app = spawn_app(40).await;
    let mut sellers: Vec<User> = Vec::new();
    for seller in SELLERS {
        sellers.push(app.login(seller.email, SELLER_PASSWORD).await);
    }
    let seller_ids: Vec<&str> = sellers.iter().map(|s| s.id.as_str()).collect();
    let me: Value = app
        .client
        .get(app.url("/users/me"))
        .bearer_auth(&sellers[0].access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "seller", "{me}");

    // Every product of the catalog has a demo seller, and every demo seller has products.
    let page = app.get_json("/products?limit=40").await;
    let products = page["items"].as_array().unwrap();
    assert_eq!(products.len(), 40);
    for product in products {
        let owner = product["seller_id"].as_str().unwrap_or_default();
        assert!(seller_ids.contains(&owner), "{product}");
    }
    for id in &seller_ids {
        assert!(
            products.iter().any(|p| p["seller_id"] == *id),
            "seller {id} has no product among 40"
        );
    }

    // A customer buys a unit of a demo product in stock.
    let mut in_stock = None;
    for summary in products {
        let detail = app
            .get_json(&format!("/products/{}", summary["id"].as_str().unwrap()))
            .await;
        let variant = detail["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["stock_level"].as_i64().unwrap() > 0)
            .cloned();
        if let Some(variant) = variant {
            in_stock = Some((detail, variant));
            break;
        }
    }
    let (product, variant) = in_stock.expect("a demo product in stock");
    let owner = sellers
        .iter()
        .position(|s| product["seller_id"] == s.id.as_str())
        .unwrap();
    let customer = app.signup("customer").await;
    let order = buy(&app, &customer, variant["id"].as_str().unwrap()).await;

    // Another demo seller cannot ship it; its own seller can.
    let other = &sellers[(owner + 1) % sellers.len()];
    let refused = app
        .call(
            "POST",
            &format!("/orders/{order}/ship"),
            Some(&other.access),
            None,
        )
        .await;
    assert!(
        [403, 404].contains(&refused.status().as_u16()),
        "{}",
        refused.status()
    );
    let shipped = app
        .call(
            "POST",
            &format!("/orders/{order}/ship"),
            Some(&sellers[owner].access),
            None,
        )
        .await;
    assert_eq!(shipped.status(), 200, "{}", shipped.text().await.unwrap());
    let seen: Value = app
        .client
        .get(app.url(&format!("/orders/{order}")))
        .bearer_auth(&customer.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["status"], "shipped", "{seen}");
}
