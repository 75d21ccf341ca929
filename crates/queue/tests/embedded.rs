//! The embedded queue against the contract suite, each case on a fresh file, and what only
//! the embedded queue promises: several instances on one file, a restart, pruning.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bazaar_queue::contract;
use bazaar_queue::{
    EmbeddedConfig, EmbeddedQueue, GroupSpec, Message, Published, Queue, QueueError,
};
use bytes::Bytes;
use tempfile::TempDir;

/// Fresh queues in one temporary directory, one file each.
fn factory() -> impl contract::QueueFactory {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    let n = Arc::new(AtomicUsize::new(0));
    move || {
        let path = dir.path().join(format!(
            "queue-{}.sqlite",
            n.fetch_add(1, Ordering::Relaxed)
        ));
        // The directory lives as long as the factory, which outlives its case.
        async move {
            let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
                .await
                .expect("open the queue");
            Arc::new(queue) as Arc<dyn Queue>
        }
    }
}

macro_rules! contract_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                contract::$case(&factory()).await;
            }
        )*
    };
}

contract_cases!(
    publish_consume_ack,
    redelivery_after_lease_expiry,
    stale_receipt_is_lease_lost,
    nack_delay,
    delayed_delivery,
    per_key_order,
    dedupe,
    dead_letter_after_lease_expiry,
    dead_letter_explicit,
    replay,
    delete_purge_len,
    concurrent_consumers,
    two_groups,
    late_group,
    stats,
    invalid_input,
    nothing_redelivered_after_settling,
);

fn message(id: &str, key: &str) -> Message {
    Message {
        id: id.to_owned(),
        key: key.to_owned(),
        topic: "test".to_owned(),
        payload: Bytes::from(id.to_owned()),
        delay: None,
    }
}

fn group(name: &str, lease: Duration) -> GroupSpec {
    GroupSpec {
        name: name.to_owned(),
        lease,
        max_attempts: 5,
    }
}

fn temp_file() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("queue.sqlite");
    (dir, path)
}

/// Two instances (two pools, as two processes would have) on one file, each with two
/// receivers of one group, released together: every message is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_file_share_a_group_without_overlap() {
    const MESSAGES: usize = 300;
    let (_dir, path) = temp_file();
    let first = Arc::new(
        EmbeddedQueue::open(&path, EmbeddedConfig::default())
            .await
            .unwrap(),
    );
    let second = Arc::new(
        EmbeddedQueue::open(&path, EmbeddedConfig::default())
            .await
            .unwrap(),
    );
    let spec = group("shared", Duration::from_secs(60));
    first.declare(&spec).await.unwrap();
    // Publish from both: one message stream, whoever writes.
    for i in 0..MESSAGES {
        let queue = if i % 2 == 0 { &first } else { &second };
        let published = queue
            .publish(&message(&format!("m-{i}"), &format!("k{}", i % 25)))
            .await
            .unwrap();
        assert_eq!(published, Published::Stored);
    }
    assert_eq!(
        second.publish(&message("m-0", "k0")).await.unwrap(),
        Published::Duplicate,
        "dedupe holds across instances"
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for receiver in 0..4 {
        let queue: Arc<EmbeddedQueue> = if receiver % 2 == 0 {
            Arc::clone(&first)
        } else {
            Arc::clone(&second)
        };
        let spec = spec.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let sub = queue.declare(&spec).await.unwrap();
            barrier.wait().await;
            let mut mine = Vec::new();
            let mut idle = 0;
            // Stop after a second with nothing left for this receiver.
            while idle < 10 {
                let got = sub.receive(7, Duration::from_millis(100)).await.unwrap();
                if got.is_empty() {
                    idle += 1;
                }
                for d in got {
                    idle = 0;
                    assert_eq!(d.attempt, 1, "redelivered within a 60 s lease");
                    sub.ack(&d).await.unwrap();
                    mine.push(d.message.id);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for task in tasks {
        let mine = task.await.unwrap();
        if !mine.is_empty() {
            busy += 1;
        }
        all.extend(mine);
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a message delivered twice");
    assert_eq!(all.len(), MESSAGES, "every message delivered");
    assert!(busy >= 2, "only {busy} receiver(s) got work");
    for queue in [&first, &second] {
        let stats = queue.stats().await.unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].depth, stats[0].in_flight), (0, 0), "{stats:?}");
    }
}

/// A message received and never settled survives closing the queue: reopened, it is
/// delivered again once its lease has run out, with the next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_message_survives_a_restart() {
    let (_dir, path) = temp_file();
    let lease = Duration::from_millis(400);
    {
        let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
            .await
            .unwrap();
        let sub = queue.declare(&group("restart", lease)).await.unwrap();
        queue.publish(&message("survivor", "k")).await.unwrap();
        queue.publish(&message("unread", "k2")).await.unwrap();
        let got = sub.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.id, "survivor");
        // Dropped without ack: the process "crashed".
    }
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
        .await
        .unwrap();
    let sub = queue.declare(&group("restart", lease)).await.unwrap();
    let mut got = Vec::new();
    let start = tokio::time::Instant::now();
    while got.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "got {got:?}");
        for d in sub.receive(10, Duration::from_millis(200)).await.unwrap() {
            sub.ack(&d).await.unwrap();
            got.push((d.message.id, d.attempt));
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![("survivor".to_owned(), 2), ("unread".to_owned(), 1)]
    );
    assert!(sub.receive(10, lease * 2).await.unwrap().is_empty());
}

