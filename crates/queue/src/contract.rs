//! The contract every [`Queue`] implementation keeps, as runnable cases (cargo feature
//! `contract`).
//!
//! Each case takes a [`QueueFactory`], asks it for a FRESH queue (an empty file, a new
//! stream), drives it through one promise of the crate docs and panics with a message naming
//! the case and what broke. [`all`] runs every case in turn. An implementation's tests call
//! them:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn contract() {
//!     bazaar_queue::contract::all(&|| async { Arc::new(MyQueue::new().await) as Arc<dyn Queue> }).await;
//! }
//! ```
//!
//! Timing: leases are short (400–500 ms) so a run takes seconds, and every "it happens" is a
//! bounded wait of [`BOUND`] (generous, for a loaded machine), every "it does not happen" a
//! watch of a few hundred milliseconds to a few leases. "Not before" checks start their clock
//! before the call that starts the queue's, so they hold however late the queue answers.
//!
//! A few cases allow for implementations that order by partitions of keys rather than by key
//! (see [`per_key_order`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::{Delivery, GroupSpec, Message, Published, Queue, QueueError, Subscription};

/// Gives each case a fresh, empty queue. Any `Fn() -> impl Future<Output = Arc<dyn Queue>>`
/// is one.
pub trait QueueFactory: Send + Sync {
    fn fresh(&self) -> BoxFuture<'_, Arc<dyn Queue>>;
}

impl<F, Fut> QueueFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn Queue>> + Send + 'static,
{
    fn fresh(&self) -> BoxFuture<'_, Arc<dyn Queue>> {
        Box::pin(self())
    }
}

/// The longest any case waits for something that must happen.
pub const BOUND: Duration = Duration::from_secs(15);

/// The lease of groups whose cases wait for leases to run out.
const SHORT_LEASE: Duration = Duration::from_millis(500);

/// The lease of groups whose cases must not see a lease run out.
const LONG_LEASE: Duration = Duration::from_secs(60);

/// Each receive call's wait while polling for something.
const POLL: Duration = Duration::from_millis(200);

const TOPIC: &str = "contract.test";

/// One case of the suite, as [`all`] holds it.
type Case = fn(&dyn QueueFactory) -> BoxFuture<'_, ()>;

/// Runs every case, each on a fresh queue.
pub async fn all(factory: &dyn QueueFactory) {
    let cases: [(&str, Case); 17] = [
        ("publish_consume_ack", |f| Box::pin(publish_consume_ack(f))),
        ("redelivery_after_lease_expiry", |f| {
            Box::pin(redelivery_after_lease_expiry(f))
        }),
        ("stale_receipt_is_lease_lost", |f| {
            Box::pin(stale_receipt_is_lease_lost(f))
        }),
        ("nack_delay", |f| Box::pin(nack_delay(f))),
        ("delayed_delivery", |f| Box::pin(delayed_delivery(f))),
        ("per_key_order", |f| Box::pin(per_key_order(f))),
        ("dedupe", |f| Box::pin(dedupe(f))),
        ("dead_letter_after_lease_expiry", |f| {
            Box::pin(dead_letter_after_lease_expiry(f))
        }),
        ("dead_letter_explicit", |f| {
            Box::pin(dead_letter_explicit(f))
        }),
        ("replay", |f| Box::pin(replay(f))),
        ("delete_purge_len", |f| Box::pin(delete_purge_len(f))),
        ("concurrent_consumers", |f| {
            Box::pin(concurrent_consumers(f))
        }),
        ("two_groups", |f| Box::pin(two_groups(f))),
        ("late_group", |f| Box::pin(late_group(f))),
        ("stats", |f| Box::pin(stats(f))),
        ("invalid_input", |f| Box::pin(invalid_input(f))),
        ("nothing_redelivered_after_settling", |f| {
            Box::pin(nothing_redelivered_after_settling(f))
        }),
    ];
    for (name, case) in cases {
        let started = Instant::now();
        eprintln!("queue contract: {name} …");
        case(factory).await;
        eprintln!("queue contract: {name} ok in {:?}", started.elapsed());
    }
}

// --- helpers ---------------------------------------------------------------------------------

fn message(id: &str, key: &str) -> Message {
    Message {
        id: id.to_owned(),
        key: key.to_owned(),
        topic: TOPIC.to_owned(),
        payload: Bytes::from(format!("payload of {id}")),
        delay: None,
    }
}

fn spec(name: &str, lease: Duration, max_attempts: u32) -> GroupSpec {
    GroupSpec {
        name: name.to_owned(),
        lease,
        max_attempts,
    }
}

async fn declare(case: &str, queue: &dyn Queue, group: &GroupSpec) -> Box<dyn Subscription> {
    queue
        .declare(group)
        .await
        .unwrap_or_else(|e| panic!("{case}: declaring group {:?} failed: {e}", group.name))
}

