//! Helpers shared by the tests that run the `bazaar` binary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bazaar_store::Store;

/// The binary under test, with none of the suite's own `BAZAAR_*` variables (such as
/// `BAZAAR_TEST_REDIS_URL`) leaking into its configuration.
pub(crate) fn bazaar() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bazaar"));
    for (key, _) in std::env::vars() {
        if key.starts_with("BAZAAR_") {
            command.env_remove(key);
        }
    }
    command
}

/// Opens the default four-shard store in `dir` — from outside any server process, as an
/// operator's tool would (WAL lets it read while a server writes).
pub(crate) async fn open_data_dir(dir: &Path) -> Store {
    open_data_dir_with(dir, 4).await
}

/// [`open_data_dir`] with `shards` shards.
pub(crate) async fn open_data_dir_with(dir: &Path, shards: usize) -> Store {
    let config = bazaar_store::sqlite::SqliteConfig {
        data_dir: dir.to_owned(),
        durability: bazaar_store::sqlite::Durability::Normal,
        busy_timeout: Duration::from_secs(5),
        max_connections: 1,
        write_events: true,
    };
    Store::open_sqlite(
        &config,
        shards,
        bazaar_ring::DEFAULT_VNODES,
        &bazaar_telemetry::Metrics::new(),
    )
    .await
    .expect("the data directory opens")
}

/// Where a test's server processes keep their shards.
#[allow(
    dead_code,
    reason = "each test binary includes this module and uses a subset of it"
)]
pub(crate) enum Backend {
    /// SQLite files in the data directory.
    Sqlite,
    /// Fresh PostgreSQL databases, dropped with the value.
    Postgres(bazaar_store::testing::PostgresScratch),
}

#[allow(
    dead_code,
    reason = "each test binary includes this module and uses a subset of it"
)]
impl Backend {
    /// SQLite, and PostgreSQL (with four fresh databases) when `BAZAAR_TEST_POSTGRES_URL` is
    /// set; without it, says on stderr that `test` is skipped on PostgreSQL.
    pub(crate) async fn every(test: &str) -> Vec<Self> {
        Self::every_with(test, 4).await
    }

    /// [`every`](Self::every) with `databases` fresh PostgreSQL databases.
    pub(crate) async fn every_with(test: &str, databases: usize) -> Vec<Self> {
        let mut backends = vec![Self::Sqlite];
        if std::env::var_os(bazaar_store::testing::POSTGRES_URL_VAR).is_some() {
            let scratch = bazaar_store::testing::PostgresScratch::from_env(databases)
                .await
                .expect("the variable is set");
            backends.push(Self::Postgres(scratch));
        } else {
            eprintln!(
                "SKIPPED {test} on PostgreSQL: {} is not set",
                bazaar_store::testing::POSTGRES_URL_VAR
            );
        }
        backends
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The environment that points a `bazaar` process at this backend's shards.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Sqlite => Vec::new(),
            Self::Postgres(scratch) => self.env_for(scratch.urls().len()),
        }
    }

    /// The environment of a store of the first `shards` shards.
    pub(crate) fn env_for(&self, shards: usize) -> Vec<(String, String)> {
        match self {
            Self::Sqlite => vec![("BAZAAR_STORE__SHARDS".into(), shards.to_string())],
            Self::Postgres(scratch) => {
                let urls: Vec<String> = scratch.urls()[..shards]
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect();
                vec![
                    ("BAZAAR_STORE__BACKEND".into(), "postgres".into()),
                    (
                        "BAZAAR_STORE__POSTGRES__SHARDS".into(),
                        format!("[{}]", urls.join(",")),
                    ),
                ]
            }
        }
    }

    /// Database `index`'s URL (PostgreSQL), for a shard a move adds.
    pub(crate) fn url(&self, index: usize) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres(scratch) => Some(scratch.urls()[index].clone()),
        }
    }

    /// Opens the store a server given [`env`](Self::env) and `--data-dir dir` uses, from
    /// outside it, as an operator's tool would.
    pub(crate) async fn open(&self, dir: &Path) -> Store {
        match self {
            Self::Sqlite => open_data_dir(dir).await,
            Self::Postgres(scratch) => Store::open_postgres(
                &scratch.config(),
                bazaar_ring::DEFAULT_VNODES,
                &bazaar_telemetry::Metrics::new(),
            )
            .await
            .expect("the scratch databases open"),
        }
    }

    /// [`open`](Self::open) over the first `shards` shards.
    pub(crate) async fn open_with(&self, dir: &Path, shards: usize) -> Store {
        match self {
            Self::Sqlite => open_data_dir_with(dir, shards).await,
            Self::Postgres(scratch) => {
                let mut config = scratch.config();
                config.shards.truncate(shards);
                Store::open_postgres(
                    &config,
                    bazaar_ring::DEFAULT_VNODES,
                    &bazaar_telemetry::Metrics::new(),
                )
                .await
                .expect("the scratch databases open")
            }
        }
    }
}