/// The strict form of the contract's order case: a held key holds no other key at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_key_holds_no_other_key() {
    let (_dir, path) = temp_file();
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
        .await
        .unwrap();
    let sub = queue
        .declare(&group("strict", Duration::from_secs(60)))
        .await
        .unwrap();
    for i in 1..=2 {
        for key in ["A", "B", "C", "D", "E"] {
            queue
                .publish(&message(&format!("{key}{i}"), key))
                .await
                .unwrap();
        }
    }
    let heads = sub.receive(10, Duration::from_secs(5)).await.unwrap();
    let mut ids: Vec<&str> = heads.iter().map(|d| d.message.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["A1", "B1", "C1", "D1", "E1"],
        "one receive gives every head"
    );
    for d in &heads {
        if d.message.key == "A" {
            sub.nack(d, Duration::from_secs(30)).await.unwrap();
        } else {
            sub.ack(d).await.unwrap();
        }
    }
    let next = sub.receive(10, Duration::from_secs(5)).await.unwrap();
    let mut ids: Vec<&str> = next.iter().map(|d| d.message.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["B2", "C2", "D2", "E2"],
        "every other key flows, A waits"
    );
}

/// A message delayed behind a key holds that key's later messages (order per key includes
/// delayed messages), not other keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_head_holds_its_key() {
    let (_dir, path) = temp_file();
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
        .await
        .unwrap();
    let sub = queue
        .declare(&group("delay-order", Duration::from_secs(60)))
        .await
        .unwrap();
    let late = Message {
        delay: Some(Duration::from_millis(800)),
        ..message("k-1", "k")
    };
    queue.publish(&late).await.unwrap();
    queue.publish(&message("k-2", "k")).await.unwrap();
    queue.publish(&message("j-1", "j")).await.unwrap();
    let first = sub.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|d| d.message.id.as_str())
            .collect::<Vec<_>>(),
        ["j-1"]
    );
    sub.ack(&first[0]).await.unwrap();
    let second = sub.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        second
            .iter()
            .map(|d| d.message.id.as_str())
            .collect::<Vec<_>>(),
        ["k-1"]
    );
    assert_eq!(second[0].message.delay, Some(Duration::from_millis(800)));
    sub.ack(&second[0]).await.unwrap();
    let third = sub.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        third
            .iter()
            .map(|d| d.message.id.as_str())
            .collect::<Vec<_>>(),
        ["k-2"]
    );
}