async fn publish(case: &str, queue: &dyn Queue, message: &Message) {
    let published = queue
        .publish(message)
        .await
        .unwrap_or_else(|e| panic!("{case}: publishing {:?} failed: {e}", message.id));
    assert_eq!(
        published,
        Published::Stored,
        "{case}: a new id {:?} was not stored",
        message.id
    );
}

async fn receive(case: &str, sub: &dyn Subscription, max: usize, wait: Duration) -> Vec<Delivery> {
    sub.receive(max, wait)
        .await
        .unwrap_or_else(|e| panic!("{case}: receive failed: {e}"))
}

/// Exactly `n` deliveries, within [`BOUND`]; panics if fewer come, or more.
async fn receive_n(case: &str, sub: &dyn Subscription, n: usize, what: &str) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            start.elapsed() < BOUND,
            "{case}: waited {BOUND:?} for {what}: got {} of {n}: {:?}",
            got.len(),
            ids(&got)
        );
        got.extend(receive(case, sub, n - got.len(), POLL).await);
    }
    assert_eq!(
        got.len(),
        n,
        "{case}: asked for {n} ({what}), got {:?}",
        ids(&got)
    );
    got
}

/// Nothing is delivered for `watch`.
async fn expect_none(case: &str, sub: &dyn Subscription, watch: Duration, why: &str) {
    let start = Instant::now();
    while start.elapsed() < watch {
        let left = watch.saturating_sub(start.elapsed());
        let got = receive(case, sub, 10, left.min(POLL)).await;
        assert!(
            got.is_empty(),
            "{case}: {why}, yet delivered: {:?}",
            describe(&got)
        );
    }
}

async fn ack(case: &str, sub: &dyn Subscription, delivery: &Delivery) {
    sub.ack(delivery).await.unwrap_or_else(|e| {
        panic!(
            "{case}: ack of {:?} (attempt {}) failed: {e}",
            delivery.message.id, delivery.attempt
        )
    });
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.message.id.clone()).collect()
}

fn describe(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| format!("{} (attempt {})", d.message.id, d.attempt))
        .collect()
}

fn find<'a>(case: &str, deliveries: &'a [Delivery], id: &str) -> &'a Delivery {
    deliveries
        .iter()
        .find(|d| d.message.id == id)
        .unwrap_or_else(|| panic!("{case}: {id:?} not among {:?}", ids(deliveries)))
}

fn assert_same_message(case: &str, got: &Message, want: &Message) {
    assert_eq!(
        (&got.id, &got.key, &got.topic, &got.payload),
        (&want.id, &want.key, &want.topic, &want.payload),
        "{case}: the delivered message differs from the published one"
    );
}

