//! Shopping mixes modelled on TPC-W's three: people who mostly browse, and some who fill a
//! cart and check out.
//!
//! TPC-W (the TPC's web-commerce benchmark) defines its mixes by the share of "order"
//! interactions: browsing 5%, shopping 20%, ordering 50%; the rest browse. Here a browse is
//! one of: a product page (Zipf popularity), the newest products, the seed's GraphQL product
//! query, the shopper's cart, or their order history. An order interaction is either adding a
//! variant to the cart or buying — adding one more and checking out, as one interaction of two
//! requests on one connection.
//!
//! Before any load, [`Shop::prepare`] signs shoppers up (each gets a session) and finds
//! variants in stock; the mix then gives the writes to the shoppers in turn, and a shopper's
//! writes run one at a time (a [`Session`]), so no cart has two writes in flight even when the
//! target falls behind; with at least as many shoppers as connections they rarely wait. Carts
//! take variants with at least 50 units, in proportion to their stock, so a long run drains
//! the catalog evenly instead of selling out the scarce variants first (a sold-out line is a
//! 409, an error, and stays in the cart).

use std::sync::Arc;

use hyper::header::{self, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::load::{Interaction, LabError, Request, Session, Target, Workload, fetch};
use crate::workload::{self, Rng, Zipf};

/// One of TPC-W's three mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixKind {
    /// 95% browsing, 5% ordering.
    Browsing,
    /// 80% browsing, 20% ordering.
    Shopping,
    /// 50% browsing, 50% ordering.
    Ordering,
}

impl MixKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Browsing => "browsing",
            Self::Shopping => "shopping",
            Self::Ordering => "ordering",
        }
    }

    /// The share of interactions that write (cart and checkout).
    pub fn write_share(self) -> f64 {
        match self {
            Self::Browsing => 0.05,
            Self::Shopping => 0.20,
            Self::Ordering => 0.50,
        }
    }
}

/// How many products are read in full to find variants to buy.
const PRODUCTS_TO_INSPECT: usize = 2_000;
/// Product reads in flight at once while preparing.
const CONCURRENT_READS: usize = 16;
/// Variants with less stock are left out: once one sells out, every later checkout of a cart
/// holding it fails (the line stays in the cart), which would measure the catalog running dry
/// rather than the target.
const MIN_STOCK: u64 = 50;
/// Sign-ups in flight at once (each costs the target a password hash).
const CONCURRENT_SIGNUPS: usize = 8;

/// What a mix needs from the target, found before any load.
#[derive(Debug)]
pub struct Shop {
    /// Product ids, for browsing.
    pub products: Vec<String>,
    /// Variants in stock, all in one currency, for carts, with their stock when prepared.
    pub variants: Vec<(String, u64)>,
    /// `Bearer …` of each signed-in shopper.
    pub shoppers: Vec<HeaderValue>,
}

impl Shop {
    /// Finds variants in stock among `products` and signs `shoppers` new accounts up.
    pub async fn prepare(
        target: &Target,
        mix: MixKind,
        products: Vec<String>,
        shoppers: usize,
    ) -> Result<Self, LabError> {
        let unservable = |reason: String| LabError::Workload {
            workload: mix.name(),
            reason,
        };
        if shoppers == 0 {
            return Err(LabError::Spec {
                setting: "shoppers",
                reason: "a mix needs at least one shopper".into(),
            });
        }
        let variants = variants_in_stock(target, &products)
            .await
            .map_err(|reason| unservable(reason.to_string()))?;
        if variants.is_empty() {
            return Err(unservable(format!(
                "none of the first {} products has a variant with {MIN_STOCK} units in stock",
                products.len().min(PRODUCTS_TO_INSPECT)
            )));
        }
        let shoppers = sign_up(target, shoppers).await.map_err(unservable)?;
        Ok(Self {
            products,
            variants,
            shoppers,
        })
    }
}

/// Variants with at least [`MIN_STOCK`] units (and how many) among the first products, in the
/// currency of the first one found.
async fn variants_in_stock(
    target: &Target,
    products: &[String],
) -> Result<Vec<(String, u64)>, LabError> {
    let mut ids = products.iter().take(PRODUCTS_TO_INSPECT);
    let mut reads = JoinSet::new();
    let mut currency: Option<String> = None;
    let mut variants = Vec::new();
    loop {
        while reads.len() < CONCURRENT_READS {
            let Some(id) = ids.next() else { break };
            let (target, path) = (target.clone(), format!("/products/{id}"));
            reads.spawn(async move { fetch(&target, Request::get(path)).await });
        }
        let Some(read) = reads.join_next().await else {
            break;
        };
        let (status, body) = read.expect("a product read does not panic")?;
        if status != 200 {
            continue;
        }
        let product: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        for variant in product["variants"].as_array().into_iter().flatten() {
            let (Some(id), Some(stock), Some(money)) = (
                variant["id"].as_str(),
                variant["stock_level"].as_u64(),
                variant["price"]["currency"].as_str(),
            ) else {
                continue;
            };
            if stock >= MIN_STOCK && money == *currency.get_or_insert_with(|| money.to_owned()) {
                variants.push((id.to_owned(), stock));
            }
        }
    }
    // Reads finish in any order; sorting keeps a run's choices reproducible from its seed.
    variants.sort_unstable();
    Ok(variants)
}