/// Pruning keeps what the dedupe window, an unsettled group or a dead letter still needs,
/// and removes the rest; a pruned id may be published again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_only_what_no_one_needs() {
    let (_dir, path) = temp_file();
    let window = Duration::from_millis(300);
    let config = EmbeddedConfig {
        dedupe_window: window,
        ..EmbeddedConfig::default()
    };
    let queue = EmbeddedQueue::open(&path, config).await.unwrap();
    let fast = queue
        .declare(&group("fast", Duration::from_secs(60)))
        .await
        .unwrap();
    let slow = queue
        .declare(&group("slow", Duration::from_secs(60)))
        .await
        .unwrap();
    for id in ["settled", "pending-in-slow", "dead"] {
        queue.publish(&message(id, id)).await.unwrap();
    }
    let got = fast.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 3);
    for d in &got {
        if d.message.id == "dead" {
            fast.dead_letter(d, "kept for the operator").await.unwrap();
        } else {
            fast.ack(d).await.unwrap();
        }
    }
    let got = slow.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 3);
    for d in &got {
        if d.message.id != "pending-in-slow" {
            slow.ack(d).await.unwrap();
        }
    }
    // Within the window nothing goes, settled or not.
    assert_eq!(queue.prune().await.unwrap(), 0);
    assert_eq!(
        queue.publish(&message("settled", "x")).await.unwrap(),
        Published::Duplicate
    );
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    assert_eq!(
        queue.prune().await.unwrap(),
        1,
        "only the settled message goes"
    );
    assert_eq!(queue.dead_letters().len().await.unwrap(), 1);
    let letter = &queue.dead_letters().list(None, 10).await.unwrap()[0];
    assert_eq!(
        letter.message.id, "dead",
        "the dead letter keeps its message"
    );
    assert_eq!(
        queue
            .publish(&message("pending-in-slow", "x"))
            .await
            .unwrap(),
        Published::Duplicate,
        "an unsettled message keeps its id"
    );
    // A pruned id is new again.
    assert_eq!(
        queue.publish(&message("settled", "again")).await.unwrap(),
        Published::Stored
    );
    let again = fast.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.key, "again");
    // Settled everywhere and purged: the rest goes too (the republished one is too young).
    fast.ack(&again[0]).await.unwrap();
    slow.ack(
        got.iter()
            .find(|d| d.message.id == "pending-in-slow")
            .unwrap(),
    )
    .await
    .unwrap();
    queue.dead_letters().purge().await.unwrap();
    assert_eq!(queue.prune().await.unwrap(), 2);
}

/// Payloads over the configured limit, and receipts not of this queue, are refused.
#[tokio::test]
async fn bad_input_is_refused() {
    let (_dir, path) = temp_file();
    let config = EmbeddedConfig {
        max_payload: 16,
        ..EmbeddedConfig::default()
    };
    let queue = EmbeddedQueue::open(&path, config).await.unwrap();
    let sub = queue
        .declare(&group("bad", Duration::from_secs(1)))
        .await
        .unwrap();
    let big = Message {
        payload: Bytes::from(vec![0_u8; 17]),
        ..message("big", "k")
    };
    assert!(matches!(
        queue.publish(&big).await,
        Err(QueueError::Invalid {
            what: "payload",
            ..
        })
    ));
    let long_id = message(&"x".repeat(300), "k");
    assert!(matches!(
        queue.publish(&long_id).await,
        Err(QueueError::Invalid { .. })
    ));
    queue.publish(&message("ok", "k")).await.unwrap();
    let mut got = sub.receive(1, Duration::from_secs(5)).await.unwrap();
    let mut forged = got.remove(0);
    let genuine = forged.clone();
    forged.receipt.0 = "not a receipt".to_owned();
    assert!(matches!(
        sub.ack(&forged).await,
        Err(QueueError::Invalid {
            what: "receipt",
            ..
        })
    ));
    forged.receipt.0 = "1:42".to_owned();
    assert!(matches!(sub.ack(&forged).await, Err(QueueError::LeaseLost)));
    sub.ack(&genuine).await.unwrap();
    assert!(matches!(
        queue.dead_letters().list(Some("x"), 10).await,
        Err(QueueError::Invalid { .. })
    ));
    assert!(!queue.dead_letters().replay("x").await.unwrap());
    assert!(!queue.dead_letters().delete("99").await.unwrap());
}