/// The group's stats, waiting within [`BOUND`] until `check` holds (stats may lag on a
/// distributed backend).
async fn stats_until(
    case: &str,
    queue: &dyn Queue,
    group: &str,
    what: &str,
    check: impl Fn(&crate::GroupStats) -> bool,
) -> crate::GroupStats {
    let start = Instant::now();
    loop {
        let all = queue
            .stats()
            .await
            .unwrap_or_else(|e| panic!("{case}: stats failed: {e}"));
        let mine = all.iter().find(|s| s.group == group).cloned();
        if let Some(stats) = &mine
            && check(stats)
        {
            return stats.clone();
        }
        assert!(
            start.elapsed() < BOUND,
            "{case}: stats of {group:?} never showed {what}: {mine:?} (all: {all:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dead_letter_count(case: &str, queue: &dyn Queue) -> u64 {
    queue
        .dead_letters()
        .len()
        .await
        .unwrap_or_else(|e| panic!("{case}: dead letter len failed: {e}"))
}

// --- cases -----------------------------------------------------------------------------------

/// Published messages reach a group whole, on attempt 1; acknowledged, they never come back.
pub async fn publish_consume_ack(factory: &dyn QueueFactory) {
    let case = "publish_consume_ack";
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-ack", SHORT_LEASE, 5)).await;
    let sent: Vec<Message> = (1..=3)
        .map(|i| message(&format!("ack-{i}"), &format!("k{i}")))
        .collect();
    let before = SystemTime::now();
    for m in &sent {
        publish(case, &*queue, m).await;
    }
    let after = SystemTime::now();
    let got = receive_n(case, &*sub, 3, "the three published messages").await;
    for m in &sent {
        let d = find(case, &got, &m.id);
        assert_same_message(case, &d.message, m);
        assert_eq!(d.attempt, 1, "{case}: a first delivery has attempt 1");
        let slack = Duration::from_secs(2);
        assert!(
            d.published_at + slack >= before && d.published_at <= after + slack,
            "{case}: published_at {:?} is not the publish time (between {before:?} and {after:?})",
            d.published_at
        );
    }
    for d in &got {
        ack(case, &*sub, d).await;
    }
    expect_none(
        case,
        &*sub,
        SHORT_LEASE * 3,
        "every message was acknowledged",
    )
    .await;
}

/// An unsettled delivery comes back after its lease, with attempt 2, not before.
pub async fn redelivery_after_lease_expiry(factory: &dyn QueueFactory) {
    let case = "redelivery_after_lease_expiry";
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-lease", SHORT_LEASE, 5)).await;
    let m = message("lease-1", "k");
    publish(case, &*queue, &m).await;
    let leased_from = Instant::now();
    let first = receive_n(case, &*sub, 1, "the message").await;
    assert_eq!(first[0].attempt, 1);
    let second = receive_n(case, &*sub, 1, "the redelivery after the lease").await;
    let waited = leased_from.elapsed();
    assert!(
        waited >= SHORT_LEASE,
        "{case}: redelivered after {waited:?}, within the {SHORT_LEASE:?} lease"
    );
    assert_same_message(case, &second[0].message, &m);
    assert_eq!(
        second[0].attempt, 2,
        "{case}: a redelivery raises the attempt"
    );
    ack(case, &*sub, &second[0]).await;
    expect_none(
        case,
        &*sub,
        SHORT_LEASE * 2,
        "the redelivery was acknowledged",
    )
    .await;
}

/// A receipt whose lease ran out and went to another delivery is refused (`LeaseLost`), and so
/// is settling twice.
pub async fn stale_receipt_is_lease_lost(factory: &dyn QueueFactory) {
    let case = "stale_receipt_is_lease_lost";
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-stale", SHORT_LEASE, 5)).await;
    publish(case, &*queue, &message("stale-1", "k")).await;
    let first = receive_n(case, &*sub, 1, "the message").await;
    let second = receive_n(case, &*sub, 1, "the redelivery").await;
    assert_eq!(second[0].attempt, 2);
    match sub.ack(&first[0]).await {
        Err(QueueError::LeaseLost) => {}
        other => panic!("{case}: acking the first, expired delivery gave {other:?}"),
    }
    match sub.nack(&first[0], Duration::ZERO).await {
        Err(QueueError::LeaseLost) => {}
        other => panic!("{case}: nacking the first, expired delivery gave {other:?}"),
    }
    ack(case, &*sub, &second[0]).await;
    match sub.ack(&second[0]).await {
        Err(QueueError::LeaseLost) => {}
        other => panic!("{case}: acking a settled delivery again gave {other:?}"),
    }
    match sub.dead_letter(&second[0], "late").await {
        Err(QueueError::LeaseLost) => {}
        other => panic!("{case}: dead-lettering a settled delivery gave {other:?}"),
    }
    assert_eq!(
        dead_letter_count(case, &*queue).await,
        0,
        "{case}: a refused dead letter was stored"
    );
}

/// A nacked delivery comes back after its delay (attempt 2), not before.
pub async fn nack_delay(factory: &dyn QueueFactory) {
    let case = "nack_delay";
    let delay = Duration::from_millis(1200);
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-nack", LONG_LEASE, 5)).await;
    let m = message("nack-1", "k");
    publish(case, &*queue, &m).await;
    let got = receive_n(case, &*sub, 1, "the message").await;
    let nacked_at = Instant::now();
    sub.nack(&got[0], delay)
        .await
        .unwrap_or_else(|e| panic!("{case}: nack failed: {e}"));
    let again = receive_n(case, &*sub, 1, "the nacked message after its delay").await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= delay,
        "{case}: redelivered {waited:?} after a nack of {delay:?}"
    );
    assert_same_message(case, &again[0].message, &m);
    assert_eq!(again[0].attempt, 2, "{case}: a nack raises the attempt");
    ack(case, &*sub, &again[0]).await;
}

/// A message published with a delay is not delivered before it; other messages are not held
/// up by it.
pub async fn delayed_delivery(factory: &dyn QueueFactory) {
    let case = "delayed_delivery";
    let delay = Duration::from_millis(1200);
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-delay", LONG_LEASE, 5)).await;
    let late = Message {
        delay: Some(delay),
        ..message("delay-late", "k-late")
    };
    let published_from = Instant::now();
    publish(case, &*queue, &late).await;
    publish(case, &*queue, &message("delay-now", "k-now")).await;
    let first = receive_n(case, &*sub, 1, "the undelayed message").await;
    assert_eq!(
        first[0].message.id, "delay-now",
        "{case}: the delayed message came first"
    );
    assert!(
        published_from.elapsed() < delay,
        "{case}: the undelayed message waited out the other's delay"
    );
    ack(case, &*sub, &first[0]).await;
    let second = receive_n(case, &*sub, 1, "the delayed message").await;
    let waited = published_from.elapsed();
    assert!(
        waited >= delay,
        "{case}: a message delayed {delay:?} came after {waited:?}"
    );
    assert_same_message(case, &second[0].message, &late);
    assert_eq!(second[0].attempt, 1);
    ack(case, &*sub, &second[0]).await;
}

/// Within a group, one key's messages come in publish order, and never while an earlier one
/// is leased or waiting on retry; a nack of key A's head holds A's later messages, not the
/// other keys'.
///
/// Implementations that order by partitions of keys may hold another key that shares A's
/// partition; this case asks that at least one of four other keys flows while A is held.
pub async fn per_key_order(factory: &dyn QueueFactory) {
    let case = "per_key_order";
    let hold = Duration::from_millis(2500);
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-order", LONG_LEASE, 10)).await;
    let keys = ["A", "B", "C", "D", "E"];
    for i in 1..=3 {
        for key in keys {
            publish(case, &*queue, &message(&format!("{key}{i}"), key)).await;
        }
    }
    // Nothing acknowledged yet: only each key's first message may be out.
    let mut heads = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        heads.extend(receive(case, &*sub, 15, POLL).await);
    }
    let mut seen_keys = HashSet::new();
    for d in &heads {
        assert!(
            d.message.id.ends_with('1'),
            "{case}: {} was delivered while its key's earlier messages were leased: {:?}",
            d.message.id,
            describe(&heads)
        );
        assert!(
            seen_keys.insert(d.message.key.clone()),
            "{case}: two deliveries of key {} at once: {:?}",
            d.message.key,
            describe(&heads)
        );
    }
    let a1 = find(case, &heads, "A1").clone();
    let nacked_at = Instant::now();
    sub.nack(&a1, hold)
        .await
        .unwrap_or_else(|e| panic!("{case}: nack of A1 failed: {e}"));
    for d in heads.iter().filter(|d| d.message.key != "A") {
        ack(case, &*sub, d).await;
    }
    // While A1 waits: none of A, and other keys move on.
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    for d in heads.iter().filter(|d| d.message.key != "A") {
        acked
            .entry(d.message.key.clone())
            .or_default()
            .push(d.message.id.clone());
    }
    let mut others_moved = 0;
    while nacked_at.elapsed() + POLL < hold {
        for d in receive(case, &*sub, 15, POLL).await {
            assert!(
                nacked_at.elapsed() >= hold || d.message.key != "A",
                "{case}: {} (attempt {}) delivered while A1 waited on its retry",
                d.message.id,
                d.attempt
            );
            if !d.message.id.ends_with('1') {
                others_moved += 1;
            }
            acked
                .entry(d.message.key.clone())
                .or_default()
                .push(d.message.id.clone());
            ack(case, &*sub, &d).await;
        }
    }
    assert!(
        others_moved > 0,
        "{case}: no other key's later message came while A1 waited on its retry"
    );
    // Then everything, each key in order, A1 on its second attempt.
    let start = Instant::now();
    while acked.values().map(Vec::len).sum::<usize>() < 15 {
        assert!(
            start.elapsed() < BOUND,
            "{case}: not everything came after A1's retry: {acked:?}"
        );
        for d in receive(case, &*sub, 15, POLL).await {
            if d.message.id == "A1" {
                assert_eq!(d.attempt, 2, "{case}: A1's retry has attempt 2");
            }
            acked
                .entry(d.message.key.clone())
                .or_default()
                .push(d.message.id.clone());
            ack(case, &*sub, &d).await;
        }
    }
    for key in keys {
        let want: Vec<String> = (1..=3).map(|i| format!("{key}{i}")).collect();
        assert_eq!(
            acked.get(key),
            Some(&want),
            "{case}: key {key} out of publish order"
        );
    }
}