/// Different in every run (the clock in nanoseconds): keeps sign-up emails and idempotency
/// keys from colliding with an earlier run's.
fn run_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Signs up `count` fresh accounts and returns their `Authorization` values.
async fn sign_up(target: &Target, count: usize) -> Result<Vec<HeaderValue>, String> {
    let run = run_nonce();
    let mut shoppers = Vec::with_capacity(count);
    let mut pending = JoinSet::new();
    let mut next = 0;
    while shoppers.len() < count {
        while next < count && pending.len() < CONCURRENT_SIGNUPS {
            let body = json!({
                "email": format!("lab-{run:x}-{next}@shoppers.example"),
                "password": format!("lab shopper {next} of run {run:x}"),
                "name": format!("Lab shopper {next}"),
            });
            let target = target.clone();
            pending.spawn(async move {
                fetch(
                    &target,
                    Request::post_json("/auth/signup", body.to_string()),
                )
                .await
            });
            next += 1;
        }
        let signed = pending
            .join_next()
            .await
            .expect("sign-ups are pending")
            .expect("a sign-up does not panic")
            .map_err(|e| e.to_string())?;
        shoppers.push(bearer_of(signed, shoppers.len())?);
    }
    Ok(shoppers)
}

/// The `Authorization` value of a sign-up's answer, or why it failed.
fn bearer_of((status, body): (u16, bytes::Bytes), done: usize) -> Result<HeaderValue, String> {
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match status {
        201 => answer["access_token"]
            .as_str()
            .and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok())
            .ok_or_else(|| "POST /auth/signup answered 201 without an access_token".to_owned()),
        429 => Err(format!(
            "the target rate-limits sign-ups (429 after {done} accounts); start it with rate \
             limits off (BAZAAR_RATE_LIMITS__ENABLED=false) to measure a mix"
        )),
        _ => Err(format!(
            "POST /auth/signup answered {status}: {}",
            answer["detail"].as_str().unwrap_or("no detail")
        )),
    }
}

/// A mix's interactions over a prepared [`Shop`].
#[derive(Debug)]
pub struct Mix {
    shop: Arc<Shop>,
    writes: f64,
    popularity: Zipf,
    /// Running totals of the variants' stock: a variant is drawn in proportion to its stock.
    stock: Vec<u64>,
    rng: Rng,
    /// The shopper whose turn it is to write.
    turn: usize,
    /// Each shopper's writes run one at a time, even when the target falls behind.
    sessions: Vec<Session>,
    checkouts: u64,
    /// Makes idempotency keys unique across runs and steps.
    run: u64,
}

impl Mix {
    pub fn new(shop: Arc<Shop>, mix: MixKind, alpha: f64, seed: u64) -> Self {
        let run = run_nonce();
        let stock = shop
            .variants
            .iter()
            .scan(0, |total, (_, stock)| {
                *total += stock;
                Some(*total)
            })
            .collect();
        Self {
            popularity: Zipf::new(shop.products.len(), alpha, seed),
            stock,
            sessions: shop.shoppers.iter().map(|_| Session::default()).collect(),
            shop,
            writes: mix.write_share(),
            rng: Rng::new(seed.rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15),
            turn: 0,
            checkouts: 0,
            run,
        }
    }

    fn browse(&mut self) -> Interaction {
        let pick = self.rng.unit();
        if pick < 0.45 {
            let id = &self.shop.products[self.popularity.sample()];
            Interaction::one("product", workload::product_request(id))
        } else if pick < 0.65 {
            Interaction::one("list", workload::list_request())
        } else if pick < 0.80 {
            let id = &self.shop.products[self.popularity.sample()];
            Interaction::one("graphql", workload::seed_request(id))
        } else if pick < 0.90 {
            let shopper = self.any_shopper();
            Interaction::one(
                "cart view",
                Request::get("/cart").with_header(AUTH, shopper),
            )
        } else {
            let shopper = self.any_shopper();
            Interaction::one(
                "order history",
                Request::get("/orders?limit=10").with_header(AUTH, shopper),
            )
        }
    }

