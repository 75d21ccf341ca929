//! The events backbone under faults, with the real binary: `bazaar worker` killed with
//! SIGKILL again and again while 100,000 events flow (every event applied exactly once by
//! effect, none lost), a poison message that ends in the dead-letter queue without holding up
//! other keys and is delivered again by `bazaar dlq replay`, and a second server's cache kept
//! fresh by events alone — each against the embedded queue and, when `BAZAAR_TEST_NATS_URL`
//! is set, NATS JetStream.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bazaar_queue::run::{Handler, HandlerError, RetryPolicy, process};
use bazaar_queue::{Delivery, GroupSpec, Message, Subscription};
use bytes::Bytes;

mod common;

/// The backends to run against: the embedded queue always, NATS when it is reachable.
fn backends(test: &str) -> Vec<Vec<(String, String)>> {
    let mut backends = vec![vec![("BAZAAR_QUEUE__BACKEND".into(), "embedded".into())]];
    match std::env::var("BAZAAR_TEST_NATS_URL") {
        Ok(url) => backends.push(vec![
            ("BAZAAR_QUEUE__BACKEND".into(), "nats".into()),
            ("BAZAAR_QUEUE__NATS__URL".into(), url),
            (
                "BAZAAR_QUEUE__NATS__STREAM".into(),
                format!("BAZAAR_TEST_{}", uuid::Uuid::now_v7().simple()),
            ),
        ]),
        Err(_) => eprintln!("SKIPPED {test} against NATS: BAZAAR_TEST_NATS_URL is not set"),
    }
    backends
}