/// An id published twice within the window is stored and delivered once; the second publish
/// says `Duplicate`. Dedupe is by id, not by content.
pub async fn dedupe(factory: &dyn QueueFactory) {
    let case = "dedupe";
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-dedupe", SHORT_LEASE, 5)).await;
    let first = message("dup-1", "k1");
    publish(case, &*queue, &first).await;
    let again = Message {
        payload: Bytes::from_static(b"a different body, the same id"),
        ..first.clone()
    };
    let published = queue
        .publish(&again)
        .await
        .unwrap_or_else(|e| panic!("{case}: republish failed: {e}"));
    assert_eq!(
        published,
        Published::Duplicate,
        "{case}: the same id twice was not a duplicate"
    );
    let twin = Message {
        id: "dup-2".to_owned(),
        key: "k2".to_owned(),
        ..first.clone()
    };
    publish(case, &*queue, &twin).await;
    let got = receive_n(case, &*sub, 2, "the message and its same-bodied twin").await;
    assert_same_message(case, &find(case, &got, "dup-1").message, &first);
    find(case, &got, "dup-2");
    for d in &got {
        ack(case, &*sub, d).await;
    }
    expect_none(
        case,
        &*sub,
        SHORT_LEASE * 2,
        "a duplicate must not be delivered",
    )
    .await;
}

