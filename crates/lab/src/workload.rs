//! What to send: Bazaar's workloads, and any HTTP path or GraphQL query.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::load::{Interaction, LabError, Request, Target, Workload, fetch};

/// Product ids the target lists, up to `max`, following its cursor pages; `workload` names
/// what needs them, for the error if the target cannot answer.
pub async fn discover_products(
    target: &Target,
    max: usize,
    workload: &'static str,
) -> Result<Vec<String>, LabError> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < max {
        let path = match &cursor {
            Some(cursor) => format!("/products?limit=100&cursor={cursor}"),
            None => "/products?limit=100".to_owned(),
        };
        let (status, body) = fetch(target, Request::get(path)).await?;
        let unservable = |reason: &str| LabError::Workload {
            workload,
            reason: format!("GET /products {reason}; is the target a Bazaar server?"),
        };
        if status != 200 {
            return Err(unservable(&format!("answered {status}")));
        }
        let page: Value =
            serde_json::from_slice(&body).map_err(|_| unservable("did not answer JSON"))?;
        let items = page["items"]
            .as_array()
            .ok_or_else(|| unservable("has no `items`"))?;
        ids.extend(
            items
                .iter()
                .filter_map(|p| p["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(next) if !items.is_empty() => cursor = Some(next.to_owned()),
            _ => break,
        }
    }
    ids.truncate(max);
    if ids.is_empty() {
        return Err(LabError::Workload {
            workload,
            reason: "the target lists no products".into(),
        });
    }
    Ok(ids)
}

/// A small, fast pseudo-random stream (xorshift64*): good enough to pick keys and mixes, and
/// reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }
}

/// Draws indexes 0..n with Zipf(α) popularity: index k has weight 1/(k+1)^α.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
    rng: Rng,
}

impl Zipf {
    pub fn new(n: usize, alpha: f64, seed: u64) -> Self {
        let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(alpha)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Self {
            cdf,
            rng: Rng::new(seed),
        }
    }

    /// The next index.
    pub fn sample(&mut self) -> usize {
        let u = self.rng.unit();
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1)
    }
}

/// `GET /products/{id}`, ids drawn with Zipf(α) popularity.
pub fn product(ids: Vec<String>, alpha: f64) -> impl Workload {
    let mut zipf = Zipf::new(ids.len(), alpha, 0x5EED);
    move || Interaction::one("product", product_request(&ids[zipf.sample()]))
}

pub(crate) fn product_request(id: &str) -> Request {
    Request::get(format!("/products/{id}"))
}

/// `GET /products`, a page of 20.
pub fn list() -> impl Workload {
    || Interaction::one("list", list_request())
}

pub(crate) fn list_request() -> Request {
    Request::get("/products?limit=20")
}

/// The seed's GraphQL query for a product, ids drawn with Zipf(α) popularity.
pub fn seed_query(ids: Vec<String>, alpha: f64) -> impl Workload {
    let mut zipf = Zipf::new(ids.len(), alpha, 0x5EED);
    move || Interaction::one("graphql", seed_request(&ids[zipf.sample()]))
}

pub(crate) fn seed_request(id: &str) -> Request {
    let query = format!(
        "query {{ product(id: \"{id}\") {{ id name price variants {{ id color size price stockLevel }} }} }}"
    );
    Request::post_json("/graphql", json!({ "query": query }).to_string())
}

/// One GraphQL query, sent as is to `/graphql`.
pub fn graphql(query: &str) -> impl Workload + use<> {
    graphql_at("/graphql", query, Vec::new(), Order::RoundRobin)
}

/// How a workload picks from a list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Order {
    /// Zipf(α) popularity: the first entries are the hottest, as a catalog's best sellers.
    Zipf(f64),
    /// Each entry in turn, from the first, then again.
    RoundRobin,
}