    fn order(&mut self) -> Interaction {
        let shopper = self.shop.shoppers[self.turn].clone();
        let session = self.sessions[self.turn].clone();
        self.turn = (self.turn + 1) % self.shop.shoppers.len();
        let total = self.stock.last().copied().unwrap_or(0);
        let unit = self.rng.next_u64() % total.max(1);
        let index = self.stock.partition_point(|&below| below <= unit);
        let variant = &self.shop.variants[index].0;
        let add = Request::post_json(
            "/cart/items",
            json!({ "variant_id": variant, "quantity": 1 }).to_string(),
        )
        .with_header(AUTH, shopper.clone());
        if self.rng.unit() < 0.5 {
            return Interaction::one("add to cart", add).in_session(session);
        }
        self.checkouts += 1;
        let key = HeaderValue::from_str(&format!("lab-{:x}-{}", self.run, self.checkouts))
            .expect("an idempotency key is visible ASCII");
        let checkout = Request::post_json("/checkout", ADDRESS)
            .with_header(AUTH, shopper)
            .with_header(HeaderName::from_static("idempotency-key"), key);
        Interaction::sequence("buy", vec![add, checkout]).in_session(session)
    }

    fn any_shopper(&mut self) -> HeaderValue {
        self.shop.shoppers[self.rng.below(self.shop.shoppers.len())].clone()
    }
}

const AUTH: HeaderName = header::AUTHORIZATION;

const ADDRESS: &str = r#"{"shipping_address":{"name":"Lab Shopper","line1":"1 Load Street","city":"Springfield","region":"IL","postal_code":"62701","country":"US"}}"#;

impl Workload for Mix {
    fn next(&mut self) -> Interaction {
        if self.rng.unit() < self.writes {
            self.order()
        } else {
            self.browse()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Arc<Shop> {
        Arc::new(Shop {
            products: (0..50).map(|i| i.to_string()).collect(),
            variants: (0..20).map(|i| (format!("v{i}"), 1 + i % 3)).collect(),
            shoppers: (0..4)
                .map(|i| HeaderValue::from_str(&format!("Bearer t{i}")).unwrap())
                .collect(),
        })
    }

    #[test]
    fn each_mix_writes_its_share() {
        for mix in [MixKind::Browsing, MixKind::Shopping, MixKind::Ordering] {
            let mut load = Mix::new(shop(), mix, 0.99, 11);
            let draws = 100_000;
            let writes = (0..draws)
                .filter(|_| matches!(load.next().kind, "add to cart" | "buy"))
                .count();
            let share = writes as f64 / f64::from(draws);
            assert!(
                (share - mix.write_share()).abs() < 0.006,
                "{}: {share}",
                mix.name()
            );
        }
    }

    #[test]
    fn writes_take_turns_and_a_buy_adds_then_checks_out_once() {
        let mut load = Mix::new(shop(), MixKind::Ordering, 0.99, 3);
        let mut writers = Vec::new();
        let mut keys = std::collections::HashSet::new();
        while writers.len() < 40 {
            let interaction = load.next();
            let auth = |r: &Request| {
                r.headers
                    .iter()
                    .find(|(name, _)| name == AUTH)
                    .map(|(_, v)| v.clone())
            };
            match interaction.kind {
                "add to cart" => writers.push(auth(&interaction.requests[0]).unwrap()),
                "buy" => {
                    let [add, checkout] = &interaction.requests[..] else {
                        panic!("a buy is two requests");
                    };
                    assert_eq!(
                        (add.path.as_str(), checkout.path.as_str()),
                        ("/cart/items", "/checkout")
                    );
                    assert_eq!(auth(add), auth(checkout));
                    let key = checkout
                        .headers
                        .iter()
                        .find(|(name, _)| name == "idempotency-key")
                        .unwrap();
                    assert!(keys.insert(key.1.clone()), "a key is used once");
                    writers.push(auth(add).unwrap());
                }
                _ => {}
            }
        }
        // Four shoppers in turn: a shopper's next write comes after the three others'.
        for (i, writer) in writers.iter().enumerate() {
            assert_eq!(writer, &writers[i % 4], "write {i}");
        }
    }

    #[test]
    fn carts_take_variants_in_proportion_to_their_stock() {
        let shop = Arc::new(Shop {
            products: vec!["p".into()],
            variants: vec![("scarce".into(), 1), ("plenty".into(), 9)],
            shoppers: vec![HeaderValue::from_static("Bearer t")],
        });
        let mut load = Mix::new(shop, MixKind::Ordering, 0.99, 5);
        let (mut scarce, mut writes) = (0, 0);
        while writes < 20_000 {
            let interaction = load.next();
            if let "add to cart" | "buy" = interaction.kind {
                writes += 1;
                let body = String::from_utf8_lossy(&interaction.requests[0].body).into_owned();
                scarce += usize::from(body.contains("scarce"));
            }
        }
        let share = scarce as f64 / f64::from(writes);
        assert!((0.09..0.11).contains(&share), "scarce share {share}");
    }
}