/// A message whose receivers never settle it is dead-lettered by the queue when the lease of
/// its last attempt runs out, with its attempts and an error saying so; its key's next
/// message then flows.
pub async fn dead_letter_after_lease_expiry(factory: &dyn QueueFactory) {
    let case = "dead_letter_after_lease_expiry";
    let queue = factory.fresh().await;
    let group = spec("c-dlq-lease", SHORT_LEASE, 2);
    let sub = declare(case, &*queue, &group).await;
    let doomed = message("dlq-lease-1", "k");
    let before = SystemTime::now();
    publish(case, &*queue, &doomed).await;
    publish(case, &*queue, &message("dlq-lease-2", "k")).await;
    let first = receive_n(case, &*sub, 1, "the first attempt").await;
    assert_eq!(
        (first[0].message.id.as_str(), first[0].attempt),
        ("dlq-lease-1", 1)
    );
    let second = receive_n(case, &*sub, 1, "the second attempt").await;
    assert_eq!(
        (second[0].message.id.as_str(), second[0].attempt),
        ("dlq-lease-1", 2),
        "{case}: the key's next message overtook its unsettled head"
    );
    // The second lease runs out: the queue gives up, and the next message of the key flows.
    let start = Instant::now();
    let mut next = None;
    while next.is_none() || dead_letter_count(case, &*queue).await == 0 {
        assert!(
            start.elapsed() < BOUND,
            "{case}: no dead letter ({} stored) or no next message ({next:?}) within {BOUND:?}",
            dead_letter_count(case, &*queue).await
        );
        for d in receive(case, &*sub, 10, POLL).await {
            assert_ne!(
                d.message.id, "dlq-lease-1",
                "{case}: delivered again (attempt {}) past max_attempts 2",
                d.attempt
            );
            assert_eq!(d.attempt, 1);
            ack(case, &*sub, &d).await;
            next = Some(d.message.id);
        }
    }
    assert_eq!(next.as_deref(), Some("dlq-lease-2"));
    let letters = queue
        .dead_letters()
        .list(None, 10)
        .await
        .unwrap_or_else(|e| panic!("{case}: list failed: {e}"));
    assert_eq!(letters.len(), 1, "{case}: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.group, group.name);
    assert_same_message(case, &letter.message, &doomed);
    assert_eq!(letter.attempts, 2, "{case}: attempts recorded");
    assert!(
        !letter.last_error.is_empty(),
        "{case}: the dead letter does not say why"
    );
    assert!(
        letter.published_at + Duration::from_secs(2) >= before
            && letter.dead_at + Duration::from_secs(2) >= letter.published_at,
        "{case}: timestamps {letter:?}"
    );
    let got = queue
        .dead_letters()
        .get(&letter.id)
        .await
        .unwrap_or_else(|e| panic!("{case}: get failed: {e}"));
    assert_eq!(
        got.as_ref(),
        Some(letter),
        "{case}: get disagrees with list"
    );
}

/// `dead_letter` takes a delivery out of its group with the handler's error; it is not
/// delivered again, and its key's next message flows.
pub async fn dead_letter_explicit(factory: &dyn QueueFactory) {
    let case = "dead_letter_explicit";
    let queue = factory.fresh().await;
    let group = spec("c-dlq", LONG_LEASE, 5);
    let sub = declare(case, &*queue, &group).await;
    let doomed = message("dlq-1", "k");
    publish(case, &*queue, &doomed).await;
    publish(case, &*queue, &message("dlq-2", "k")).await;
    let got = receive_n(case, &*sub, 1, "the key's head").await;
    assert_eq!(got[0].message.id, "dlq-1");
    sub.dead_letter(&got[0], "handler said no")
        .await
        .unwrap_or_else(|e| panic!("{case}: dead_letter failed: {e}"));
    let next = receive_n(case, &*sub, 1, "the key's next message").await;
    assert_eq!(next[0].message.id, "dlq-2");
    assert_eq!(next[0].attempt, 1);
    ack(case, &*sub, &next[0]).await;
    expect_none(
        case,
        &*sub,
        Duration::from_millis(800),
        "the dead-lettered message must not come back",
    )
    .await;
    let letters = queue
        .dead_letters()
        .list(None, 10)
        .await
        .unwrap_or_else(|e| panic!("{case}: list failed: {e}"));
    assert_eq!(letters.len(), 1, "{case}: {letters:?}");
    assert_eq!(letters[0].group, group.name);
    assert_same_message(case, &letters[0].message, &doomed);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].last_error, "handler said no");
    let missing = queue
        .dead_letters()
        .get("no-such-dead-letter")
        .await
        .unwrap_or_else(|e| panic!("{case}: get of an unknown id failed: {e}"));
    assert_eq!(missing, None);
}

