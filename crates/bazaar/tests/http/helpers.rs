//! `spawn_app`: the real server, in-process, on a free port, with its own data directory —
//! and, in the `http_postgres` test binary, its own PostgreSQL databases.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bazaar::Application;
use bazaar::config::{Config, Durability, StoreBackend};
use bazaar_shop::payments::SimulatedProvider;
use bazaar_store::Store;
use bazaar_store::testing::PostgresScratch;
use serde_json::Value;

/// Where the test binary puts its servers' shards: the `http` binary on SQLite files, the
/// `http_postgres` binary (the same tests) on PostgreSQL databases.
pub(crate) use crate::ON_POSTGRES;

pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) client: reqwest::Client,
    pub(crate) store: Arc<Store>,
    pub(crate) payments: Arc<SimulatedProvider>,
    pub(crate) config: Config,
    /// Dropping it deletes the data directory; kept alive for the test's duration.
    _data_dir: tempfile::TempDir,
    /// On PostgreSQL: the shards' databases, dropped with the app.
    postgres: Option<PostgresScratch>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A configuration for tests: port 0, a temporary data directory, `products` demo products.
pub(crate) fn test_config(data_dir: &std::path::Path, products: u64) -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.store.data_dir = data_dir.to_owned();
    // Durability is not under test here; NORMAL keeps the suite fast.
    config.store.durability = Durability::Normal;
    config.catalog.demo_products = products;
    // Every test client is 127.0.0.1; the tests of rate limiting turn them back on.
    config.rate_limits.enabled = false;
    // The order sweeper's queries would blur the tests that count store round trips; the
    // tests of expiry and recovery set their own interval.
    config.orders.sweep_interval = Duration::from_secs(3600);
    // Likewise the view flusher's writes (views are exact in the process that counted them,
    // flushed or not; the tests of flushing set their own interval).
    config.cache.views.flush_interval = Duration::from_secs(3600);
    // Likewise the outbox relay's and the event consumers' polling, and the cache consumer's
    // invalidations (which would turn a counted cache hit into a miss); the tests of events
    // turn them on (`with_events`).
    config.events.run_workers = false;
    config.events.consumers.cache.enabled = false;
    config
}

/// Turns the events layer on as `bazaar serve` runs it, polling fast.
pub(crate) fn with_events(config: &mut Config) {
    config.events.run_workers = true;
    config.events.consumers.cache.enabled = true;
    config.events.relay_interval = Duration::from_millis(20);
}

pub(crate) async fn spawn_app(products: u64) -> TestApp {
    spawn_app_with(products, |_| {}).await
}

pub(crate) async fn spawn_app_with(products: u64, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(data_dir.path(), products);
    adjust(&mut config);
    let postgres = if ON_POSTGRES {
        let Some(scratch) = PostgresScratch::from_env(config.store.shards).await else {
            skip_the_postgres_suite();
        };
        config.store.backend = StoreBackend::Postgres;
        config.store.postgres.shards = scratch.config().shards;
        Some(scratch)
    } else {
        None
    };
    let app = Application::build(&config)
        .await
        .expect("the application builds");
    let search = app.search();
    let address = app.local_addr();
    let store = app.store();
    let payments = app.payments();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    // The start-up rebuild of the search index reads every product: done before a test
    // counts the store's round trips.
    let started = std::time::Instant::now();
    while search.state() != bazaar_shop::search::IndexState::Ready {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the search index never got ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        store,
        payments,
        config,
        _data_dir: data_dir,
        postgres,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub(crate) async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// `GET path` as `user`, asserting 200, as JSON.
    pub(crate) async fn get_json_as(&self, path: &str, user: &User) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(&user.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Sends a GraphQL query and returns the whole response document.
    pub(crate) async fn graphql(&self, query: &str) -> Value {
        let response = self
            .client
            .post(self.url("/graphql"))
            .json(&serde_json::json!({ "query": query }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Ids of the first `n` products, newest first.
    pub(crate) async fn product_ids(&self, n: usize) -> Vec<String> {
        item_ids(&self.get_json(&format!("/products?limit={n}")).await)
    }

    /// Asks the server to stop, as SIGTERM would, without waiting for it.
    pub(crate) fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and keeps its data (directory and databases) until the returned guard
    /// is dropped.
    pub(crate) async fn stop_keeping_data(mut self) -> KeptData {
        self.begin_stop();
        self.server
            .take()
            .unwrap()
            .await
            .unwrap()
            .expect("the server stops cleanly");
        KeptData {
            _dir: std::mem::replace(&mut self._data_dir, tempfile::tempdir().unwrap()),
            _postgres: self.postgres.take(),
        }
    }

    /// Every byte the store keeps at rest, one entry per file (SQLite) or per table of each
    /// shard's database (PostgreSQL, each row in its text form): what an attacker with the
    /// disk or a database dump would read.
    pub(crate) async fn bytes_at_rest(&self) -> Vec<Vec<u8>> {
        let Some(scratch) = &self.postgres else {
            // Every file, the search index's included.
            fn files(dir: &std::path::Path, out: &mut Vec<Vec<u8>>) {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        files(&path, out);
                    } else {
                        out.push(std::fs::read(path).unwrap());
                    }
                }
            }
            let mut out = Vec::new();
            files(&self.config.store.data_dir, &mut out);
            return out;
        };
        let mut dumps = Vec::new();
        for url in scratch.config().shards {
            dumps.extend(bazaar_store::testing::dump_tables(&url).await.unwrap());
        }
        dumps
    }

    /// Asks the server to stop and waits for it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_stop();
        self.server.take().unwrap().await.unwrap()
    }
}

/// Ends the `http_postgres` binary, successfully, when there is no PostgreSQL server to run
/// it on: every test in it starts a server, so none has anything to run. Written to the
/// process's stderr directly, past the harness's capture, so the skip is seen.
fn skip_the_postgres_suite() -> ! {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED the HTTP suite on PostgreSQL: {} is not set",
        bazaar_store::testing::POSTGRES_URL_VAR
    );
    std::process::exit(0)
}

/// What [`TestApp::stop_keeping_data`] keeps alive.
pub(crate) struct KeptData {
    _dir: tempfile::TempDir,
    _postgres: Option<PostgresScratch>,
}

/// Asserts `response` is a problem document with `status` and `kind`, and returns it.
pub(crate) async fn assert_problem(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], format!("/problems/{kind}"), "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// A signed-in user as the tests see it.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) password: String,
    pub(crate) access: String,
    pub(crate) refresh: String,
}