/// The binary with fast, non-fsyncing commits (durability is not under test here) and
/// `env`'s queue.
fn bazaar(env: &[(String, String)]) -> Command {
    let mut command = common::bazaar();
    command
        .env("BAZAAR_STORE__DURABILITY", "normal")
        .env("BAZAAR_QUEUE__DURABILITY", "normal")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// The configuration the binary reads from `env`, for the test's own view of the queue.
fn config_of(dir: &Path, env: &[(String, String)]) -> bazaar::Config {
    let mut config = bazaar::Config::default();
    config.store.data_dir = dir.to_owned();
    config.queue.durability = bazaar::config::Durability::Normal;
    for (key, value) in env {
        match key.as_str() {
            "BAZAAR_QUEUE__BACKEND" if value == "nats" => {
                config.queue.backend = bazaar::config::QueueBackend::Nats;
            }
            "BAZAAR_QUEUE__NATS__URL" => config.queue.nats.url = value.clone(),
            "BAZAAR_QUEUE__NATS__STREAM" => config.queue.nats.stream = value.clone(),
            _ => {}
        }
    }
    config
}

/// A running `bazaar worker` and the metrics address it printed.
struct WorkerProcess {
    child: Child,
    metrics: String,
}

impl WorkerProcess {
    fn start(dir: &Path, env: &[(String, String)]) -> Self {
        let mut child = bazaar(env)
            .args(["worker", "--metrics-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            // A dead worker's lease must not hold the next one up for long.
            .env("BAZAAR_EVENTS__CONSUMERS__TALLY__LEASE", "2s")
            .env("BAZAAR_EVENTS__CONSUMERS__TALLY__BATCH", "500")
            .env("BAZAAR_EVENTS__RELAY_INTERVAL", "20ms")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut metrics = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(url) = line.trim().strip_prefix("Metrics") {
                metrics = Some(url.trim().to_owned());
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            metrics: metrics.expect("the worker prints its metrics address"),
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

/// Every outbox row by type, and how many are unpublished.
async fn outbox(store: &bazaar_store::Store) -> (BTreeMap<String, i64>, u64) {
    let mut counts = BTreeMap::new();
    let mut unpublished = 0;
    for shard in store.shards() {
        for row in shard.outbox(0, 10_000_000).await.unwrap() {
            *counts.entry(row.topic).or_insert(0) += 1;
        }
        unpublished += shard.outbox_backlog().await.unwrap().unpublished;
    }
    (counts, unpublished)
}

async fn tally(store: &bazaar_store::Store) -> BTreeMap<String, i64> {
    store
        .directory()
        .tally()
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// A metric's value summed over its series, from a Prometheus text page.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A number from the clock's low bits: enough to vary where each kill lands.
fn jitter(limit_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_millis(u64::from(nanos) % limit_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_again_and_again_loses_and_doubles_no_event() {
    let test = "killing_the_worker_again_and_again_loses_and_doubles_no_event";
    // 100,000 events: one `product.created` per seeded product, plus the demo sellers'
    // `user.created`. BAZAAR_CRASH_EVENTS makes a quicker local run.
    let products: u64 = std::env::var("BAZAAR_CRASH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    for env in backends(test) {
        let dir = tempfile::tempdir().unwrap();
        let seeded = bazaar(&env)
            .args(["seed", "--products", &products.to_string(), "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            seeded.status.success(),
            "{}",
            String::from_utf8_lossy(&seeded.stderr)
        );
        let store = common::open_data_dir(dir.path()).await;
        let (written, _) = outbox(&store).await;
        let events: i64 = written.values().sum();
        assert!(events >= products as i64, "{written:?}");

        // Kill the worker KILLS times at random points while events flow, then let one run
        // to the end and stop it gracefully.
        const KILLS: u32 = 4;
        let started = Instant::now();
        let progress = || async {
            let (_, unpublished) = outbox(&store).await;
            let applied: i64 = tally(&store).await.values().sum();
            (unpublished, applied)
        };
        // Each worker lives long enough (3–5 s) for the leases its predecessor died holding
        // (2 s) to run out and come back to it; its metrics are read just before it dies.
        let scrape = |url: String| async move {
            let page = reqwest::get(url).await.unwrap().text().await.unwrap();
            (
                metric_sum(&page, "bazaar_queue_redeliveries_total"),
                metric_sum(&page, "bazaar_consumer_duplicates_skipped_total"),
            )
        };
        let (mut redeliveries, mut duplicates) = (0.0, 0.0);
        let mut kills = 0;
        while kills < KILLS {
            let worker = WorkerProcess::start(dir.path(), &env);
            tokio::time::sleep(Duration::from_millis(3_000) + jitter(2_000)).await;
            let (seen, skipped) = scrape(worker.metrics.clone()).await;
            let (unpublished, applied) = progress().await;
            assert!(
                unpublished > 0 || applied < events,
                "everything was through before kill {}: make the run longer",
                kills + 1
            );
            worker.kill();
            kills += 1;
            redeliveries += seen;
            duplicates += skipped;
        }
        let worker = WorkerProcess::start(dir.path(), &env);
        loop {
            let (unpublished, applied) = progress().await;
            if unpublished == 0 && applied == events {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "after 10 minutes: {unpublished} unpublished, {applied} of {events} applied"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (seen, skipped) = scrape(worker.metrics.clone()).await;
        redeliveries += seen;
        duplicates += skipped;
        eprintln!(
            "{test} ({}): {events} events, {kills} kills, {:.1} s; the workers saw \
             {redeliveries} redeliveries and skipped {duplicates} duplicates",
            env[0].1,
            started.elapsed().as_secs_f64()
        );
        // The killed workers' leases ran out and their events came again to the next one,
        // which recognised every one it had applied: duplicates only ever as skipped
        // redeliveries (the tally below is exact).
        assert!(redeliveries > 0.0, "no worker saw a redelivery");
        assert!(duplicates <= redeliveries);
        worker.stop();
        assert!(kills >= 3);
        let counted = tally(&store).await;
        assert_eq!(
            counted, written,
            "every event applied exactly once, by type"
        );
        let (_, unpublished) = outbox(&store).await;
        assert_eq!(unpublished, 0);
        store.close().await;
    }
}

/// A consumer that fails on one message until it is fixed, and records what it applied.
#[derive(Debug, Default)]
struct Picky {
    fixed: std::sync::atomic::AtomicBool,
    applied: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for Picky {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let id = &delivery.message.id;
        if id == "poison" && !self.fixed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HandlerError::Retry("cannot digest the poison".into()));
        }
        self.applied.lock().unwrap().push(id.clone());
        Ok(())
    }
}

impl Picky {
    fn has_applied(&self, id: &str) -> bool {
        self.applied
            .lock()
            .unwrap()
            .iter()
            .any(|applied| applied == id)
    }

    /// Runs the retry runner over `group` until `done`, failing with `stuck` after `bound`
    /// from `started`.
    async fn run_until(
        &self,
        group: &dyn Subscription,
        policy: &RetryPolicy,
        (started, bound): (Instant, Duration),
        stuck: &str,
        done: impl Fn(&Self) -> bool,
    ) {
        while !done(self) {
            process(group, self, policy, 10, Duration::from_millis(200))
                .await
                .unwrap();
            assert!(started.elapsed() < bound, "{stuck}");
        }
    }
}

fn message(id: &str, key: &str) -> Message {
    Message {
        id: id.into(),
        key: key.into(),
        topic: "test.poison".into(),
        payload: Bytes::from_static(b"{}"),
        delay: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_without_blocking_other_keys_and_replayed_once_fixed() {
    let test =
        "a_poison_message_is_dead_lettered_without_blocking_other_keys_and_replayed_once_fixed";
    for env in backends(test) {
        let dir = tempfile::tempdir().unwrap();
        // A data directory with a store, as `bazaar dlq` expects.
        common::open_data_dir(dir.path()).await.close().await;
        let config = config_of(dir.path(), &env);
        let queue = bazaar::events::open_queue(&config).await.unwrap();
        let spec = GroupSpec {
            name: "picky".into(),
            lease: Duration::from_secs(5),
            max_attempts: 3,
        };
        let group = queue.declare(&spec).await.unwrap();
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        };
        // The poison heads key `a`; other keys flow past it.
        let other_keys = poison_free_keys(&config, 3);
        queue.publish(&message("poison", "a")).await.unwrap();
        queue.publish(&message("after-poison", "a")).await.unwrap();
        for (i, key) in other_keys.iter().enumerate() {
            queue
                .publish(&message(&format!("other-{i}"), key))
                .await
                .unwrap();
        }
        let picky = Arc::new(Picky::default());
        let started = Instant::now();
        // The other keys are applied while the poison is still being retried.
        picky
            .run_until(
                group.as_ref(),
                &policy,
                (started, Duration::from_secs(30)),
                "other keys stuck",
                |p| (0..other_keys.len()).all(|i| p.has_applied(&format!("other-{i}"))),
            )
            .await;
        assert!(
            queue.dead_letters().len().await.unwrap() == 0 || !picky.has_applied("after-poison"),
            "the poison's own key waits behind it"
        );
        // After its last attempt the poison is dead-lettered, and its key flows again.
        picky
            .run_until(
                group.as_ref(),
                &policy,
                (started, Duration::from_secs(30)),
                "key `a` stuck",
                |p| p.has_applied("after-poison"),
            )
            .await;
        let dead = queue.dead_letters().list(None, 10).await.unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].message.id, "poison");
        assert_eq!(dead[0].group, "picky");
        assert_eq!(dead[0].attempts, 3);
        assert!(dead[0].last_error.contains("cannot digest"), "{dead:?}");
        assert!(!picky.has_applied("poison"));

        // An operator sees it and replays it once the consumer is fixed.
        let listed = bazaar(&env)
            .args(["dlq", "list", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.status.success() && listing.contains(&dead[0].id),
            "{listing}"
        );
        assert!(listing.contains("cannot digest"), "{listing}");
        picky.fixed.store(true, std::sync::atomic::Ordering::SeqCst);
        let replayed = bazaar(&env)
            .args(["dlq", "replay", &dead[0].id, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            replayed.status.success(),
            "{}",
            String::from_utf8_lossy(&replayed.stderr)
        );
        let unknown = bazaar(&env)
            .args(["dlq", "replay", "no-such-letter", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!unknown.status.success());
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-letter"));
        picky
            .run_until(
                group.as_ref(),
                &policy,
                (started, Duration::from_secs(60)),
                "the replay never came",
                |p| p.has_applied("poison"),
            )
            .await;
        // Once more: nothing else arrives, and the dead-letter queue is empty.
        process(
            group.as_ref(),
            picky.as_ref(),
            &policy,
            10,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let applied = picky.applied.lock().unwrap().clone();
        assert_eq!(
            applied.iter().filter(|id| *id == "poison").count(),
            1,
            "{applied:?}"
        );
        assert_eq!(applied.len(), 2 + other_keys.len(), "{applied:?}");
        assert_eq!(queue.dead_letters().len().await.unwrap(), 0);
    }
}

/// `n` ordering keys the queue does not order with key `a` (on NATS: keys of other
/// partitions; the embedded queue orders per key, so any other key).
fn poison_free_keys(config: &bazaar::Config, n: usize) -> Vec<String> {
    let partitions = config.queue.nats.partitions;
    let nats = config.queue.backend == bazaar::config::QueueBackend::Nats;
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|key| {
            !nats
                || bazaar_queue::nats::partition_of(key, partitions)
                    != bazaar_queue::nats::partition_of("a", partitions)
        })
        .take(n)
        .collect()
}

/// A running `bazaar serve` and its base URL.
struct Serving {
    child: Child,
    base: String,
}

impl Serving {
    fn start(dir: &Path, env: &[(String, String)]) -> Self {
        let mut child = bazaar(env)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--demo-products",
                "5",
                "--data-dir",
            ])
            .arg(dir)
            .env("BAZAAR_RATE_LIMITS__ENABLED", "false")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().unwrap().unwrap();
        let base = banner
            .strip_prefix("Bazaar is serving on ")
            .unwrap_or_else(|| panic!("unexpected banner: {banner}"))
            .to_owned();
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, base }
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_alone_keep_another_servers_cache_fresh_after_a_checkout() {
    let test = "events_alone_keep_another_servers_cache_fresh_after_a_checkout";
    for env in backends(test) {
        let dir = tempfile::tempdir().unwrap();
        // No Redis: the only way B learns of A's writes is the event stream.
        let a = Serving::start(dir.path(), &env);
        let b = Serving::start(dir.path(), &env);
        common::checkout_on_a_is_seen_fresh_on_b(&a.base, &b.base, Duration::from_secs(2)).await;
        a.stop();
        b.stop();
    }
}