/// Replay delivers a dead letter again to its group only, with a fresh attempt count, and
/// removes it; replaying it again finds nothing.
pub async fn replay(factory: &dyn QueueFactory) {
    let case = "replay";
    let queue = factory.fresh().await;
    let failing = declare(case, &*queue, &spec("c-replay-a", LONG_LEASE, 5)).await;
    let other = declare(case, &*queue, &spec("c-replay-b", LONG_LEASE, 5)).await;
    let m = message("replay-1", "k");
    publish(case, &*queue, &m).await;
    let got = receive_n(case, &*failing, 1, "the message in the failing group").await;
    sub_nack_to_attempt_two(case, &*failing, &got[0]).await;
    let got = receive_n(case, &*failing, 1, "the retry").await;
    assert_eq!(got[0].attempt, 2);
    failing
        .dead_letter(&got[0], "boom")
        .await
        .unwrap_or_else(|e| panic!("{case}: dead_letter failed: {e}"));
    let got_other = receive_n(case, &*other, 1, "the message in the other group").await;
    ack(case, &*other, &got_other[0]).await;

    let letters = queue
        .dead_letters()
        .list(None, 10)
        .await
        .unwrap_or_else(|e| panic!("{case}: list failed: {e}"));
    assert_eq!(letters.len(), 1, "{case}: {letters:?}");
    let id = letters[0].id.clone();
    assert!(
        queue
            .dead_letters()
            .replay(&id)
            .await
            .unwrap_or_else(|e| panic!("{case}: replay failed: {e}")),
        "{case}: replay of a stored dead letter said there was none"
    );
    assert_eq!(dead_letter_count(case, &*queue).await, 0);
    assert_eq!(
        queue.dead_letters().get(&id).await.ok().flatten(),
        None,
        "{case}: the replayed dead letter is still there"
    );
    let again = receive_n(case, &*failing, 1, "the replayed message").await;
    assert_same_message(case, &again[0].message, &m);
    assert_eq!(
        again[0].attempt, 1,
        "{case}: a replay starts attempts afresh"
    );
    ack(case, &*failing, &again[0]).await;
    expect_none(
        case,
        &*other,
        Duration::from_millis(800),
        "a replay goes to the group that gave up only",
    )
    .await;
    assert!(
        !queue
            .dead_letters()
            .replay(&id)
            .await
            .unwrap_or_else(|e| panic!("{case}: second replay failed: {e}")),
        "{case}: a dead letter replayed twice"
    );
}

async fn sub_nack_to_attempt_two(case: &str, sub: &dyn Subscription, d: &Delivery) {
    sub.nack(d, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{case}: nack failed: {e}"));
}

/// Dead letters are listed oldest first and paged with `after`; `delete` removes one (and
/// says whether it was there), `purge` all (and says how many), `len` counts.
pub async fn delete_purge_len(factory: &dyn QueueFactory) {
    let case = "delete_purge_len";
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-dlq-ops", LONG_LEASE, 5)).await;
    for i in 1..=3 {
        publish(
            case,
            &*queue,
            &message(&format!("ops-{i}"), &format!("k{i}")),
        )
        .await;
    }
    let mut got = receive_n(case, &*sub, 3, "three messages").await;
    got.sort_by(|a, b| a.message.id.cmp(&b.message.id));
    for d in &got {
        sub.dead_letter(d, &format!("error of {}", d.message.id))
            .await
            .unwrap_or_else(|e| panic!("{case}: dead_letter failed: {e}"));
    }
    let dlq = queue.dead_letters();
    assert_eq!(dead_letter_count(case, &*queue).await, 3);
    let listed = dlq
        .list(None, 10)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let listed_ids: Vec<&str> = listed.iter().map(|l| l.message.id.as_str()).collect();
    assert_eq!(
        listed_ids,
        ["ops-1", "ops-2", "ops-3"],
        "{case}: not oldest first"
    );
    assert_eq!(listed[1].last_error, "error of ops-2");
    let page = dlq
        .list(None, 2)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(page, listed[..2], "{case}: a page of 2");
    let rest = dlq
        .list(Some(&page[1].id), 10)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(rest, listed[2..], "{case}: the page after the second");
    assert!(
        dlq.delete(&listed[0].id)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"))
    );
    assert!(
        !dlq.delete(&listed[0].id)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}")),
        "{case}: deleted twice"
    );
    assert_eq!(dlq.get(&listed[0].id).await.ok().flatten(), None);
    assert_eq!(dead_letter_count(case, &*queue).await, 2);
    assert_eq!(
        dlq.purge().await.unwrap_or_else(|e| panic!("{case}: {e}")),
        2
    );
    assert_eq!(dead_letter_count(case, &*queue).await, 0);
    assert!(
        dlq.list(None, 10)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"))
            .is_empty()
    );
    assert_eq!(
        dlq.purge().await.unwrap_or_else(|e| panic!("{case}: {e}")),
        0
    );
    // Deleted, not settled: the messages do not come back to the group.
    expect_none(
        case,
        &*sub,
        Duration::from_millis(500),
        "dead letters were deleted",
    )
    .await;
}

