//! Black-box tests of the `bazaar` binary: configuration errors, `config print`, `seed`,
//! shutdown on SIGTERM, commands refusing a missing store, and the lab.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use common::bazaar;

mod common;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_invalid_environment_value_stops_with_status_2_naming_the_key() {
    let output = bazaar()
        .args(["config", "print"])
        .env("BAZAAR_HTTP__LISTEN", "localhost:port")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("http.listen"), "{message}");
    assert!(message.contains("BAZAAR_HTTP__LISTEN"), "{message}");
    assert!(
        message.contains("socket address"),
        "the expected form is named: {message}"
    );
}

#[test]
fn out_of_range_values_and_unknown_keys_are_rejected() {
    let output = bazaar()
        .args(["config", "print"])
        .env("BAZAAR_STORE__SHARDS", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("`store.shards` is 0; expected an integer from 1 to 256"),
        "{}",
        stderr(&output)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bazaar.toml");
    std::fs::write(
        &file,
        "[http]\nlisten = \"127.0.0.1:9000\"\nlisten_port = 9\n",
    )
    .unwrap();
    let output = bazaar()
        .args(["config", "print", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("listen_port"),
        "{}",
        stderr(&output)
    );

    let output = bazaar()
        .args(["serve", "--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/no/such/file.toml"),
        "{}",
        stderr(&output)
    );

    let output = bazaar()
        .args(["config", "print"])
        .env("BAZAAR_HTTP__REQUEST_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("http.request_timeout"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_cache_strategy_its_cache_does_not_offer_is_rejected_naming_the_key() {
    let cases = [
        (
            "BAZAAR_CACHE__PRODUCTS__STRATEGY",
            "write-back",
            "`cache.products.strategy` is `write-back`, which this cache does not offer; expected `cache-aside` or `read-through` or `write-through`",
        ),
        (
            "BAZAAR_CACHE__VIEWS__STRATEGY",
            "read-through",
            "`cache.views.strategy` is `read-through`, which this cache does not offer; expected `write-back` or `write-through`",
        ),
        (
            "BAZAAR_CACHE__USERS__STRATEGY",
            "write-around",
            "`cache.users.strategy` (from environment variable BAZAAR_CACHE__USERS__STRATEGY)",
        ),
        (
            "BAZAAR_CACHE__PRODUCTS__L2",
            "true",
            "`cache.products.l2` is on but `cache.redis.url` is empty",
        ),
    ];
    for (variable, value, message) in cases {
        let output = bazaar()
            .args(["config", "print"])
            .env(variable, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        assert!(
            stderr(&output).contains(message),
            "{variable}={value}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn config_print_layers_file_environment_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bazaar.toml");
    std::fs::write(
        &file,
        "[store]\nshards = 8\n[http]\nlisten = \"127.0.0.1:9000\"\n",
    )
    .unwrap();
    let output = bazaar()
        .args(["config", "print", "--config"])
        .arg(&file)
        .env("BAZAAR_HTTP__LISTEN", "127.0.0.1:9001")
        .env(
            "BAZAAR_TEST_POSTGRES_URL",
            "postgres://user:pw@127.0.0.1/test",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed.contains("shards = 8"),
        "the file applies: {printed}"
    );
    assert!(
        printed.contains("listen = \"127.0.0.1:9001\""),
        "the environment wins over the file: {printed}"
    );
    assert!(
        printed.contains("demo_products = 1000"),
        "defaults fill the rest: {printed}"
    );
    assert!(printed.contains("request_timeout = \"30s\""), "{printed}");
}

fn seed(dir: &Path, products: u64) -> Output {
    bazaar()
        .args(["seed", "--products", &products.to_string(), "--data-dir"])
        .arg(dir)
        .env("BAZAAR_STORE__DURABILITY", "normal")
        .output()
        .unwrap()
}

#[test]
fn shards_add_refuses_bad_flags_naming_them_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(seed(dir.path(), 20).status.success());
    let listing = || {
        let mut files = files_in(dir.path()).unwrap();
        files.sort();
        files
    };
    let before = listing();
    for (args, named) in [
        (&["--count", "6"][..], "--count 5"),
        (&["--count", "4"][..], "--count 5"),
        (&[][..], "--count 5"),
        (&["--url", "postgres://u:hunter2@db/x"][..], "--url"),
        (&["--count", "5", "--ranges", "0"][..], "--ranges"),
        (&["--count", "5", "--ranges", "many"][..], "--ranges"),
    ] {
        let output = bazaar()
            .args(["shards", "add"])
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(message.contains(named), "{args:?} names {named}: {message}");
        assert!(
            !message.contains("hunter2"),
            "a password in a URL is never echoed: {message}"
        );
    }
    assert_eq!(listing(), before, "a refused move touches nothing");
}

/// `(id, name, price)` of every product in a seeded data directory, read through the store
/// crate after the binary has exited.
async fn listing(dir: &Path) -> Vec<(u64, String, i64)> {
    let store = common::open_data_dir(dir).await;
    let query = bazaar_store::ProductQuery {
        filter: bazaar_store::ProductFilter::default(),
        sort: bazaar_store::ProductSort::Newest,
        after: None,
        limit: 10_000,
    };
    let page = store.list_products(&query).await.unwrap();
    store.close().await;
    page.items
        .into_iter()
        .map(|p| (p.id.get(), p.name, p.price.amount))
        .collect()
}

#[tokio::test]
async fn seed_is_deterministic_and_refuses_a_non_empty_store() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&a, &b] {
        let output = seed(dir.path(), 2_500);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("seeded 2500 products"));
    }
    let (first, second) = (listing(a.path()).await, listing(b.path()).await);
    assert_eq!(first.len(), 2_500);
    assert_eq!(first, second, "the same seed must give the same catalog");

    let again = seed(a.path(), 10);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds 2500 products"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        listing(a.path()).await.len(),
        2_500,
        "a refused seed writes nothing"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bazaar()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--demo-products",
            "50",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first
        .strip_prefix("Bazaar is serving on ")
        .unwrap_or_else(|| panic!("unexpected banner: {first}"));
    let rest: Vec<String> = lines
        .by_ref()
        .map(Result::unwrap)
        .take_while(|l| l != "Press Ctrl-C to stop.")
        .collect();
    // A fresh data directory: the demo sellers' sign-in and how to make an admin.
    let notes = rest.join("\n");
    assert!(
        notes.contains("demo-seller-1@bazaar.example") && notes.contains("demo-only password"),
        "{notes}"
    );
    assert!(
        notes.contains(&format!(
            "bazaar admin create --data-dir {} --email",
            dir.path().display()
        )),
        "{notes}"
    );
    for what in ["REST API", "GraphQL IDE", "API docs", "Metrics", "Health"] {
        assert!(
            rest.iter().any(|l| l.contains(what) && l.contains(base)),
            "{what} URL missing: {rest:?}"
        );
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        stderr(&output)
    );
    let log = stderr(&output);
    assert!(log.contains("store closed"), "{log}");
    // Closing the last connection checkpoints the write-ahead log into the shard files.
    for shard in 0..4 {
        let wal = dir.path().join(format!("shard-{shard}.sqlite-wal"));
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size, 0, "{} still holds {size} bytes", wal.display());
    }
}