/// One GraphQL query posted to `path` (another server's endpoint, such as Vendure's
/// `/shop-api`), with one of `variables` per request, picked in `order`; with no variables,
/// the query alone. Every body is serialised once, before the load.
pub fn graphql_at(
    path: &str,
    query: &str,
    variables: Vec<Value>,
    order: Order,
) -> impl Workload + use<> {
    let path = path.to_owned();
    let bodies: Vec<Bytes> = if variables.is_empty() {
        vec![Bytes::from(json!({ "query": query }).to_string())]
    } else {
        variables
            .into_iter()
            .map(|v| Bytes::from(json!({ "query": query, "variables": v }).to_string()))
            .collect()
    };
    let mut zipf = match order {
        Order::Zipf(alpha) => Some(Zipf::new(bodies.len(), alpha, 0x5EED)),
        Order::RoundRobin => None,
    };
    let mut turn = 0;
    move || {
        let index = match &mut zipf {
            Some(zipf) => zipf.sample(),
            None => {
                let index = turn % bodies.len();
                turn += 1;
                index
            }
        };
        Interaction::one(
            "graphql",
            Request::post_json(path.clone(), bodies[index].clone()),
        )
    }
}

/// Reads GraphQL variables as JSON lines: one object per line, blank lines skipped. A line
/// that is not a JSON object fails naming its number (from 1).
pub fn parse_variables(text: &str) -> Result<Vec<Value>, String> {
    let mut all = Vec::new();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(value @ Value::Object(_)) => all.push(value),
            Ok(_) => {
                return Err(format!(
                    "line {number}: expected a JSON object of variables such as {{\"slug\": \"mug\"}}"
                ));
            }
            Err(error) => return Err(format!("line {number}: not JSON: {error}")),
        }
    }
    if all.is_empty() {
        return Err("no variables: expected one JSON object per line".into());
    }
    Ok(all)
}

/// `GET {path}?{query}`, the query strings (already URL-encoded) drawn with Zipf(α)
/// popularity over the list: a shop's searches repeat, the first the commonest. `kind`
/// labels the interactions.
pub fn queries_at(
    kind: &'static str,
    path: &str,
    queries: Vec<String>,
    alpha: f64,
) -> impl Workload + use<> {
    let path = path.to_owned();
    let mut zipf = Zipf::new(queries.len(), alpha, 0x5EA2C4);
    move || {
        Interaction::one(
            kind,
            Request::get(format!("{path}?{}", queries[zipf.sample()])),
        )
    }
}

/// `GET` of one path.
pub fn path(path: &str) -> impl Workload + use<> {
    let path = path.to_owned();
    move || Interaction::one("request", Request::get(path.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_draws_follow_their_weights() {
        let mut zipf = Zipf::new(100, 1.0, 7);
        let mut counts = [0u32; 100];
        for _ in 0..200_000 {
            counts[zipf.sample()] += 1;
        }
        // Under Zipf(1) over 100 keys, key 0 has weight 1/H(100) ≈ 19.3% and key 1 half that.
        let share = |k: usize| f64::from(counts[k]) / 200_000.0;
        assert!((0.185..0.201).contains(&share(0)), "{}", share(0));
        assert!((0.090..0.103).contains(&share(1)), "{}", share(1));
        assert!(counts[99] > 0);
    }

    #[test]
    fn variables_are_json_objects_one_per_line_and_a_bad_line_is_named() {
        let text = "{\"slug\": \"mug\"}\n\n  {\"slug\": \"lamp\", \"n\": 2}  \n";
        assert_eq!(
            parse_variables(text).unwrap(),
            [json!({"slug": "mug"}), json!({"slug": "lamp", "n": 2})]
        );
        let error = parse_variables("{\"slug\": \"mug\"}\n{\"slug\": mug}\n").unwrap_err();
        assert!(error.starts_with("line 2: not JSON"), "{error}");
        let error = parse_variables("{}\n\n[1, 2]\n").unwrap_err();
        assert!(
            error.starts_with("line 3: expected a JSON object"),
            "{error}"
        );
        assert!(
            parse_variables("\n \n")
                .unwrap_err()
                .starts_with("no variables")
        );
    }
}