/// Four receivers of one group, released together, share 200 messages: each delivered to
/// one of them, all delivered, none twice (the lease is far longer than the run), and each
/// key in publish order.
pub async fn concurrent_consumers(factory: &dyn QueueFactory) {
    const RECEIVERS: usize = 4;
    const MESSAGES: usize = 200;
    let case = "concurrent_consumers";
    let queue = factory.fresh().await;
    let group = spec("c-compete", LONG_LEASE, 5);
    declare(case, &*queue, &group).await;
    for i in 0..MESSAGES {
        publish(
            case,
            &*queue,
            &message(&format!("c-{i:03}"), &format!("k{}", i % 40)),
        )
        .await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(RECEIVERS));
    // (receiver, id, attempt), in the order received.
    let log: Arc<Mutex<Vec<(usize, String, u32)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for receiver in 0..RECEIVERS {
        let queue = Arc::clone(&queue);
        let group = group.clone();
        let barrier = Arc::clone(&barrier);
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let sub = declare(case, &*queue, &group).await;
            barrier.wait().await;
            let start = Instant::now();
            loop {
                let done = log.lock().map(|l| l.len() >= MESSAGES).unwrap_or(true);
                if done || start.elapsed() > BOUND * 2 {
                    return;
                }
                let got = receive(case, &*sub, 8, Duration::from_millis(100)).await;
                if let Ok(mut log) = log.lock() {
                    for d in &got {
                        log.push((receiver, d.message.id.clone(), d.attempt));
                    }
                }
                for d in &got {
                    ack(case, &*sub, d).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await
            .unwrap_or_else(|e| panic!("{case}: a receiver panicked: {e}"));
    }
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let mut seen = HashSet::new();
    for (receiver, id, attempt) in &log {
        assert!(
            seen.insert(id.clone()),
            "{case}: {id} delivered twice (again to receiver {receiver}, attempt {attempt}) within its lease"
        );
        assert_eq!(*attempt, 1, "{case}: {id} redelivered within its lease");
    }
    assert_eq!(
        seen.len(),
        MESSAGES,
        "{case}: {} of {MESSAGES} delivered",
        seen.len()
    );
    // Receipt of a key's next message follows the ack of the one before, so the log holds
    // each key in publish order.
    let mut last: HashMap<usize, usize> = HashMap::new();
    for (_, id, _) in &log {
        let i: usize = id[2..].parse().unwrap_or(0);
        if let Some(previous) = last.insert(i % 40, i) {
            assert!(
                previous < i,
                "{case}: key k{} delivered c-{i:03} after c-{previous:03}",
                i % 40
            );
        }
    }
}

/// Two groups each receive every message, settling independently.
pub async fn two_groups(factory: &dyn QueueFactory) {
    let case = "two_groups";
    let queue = factory.fresh().await;
    let one = declare(case, &*queue, &spec("c-fan-1", LONG_LEASE, 5)).await;
    let two = declare(case, &*queue, &spec("c-fan-2", LONG_LEASE, 5)).await;
    let want: HashSet<String> = (0..20).map(|i| format!("fan-{i}")).collect();
    for i in 0..20 {
        publish(
            case,
            &*queue,
            &message(&format!("fan-{i}"), &format!("k{}", i % 7)),
        )
        .await;
    }
    for (name, sub) in [("c-fan-1", &one), ("c-fan-2", &two)] {
        let mut got = HashSet::new();
        let start = Instant::now();
        while got.len() < want.len() {
            assert!(
                start.elapsed() < BOUND,
                "{case}: group {name} got {} of 20",
                got.len()
            );
            for d in receive(case, &**sub, 20, POLL).await {
                assert!(
                    got.insert(d.message.id.clone()),
                    "{case}: group {name} got {} twice",
                    d.message.id
                );
                ack(case, &**sub, &d).await;
            }
        }
        assert_eq!(got, want, "{case}: group {name}");
    }
}

/// A group sees only what is published after it is first declared.
pub async fn late_group(factory: &dyn QueueFactory) {
    let case = "late_group";
    let queue = factory.fresh().await;
    let early = declare(case, &*queue, &spec("c-early", LONG_LEASE, 5)).await;
    publish(case, &*queue, &message("late-before", "k1")).await;
    let late = declare(case, &*queue, &spec("c-late", LONG_LEASE, 5)).await;
    publish(case, &*queue, &message("late-after", "k2")).await;
    let got = receive_n(case, &*late, 1, "the message published after declaring").await;
    assert_eq!(
        got[0].message.id, "late-after",
        "{case}: a late group got a message published before it"
    );
    ack(case, &*late, &got[0]).await;
    expect_none(
        case,
        &*late,
        Duration::from_millis(800),
        "the late group must not see the earlier message",
    )
    .await;
    let got = receive_n(case, &*early, 2, "both messages in the early group").await;
    find(case, &got, "late-before");
    find(case, &got, "late-after");
}

/// Stats count a group's backlog (depth, including in flight) and what is leased now.
pub async fn stats(factory: &dyn QueueFactory) {
    let case = "stats";
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-stats", LONG_LEASE, 5)).await;
    stats_until(case, &*queue, "c-stats", "an empty group", |s| {
        s.depth == 0 && s.in_flight == 0 && s.oldest_age.is_none()
    })
    .await;
    for i in 1..=5 {
        publish(
            case,
            &*queue,
            &message(&format!("stats-{i}"), &format!("k{i}")),
        )
        .await;
    }
    stats_until(case, &*queue, "c-stats", "depth 5, none in flight", |s| {
        s.depth == 5 && s.in_flight == 0 && s.oldest_age.is_some()
    })
    .await;
    let got = receive_n(case, &*sub, 2, "two messages").await;
    stats_until(case, &*queue, "c-stats", "depth 5, 2 in flight", |s| {
        s.depth == 5 && s.in_flight == 2
    })
    .await;
    ack(case, &*sub, &got[0]).await;
    stats_until(case, &*queue, "c-stats", "depth 4, 1 in flight", |s| {
        s.depth == 4 && s.in_flight == 1
    })
    .await;
    sub.dead_letter(&got[1], "stats")
        .await
        .unwrap_or_else(|e| panic!("{case}: dead_letter failed: {e}"));
    let last = stats_until(case, &*queue, "c-stats", "depth 3, none in flight", |s| {
        s.depth == 3 && s.in_flight == 0
    })
    .await;
    assert!(
        last.oldest_age
            .is_some_and(|age| age < Duration::from_secs(600)),
        "{case}: oldest_age {:?}",
        last.oldest_age
    );
}

/// Bad group specs and messages are refused as `Invalid`, and nothing is stored.
pub async fn invalid_input(factory: &dyn QueueFactory) {
    let case = "invalid_input";
    let queue = factory.fresh().await;
    for bad in [
        spec("bad name!", LONG_LEASE, 5),
        spec("", LONG_LEASE, 5),
        spec("c-zero-attempts", LONG_LEASE, 0),
        spec("c-zero-lease", Duration::ZERO, 5),
    ] {
        match queue.declare(&bad).await {
            Err(QueueError::Invalid { .. }) => {}
            Err(other) => panic!("{case}: declaring {bad:?} gave {other}, not Invalid"),
            Ok(_) => panic!("{case}: declaring {bad:?} was accepted"),
        }
    }
    let sub = declare(case, &*queue, &spec("c-valid", SHORT_LEASE, 5)).await;
    for bad in [
        message("", "k"),
        Message {
            topic: String::new(),
            ..message("no-topic", "k")
        },
    ] {
        match queue.publish(&bad).await {
            Err(QueueError::Invalid { .. }) => {}
            other => panic!("{case}: publishing {bad:?} gave {other:?}, not Invalid"),
        }
    }
    expect_none(
        case,
        &*sub,
        Duration::from_millis(500),
        "only invalid messages were published",
    )
    .await;
}

/// Nacked and dead-lettered deliveries, once settled by ack, are gone; a redelivered
/// message acked on its second attempt is not delivered a third time.
pub async fn nothing_redelivered_after_settling(factory: &dyn QueueFactory) {
    let case = "nothing_redelivered_after_settling";
    let queue = factory.fresh().await;
    let sub = declare(case, &*queue, &spec("c-settle", SHORT_LEASE, 5)).await;
    publish(case, &*queue, &message("settle-1", "k1")).await;
    publish(case, &*queue, &message("settle-2", "k2")).await;
    let got = receive_n(case, &*sub, 2, "both messages").await;
    let one = find(case, &got, "settle-1");
    let two = find(case, &got, "settle-2");
    sub.nack(one, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{case}: nack failed: {e}"));
    sub.dead_letter(two, "no")
        .await
        .unwrap_or_else(|e| panic!("{case}: dead_letter failed: {e}"));
    let again = receive_n(case, &*sub, 1, "the nacked message").await;
    assert_eq!(
        (again[0].message.id.as_str(), again[0].attempt),
        ("settle-1", 2)
    );
    ack(case, &*sub, &again[0]).await;
    expect_none(case, &*sub, SHORT_LEASE * 3, "both messages were settled").await;
}