/// `BAZAAR_TEST_REDIS_URL`, or `None` after saying loudly that `test` is skipped.
#[allow(
    dead_code,
    reason = "each test binary includes this module and uses a subset of it"
)]
pub(crate) fn redis_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("BAZAAR_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("SKIPPED {test}: BAZAAR_TEST_REDIS_URL is not set");
    }
    url
}

/// A name no other run uses: Redis keys and channels outlive a test process.
#[allow(
    dead_code,
    reason = "each test binary includes this module and uses a subset of it"
)]
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}:{}:{}",
        std::process::id(),
        bazaar_store::id::wall_clock_ms()
    )
}

/// A seller signs up on `a`, lists a lamp with 5 in stock, `b` reads (and caches) it, the
/// seller buys two through `a`; fails unless `b` shows the new stock of 3 within `bound`.
#[allow(
    dead_code,
    reason = "each test binary includes this module and uses a subset of it"
)]
pub(crate) async fn checkout_on_a_is_seen_fresh_on_b(a: &str, b: &str, bound: Duration) {
    use serde_json::{Value, json};
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let email = format!("seller.{}@example.com", uuid::Uuid::now_v7().simple());
    let signup: Value = http
        .post(format!("{a}/auth/signup"))
        .json(
            &json!({ "email": email, "password": "velvet-otter-cinnamon-42",
            "name": "S", "role": "seller" }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["access_token"].as_str().unwrap().to_owned();
    let body = json!({ "name": "Lamp", "brand": "B", "category": "home",
        "variants": [{ "sku": "L", "color": "brass", "size": "one",
            "price": { "amount": 900, "currency": "USD" }, "stock_level": 5 }] });
    let created: Value = http
        .post(format!("{a}/products"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, variant) = (
        created["id"].as_str().unwrap(),
        created["variants"][0]["id"].as_str().unwrap(),
    );
    let on_b = format!("{b}/products/{id}");
    let stock = |http: reqwest::Client, url: String| async move {
        let product: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        product["variants"][0]["stock_level"].as_i64().unwrap()
    };
    assert_eq!(
        stock(http.clone(), on_b.clone()).await,
        5,
        "B has the product cached now"
    );
    let added = http
        .post(format!("{a}/cart/items"))
        .bearer_auth(&token)
        .json(&json!({ "variant_id": variant, "quantity": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    let paid = http
        .post(format!("{a}/checkout"))
        .bearer_auth(&token)
        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
        .json(&json!({ "shipping_address": { "name": "Ada Lovelace",
            "line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH",
            "country": "GB" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 201);
    // B's cached copy lives 60 s; the invalidation must reach it long before.
    let started = std::time::Instant::now();
    while stock(http.clone(), on_b.clone()).await != 3 {
        assert!(
            started.elapsed() < bound,
            "B still served the old stock level {bound:?} after the checkout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
