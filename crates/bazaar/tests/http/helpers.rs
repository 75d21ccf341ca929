//! `spawn_app`: the real server, in-process, on a free port, with its own data directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bazaar::Application;
use bazaar::config::{Config, Durability};
use bazaar_store::Store;
use serde_json::Value;

pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) client: reqwest::Client,
    pub(crate) store: Arc<Store>,
    /// Dropping it deletes the data directory; kept alive for the test's duration.
    _data_dir: tempfile::TempDir,
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
    config
}

pub(crate) async fn spawn_app(products: u64) -> TestApp {
    spawn_app_with(products, |_| {}).await
}

pub(crate) async fn spawn_app_with(products: u64, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(data_dir.path(), products);
    adjust(&mut config);
    let app = Application::build(&config)
        .await
        .expect("the application builds");
    let address = app.local_addr();
    let store = app.store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        store,
        _data_dir: data_dir,
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
        let page = self.get_json(&format!("/products?limit={n}")).await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Asks the server to stop, as SIGTERM would, without waiting for it.
    pub(crate) fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Asks the server to stop and waits for it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_stop();
        self.server.take().unwrap().await.unwrap()
    }
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
