//! `bazaar lab freshness`: how long after a product write's 201 the product is findable
//! through `GET /search` — the search layer's freshness, measured from the outside while
//! whatever other load the target is under runs (`bench/run-search.sh` runs the browsing mix
//! beside it).
//!
//! A seller is signed up; every `--every` a product with a name no other product has is
//! created, and from its 201 on `/search` is asked for that name every `--poll` until it
//! answers with it. The products are deleted at the end.

use std::time::{Duration, Instant};

use anyhow::Context;
use bazaar_lab::load::{Request, Target, fetch};
use serde_json::{Value, json};

/// What `bazaar lab freshness` is asked.
#[derive(Debug, Clone, clap::Args)]
pub struct FreshnessArgs {
    /// The origin to write to and search, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub target: String,
    /// Products to create.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub products: u32,
    /// Time between creations.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Time between searches for a product not yet found.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
}

async fn json_of(target: &Target, request: Request) -> anyhow::Result<(u16, Value)> {
    let (status, body) = fetch(target, request).await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Runs the measurement and prints p50, p99 and the maximum.
pub async fn freshness(args: &FreshnessArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.target).await?;
    let run = std::process::id();
    let email = format!("freshness-{run}-{}@bazaar.example", bazaar_shop::now_ms());
    let (status, signed) = json_of(
        &target,
        Request::post_json(
            "/auth/signup",
            json!({ "email": email, "password": "freshness-probe-password", "name": "Probe", "role": "seller" }).to_string(),
        ),
    )
    .await?;
    anyhow::ensure!(
        status == 201,
        "signing the probe seller up answered {status}: {signed}"
    );
    let token = signed["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let bearer: axum::http::HeaderValue = format!("Bearer {token}").parse()?;
    let mut probes = Vec::new();
    let started = Instant::now();
    for i in 0..args.products {
        let due = started + args.every * i;
        tokio::time::sleep_until(due.into()).await;
        // One word no catalog has, so the search finds exactly this product.
        let word = format!("probe{run}x{i}");
        let body = json!({
            "name": format!("Freshness {word}"), "description": "A freshness probe.",
            "brand": "Probe", "category": "probes",
            "variants": [{ "sku": format!("P-{i}"), "color": "grey", "size": "one", "price": { "amount": 100, "currency": "USD" }, "stock_level": 1 }]
        });
        let target = target.clone();
        let bearer = bearer.clone();
        let poll = args.poll;
        probes.push(tokio::spawn(async move {
            let create = Request::post_json("/products", body.to_string())
                .with_header(axum::http::header::AUTHORIZATION, bearer);
            let (status, product) = json_of(&target, create).await?;
            anyhow::ensure!(
                status == 201,
                "creating a product answered {status}: {product}"
            );
            let acknowledged = Instant::now();
            let id = product["id"].as_str().context("no id")?.to_owned();
            loop {
                let (_, page) = json_of(&target, Request::get(format!("/search?q={word}"))).await?;
                if page["items"][0]["id"] == id.as_str() {
                    return Ok::<_, anyhow::Error>((acknowledged.elapsed(), id));
                }
                anyhow::ensure!(
                    acknowledged.elapsed() < Duration::from_secs(60),
                    "product {id} was not findable 60 s after its 201"
                );
                tokio::time::sleep(poll).await;
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    for probe in probes {
        let (latency, id) = probe.await??;
        latencies.push(latency);
        ids.push(id);
    }
    for id in &ids {
        let delete = Request {
            method: axum::http::Method::DELETE,
            ..Request::get(format!("/products/{id}"))
        }
        .with_header(axum::http::header::AUTHORIZATION, bearer.clone());
        fetch(&target, delete).await?;
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "freshness: {} products, 201 → findable in /search: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (polled every {:?})",
        latencies.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        args.poll
    );
    Ok(())
}
