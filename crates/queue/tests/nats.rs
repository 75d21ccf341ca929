//! The JetStream queue against a real server (`BAZAAR_TEST_NATS_URL`; skipped when unset).
//! Every test makes its own streams, named for the process and test, and deletes them when
//! it ends, passing or failing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bazaar_queue::nats::{NatsConfig, NatsQueue};
use bazaar_queue::{Delivery, GroupSpec, Message, Published, Queue, QueueError, Receipt};
use bytes::Bytes;
use futures::StreamExt;

/// A queue on fresh streams, deleted on drop (from a thread of its own, so it also runs
/// when the test panicked).
struct TestQueue {
    queue: Option<NatsQueue>,
    config: NatsConfig,
}

impl std::ops::Deref for TestQueue {
    type Target = NatsQueue;
    fn deref(&self) -> &NatsQueue {
        self.queue.as_ref().expect("open")
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        drop(self.queue.take());
        delete_streams(vec![self.config.clone()]);
    }
}

/// Deletes the streams of `configs`, on a runtime of its own (a drop may run during a panic,
/// or on a runtime that is shutting down).
fn delete_streams(configs: Vec<NatsConfig>) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let Some(url) = configs.first().map(|c| c.url.clone()) else {
                return;
            };
            if let Ok(client) = async_nats::connect(url.as_str()).await {
                let js = async_nats::jetstream::new(client);
                for config in &configs {
                    let _ = js.delete_stream(&config.stream).await;
                    let _ = js.delete_stream(&config.dead_letter_stream).await;
                }
            }
        });
    })
    .join();
}

/// The streams a factory made, deleted when the test ends however it ends.
#[derive(Default)]
struct Made(Mutex<Vec<NatsConfig>>);

impl Drop for Made {
    fn drop(&mut self) {
        delete_streams(std::mem::take(&mut *self.0.lock().unwrap()));
    }
}

fn url() -> Option<String> {
    let url = std::env::var("BAZAAR_TEST_NATS_URL").ok();
    if url.is_none() {
        eprintln!("skipping: BAZAAR_TEST_NATS_URL is not set");
    }
    url
}

fn test_config(url: &str, partitions: u16) -> NatsConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let unique = format!("{}_{n}", std::process::id());
    NatsConfig {
        stream: format!("TEST_EVENTS_{unique}"),
        dead_letter_stream: format!("TEST_DLQ_{unique}"),
        subject_prefix: format!("test-{unique}.events"),
        partitions,
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(600),
        ..NatsConfig::new(url)
    }
}

async fn open(partitions: u16) -> Option<TestQueue> {
    let url = url()?;
    let config = test_config(&url, partitions);
    let queue = NatsQueue::connect(config.clone()).await.expect("connect");
    Some(TestQueue {
        queue: Some(queue),
        config,
    })
}

fn group(name: &str, lease_ms: u64, max_attempts: u32) -> GroupSpec {
    GroupSpec {
        name: name.to_owned(),
        lease: Duration::from_millis(lease_ms),
        max_attempts,
    }
}

fn message(id: &str, key: &str) -> Message {
    Message {
        id: id.to_owned(),
        key: key.to_owned(),
        topic: "order.paid".to_owned(),
        payload: Bytes::from(format!("payload of {id}")),
        delay: None,
    }
}

/// Receives until `n` deliveries came or `within` passed.
async fn receive_n(
    sub: &dyn bazaar_queue::Subscription,
    n: usize,
    within: Duration,
) -> Vec<Delivery> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        out.extend(
            sub.receive(n - out.len(), left.min(Duration::from_millis(500)))
                .await
                .expect("receive"),
        );
    }
    out
}

/// The contract every backend keeps, on the default 16 partitions. The cases that need
/// several keys out at once (three or five keys; `k-late` beside `k-now`) rely on those keys
/// landing on distinct partitions, which they do at 16 (k3 and k5 share one, which the
/// stats case tolerates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract() {
    let Some(url) = url() else { return };
    let made = Arc::new(Made::default());
    let factory = {
        let made = made.clone();
        move || {
            let config = NatsConfig {
                partitions: 16,
                ..test_config(&url, 16)
            };
            made.0.lock().unwrap().push(config.clone());
            async move { Arc::new(NatsQueue::connect(config).await.expect("connect")) as Arc<dyn Queue> }
        }
    };
    bazaar_queue::contract::all(&factory).await;
}