/// The runner over the embedded queue: a handler failing twice then succeeding is retried
/// with backoff and acknowledged on attempt 3; one failing for good is dead-lettered with
/// its error after max_attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_retries_then_gives_up() {
    use bazaar_queue::{Delivery, Handler, HandlerError, PassReport, RetryPolicy, process};
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Flaky {
        calls: Mutex<HashMap<String, u32>>,
    }

    #[async_trait::async_trait]
    impl Handler for Flaky {
        async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(delivery.message.id.clone()).or_default();
            *n += 1;
            match delivery.message.id.as_str() {
                "flaky" if *n < 3 => Err(HandlerError::Retry(format!("flaky failure {n}"))),
                "broken" => Err(HandlerError::Retry(format!("still broken ({n})"))),
                "poison" => Err(HandlerError::Permanent("cannot parse".to_owned())),
                _ => Ok(()),
            }
        }
    }

    let (_dir, path) = temp_file();
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
        .await
        .unwrap();
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
    };
    let sub = queue
        .declare(&GroupSpec {
            name: "runner".to_owned(),
            lease: Duration::from_secs(30),
            max_attempts: policy.max_attempts,
        })
        .await
        .unwrap();
    for id in ["flaky", "broken", "poison", "fine"] {
        queue.publish(&message(id, id)).await.unwrap();
    }
    let handler = Flaky::default();
    let mut total = PassReport::default();
    let start = tokio::time::Instant::now();
    while total.acked + total.dead_lettered < 4 {
        assert!(start.elapsed() < Duration::from_secs(15), "{total:?}");
        let report = process(&*sub, &handler, &policy, 10, Duration::from_millis(200))
            .await
            .unwrap();
        total.received += report.received;
        total.acked += report.acked;
        total.retried += report.retried;
        total.dead_lettered += report.dead_lettered;
        total.redeliveries += report.redeliveries;
        total.lease_lost += report.lease_lost;
    }
    assert_eq!(
        total,
        PassReport {
            // fine 1 + flaky 3 + broken 3 + poison 1
            received: 8,
            acked: 2,
            retried: 4,
            dead_lettered: 2,
            redeliveries: 4,
            lease_lost: 0,
        }
    );
    let mut letters = queue.dead_letters().list(None, 10).await.unwrap();
    letters.sort_by(|a, b| a.message.id.cmp(&b.message.id));
    let summary: Vec<(&str, u32, &str)> = letters
        .iter()
        .map(|l| (l.message.id.as_str(), l.attempts, l.last_error.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("broken", 3, "still broken (3)"),
            ("poison", 1, "cannot parse")
        ]
    );
    assert!(
        sub.receive(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A lease that ran out is no longer in flight, though its message is still in the depth,
/// before anyone receives again.
#[tokio::test]
async fn an_expired_lease_is_not_in_flight() {
    let (_dir, path) = temp_file();
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
        .await
        .unwrap();
    let lease = Duration::from_millis(300);
    let sub = queue.declare(&group("expiry", lease)).await.unwrap();
    queue.publish(&message("m", "k")).await.unwrap();
    assert_eq!(
        sub.receive(1, Duration::from_secs(5)).await.unwrap().len(),
        1
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats[0].depth, stats[0].in_flight), (1, 1));
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats[0].depth, stats[0].in_flight), (1, 0));
}

/// A replayed message whose key has moved on waits for the key's active message, then goes
/// first: it is never leased beside a later message of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_for_its_keys_active_message() {
    let (_dir, path) = temp_file();
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default())
        .await
        .unwrap();
    let sub = queue
        .declare(&group("replay-order", Duration::from_secs(60)))
        .await
        .unwrap();
    for id in ["k-1", "k-2", "k-3"] {
        queue.publish(&message(id, "k")).await.unwrap();
    }
    let first = sub.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.len(), 1);
    sub.dead_letter(&first[0], "no").await.unwrap();
    let second = sub.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message.id, "k-2");
    let letter = queue.dead_letters().list(None, 1).await.unwrap().remove(0);
    assert!(queue.dead_letters().replay(&letter.id).await.unwrap());
    assert!(
        sub.receive(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "the replay was leased beside k-2"
    );
    sub.ack(&second[0]).await.unwrap();
    let mut order = Vec::new();
    while order.len() < 2 {
        let got = sub.receive(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1, "one key, one at a time: {got:?}");
        sub.ack(&got[0]).await.unwrap();
        order.push((got[0].message.id.clone(), got[0].attempt));
    }
    assert_eq!(
        order,
        [("k-1".to_owned(), 1), ("k-3".to_owned(), 1)],
        "the replay goes next, with fresh attempts"
    );
}
