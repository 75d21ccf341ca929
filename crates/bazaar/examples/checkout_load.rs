//! Checkout throughput against a running server: `workers` buyers, each in a loop of
//! "add one unit to the cart, check out", for `duration`. Prints orders per second and the
//! checkout latency percentiles as a Markdown row.
//!
//! ```text
//! cargo run --release -p bazaar --example checkout_load -- http://127.0.0.1:8080 32 20
//! ```
//!
//! Arguments: target URL, workers (default 32), seconds (default 20). The server must run
//! with rate limits off (`BAZAAR_RATE_LIMITS__ENABLED=false`): every buyer here shares one
//! address. A closed loop: each worker waits for its answer before the next request, so
//! this measures capacity at that concurrency, not latency under a fixed arrival rate (that
//! is the lab's open-loop generator).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PASSWORD: &str = "velvet-otter-cinnamon-42";

async fn signup(http: &reqwest::Client, base: &str, role: &str, n: usize) -> String {
    let email = format!(
        "load-{role}-{n}-{}@example.com",
        uuid::Uuid::now_v7().simple()
    );
    let response = http
        .post(format!("{base}/auth/signup"))
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Load", "role": role }))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(
        response.status(),
        201,
        "sign-up failed; is the target a Bazaar server?"
    );
    let tokens: Value = response.json().await.unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let workers: usize = args
        .next()
        .map_or(32, |w| w.parse().expect("workers: a number"));
    let seconds: u64 = args
        .next()
        .map_or(20, |s| s.parse().expect("seconds: a number"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(workers * 2)
        .build()
        .unwrap();

    let seller = signup(&http, &base, "seller", 0).await;
    let product: Value = http
        .post(format!("{base}/products"))
        .bearer_auth(&seller)
        .json(
            &json!({ "name": "Load Lamp", "brand": "B", "category": "home",
            "variants": [{ "sku": "LOAD", "color": "brass", "size": "one",
                "price": { "amount": 4900, "currency": "USD" }, "stock_level": 1_000_000 }] }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let variant = product["variants"][0]["id"].as_str().unwrap().to_owned();
    let mut buyers = Vec::with_capacity(workers);
    for n in 0..workers {
        buyers.push(signup(&http, &base, "customer", n).await);
    }
    let address = json!({ "shipping_address": { "name": "Load", "line1": "1 Road",
        "city": "Oslo", "postal_code": "0150", "country": "NO" } });

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = buyers
        .into_iter()
        .map(|token| {
            let (http, base, variant, address) =
                (http.clone(), base.clone(), variant.clone(), address.clone());
            tokio::spawn(async move {
                let (mut latencies, mut failures) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let added = http
                        .post(format!("{base}/cart/items"))
                        .bearer_auth(&token)
                        .json(&json!({ "variant_id": variant, "quantity": 1 }))
                        .send()
                        .await;
                    if !added.is_ok_and(|r| r.status().is_success()) {
                        failures += 1;
                        continue;
                    }
                    let sent = Instant::now();
                    let response = http
                        .post(format!("{base}/checkout"))
                        .bearer_auth(&token)
                        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                        .json(&address)
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 201 => latencies.push(sent.elapsed()),
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (mine, failed) = task.await.unwrap();
        latencies.extend(mine);
        failures += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!("| workers | orders | orders/s | checkout p50 ms | p99 ms | max ms | failures |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {workers} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {failures} |",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
}