#[tokio::test]
async fn a_republished_id_is_stored_once_and_delivered_once() {
    let Some(q) = open(4).await else { return };
    let sub = q.declare(&group("g", 5_000, 5)).await.expect("declare");
    let m = message("m-1", "k");
    assert_eq!(q.publish(&m).await.expect("publish"), Published::Stored);
    assert_eq!(q.publish(&m).await.expect("publish"), Published::Duplicate);
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, m);
    assert_eq!(got[0].attempt, 1);
    sub.ack(&got[0]).await.expect("ack");
    let more = sub
        .receive(10, Duration::from_millis(1500))
        .await
        .expect("receive");
    assert!(more.is_empty(), "{more:?}");
}

#[tokio::test]
async fn receive_returns_as_soon_as_a_message_is_there() {
    let Some(q) = open(8).await else { return };
    let sub = q.declare(&group("g", 5_000, 5)).await.expect("declare");
    let waiting = tokio::spawn({
        let started = Instant::now();
        async move {
            let got = sub.receive(8, Duration::from_secs(30)).await;
            (got, started.elapsed(), sub)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.publish(&message("m-1", "k")).await.expect("publish");
    let (got, took, _sub) = waiting.await.expect("join");
    assert_eq!(got.expect("receive").len(), 1);
    // Not a performance bound: the 30 s wait must not be sat out.
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test]
async fn every_group_sees_what_was_published_after_it_was_declared() {
    let Some(q) = open(4).await else { return };
    let early = q.declare(&group("early", 5_000, 5)).await.expect("declare");
    q.publish(&message("before-late", "k"))
        .await
        .expect("publish");
    let late = q.declare(&group("late", 5_000, 5)).await.expect("declare");
    q.publish(&message("after-late", "k"))
        .await
        .expect("publish");

    let seen = |ds: &[Delivery]| ds.iter().map(|d| d.message.id.clone()).collect::<Vec<_>>();
    let mut from_early = Vec::new();
    for _ in 0..2 {
        let got = receive_n(&*early, 1, Duration::from_secs(5)).await;
        for d in &got {
            early.ack(d).await.expect("ack");
        }
        from_early.extend(seen(&got));
    }
    assert_eq!(from_early, ["before-late", "after-late"]);
    let got = receive_n(&*late, 1, Duration::from_secs(5)).await;
    assert_eq!(seen(&got), ["after-late"]);
    late.ack(&got[0]).await.expect("ack");
    assert!(
        late.receive(5, Duration::from_secs(1))
            .await
            .expect("receive")
            .is_empty()
    );

    // Declaring again changes nothing about where the group is.
    let again = q
        .declare(&group("late", 5_000, 5))
        .await
        .expect("redeclare");
    assert!(
        again
            .receive(5, Duration::from_secs(1))
            .await
            .expect("receive")
            .is_empty()
    );
}

#[tokio::test]
async fn a_key_is_handled_in_order_and_never_twice_at_once_across_receivers() {
    let Some(q) = open(4).await else { return };
    let spec = group("workers", 10_000, 5);
    let keys = ["a", "b", "c", "d", "e"];
    let per_key = 8;
    // Declare first: the group starts at messages published after it.
    let subs = vec![
        Arc::<dyn bazaar_queue::Subscription>::from(q.declare(&spec).await.expect("declare")),
        Arc::<dyn bazaar_queue::Subscription>::from(q.declare(&spec).await.expect("declare")),
    ];
    for i in 0..per_key {
        for key in keys {
            q.publish(&message(&format!("{key}-{i}"), key))
                .await
                .expect("publish");
        }
    }
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handled: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let total = keys.len() * per_key;
    let mut workers = Vec::new();
    for sub in subs {
        let (in_flight, handled) = (in_flight.clone(), handled.clone());
        workers.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                if handled
                    .lock()
                    .unwrap()
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
                    == total
                {
                    return;
                }
                let got = sub
                    .receive(4, Duration::from_millis(300))
                    .await
                    .expect("receive");
                for d in got {
                    let key = d.message.key.clone();
                    assert!(
                        in_flight.lock().unwrap().insert(key.clone()),
                        "two messages of key {key} at once"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let n: usize = d.message.id.rsplit('-').next().unwrap().parse().unwrap();
                    handled
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .push(n);
                    in_flight.lock().unwrap().remove(&key);
                    sub.ack(&d).await.expect("ack");
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let handled = handled.lock().unwrap();
    for key in keys {
        assert_eq!(
            handled.get(key).cloned().unwrap_or_default(),
            (0..per_key).collect::<Vec<_>>(),
            "key {key}"
        );
    }
}

#[tokio::test]
async fn an_expired_lease_redelivers_and_the_old_receipt_is_refused() {
    let Some(q) = open(2).await else { return };
    let spec = group("g", 700, 5);
    let first = q.declare(&spec).await.expect("declare");
    let second = q.declare(&spec).await.expect("declare");
    q.publish(&message("m-1", "k")).await.expect("publish");
    let got = receive_n(&*first, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].attempt, 1);
    // While the lease holds, nobody else gets it.
    assert!(
        second
            .receive(1, Duration::from_millis(300))
            .await
            .expect("receive")
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let again = receive_n(&*second, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.id, "m-1");
    assert_eq!(again[0].attempt, 2);
    assert!(matches!(
        first.ack(&got[0]).await,
        Err(QueueError::LeaseLost)
    ));
    assert!(matches!(
        first.nack(&got[0], Duration::ZERO).await,
        Err(QueueError::LeaseLost)
    ));
    // The lease held by the second receiver was not disturbed: it acks, once.
    second.ack(&again[0]).await.expect("ack");
    assert!(matches!(
        second.ack(&again[0]).await,
        Err(QueueError::LeaseLost)
    ));
    // A receipt from another subscription of the group is honoured while its lease holds.
    q.publish(&message("m-2", "k")).await.expect("publish");
    let third = receive_n(&*second, 1, Duration::from_secs(5)).await;
    first
        .ack(&third[0])
        .await
        .expect("ack through another subscription");
    assert!(
        first
            .receive(1, Duration::from_millis(900))
            .await
            .expect("receive")
            .is_empty()
    );
}

#[tokio::test]
async fn receipts_that_are_not_this_groups_are_refused() {
    let Some(q) = open(2).await else { return };
    let a = q.declare(&group("a", 5_000, 5)).await.expect("declare");
    let b = q.declare(&group("b", 5_000, 5)).await.expect("declare");
    q.publish(&message("m-1", "k")).await.expect("publish");
    let got = receive_n(&*a, 1, Duration::from_secs(5)).await;
    assert!(matches!(b.ack(&got[0]).await, Err(QueueError::LeaseLost)));
    let mut forged = got[0].clone();
    forged.receipt = Receipt("nonsense".to_owned());
    assert!(matches!(a.ack(&forged).await, Err(QueueError::LeaseLost)));
    a.ack(&got[0]).await.expect("the real receipt still works");
}

#[tokio::test]
async fn a_nack_redelivers_after_its_delay_and_holds_its_key() {
    let Some(q) = open(1).await else { return };
    let sub = q.declare(&group("g", 5_000, 5)).await.expect("declare");
    q.publish(&message("m-1", "k")).await.expect("publish");
    q.publish(&message("m-2", "k")).await.expect("publish");
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].message.id, "m-1");
    let nacked = Instant::now();
    sub.nack(&got[0], Duration::from_millis(800))
        .await
        .expect("nack");
    let again = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert!(nacked.elapsed() >= Duration::from_millis(800));
    // m-2 waited behind its key's retry.
    assert_eq!(again[0].message.id, "m-1");
    assert_eq!(again[0].attempt, 2);
    sub.ack(&again[0]).await.expect("ack");
    let next = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(next[0].message.id, "m-2");
    assert_eq!(next[0].attempt, 1);
}

#[tokio::test]
async fn a_delayed_message_comes_after_its_delay_on_its_first_attempt() {
    let Some(q) = open(2).await else { return };
    let sub = q.declare(&group("g", 5_000, 2)).await.expect("declare");
    let mut m = message("m-1", "k");
    m.delay = Some(Duration::from_millis(1200));
    let published = SystemTime::now();
    q.publish(&m).await.expect("publish");
    assert!(
        sub.receive(1, Duration::from_millis(600))
            .await
            .expect("receive")
            .is_empty()
    );
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert!(published.elapsed().expect("clock") >= Duration::from_millis(1200));
    assert_eq!(got[0].message, m);
    assert_eq!(got[0].attempt, 1);
    // Its attempts still run to max_attempts: a nack is attempt 2, not a dead letter.
    sub.nack(&got[0], Duration::ZERO).await.expect("nack");
    let again = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(again[0].attempt, 2);
    sub.ack(&again[0]).await.expect("ack");
    assert_eq!(q.dead_letters().len().await.expect("len"), 0);
}

#[tokio::test]
async fn a_message_whose_leases_all_expire_is_dead_lettered_by_the_queue() {
    let Some(q) = open(1).await else { return };
    let sub = q.declare(&group("g", 400, 2)).await.expect("declare");
    q.publish(&message("m-1", "k")).await.expect("publish");
    q.publish(&message("m-2", "k")).await.expect("publish");
    for attempt in 1..=2 {
        let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
        assert_eq!(
            (got[0].message.id.as_str(), got[0].attempt),
            ("m-1", attempt)
        );
        // Crash: never settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The next pull finds m-1 exhausted: it goes to the dead letters, and m-2 flows.
    let next = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(next[0].message.id, "m-2");
    sub.ack(&next[0]).await.expect("ack");
    let dead = q.dead_letters().list(None, 10).await.expect("list");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message, message("m-1", "k"));
    assert_eq!(dead[0].group, "g");
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_error, "lease expired 2 times");
}

#[tokio::test]
async fn the_servers_max_deliveries_advisory_dead_letters_what_crashed_receivers_left() {
    let Some(q) = open(1).await else { return };
    // max_attempts 1: the consumer delivers at most 3 times.
    let _sub = q.declare(&group("g", 300, 1)).await.expect("declare");
    q.publish(&message("m-1", "k")).await.expect("publish");
    // Receivers that crash before even our puller can see the delivery: pull straight from
    // the consumer and never ack, until the server gives up.
    let client = async_nats::connect(q.config().url.as_str())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&q.config().stream).await.expect("stream");
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("g-p0").await.expect("consumer");
    let mut deliveries = 0;
    for _ in 0..6 {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_millis(700))
            .messages()
            .await
            .expect("pull");
        if let Some(Ok(_)) = batch.next().await {
            deliveries += 1;
        }
    }
    assert_eq!(deliveries, 3);
    let end = Instant::now() + Duration::from_secs(5);
    let mut dead = Vec::new();
    while dead.is_empty() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        dead = q.dead_letters().list(None, 10).await.expect("list");
    }
    assert_eq!(dead.len(), 1, "no dead letter from the advisory");
    assert_eq!(dead[0].message.id, "m-1");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error, "lease expired 3 times");
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_to_their_group_only_and_removed() {
    let Some(q) = open(2).await else { return };
    let mail = q.declare(&group("mail", 5_000, 5)).await.expect("declare");
    let audit = q.declare(&group("audit", 5_000, 5)).await.expect("declare");
    for i in 0..3 {
        q.publish(&message(&format!("m-{i}"), &format!("k{i}")))
            .await
            .expect("publish");
    }
    // Two partitions: at most two of the three are out at once, so settle as they come.
    let mut got = Vec::new();
    while got.len() < 3 {
        let batch = receive_n(&*mail, 1, Duration::from_secs(5)).await;
        assert!(!batch.is_empty(), "only {} of 3 arrived", got.len());
        for d in batch {
            mail.dead_letter(&d, &format!("smtp said no to {}\nline two", d.message.id))
                .await
                .expect("dead letter");
            got.push(d);
        }
    }
    let mut acked = 0;
    while acked < 3 {
        let batch = receive_n(&*audit, 1, Duration::from_secs(5)).await;
        assert!(!batch.is_empty(), "audit got only {acked} of 3");
        for d in batch {
            audit.ack(&d).await.expect("ack");
            acked += 1;
        }
    }
    // Settled: dead-lettering is the last word on that delivery.
    assert!(matches!(
        mail.ack(&got[0]).await,
        Err(QueueError::LeaseLost)
    ));
    let dl = q.dead_letters();
    assert_eq!(dl.len().await.expect("len"), 3);
    let all = dl.list(None, 10).await.expect("list");
    assert_eq!(all.len(), 3);
    let page = dl.list(Some(&all[0].id), 1).await.expect("list");
    assert_eq!(page, [all[1].clone()]);
    assert!(
        dl.list(Some(&all[2].id), 10)
            .await
            .expect("list")
            .is_empty()
    );
    let first = &all[0];
    let original = got
        .iter()
        .find(|d| d.message.id == first.message.id)
        .unwrap();
    assert_eq!(first.group, "mail");
    assert_eq!(first.message, original.message);
    assert_eq!(first.attempts, 1);
    assert_eq!(
        first.last_error,
        format!("smtp said no to {}\nline two", first.message.id)
    );
    assert_eq!(first.published_at, original.published_at);
    assert!(first.dead_at >= first.published_at);
    assert_eq!(dl.get(&first.id).await.expect("get").as_ref(), Some(first));
    assert_eq!(dl.get("999999").await.expect("get"), None);
    assert_eq!(dl.get("not-an-id").await.expect("get"), None);

    assert!(dl.replay(&first.id).await.expect("replay"));
    assert!(!dl.replay(&first.id).await.expect("replay again"));
    assert_eq!(dl.get(&first.id).await.expect("get"), None);
    let replayed = receive_n(&*mail, 1, Duration::from_secs(5)).await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].message, first.message);
    assert_eq!(replayed[0].attempt, 1);
    assert_eq!(replayed[0].published_at, first.published_at);
    mail.ack(&replayed[0]).await.expect("ack");
    assert!(
        audit
            .receive(5, Duration::from_secs(1))
            .await
            .expect("receive")
            .is_empty(),
        "a replay reached another group"
    );

    assert!(dl.delete(&all[1].id).await.expect("delete"));
    assert!(!dl.delete(&all[1].id).await.expect("delete again"));
    assert_eq!(dl.purge().await.expect("purge"), 1);
    assert_eq!(dl.len().await.expect("len"), 0);
}

