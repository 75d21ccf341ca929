//! Tests that run `bazaar serve` as a process: admins from the command line, key rotation,
//! re-encryption, logs that never show personal data, rate-limit budgets (GraphQL costs and
//! failed credentials included) shared by two server processes through Redis, and the write-back crash-loss window under `kill -9`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

const PASSWORD: &str = "velvet-otter-cinnamon-42";

/// The binary with fast, non-fsyncing commits: durability is not under test here.
fn bazaar() -> Command {
    let mut command = common::bazaar();
    command.env("BAZAAR_STORE__DURABILITY", "normal");
    command
}

/// A running `bazaar serve`, the base URL it printed, and its log so far.
struct Server {
    child: Child,
    base: String,
    /// Filled by a thread that drains standard error, so a chatty server never blocks on a
    /// full pipe.
    log: std::thread::JoinHandle<String>,
}

impl Server {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = bazaar();
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--demo-products",
                "5",
                "--data-dir",
            ])
            .arg(dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        // Drain standard error from the start: a server logging at debug level fills the pipe
        // before it prints its banner, and would block there for ever.
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            // Bytes, not a String: stopping at an invalid UTF-8 sequence would stop draining.
            let mut log = Vec::new();
            let _ = stderr.read_to_end(&mut log);
            String::from_utf8_lossy(&log).into_owned()
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().unwrap().unwrap();
        let base = banner
            .strip_prefix("Bazaar is serving on ")
            .unwrap_or_else(|| panic!("unexpected banner: {banner}"))
            .to_owned();
        // Keep draining standard output too.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, base, log }
    }

    /// [`start`](Self::start) with the store on `backend`'s shards.
    fn start_on(backend: &common::Backend, dir: &Path, env: &[(&str, &str)]) -> Self {
        let backend_env = backend.env();
        let mut all: Vec<(&str, &str)> = backend_env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        all.extend_from_slice(env);
        Self::start(dir, &all)
    }

    /// Kills the server without warning (SIGKILL): nothing gets to flush.
    fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops the server with SIGTERM and returns everything it logged.
    fn stop(mut self) -> String {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let log = self.log.join().unwrap();
        assert!(status.success(), "{log}");
        log
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn create_admin(dir: &Path, email: &str) -> std::process::Output {
    let mut child = bazaar()
        .args([
            "admin",
            "create",
            "--email",
            email,
            "--name",
            "Root",
            "--data-dir",
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn admins_are_created_on_the_command_line_and_can_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    // `admin create` works on an existing store (tests/cli.rs checks it refuses a missing one).
    Server::start(dir.path(), &[]).stop();
    let output = create_admin(dir.path(), "root@example.com");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("r***@example.com") && !printed.contains("root@example.com"),
        "{printed}"
    );
    let again = create_admin(dir.path(), "ROOT@example.com");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let server = Server::start(dir.path(), &[]);
    let login: Value = client()
        .post(format!("{}/auth/login", server.base))
        .json(&json!({ "email": "root@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(login["user"]["role"], "admin");
    server.stop();
}

#[tokio::test]
async fn logs_at_debug_level_never_contain_an_email_or_phone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("BAZAAR_LOG__FILTER", "debug"),
            ("BAZAAR_LOG__FORMAT", "json"),
        ],
    );
    let email = "grace.hopper@example.com";
    let http = client();
    let base = &server.base;
    let signup: Value = http
        .post(format!("{base}/auth/signup"))
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Grace", "role": "seller" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["access_token"].as_str().unwrap();
    http.post(format!("{base}/auth/login"))
        .json(&json!({ "email": email, "password": "wrong-password-here" }))
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/auth/login"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    http.patch(format!("{base}/users/me"))
        .bearer_auth(token)
        .json(&json!({ "phone": "+15557654321" }))
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/auth/signup"))
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Dup" }))
        .send()
        .await
        .unwrap();
    let log = server.stop();
    assert!(
        log.contains("account created"),
        "the debug log was captured: {log}"
    );
    assert!(
        log.contains("g***@example.com"),
        "emails are masked where they are logged"
    );
    for secret in ["grace.hopper", "15557654321", PASSWORD] {
        assert!(!log.contains(secret), "`{secret}` appears in the log");
    }
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid_and_reencryption_keeps_data_readable() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let server = Server::start(dir.path(), &[]);
    let signup: Value = http
        .post(format!("{}/auth/signup", server.base))
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD, "name": "Ada" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_token = signup["access_token"].as_str().unwrap().to_owned();
    server.stop();

    run_ok(&["keys", "rotate-jwt"], dir.path());
    let rekey = run_ok(&["privacy", "rotate-key"], dir.path());
    // Ada and the four demo sellers, whose emails are sealed like anyone's.
    assert!(String::from_utf8_lossy(&rekey.stdout).contains("re-encrypted 5 user(s)"));
    let secrets = std::fs::read_to_string(dir.path().join("secrets.toml")).unwrap();
    assert_eq!(
        secrets.matches("[[jwt_keys]]").count(),
        2,
        "the old signing key is kept while its tokens live"
    );
    assert!(secrets.contains("active_pii_key = 2"));

    let server = Server::start(dir.path(), &[]);
    let me = http
        .get(format!("{}/users/me", server.base))
        .bearer_auth(&old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.status(),
        200,
        "a token signed before the rotation still works"
    );
    assert_eq!(
        me.json::<Value>().await.unwrap()["email"],
        "ada@example.com",
        "data re-encrypted under key 2 reads back"
    );
    let login: Value = http
        .post(format!("{}/auth/login", server.base))
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_token = login["access_token"].as_str().unwrap();
    assert_ne!(
        kid(new_token),
        kid(&old_token),
        "new tokens are signed with the new key"
    );
    server.stop();
}

/// Runs a command of the binary on the data directory `dir`; it must succeed.
fn run_ok(args: &[&str], dir: &Path) -> std::process::Output {
    let output = bazaar()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn two_servers_sharing_redis_share_one_rate_limit_budget() {
    let Some(redis) =
        common::redis_or_skip("two_servers_sharing_redis_share_one_rate_limit_budget")
    else {
        return;
    };
    let prefix = common::unique("bazaar-test");
    let (burst, rate_per_minute) = (8u32, 6u32);
    let env = [
        ("BAZAAR_RATE_LIMITS__BACKEND", "redis"),
        ("BAZAAR_RATE_LIMITS__REDIS_URL", redis.as_str()),
        ("BAZAAR_RATE_LIMITS__REDIS_PREFIX", prefix.as_str()),
        (
            "BAZAAR_RATE_LIMITS__READ",
            "{ rate = 6, period = \"1m\", burst = 8 }",
        ),
    ];
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(a_dir.path(), &env);
    let b = Server::start(b_dir.path(), &env);
    let http = client();
    let started = Instant::now();
    let mut admitted = 0u32;
    for i in 0..40 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let response = http
            .get(format!("{base}/products?limit=1"))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => assert!(response.headers().contains_key("retry-after")),
            other => panic!("unexpected status {other}"),
        }
    }
    let elapsed_minutes = started.elapsed().as_secs_f64() / 60.0;
    let bound = f64::from(burst) + (f64::from(rate_per_minute) * elapsed_minutes).ceil();
    assert!(admitted >= burst, "the burst must be admitted: {admitted}");
    assert!(
        f64::from(admitted) <= bound,
        "two servers admitted {admitted}, more than burst + rate ({bound})"
    );
    a.stop();
    b.stop();
}

#[tokio::test]
async fn two_servers_sharing_redis_share_graphql_costs_and_the_failed_credential_budget() {
    let Some(redis) = common::redis_or_skip(
        "two_servers_sharing_redis_share_graphql_costs_and_the_failed_credential_budget",
    ) else {
        return;
    };
    // Its own prefix: the other Redis test may start in the same millisecond.
    let prefix = common::unique("bazaar-test-graphql");
    let env = [
        ("BAZAAR_RATE_LIMITS__BACKEND", "redis"),
        ("BAZAAR_RATE_LIMITS__REDIS_URL", redis.as_str()),
        ("BAZAAR_RATE_LIMITS__REDIS_PREFIX", prefix.as_str()),
        (
            "BAZAAR_RATE_LIMITS__READ",
            "{ rate = 1, period = \"1h\", burst = 30 }",
        ),
        (
            "BAZAAR_RATE_LIMITS__FAILED_AUTH",
            "{ rate = 1, period = \"1h\", burst = 2 }",
        ),
        ("BAZAAR_RATE_LIMITS__GRAPHQL_COMPLEXITY_PER_READ", "1"),
    ];
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(a_dir.path(), &env);
    let b = Server::start(b_dir.path(), &env);
    let http = client();
    // `product { id }` has complexity 2: ten aliases cost 20 reads.
    let aliases = |n: usize| {
        let fields: String = (0..n)
            .map(|i| format!("p{i}: product(id: \"1\") {{ id }} "))
            .collect();
        json!({ "query": format!("{{ {fields} }}") })
    };
    let graphql = |base: &str, body: Value| http.post(format!("{base}/graphql")).json(&body).send();
    let first = graphql(&a.base, aliases(10)).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        first.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"read\";r=10;"),
        "{:?}",
        first.headers()
    );
    // The other server sees the same budget: 20 more do not fit the 10 left, 10 do.
    assert_eq!(graphql(&b.base, aliases(10)).await.unwrap().status(), 429);
    assert_eq!(graphql(&b.base, aliases(5)).await.unwrap().status(), 200);
    assert_eq!(graphql(&a.base, aliases(1)).await.unwrap().status(), 429);

    // Two bad tokens on one server spend the address's failed-credential budget on both.
    for base in [&a.base, &a.base] {
        let response = http
            .get(format!("{base}/healthz"))
            .bearer_auth("x.y.z")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let refused = http
        .get(format!("{}/healthz", b.base))
        .bearer_auth("x.y.z")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    a.stop();
    b.stop();
}