#[test]
fn lab_refuses_bad_input_before_any_load_naming_what_is_wrong() {
    let nothing_listens = "http://127.0.0.1:1";
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--target",
                nothing_listens,
                "--workload",
                "product",
                "--rate",
                "0",
            ],
            "invalid `rate`",
        ),
        (
            &[
                "--target",
                nothing_listens,
                "--workload",
                "list",
                "--rate",
                "9",
                "--duration",
                "soon",
            ],
            "--duration",
        ),
        (
            &[
                "--target",
                "https://example.com",
                "--workload",
                "list",
                "--rate",
                "9",
            ],
            "https is not supported",
        ),
        (
            &[
                "--target",
                nothing_listens,
                "--workload",
                "list",
                "--rate",
                "9",
            ],
            "cannot connect to 127.0.0.1:1",
        ),
        (
            &[
                "--target",
                nothing_listens,
                "--http-path",
                "healthz",
                "--rate",
                "9",
            ],
            "cannot connect",
        ),
    ];
    for (args, message) in cases {
        let output = bazaar().args(["lab", "run"]).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

/// A `bazaar lab baseline` process on a free port, and its URL.
fn lab_baseline() -> (std::process::Child, String) {
    let mut baseline = bazaar()
        .args([
            "lab",
            "baseline",
            "--listen",
            "127.0.0.1:0",
            "--body-size",
            "64",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(baseline.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let url = banner
        .split_whitespace()
        .find(|word| word.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in the banner: {banner}"))
        .to_owned();
    (baseline, url)
}

#[test]
fn lab_measures_any_http_server_against_its_own_baseline() {
    let (mut baseline, url) = lab_baseline();
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("RESULTS.md");
    let chart = dir.path().join("latency.svg");
    let output = bazaar()
        .args([
            "lab",
            "run",
            "--target",
            &url,
            "--http-path",
            "/anything",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--baseline",
        ])
        .arg("--results")
        .arg(&results)
        .arg("--plot")
        .arg(&chart)
        .output()
        .unwrap();
    baseline.kill().unwrap();
    baseline.wait().unwrap();
    let recorded = std::fs::read_to_string(&results).unwrap();
    assert!(
        recorded.contains("- **Command:** `") && recorded.contains("| GET /anything | 200 |"),
        "{recorded}"
    );
    assert!(recorded.contains("- **Machine:** "), "{recorded}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(table.contains("| baseline | 200 |"), "{table}");
    assert!(table.contains("| GET /anything | 200 |"), "{table}");
    assert!(
        table.contains("200: 400"),
        "every request answered: {table}"
    );
    // Progress went to standard error once a second; the chart has the run's percentiles.
    let progress = stderr(&output);
    assert!(
        progress.contains("GET /anything [  1/2 s] 200/s  p99 ")
            && progress.contains(" ms  errors 0  backlog "),
        "{progress}"
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("GET /anything at 200 req/s"));
    assert!(svg.contains("p99.9"), "{svg}");
}

#[test]
fn lab_saturate_finds_both_rates_and_reports_the_target_beside_the_baseline() {
    let (mut baseline, url) = lab_baseline();
    let output = bazaar()
        .args([
            "lab",
            "saturate",
            "--target",
            &url,
            "--http-path",
            "/",
            "--p99",
            "100ms",
            "--start-rate",
            "100",
            "--max-rate",
            "150",
            "--step",
            "1s",
            "--warmup",
            "0s",
            "--baseline",
        ])
        .output()
        .unwrap();
    baseline.kill().unwrap();
    baseline.wait().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    // Both searches pass 100 and stop at --max-rate, then run at half of it; the target (a
    // baseline process) keeps up with the in-process baseline at either rate.
    for row in [
        "| baseline (pass) | 100 |",
        "| baseline (pass) | 150 |",
        "| baseline at half | 75 |",
        "| GET / (pass) | 150 |",
        "| GET / at half | 75 |",
        "| baseline (512 bytes) | ≥ 150 (--max-rate) | 75 |",
        "| GET / | ≥ 150 (--max-rate) | 75 |",
        "| GET / ÷ baseline | 1.00 | 1.00 |",
    ] {
        assert!(table.contains(row), "{row} missing:\n{table}");
    }
    assert!(
        stderr(&output).contains("GET /: 150 req/s -> achieved 150"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn lab_stops_cleanly_on_ctrl_c_and_prints_what_it_measured() {
    let (mut baseline, url) = lab_baseline();
    let started = std::time::Instant::now();
    let run = bazaar()
        .args([
            "lab",
            "run",
            "--target",
            &url,
            "--http-path",
            "/",
            "--rate",
            "100",
            "--duration",
            "60s",
            "--warmup",
            "0s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first progress line shows, the load is running.
    let pid = run.id().to_string();
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let output = run.wait_with_output().unwrap();
    baseline.kill().unwrap();
    baseline.wait().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "stopped long before its 60 s"
    );
    assert!(table.contains("| GET / | 100 | "), "{table}");
    assert!(
        table.contains("stopped early (Ctrl-C): measured 2."),
        "{table}"
    );
    assert!(stderr(&output).contains("stopping:"), "{}", stderr(&output));
}

#[test]
fn lab_refuses_a_workload_the_target_cannot_serve_and_a_chart_it_cannot_draw() {
    let (mut baseline, url) = lab_baseline();
    let lab = |args: &[&str]| {
        bazaar()
            .args(["lab", "run", "--target", &url, "--rate", "10"])
            .args(args)
            .output()
            .unwrap()
    };
    let cases: [(&[&str], &str); 3] = [
        (
            &["--workload", "browsing"],
            "cannot serve the `browsing` workload: GET /products has no `items`",
        ),
        (
            &[
                "--workload",
                "ordering",
                "--connections",
                "8",
                "--shoppers",
                "4",
            ],
            "invalid `shoppers`: a mix needs at least as many shoppers as connections (8), found 4",
        ),
        (
            &["--http-path", "/", "--plot", "chart.png"],
            "invalid `plot`: expected a file ending in .svg",
        ),
    ];
    let outputs: Vec<_> = cases.iter().map(|(args, _)| lab(args)).collect();
    // A run that fails after its flags were checked leaves no empty chart behind.
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("new.svg");
    let failed = lab(&["--workload", "product", "--plot", chart.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(2), "{}", stderr(&failed));
    assert!(!chart.exists(), "no chart was drawn, so none is left");
    baseline.kill().unwrap();
    baseline.wait().unwrap();
    for ((args, message), output) in cases.iter().zip(outputs) {
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{args:?}: nothing measured");
    }
}

/// The files in `dir`, or `None` if it does not exist.
fn files_in(dir: &Path) -> Option<Vec<String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
    )
}

#[test]
fn commands_that_change_a_store_refuse_a_directory_without_one_and_write_nothing() {
    let commands: [&[&str]; 8] = [
        &["worker"],
        &["shards", "add", "--count", "5"],
        &["dlq", "list"],
        &["dlq", "purge"],
        &["keys", "rotate-jwt"],
        &["privacy", "rotate-key"],
        &["privacy", "reencrypt"],
        &[
            "admin",
            "create",
            "--email",
            "root@example.com",
            "--name",
            "Root",
        ],
    ];
    for command in commands {
        let empty = tempfile::tempdir().unwrap();
        let absent = empty.path().join("no-such-store");
        for dir in [empty.path(), absent.as_path()] {
            let mut child = bazaar()
                .args(command)
                .arg("--data-dir")
                .arg(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // The admin's password, so that only the missing store can stop it.
            use std::io::Write;
            let _ = child
                .stdin
                .take()
                .unwrap()
                .write_all(b"a-long-admin-passphrase\n");
            let output = child.wait_with_output().unwrap();
            let message = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{command:?}: {message}");
            assert!(
                message.contains(&format!("no Bazaar store in {}", dir.display())),
                "{command:?}: {message}"
            );
            assert!(output.stdout.is_empty(), "{command:?} reported success");
        }
        assert_eq!(
            files_in(empty.path()),
            Some(Vec::new()),
            "{command:?} wrote into the directory (or created the absent one)"
        );
    }
}

#[test]
fn serve_on_a_port_in_use_fails_before_writing_anything() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = bazaar()
        .args([
            "serve",
            "--listen",
            &address,
            "--demo-products",
            "10",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("cannot listen on {address}")),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        files_in(&data),
        None,
        "no data directory, key file or catalog is left behind"
    );
    drop(held);
}

/// A server answering `POST` to any path with 200, except that it answers 429 to all but
/// every `ok_every`-th request; it records each request's body and `x-channel` header.
async fn recording_server(ok_every: usize) -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let channel = headers
                    .get("x-channel")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let mut log = log.lock().unwrap();
                log.push((uri.path().to_owned(), channel, body));
                if log.len().is_multiple_of(ok_every) {
                    (axum::http::StatusCode::OK, "{\"data\":{}}")
                } else {
                    (axum::http::StatusCode::TOO_MANY_REQUESTS, "slow down")
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Runs the binary off the async threads, so the test's own server keeps answering.
async fn lab_output(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || bazaar().args(args).output().unwrap())
        .await
        .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_sends_each_line_of_variables_to_the_graphql_path_with_the_headers() {
    let (url, seen) = recording_server(1).await;
    let dir = tempfile::tempdir().unwrap();
    let query = dir.path().join("product.graphql");
    std::fs::write(
        &query,
        "query ($slug: String!) { product(slug: $slug) { id } }",
    )
    .unwrap();
    let variables = dir.path().join("slugs.jsonl");
    std::fs::write(
        &variables,
        "{\"slug\": \"mug\"}\n\n{\"slug\": \"lamp\"}\n{\"slug\": \"kite\"}\n",
    )
    .unwrap();
    let mut args = strings(&[
        "lab",
        "run",
        "--target",
        &url,
        "--graphql-path",
        "/shop-api",
        "--variables-order",
        "round-robin",
        "--header",
        "X-Channel: eu-shop",
        "--rate",
        "30",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "1",
    ]);
    args.extend(["--graphql-query".into(), query.display().to_string()]);
    args.extend([
        "--graphql-variables".into(),
        variables.display().to_string(),
    ]);
    let output = lab_output(args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 30, "every arrival sent once");
    let slugs: Vec<String> = seen
        .iter()
        .map(|(path, channel, body)| {
            assert_eq!((path.as_str(), channel.as_str()), ("/shop-api", "eu-shop"));
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                body["query"],
                "query ($slug: String!) { product(slug: $slug) { id } }"
            );
            body["variables"]["slug"].as_str().unwrap().to_owned()
        })
        .collect();
    // One connection, in turn: mug, lamp, kite, mug, …
    for (i, slug) in slugs.iter().enumerate() {
        assert_eq!(slug, ["mug", "lamp", "kite"][i % 3], "{slugs:?}");
    }
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("× 3 variables (round robin)"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_refuses_a_malformed_header_and_a_bad_variables_line_naming_them() {
    let (url, seen) = recording_server(1).await;
    let dir = tempfile::tempdir().unwrap();
    let query = dir.path().join("q.graphql");
    std::fs::write(&query, "{ __typename }").unwrap();
    let variables = dir.path().join("v.jsonl");
    std::fs::write(&variables, "{\"slug\": \"mug\"}\n{\"slug\": mug}\n").unwrap();
    let base = |extra: &[&str]| {
        let mut args = strings(&["lab", "run", "--target", &url, "--rate", "10"]);
        args.extend(["--graphql-query".into(), query.display().to_string()]);
        args.extend(strings(extra));
        args
    };
    let cases: [(Vec<String>, String); 4] = [
        (
            base(&["--header", "X-Channel eu-shop"]),
            "invalid `header`: expected `Name: value`, found `X-Channel eu-shop`".into(),
        ),
        (
            base(&["--header", "Bad Name: x"]),
            "invalid `header`: `Bad Name` is not a valid header name".into(),
        ),
        (
            base(&["--graphql-variables", variables.to_str().unwrap()]),
            format!(
                "invalid `graphql-variables`: {}: line 2: not JSON",
                variables.display()
            ),
        ),
        (
            base(&["--graphql-path", "shop-api"]),
            "invalid `graphql-path`: expected a path starting with `/`".into(),
        ),
    ];
    for (args, message) in cases {
        let output = lab_output(args.clone()).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(&message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{args:?}: nothing measured");
    }
    assert!(seen.lock().unwrap().is_empty(), "no load was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_more_than_one_percent_of_errors_fails_and_shows_no_ratio() {
    // Half the requests are refused with 429, as a rate-limited target does.
    let (url, _) = recording_server(2).await;
    let output = lab_output(strings(&[
        "lab",
        "run",
        "--target",
        &url,
        "--http-path",
        "/",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--baseline",
    ]))
    .await;
    let table = String::from_utf8_lossy(&output.stdout);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}\n{table}");
    assert!(
        message.contains(
            "error: not a valid measurement: GET /: 50.0% of 100 interactions failed (429: 50)"
        ),
        "{message}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("| GET / |"))
        .unwrap_or_else(|| panic!("no target row: {table}"));
    assert!(
        row.ends_with("| 50 | – |"),
        "no ratio for an invalid run: {row}"
    );
    assert!(table.contains("NOT A VALID MEASUREMENT"), "{table}");
    assert!(table.contains("first 429: slow down"), "{table}");

    // The same for a saturation search: each step keeps up but fails on errors alone.
    let output = lab_output(strings(&[
        "lab",
        "saturate",
        "--target",
        &url,
        "--http-path",
        "/",
        "--p99",
        "100ms",
        "--start-rate",
        "100",
        "--max-rate",
        "150",
        "--step",
        "1s",
        "--warmup",
        "0s",
        "--baseline",
    ]))
    .await;
    let table = String::from_utf8_lossy(&output.stdout);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}\n{table}");
    assert!(message.contains("failed on errors alone"), "{message}");
    assert!(message.contains("(429: 50)"), "{message}");
    assert!(
        !table.contains("| GET / ÷ baseline"),
        "no ratio row: {table}"
    );
}

#[test]
fn lab_tradeoff_refuses_bad_flags_before_any_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart.png");
    let cases: [(&[&str], &str); 6] = [
        (&["--rate", "0"], "invalid `rate`"),
        (&["--duration", "soon"], "--duration"),
        (&["--flaky-rate", "1.5"], "invalid `flaky-rate`"),
        (&["--durability", "sometimes"], "--durability"),
        (
            &["--connections", "8", "--shoppers", "4"],
            "invalid `shoppers`",
        ),
        (&["--plot", chart.to_str().unwrap()], "invalid `plot`"),
    ];
    for (args, message) in cases {
        let output = bazaar()
            .args(["lab", "tradeoff", "sync-async"])
            .args(args)
            .output()
            .unwrap();
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains(message), "{args:?}: {said}");
        assert!(!said.contains("starting a server"), "{args:?}: {said}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// The six scenarios of `bazaar lab tradeoff sync-async`, small: each server fresh, the tally
/// consumer healthy, flaky and down under sync and async side effects.
#[test]
fn lab_tradeoff_sync_async_shows_sync_failing_and_async_queueing_then_catching_up() {
    let output = bazaar()
        .args(["lab", "tradeoff", "sync-async", "--json"])
        .args(["--rate", "20", "--duration", "2s"])
        .args(["--connections", "8", "--shoppers", "8", "--products", "100"])
        // Durability is not what this test is about; NORMAL keeps it quick.
        .args(["--durability", "normal"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let scenarios = json["scenarios"].as_array().unwrap();
    let found: Vec<(&str, &str)> = scenarios
        .iter()
        .map(|s| (s["mode"].as_str().unwrap(), s["consumer"].as_str().unwrap()))
        .collect();
    assert_eq!(
        found,
        [
            ("async", "healthy"),
            ("async", "flaky"),
            ("async", "down"),
            ("sync", "healthy"),
            ("sync", "flaky"),
            ("sync", "down"),
        ]
    );
    let scenario = |mode: &str, consumer: &str| {
        scenarios
            .iter()
            .find(|s| s["mode"] == mode && s["consumer"] == consumer)
            .unwrap()
    };
    for s in scenarios {
        let label = format!("{} {}", s["mode"], s["consumer"]);
        // 40 arrivals of the ordering mix, a quarter of them buys: some in every scenario.
        let buys = s["buys"]["ok"].as_u64().unwrap() + s["buys"]["failed"].as_u64().unwrap();
        assert!(buys > 0, "{label}: {s:#}");
        // Every scenario catches up once the consumer is healthy, and dead-letters nothing.
        assert!(s["caught_up_after_ms"].is_number(), "{label}: {s:#}");
        assert_eq!(s["staleness_ms"]["unapplied"], 0, "{label}");
        assert!(s["staleness_ms"]["events"].as_u64().unwrap() > 0, "{label}");
        assert_eq!(s["dead_letters"], 0, "{label}");
    }
    // Async: no checkout fails, whatever the consumer does; a down consumer leaves events
    // pending at the end of the load, and they are all tallied after.
    for consumer in ["healthy", "flaky", "down"] {
        let s = scenario("async", consumer);
        assert_eq!(s["buys"]["failed"], 0, "async {consumer}: {s:#}");
    }
    let async_down = scenario("async", "down");
    assert!(
        async_down["pending_at_end"].as_u64().unwrap() > 0,
        "{async_down:#}"
    );
    assert!(
        async_down["staleness_ms"]["p50"].as_i64().unwrap() > 0,
        "{async_down:#}"
    );
    // Sync: a down consumer fails checkouts, with 503 side-effect-failed.
    let sync_down = scenario("sync", "down");
    let failed = sync_down["buys"]["failed_by_status"]["503"]
        .as_u64()
        .unwrap_or(0);
    assert!(failed > 0, "{sync_down:#}");
    assert!(
        sync_down["load"]["first_errors"]["503"]
            .as_str()
            .unwrap()
            .contains("side-effect-failed"),
        "{sync_down:#}"
    );
    assert_eq!(scenario("sync", "healthy")["buys"]["failed"], 0);
}