#[tokio::test]
async fn stats_count_backlog_in_flight_and_oldest_age() {
    let Some(q) = open(2).await else { return };
    let sub = q.declare(&group("g", 5_000, 5)).await.expect("declare");
    let _idle = q.declare(&group("idle", 5_000, 5)).await.expect("declare");
    for i in 0..4 {
        q.publish(&message(&format!("m-{i}"), &format!("k{i}")))
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    let stats = q.stats().await.expect("stats");
    let by_name: HashMap<_, _> = stats.iter().map(|s| (s.group.as_str(), s)).collect();
    assert_eq!(by_name["idle"].depth, 4);
    assert_eq!(by_name["idle"].in_flight, 0);
    assert!(by_name["idle"].oldest_age.expect("age") >= Duration::from_millis(200));
    assert_eq!(by_name["g"].depth, 4);
    assert!(by_name["g"].in_flight >= 1);
    sub.ack(&got[0]).await.expect("ack");
    let stats = q.stats().await.expect("stats");
    let g = stats.iter().find(|s| s.group == "g").unwrap();
    assert_eq!(g.depth, 3);
}

#[tokio::test]
async fn a_message_fetched_for_nobody_stays_leased_until_the_next_receive() {
    let Some(q) = open(1).await else { return };
    let sub = q.declare(&group("g", 300, 5)).await.expect("declare");
    // A receive that gives up leaves its pull in flight on the server for pull_expiry (1 s).
    assert!(
        sub.receive(1, Duration::from_millis(50))
            .await
            .expect("receive")
            .is_empty()
    );
    q.publish(&message("m-1", "k")).await.expect("publish");
    // Longer than the lease: the puller holding it must keep it leased.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].attempt, 1);
    // The lease it hands out is a full one, not what is left of the first.
    tokio::time::sleep(Duration::from_millis(150)).await;
    sub.ack(&got[0]).await.expect("ack within the lease");
}

#[tokio::test]
async fn a_dropped_subscription_gives_back_what_it_held() {
    let Some(q) = open(1).await else { return };
    let spec = group("g", 30_000, 5);
    let sub = q.declare(&spec).await.expect("declare");
    assert!(
        sub.receive(1, Duration::from_millis(50))
            .await
            .expect("receive")
            .is_empty()
    );
    q.publish(&message("m-1", "k")).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(sub);
    // Not after the 30 s lease: the dropped subscription naked it.
    let other = q.declare(&spec).await.expect("declare");
    let got = receive_n(&*other, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.id, "m-1");
}

#[tokio::test]
async fn bad_input_is_refused() {
    let Some(q) = open(1).await else { return };
    for bad in ["", "has.dot", "has space", "x*", &"a".repeat(65)] {
        assert!(
            matches!(
                q.declare(&group(bad, 1_000, 3)).await,
                Err(QueueError::Invalid { .. })
            ),
            "group {bad:?}"
        );
    }
    assert!(matches!(
        q.declare(&group("g", 1_000, 0)).await,
        Err(QueueError::Invalid { .. })
    ));
    let mut m = message("m-1", "k");
    m.topic.clear();
    assert!(matches!(
        q.publish(&m).await,
        Err(QueueError::Invalid { .. })
    ));
    let mut m = message("", "k");
    m.id.clear();
    assert!(matches!(
        q.publish(&m).await,
        Err(QueueError::Invalid { .. })
    ));
    let m = message("m-1", "line\r\nbreak");
    assert!(matches!(
        q.publish(&m).await,
        Err(QueueError::Invalid { .. })
    ));
    let mut m = message("m-1", "k");
    m.payload = Bytes::from(vec![0u8; 2 << 20]);
    assert!(matches!(
        q.publish(&m).await,
        Err(QueueError::Invalid { .. })
    ));
}

#[tokio::test]
async fn a_stream_made_for_another_partition_count_is_refused() {
    let Some(q) = open(4).await else { return };
    let other = NatsConfig {
        partitions: 8,
        ..q.config().clone()
    };
    assert!(matches!(
        NatsQueue::connect(other).await,
        Err(QueueError::Invalid { .. })
    ));
    // The same layout opens again.
    NatsQueue::connect(q.config().clone())
        .await
        .expect("same layout");
}

#[tokio::test]
async fn connecting_to_nothing_fails_instead_of_hanging() {
    if url().is_none() {
        return;
    }
    let config = NatsConfig {
        connect_timeout: Duration::from_secs(2),
        ..NatsConfig::new("nats://127.0.0.1:1")
    };
    assert!(matches!(
        NatsQueue::connect(config).await,
        Err(QueueError::Backend(_))
    ));
}

/// The retry runner above the JetStream queue: failures are retried with a backoff and the
/// attempt count the queue reports, a permanent failure and a failure on the last attempt
/// end as dead letters, and the key's next message waits for all of it.
#[tokio::test]
async fn the_runner_retries_and_gives_up_through_jetstream() {
    use bazaar_queue::{Handler, HandlerError, RetryPolicy, process};

    #[derive(Debug, Default)]
    struct Flaky(Mutex<Vec<(String, u32)>>);

    #[async_trait::async_trait]
    impl Handler for Flaky {
        async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
            let id = delivery.message.id.clone();
            self.0.lock().unwrap().push((id.clone(), delivery.attempt));
            match (id.as_str(), delivery.attempt) {
                ("twice", 1 | 2) => Err(HandlerError::Retry("not yet".into())),
                ("never", _) => Err(HandlerError::Retry("still down".into())),
                ("poison", _) => Err(HandlerError::Permanent("cannot parse".into())),
                _ => Ok(()),
            }
        }
    }

    let Some(q) = open(1).await else { return };
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    };
    let sub = q
        .declare(&group("runner", 5_000, 3))
        .await
        .expect("declare");
    for id in ["twice", "never", "poison", "last"] {
        q.publish(&message(id, "one-key")).await.expect("publish");
    }
    let handler = Flaky::default();
    let end = Instant::now() + Duration::from_secs(30);
    while !handler.0.lock().unwrap().iter().any(|(id, _)| id == "last") {
        assert!(Instant::now() < end, "{:?}", handler.0.lock().unwrap());
        process(&*sub, &handler, &policy, 8, Duration::from_millis(300))
            .await
            .expect("pass");
    }
    let seen = handler.0.lock().unwrap().clone();
    let attempts = |want: &str| -> Vec<u32> {
        seen.iter()
            .filter(|(id, _)| id == want)
            .map(|(_, a)| *a)
            .collect()
    };
    assert_eq!(attempts("twice"), [1, 2, 3]);
    assert_eq!(attempts("never"), [1, 2, 3]);
    assert_eq!(attempts("poison"), [1]);
    assert_eq!(attempts("last"), [1]);
    // One key: strictly in publish order.
    let order: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        order,
        [
            "twice", "twice", "twice", "never", "never", "never", "poison", "last"
        ]
    );
    let dead = q.dead_letters().list(None, 10).await.expect("list");
    let dead: Vec<(&str, u32, &str)> = dead
        .iter()
        .map(|d| (d.message.id.as_str(), d.attempts, d.last_error.as_str()))
        .collect();
    assert_eq!(
        dead,
        [("never", 3, "still down"), ("poison", 1, "cannot parse")]
    );
}