/// The stored view count of `id`, read straight from the shards (WAL lets another process
/// read SQLite files while the server writes).
async fn stored_views(backend: &common::Backend, dir: &Path, id: &str) -> i64 {
    let store = backend.open(dir).await;
    let views = store
        .product_with_variants(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .product
        .view_count;
    store.close().await;
    views
}

#[tokio::test]
async fn kill_9_loses_at_most_the_unflushed_views_and_never_a_flushed_one() {
    for backend in common::Backend::every("kill_9_loses_at_most_the_unflushed_views").await {
        eprintln!("on {}:", backend.name());
        kill_9_loses_at_most_the_unflushed_views(&backend).await;
    }
}

async fn kill_9_loses_at_most_the_unflushed_views(backend: &common::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let server = Server::start_on(
        backend,
        dir.path(),
        &[
            ("BAZAAR_CACHE__VIEWS__FLUSH_INTERVAL", "300ms"),
            ("BAZAAR_RATE_LIMITS__ENABLED", "false"),
        ],
    );
    let page: Value = http
        .get(format!("{}/products?limit=1", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let product = format!("{}/products/{id}", server.base);
    for _ in 0..10 {
        assert_eq!(http.get(&product).send().await.unwrap().status(), 200);
    }
    // Wait (bounded) until a flush has stored the first ten views.
    let mut flushed = 0;
    for _ in 0..100 {
        flushed = stored_views(backend, dir.path(), &id).await;
        if flushed == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(flushed, 10, "the flusher never stored the first views");
    for _ in 0..5 {
        http.get(&product).send().await.unwrap();
    }
    server.crash();
    let after = stored_views(backend, dir.path(), &id).await;
    assert!(
        (10..=15).contains(&after),
        "after kill -9 the store holds {after} views; flushed 10, acknowledged 15"
    );
}

#[tokio::test]
async fn a_write_through_one_server_is_seen_fresh_by_another_within_the_bound() {
    let test = "a_write_through_one_server_is_seen_fresh_by_another_within_the_bound";
    if let Some(redis) = common::redis_or_skip(test) {
        seen_fresh_across_processes(&redis, "read-through", false).await;
    }
}

#[tokio::test]
async fn with_write_through_and_l2_another_server_reads_the_write_from_redis() {
    let test = "with_write_through_and_l2_another_server_reads_the_write_from_redis";
    if let Some(redis) = common::redis_or_skip(test) {
        seen_fresh_across_processes(&redis, "write-through", true).await;
    }
}

/// The `name` of the JSON document at `url`.
async fn name_at(http: &reqwest::Client, url: &str, token: &str) -> String {
    let document: Value = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    document["name"].as_str().unwrap().to_owned()
}

/// Waits, at most 2 s, for the document at `url` to be named `name`.
async fn until_named(http: &reqwest::Client, url: &str, token: &str, name: &str) {
    let started = Instant::now();
    while name_at(http, url, token).await != name {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{url} still served the stale document after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two servers share a data directory and a Redis; a product renamed through one must be
/// served renamed by the other within 2 s (its cache TTL is 60 s). With `l2`, the other
/// server reads the new product from Redis rather than from the store.
async fn seen_fresh_across_processes(redis: &str, strategy: &str, l2: bool) {
    let channel = common::unique("bazaar-test:invalidate");
    let prefix = common::unique("bazaar-test:cache");
    let env = [
        ("BAZAAR_CACHE__REDIS__URL", redis),
        ("BAZAAR_CACHE__REDIS__CHANNEL", channel.as_str()),
        ("BAZAAR_CACHE__REDIS__PREFIX", prefix.as_str()),
        ("BAZAAR_CACHE__PRODUCTS__STRATEGY", strategy),
        (
            "BAZAAR_CACHE__PRODUCTS__L2",
            if l2 { "true" } else { "false" },
        ),
        ("BAZAAR_RATE_LIMITS__ENABLED", "false"),
    ];
    // Two API processes over one data directory (SQLite in WAL mode serves both).
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(dir.path(), &env);
    let b = Server::start(dir.path(), &env);
    let http = client();
    let signup: Value = http
        .post(format!("{}/auth/signup", a.base))
        .json(&json!({ "email": "seller@example.com", "password": PASSWORD, "name": "S", "role": "seller" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["access_token"].as_str().unwrap();
    let body = json!({ "name": "Mug", "brand": "B", "category": "kitchen",
        "variants": [{ "sku": "M", "color": "blue", "size": "one", "price": { "amount": 900, "currency": "USD" } }] });
    let created: Value = http
        .post(format!("{}/products", a.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let (product_on_b, me_on_b) = (
        format!("{}/products/{id}", b.base),
        format!("{}/users/me", b.base),
    );
    assert_eq!(
        name_at(&http, &product_on_b, token).await,
        "Mug",
        "B has the product cached now"
    );
    let renamed = http
        .patch(format!("{}/products/{id}", a.base))
        .bearer_auth(token)
        .json(&json!({ "name": "Cup" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    // The cache's TTL is 60 s; the invalidation must arrive long before.
    until_named(&http, &product_on_b, token, "Cup").await;

    // User rows are invalidated across processes the same way (cache-aside, in-process only;
    // their TTL is 30 s).
    assert_eq!(
        name_at(&http, &me_on_b, token).await,
        "S",
        "B has the user row cached now"
    );
    let renamed = http
        .patch(format!("{}/users/me", a.base))
        .bearer_auth(token)
        .json(&json!({ "name": "Sam" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    until_named(&http, &me_on_b, token, "Sam").await;
    if l2 {
        let metrics = http
            .get(format!("{}/metrics", b.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let l2_hits = metrics
            .lines()
            .find(|l| {
                l.starts_with(r#"bazaar_cache_requests_total{cache="products_l2",result="hit"}"#)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            l2_hits >= 1.0,
            "B read the written product from Redis:\n{metrics}"
        );
    }
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_flash_sale_loses_no_acknowledged_order_and_leaks_no_stock() {
    for backend in common::Backend::every("kill_9_in_a_flash_sale").await {
        eprintln!("on {}:", backend.name());
        kill_9_in_a_flash_sale(&backend).await;
    }
}

async fn kill_9_in_a_flash_sale(backend: &common::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let env = [
        ("BAZAAR_RATE_LIMITS__ENABLED", "false"),
        // Slow enough payments that the kill lands inside checkouts; a short staleness bound
        // so the restarted server finishes them quickly.
        ("BAZAAR_PAYMENTS__LATENCY", "30ms"),
        ("BAZAAR_ORDERS__STALE_AFTER", "1s"),
        ("BAZAAR_ORDERS__SWEEP_INTERVAL", "100ms"),
        ("BAZAAR_STORE__DURABILITY", "full"),
    ];
    let server = Server::start_on(backend, dir.path(), &env);
    let signup = |role: &'static str| {
        let (http, base) = (http.clone(), server.base.clone());
        async move {
            let tokens: Value = http
                .post(format!("{base}/auth/signup"))
                .json(&json!({ "email": format!("{}@example.com", common::unique(role).replace(':', "-")),
                    "password": PASSWORD, "name": "N", "role": role }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            tokens["access_token"].as_str().unwrap().to_owned()
        }
    };
    let seller = signup("seller").await;
    let stock = 40;
    let product: Value = http
        .post(format!("{}/products", server.base))
        .bearer_auth(&seller)
        .json(
            &json!({ "name": "Lamp", "brand": "B", "category": "home", "variants": [{ "sku": "L",
            "color": "brass", "size": "one", "price": { "amount": 4900, "currency": "USD" },
            "stock_level": stock }] }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (product_id, variant) = (
        product["id"].as_str().unwrap().to_owned(),
        product["variants"][0]["id"].as_str().unwrap().to_owned(),
    );
    let mut buyers = Vec::new();
    for _ in 0..80 {
        let token = signup("customer").await;
        http.post(format!("{}/cart/items", server.base))
            .bearer_auth(&token)
            .json(&json!({ "variant_id": variant, "quantity": 1 }))
            .send()
            .await
            .unwrap();
        buyers.push(token);
    }
    let address = json!({ "shipping_address": { "name": "A", "line1": "1 Road", "city": "Oslo",
        "postal_code": "0150", "country": "NO" } });
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let checkouts: Vec<_> = buyers
        .iter()
        .map(|token| {
            let (http, base, token, address) = (
                http.clone(),
                server.base.clone(),
                token.clone(),
                address.clone(),
            );
            let answered = answered.clone();
            tokio::spawn(async move {
                let response = http
                    .post(format!("{base}/checkout"))
                    .bearer_auth(token)
                    .header("idempotency-key", common::unique("checkout"))
                    .json(&address)
                    .send()
                    .await
                    .ok()?;
                (response.status() == 201).then_some(())?;
                let order: Value = response.json().await.ok()?;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(order["id"].as_str()?.to_owned())
            })
        })
        .collect();
    // Kill it mid-sale, once a few checkouts have been answered: others are in flight.
    let started = Instant::now();
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 5
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.crash();
    let mut acknowledged = Vec::new();
    for checkout in checkouts {
        if let Some(id) = checkout.await.unwrap() {
            acknowledged.push(id);
        }
    }

    // Restart: the sweeper finishes or compensates every interrupted checkout. Watch the
    // shard files (WAL lets this process read while the server writes) until it has.
    let server = Server::start_on(backend, dir.path(), &env);
    let store = backend.open(dir.path()).await;
    let all_orders = || every_order(&store);
    let started = Instant::now();
    let mut orders = all_orders().await;
    while orders.iter().any(|o| !o.settled) && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        orders = all_orders().await;
    }
    let recovered_in = started.elapsed();
    server.stop();
    for id in &acknowledged {
        let order = orders
            .iter()
            .find(|o| o.id.to_string() == *id)
            .unwrap_or_else(|| panic!("acknowledged order {id} is gone"));
        assert_eq!(order.status, bazaar_store::OrderStatus::Paid, "order {id}");
    }
    assert!(
        orders
            .iter()
            .all(|o| o.settled && o.status != bazaar_store::OrderStatus::Pending),
        "an order was left unfinished: {:?}",
        orders
            .iter()
            .filter(|o| !o.settled)
            .map(|o| (o.id, o.status))
            .collect::<Vec<_>>()
    );
    let account = store
        .stock_account(product_id.parse().unwrap(), variant.parse().unwrap())
        .await
        .unwrap();
    let paid: i64 = orders
        .iter()
        .filter(|o| o.status == bazaar_store::OrderStatus::Paid)
        .map(|o| o.lines.iter().map(|l| l.quantity).sum::<i64>())
        .sum();
    assert_eq!(
        account.total(),
        stock,
        "{account:?}: a unit was lost or doubled"
    );
    assert_eq!(
        account.held, 0,
        "{account:?}: a reservation outlived the sweeper"
    );
    assert_eq!(
        account.committed, paid,
        "{account:?}: sold units match paid orders"
    );
    eprintln!(
        "crash test: {} acknowledged before the kill, {} orders in all, {paid} paid, all settled {recovered_in:?} after the restart",
        acknowledged.len(),
        orders.len()
    );
    store.close().await;
}

/// Every order on every shard, newest first.
async fn every_order(store: &bazaar_store::Store) -> Vec<bazaar_store::OrderRecord> {
    let mut orders = Vec::new();
    let mut before = None;
    loop {
        let page = store.orders_everywhere(None, before, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        orders.extend(page);
    }
    orders
}

/// `bazaar lab run --json` against `server`, and its parsed output.
fn lab_json(server: &Server, args: &[&str]) -> (std::process::Output, Value) {
    let output = bazaar()
        .args(["lab", "run", "--target", &server.base, "--json"])
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordering_mix_signs_shoppers_up_fills_carts_and_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("BAZAAR_RATE_LIMITS__ENABLED", "false")]);
    let (output, json) = lab_json(
        &server,
        &[
            "--workload",
            "ordering",
            "--rate",
            "40",
            "--duration",
            "3s",
            "--warmup",
            "0s",
            "--connections",
            "4",
            "--shoppers",
            "6",
        ],
    );
    server.stop();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let target = &json["target"];
    let kinds = target["kinds"].as_object().unwrap();
    // Every interaction of the mix was sent and answered without an error: signed-in cart
    // views and order histories, cart additions, and checkouts that created orders.
    for kind in [
        "product",
        "list",
        "graphql",
        "cart view",
        "order history",
        "add to cart",
        "buy",
    ] {
        assert!(kinds.contains_key(kind), "{kind} missing: {target:#}");
    }
    let statuses = target["statuses"].as_object().unwrap();
    assert!(
        statuses.keys().all(|s| s.starts_with('2')),
        "only successes: {statuses:?}"
    );
    assert_eq!(target["transport_errors"], 0);
    let bought = kinds["buy"]["statuses"]["201"].as_u64().unwrap_or(0);
    assert!(
        bought >= 10,
        "about a quarter of 120 interactions buy: {bought}"
    );
    let answered: u64 = statuses.values().filter_map(Value::as_u64).sum();
    assert_eq!(answered, 120, "40/s for 3 s: {target:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_against_a_rate_limited_server_stops_before_any_load_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // Sign-ups are limited to 10 a minute per client by default.
    let server = Server::start(dir.path(), &[]);
    let (output, _) = lab_json(
        &server,
        &[
            "--workload",
            "browsing",
            "--rate",
            "10",
            "--connections",
            "2",
            "--shoppers",
            "12",
        ],
    );
    server.stop();
    let message = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("cannot serve the `browsing` workload")
            && message.contains("rate-limits sign-ups")
            && message.contains("BAZAAR_RATE_LIMITS__ENABLED=false"),
        "{message}"
    );
    assert!(output.stdout.is_empty(), "nothing was measured");
}

/// Signs up a seller through `base` and returns their access token.
async fn seller_token(http: &reqwest::Client, base: &str) -> String {
    let email = format!("seller.{}@example.com", uuid::Uuid::now_v7().simple());
    let response: Value = http
        .post(format!("{base}/auth/signup"))
        .json(&json!({ "email": email, "password": PASSWORD, "name": "S", "role": "seller" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_store_mint_distinct_ids() {
    // 10,000 products (and as many variants) through each server.
    const REQUESTS: usize = 40;
    const PER_REQUEST: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    // The writes of both processes queue for the same shards' locks: on a loaded machine a
    // request of 250 creates may take longer than the default 30 s request timeout.
    let env = [
        ("BAZAAR_RATE_LIMITS__ENABLED", "false"),
        ("BAZAAR_HTTP__REQUEST_TIMEOUT", "300s"),
    ];
    let servers = [
        Server::start(dir.path(), &env),
        Server::start(dir.path(), &env),
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let mutation = format!(
        "mutation {{ {} }}",
        (0..PER_REQUEST)
            .map(|i| format!(
                r#"p{i}: createProduct(input: {{ name: "N", brand: "B", category: "c", variants: [{{ sku: "S", color: "c", size: "s", price: 100 }}] }}) {{ id variants {{ id }} }}"#
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Every request is built first, then all are released together.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(REQUESTS * servers.len()));
    let mut tasks = Vec::new();
    for server in &servers {
        let token = seller_token(&http, &server.base).await;
        for _ in 0..REQUESTS {
            let request = http
                .post(format!("{}/graphql", server.base))
                .bearer_auth(&token)
                .json(&json!({ "query": mutation }));
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let answer: Value = request.send().await.unwrap().json().await.unwrap();
                assert!(answer["errors"].is_null(), "{answer}");
                let data = answer["data"].as_object().unwrap();
                data.values()
                    .flat_map(|p| {
                        let variant = p["variants"][0]["id"].as_str().unwrap().to_owned();
                        [p["id"].as_str().unwrap().to_owned(), variant]
                    })
                    .collect::<Vec<_>>()
            }));
        }
    }
    let mut ids = std::collections::HashSet::new();
    let mut minted = 0;
    for task in tasks {
        for id in task.await.unwrap() {
            minted += 1;
            ids.insert(id);
        }
    }
    let products = REQUESTS * PER_REQUEST * servers.len();
    assert_eq!(
        minted,
        2 * products,
        "a product and a variant id per product"
    );
    assert_eq!(
        ids.len(),
        minted,
        "every id minted by either server is distinct"
    );
    for server in servers {
        server.stop();
    }
}

#[tokio::test]
async fn a_node_id_held_by_a_running_server_is_refused_and_free_again_after_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    // The first process on a store leases the lowest number, 1.
    let first = Server::start(dir.path(), &[]);
    let refused = bazaar()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("BAZAAR_NODE__ID", "1")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("node.id 1 is leased by another process"),
        "{stderr}"
    );
    let bad = bazaar()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("BAZAAR_NODE__ID", "1024")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("node.id"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // A graceful stop gives the number back at once.
    first.stop();
    let again = Server::start(dir.path(), &[("BAZAAR_NODE__ID", "1")]);
    again.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_views_are_flushing_loses_no_acknowledged_view() {
    let dir = tempfile::tempdir().unwrap();
    // Flushes back to back, each committed with fsync: a flush is nearly always in flight.
    let server = Server::start(
        dir.path(),
        &[
            ("BAZAAR_CACHE__VIEWS__FLUSH_INTERVAL", "1ms"),
            ("BAZAAR_STORE__DURABILITY", "full"),
            ("BAZAAR_RATE_LIMITS__ENABLED", "false"),
        ],
    );
    let http = client();
    let page: Value = http
        .get(format!("{}/products?limit=5", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (http, base, ids, stop) =
                (http.clone(), server.base.clone(), ids.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = vec![0i64; ids.len()];
                // Bounded: at most 5,000 views per client.
                for i in c..c + 5_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let n = i % ids.len();
                    match http.get(format!("{base}/products/{}", ids[n])).send().await {
                        Ok(response) if response.status() == 200 => acknowledged[n] += 1,
                        _ => break, // the server is going away
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let log = {
        // SIGTERM in the middle of the load, then let the clients see the server go.
        let log = tokio::task::spawn_blocking(move || server.stop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        log.await.unwrap()
    };
    let mut acknowledged = vec![0i64; ids.len()];
    for client in clients {
        for (n, views) in client.await.unwrap().into_iter().enumerate() {
            acknowledged[n] += views;
        }
    }
    assert!(
        acknowledged.iter().sum::<i64>() > 100,
        "the load ran: {acknowledged:?}"
    );
    for (n, id) in ids.iter().enumerate() {
        let stored = stored_views(&common::Backend::Sqlite, dir.path(), id).await;
        assert!(
            stored >= acknowledged[n],
            "product {id}: {} views acknowledged, {stored} stored\n{log}",
            acknowledged[n]
        );
    }
}

/// The stock level of the first variant of the product at `url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_through_one_server_shows_the_new_stock_on_another_within_the_bound() {
    let test = "a_checkout_through_one_server_shows_the_new_stock_on_another_within_the_bound";
    let Some(redis) = common::redis_or_skip(test) else {
        return;
    };
    let channel = common::unique("bazaar-test:invalidate");
    let prefix = common::unique("bazaar-test:cache");
    let env = [
        ("BAZAAR_CACHE__REDIS__URL", redis.as_str()),
        ("BAZAAR_CACHE__REDIS__CHANNEL", channel.as_str()),
        ("BAZAAR_CACHE__REDIS__PREFIX", prefix.as_str()),
        ("BAZAAR_RATE_LIMITS__ENABLED", "false"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(dir.path(), &env);
    let b = Server::start(dir.path(), &env);
    common::checkout_on_a_is_seen_fresh_on_b(&a.base, &b.base, Duration::from_secs(2)).await;
    a.stop();
    b.stop();
}

/// Every entity id of `kind` on `shard`.
async fn ids_on(shard: &dyn bazaar_store::Shard, kind: bazaar_store::moving::Entity) -> Vec<i64> {
    let (mut ids, mut after) = (Vec::new(), 0);
    loop {
        let page = shard.entity_ids(kind, after, 5_000).await.unwrap();
        let Some(&last) = page.last() else { break };
        after = last;
        ids.extend(page);
    }
    ids
}

/// Units put in of every variant of every product, by variant.
async fn stock_totals(store: &bazaar_store::Store) -> std::collections::HashMap<u64, i64> {
    use bazaar_store::moving::Entity;
    let mut totals = std::collections::HashMap::new();
    for shard in store.shards() {
        for id in ids_on(shard, Entity::Product).await {
            let product = bazaar_store::ProductId::new(u64::try_from(id).unwrap());
            let read = store.product_with_variants(product).await.unwrap().unwrap();
            for variant in read.variants {
                let account = store.stock_account(product, variant.id).await.unwrap();
                totals.insert(variant.id.get(), account.total());
            }
        }
    }
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_add_under_the_ordering_mix_moves_a_fifth_and_resumes_after_sigkill() {
    for backend in common::Backend::every_with("shards_add_under_load", 5).await {
        eprintln!("on {}:", backend.name());
        shards_add_under_load(&backend).await;
    }
}

/// 4 shards become 5 with `bazaar shards add` while `bazaar lab run --workload ordering`
/// shops against the server; the first mover is killed (SIGKILL) at a random point and the
/// second resumes. Afterwards: every product and user is on its ring owner and nowhere else,
/// the new shard owns a fifth of them (within 10%), every paid order is readable, every
/// acknowledged checkout has its paid order, no request failed, and stock balances.
async fn shards_add_under_load(backend: &common::Backend) {
    use bazaar_store::moving::Entity;
    let dir = tempfile::tempdir().unwrap();
    let mut env4 = backend.env_for(4);
    env4.push(("BAZAAR_RATE_LIMITS__ENABLED".into(), "false".into()));
    let env4: Vec<(&str, &str)> = env4.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let seeded = bazaar()
        .args(["seed", "--products", "1500", "--data-dir"])
        .arg(dir.path())
        .envs(env4.iter().copied())
        .output()
        .unwrap();
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let totals_before = {
        let store = backend.open_with(dir.path(), 4).await;
        let totals = stock_totals(&store).await;
        store.close().await;
        totals
    };

    let server = Server::start(dir.path(), &env4);
    let lab = bazaar()
        .args([
            "lab",
            "run",
            "--target",
            &server.base,
            "--json",
            "--workload",
            "ordering",
        ])
        .args(["--rate", "40", "--duration", "12s", "--warmup", "0s"])
        .args(["--connections", "4", "--shoppers", "12"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut add: Vec<String> = vec![
        "shards".into(),
        "add".into(),
        "--ranges".into(),
        "64".into(),
    ];
    match backend.url(4) {
        Some(url) => add.extend(["--url".into(), url]),
        None => add.extend(["--count".into(), "5".into()]),
    }
    add.extend(["--data-dir".into(), dir.path().display().to_string()]);
    let mut first = bazaar()
        .args(&add)
        .envs(env4.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A random point of the move: it takes seconds (64 ranges, two acknowledgement rounds
    // each); the kill lands up to 2 s after the move is recorded.
    let watcher = backend.open_with(dir.path(), 4).await;
    let started = Instant::now();
    while watcher.directory().meta("move").await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the move never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let kill_after = Duration::from_millis(u64::from(nanos % 2_000));
    tokio::time::sleep(kill_after).await;
    watcher.close().await;
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first move finished within {kill_after:?}: nothing to resume"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let resumed = bazaar()
        .args(&add)
        .envs(env4.iter().copied())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&resumed.stdout).into_owned();
    assert!(
        resumed.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(said.contains("(resumed)"), "{said}");
    assert!(
        said.contains("store.") && said.contains("5 shards"),
        "says what to configure: {said}"
    );
    eprintln!("killed the first mover after {kill_after:?}; the second: {said}");

    let output = lab.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let target = &json["target"];
    server.stop();
    let statuses = target["statuses"].as_object().unwrap();
    assert!(
        statuses.keys().all(|s| !s.starts_with('5')),
        "no request failed during the move: {statuses:?}"
    );
    assert_eq!(target["transport_errors"], 0, "{target:#}");
    let bought = target["kinds"]["buy"]["statuses"]["201"]
        .as_u64()
        .unwrap_or(0);
    assert!(bought > 0, "checkouts ran during the move: {target:#}");

    // The old count is refused; the new one opens, and everything is where the ring says.
    let refused = bazaar()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(env4.iter().copied())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("5 shards"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let store = backend.open_with(dir.path(), 5).await;
    let (mut entities, mut on_new) = (0usize, 0usize);
    let mut seen = std::collections::HashSet::new();
    for (index, shard) in store.shards().enumerate() {
        for kind in Entity::ALL {
            for id in ids_on(shard, kind).await {
                assert!(seen.insert((kind, id)), "{kind:?} {id} is on two shards");
                let raw = u64::try_from(id).unwrap();
                let owner = match kind {
                    Entity::Product => store.shard_of(bazaar_store::ProductId::new(raw)),
                    Entity::User => store.shard_of_user(bazaar_store::UserId::new(raw)),
                };
                assert_eq!(
                    owner, index,
                    "{kind:?} {id} is on shard {index}, owned by {owner}"
                );
                entities += 1;
                on_new += usize::from(index == 4);
            }
        }
    }
    let share = on_new as f64 / entities as f64;
    assert!(
        (share - 0.2).abs() <= 0.02,
        "the new shard owns {share} of {entities}"
    );

    let orders = every_order(&store).await;
    let paid: Vec<_> = orders
        .iter()
        .filter(|o| o.status == bazaar_store::OrderStatus::Paid)
        .collect();
    assert_eq!(
        paid.len() as u64,
        bought,
        "every acknowledged checkout has its paid order"
    );
    let mut sold: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
    for order in &paid {
        let read = store.order(order.id, Some(order.buyer_id)).await.unwrap();
        assert!(
            read.is_some(),
            "order {} is readable on its buyer's shard",
            order.id
        );
        for line in &order.lines {
            *sold.entry(line.variant_id.get()).or_default() += line.quantity;
        }
    }
    let totals_after = stock_totals(&store).await;
    assert_eq!(
        totals_after.len(),
        totals_before.len(),
        "no product lost or doubled"
    );
    for (variant, total) in &totals_before {
        assert_eq!(
            totals_after.get(variant),
            Some(total),
            "units of variant {variant}"
        );
    }
    for (variant, units) in &sold {
        let product = store
            .variant_product(bazaar_store::VariantId::new(*variant))
            .await
            .unwrap()
            .unwrap();
        let account = store
            .stock_account(product, bazaar_store::VariantId::new(*variant))
            .await
            .unwrap();
        assert_eq!(account.committed, *units, "variant {variant}: {account:?}");
    }
    eprintln!(
        "moved under load: {entities} entities, {share:.3} on the new shard, {bought} checkouts"
    );
    store.close().await;
}

async fn search_total(http: &reqwest::Client, base: &str, q: &str) -> u64 {
    let page: Value = http
        .get(format!("{base}/search?q={q}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["total"].as_u64().unwrap()
}

async fn until_found(http: &reqwest::Client, base: &str, q: &str, total: u64) -> Duration {
    let started = Instant::now();
    while search_total(http, base, q).await != total {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{base} did not find {total} `{q}` within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_each_keep_their_own_index_fresh_from_events_and_reindex_rebuilds_both() {
    let dir = tempfile::tempdir().unwrap();
    let servers = [
        Server::start(dir.path(), &[]),
        Server::start(dir.path(), &[]),
    ];
    let http = client();
    let token = seller_token(&http, &servers[0].base).await;
    let created = http
        .post(format!("{}/products", servers[0].base))
        .bearer_auth(&token)
        .json(&json!({
            "name": "Quillon Lantern", "description": "Brass.", "brand": "Lumière", "category": "home",
            "variants": [{ "sku": "QL-1", "color": "brass", "size": "one", "price": { "amount": 4500, "currency": "USD" }, "stock_level": 4 }]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // Each process's index, fed by its own consumer group, finds what the other wrote.
    for server in &servers {
        let took = until_found(&http, &server.base, "quillon", 1).await;
        println!("{} found it {took:?} after the 201", server.base);
    }
    let indexes: Vec<_> = std::fs::read_dir(dir.path().join("search"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(indexes.len(), 2, "one index per process: {indexes:?}");

    // Reindex: both servers rebuild beside their serving index, and say so.
    let output = bazaar()
        .args(["search", "reindex", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.matches("rebuilt and swapped in").count(),
        2,
        "{stdout}"
    );
    for server in &servers {
        assert_eq!(search_total(&http, &server.base, "quillon").await, 1);
    }
    // A server killed without warning comes back with an index that finds it (rebuilt, as
    // its last moments' changes may be missing).
    let [first, second] = servers;
    second.crash();
    let again = Server::start(dir.path(), &[]);
    until_found(&http, &again.base, "quillon", 1).await;
    for server in [first, again] {
        server.stop();
    }
}