/// A password the policy accepts.
pub(crate) const PASSWORD: &str = "velvet-otter-cinnamon-42";

static NEXT_EMAIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A fresh, unique email address.
pub(crate) fn email() -> String {
    let n = NEXT_EMAIL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("user{n}.{}@example.com", std::process::id())
}

impl TestApp {
    /// `POST` `body` as JSON with an optional bearer token.
    pub(crate) async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Any method, optional bearer token, optional JSON body.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method.parse().unwrap(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    /// Signs up a new user with `role` (`customer` or `seller`).
    pub(crate) async fn signup(&self, role: &str) -> User {
        let email = email();
        let body = serde_json::json!({ "email": email, "password": PASSWORD, "name": "Test User", "role": role });
        let response = self.post("/auth/signup", None, &body).await;
        assert_eq!(
            response.status(),
            201,
            "signup failed: {}",
            response.text().await.unwrap()
        );
        let tokens: Value = response.json().await.unwrap();
        User {
            id: tokens["user"]["id"].as_str().unwrap().to_owned(),
            email,
            password: PASSWORD.to_owned(),
            access: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Creates an administrator the way `bazaar admin create` does, and signs them in.
    pub(crate) async fn admin(&self) -> User {
        let email = email();
        let lease = bazaar::node::NodeLease::claim(self.store.clone(), None)
            .await
            .unwrap();
        let core = bazaar::app::Core::build(&self.config, &self.store, &lease).unwrap();
        core.accounts
            .create_admin(&email, PASSWORD, "Admin")
            .await
            .unwrap();
        self.login(&email, PASSWORD).await
    }

    pub(crate) async fn login(&self, email: &str, password: &str) -> User {
        let response = self
            .post(
                "/auth/login",
                None,
                &serde_json::json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(response.status(), 200, "login failed");
        let tokens: Value = response.json().await.unwrap();
        User {
            id: tokens["user"]["id"].as_str().unwrap().to_owned(),
            email: email.to_owned(),
            password: password.to_owned(),
            access: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Lists a product as `seller`; returns its id and its first variant's id.
    pub(crate) async fn create_product(&self, seller: &User) -> (String, String) {
        let response = self
            .post("/products", Some(&seller.access), &new_product())
            .await;
        assert_eq!(
            response.status(),
            201,
            "create failed: {}",
            response.text().await.unwrap()
        );
        let product: Value = response.json().await.unwrap();
        (
            product["id"].as_str().unwrap().to_owned(),
            product["variants"][0]["id"].as_str().unwrap().to_owned(),
        )
    }
}

/// The ids of a page's `items`, in order.
pub(crate) fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A valid `POST /products` body.
pub(crate) fn new_product() -> Value {
    serde_json::json!({
        "name": "Hand-thrown Mug",
        "description": "Stoneware, 350 ml.",
        "brand": "Kiln & Co",
        "category": "kitchen",
        "variants": [
            { "sku": "MUG-BLU", "color": "blue", "size": "350ml", "price": { "amount": 2400, "currency": "USD" }, "stock_level": 12 },
            { "sku": "MUG-GRN", "color": "green", "size": "350ml", "price": { "amount": 2200, "currency": "USD" }, "stock_level": 3 }
        ]
    })
}
