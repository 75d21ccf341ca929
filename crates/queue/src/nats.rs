//! The queue on NATS JetStream (`async-nats`), for deployments that run several processes
//! against one NATS server or cluster.
//!
//! # Supported servers
//!
//! nats-server **2.9** and later. The client is built without the `server_2_10`+ features, so
//! every request it sends is one a 2.9 server understands (one filter subject per consumer, no
//! stream metadata, no per-message TTL or scheduling); later servers accept the same requests.
//! Tested against 2.9.10.
//!
//! # What is created on the server
//!
//! - The **events stream** (`BAZAAR_EVENTS` by default; file storage, limits retention,
//!   `max_age`, `duplicate_window`, `replicas`) on `{prefix}.>`. A message is stored on one of
//!   `partitions` subjects, `{prefix}.p{n}`, with `n = xxh3(key) mod partitions`. Its headers:
//!   `Nats-Msg-Id` (the message id: the stream's duplicate window absorbs a republished id),
//!   `Bazaar-Key`, `Bazaar-Topic`, and `Bazaar-Delay-Ns` when it has a delay. The stream's
//!   description records the partition count, and a queue opened with another count is
//!   refused: changing it would move keys between partitions while earlier messages wait.
//! - Per group, one **durable pull consumer per partition**, `{group}-p{n}`, filtered on
//!   `{prefix}.p{n}`: explicit acks, `ack_wait` = the group's lease, `max_ack_pending` = 1,
//!   `max_deliver` = `max_attempts + 2` (below), delivering messages published after the
//!   consumer was created (`deliver_policy` new; a partition created later than its
//!   siblings, after an interrupted declare, starts at the first one's creation time instead).
//!   `max_ack_pending = 1` is what gives order per key: the server does not deliver a
//!   partition's next message while one is unacknowledged — leased, or waiting out a nack
//!   delay — so a key's messages go one at a time, in stream order.
//! - The **dead-letter stream** (`BAZAAR_DLQ` by default) on `{prefix}-dlq.>`: one message per
//!   dead letter on `{prefix}-dlq.{group}`, its payload the original payload and the rest in a
//!   JSON `Bazaar-Dead-Letter` header (group, id, key, topic, delay, attempts, last error,
//!   published and dead times, the original stream sequence). Its id is its stream sequence.
//!   Records are published with `Nats-Msg-Id` `dlq-{group}-{sequence}`, so the same message
//!   dead-lettered twice (a retry after a crash, two processes handling one advisory) is
//!   stored once.
//!
//! # Receiving
//!
//! A subscription runs one puller task per partition. A puller pulls (one message, expiring
//! after `pull_expiry`) only while some `receive` call is waiting, so a process that is not
//! asking does not take messages other processes could have. A pull cannot be withdrawn, so a
//! message may arrive after the `receive` that asked returned; the puller keeps it leased
//! (`+WPI` every third of the lease) until the next `receive` takes it, and refreshes the lease
//! when handing it out, so a receiver always gets a full lease. A dropped subscription naks
//! what it holds and its pullers stop once their last pull expires.
//!
//! # How the promises map onto JetStream, and where they are weaker
//!
//! - **Durable publish**: `publish` returns on the stream's acknowledgement. On 2.9 that means
//!   written to the server's files but not necessarily fsynced: the server syncs on a timer,
//!   and the `jetstream { sync_interval: always }` setting that makes every write synced only
//!   exists from 2.10 (a 2.9 server refuses it as an unknown field). See `docs/nats.md`.
//! - **Deduplication** holds within `duplicate_window` (default one hour), not forever.
//! - **Order per key** holds per partition, which implies it per key — with the cost that a
//!   message that is leased or waiting on a retry delay holds up every other key of its
//!   partition, and a group works on at most `partitions` messages at once.
//! - **Delayed delivery**: JetStream 2.9 cannot schedule a message. The first delivery of a
//!   delayed message is therefore never handed out: the puller naks it with the time left
//!   (`-NAK {"delay": …}`; zero when the delay has passed), and the server redelivers it when
//!   it is due. That first, hidden delivery counts in the server's delivery count, so a
//!   delayed message's attempt is the count minus one, and its consumer needs one more
//!   delivery than `max_attempts` (one of the two in `max_attempts + 2`). While it waits, the
//!   message is unacknowledged, so it holds up its partition like a retry does: a delay is
//!   a delay for the partition's later messages too. If a receiver crashes holding such a
//!   message before naking it, the lease expiry redelivers it early and it is naked again:
//!   its attempts then read one higher than they should.
//! - **Leases and `LeaseLost`**: the server accepts an ack for a message by its stream
//!   sequence, even after the lease ran out and the message went to another receiver (and a
//!   repeated ack is answered like the first). So the lease is checked on the client: a
//!   receipt carries its deadline, and `ack`, `nack` and `dead_letter` after it (or a second
//!   settle of a receipt this subscription issued) return `LeaseLost` without sending
//!   anything. The deadline is kept a little short of the server's (a tenth of the lease, at
//!   most 100 ms) so that an ack sent in time arrives in time.
//! - **Giving up on unsettled messages**: when a delivery arrives whose attempt would exceed
//!   `max_attempts` (the last lease ran out), the puller writes the dead letter ("lease expired
//!   N times") and terminates the message (`+TERM`). This is the second extra delivery in
//!   `max_attempts + 2`. If the process doing that crashes too, the server stops at
//!   `max_deliver` and publishes the `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES` advisory;
//!   every open queue listens for it, fetches the message by sequence and writes the dead
//!   letter. Advisories are core NATS messages, not stored: if no queue is connected when it
//!   is published, that message is dropped by its group without a dead letter. The expiry
//!   itself is noticed only when the group pulls again (the server checks for redelivery on
//!   a pull), so a group nobody receives for never dead-letters anything.
//! - **Dead letter** publishes the record, then terminates the message. A crash between the
//!   two redelivers the message; dead-lettering it again is absorbed by the record's id
//!   within the duplicate window, but if the redelivery is instead acknowledged, the dead
//!   letter stays although the message was handled.
//! - **Replay** republishes the message on its key's partition subject with a `Bazaar-Group`
//!   header naming the group (other groups' pullers acknowledge it unseen) and a
//!   `Nats-Msg-Id` of `replay-{dlq stream}-{id}`, then deletes the dead letter: a replay
//!   interrupted between the two and repeated is stored once. A replay is not delayed again.
//! - **Stats** come from consumer info: depth is `num_pending + num_ack_pending` summed over a
//!   group's partitions (it includes replays addressed to other groups until they are skipped),
//!   in-flight is `num_ack_pending` less the deliveries this process's pullers hold for its
//!   next `receive`; it still counts messages waiting out a nack or a delivery delay, and
//!   deliveries other processes' pullers hold. The oldest age is the age of
//!   the first message after each partition's ack floor, so it can name an acknowledged
//!   message above a later unacknowledged one (it is never younger than the truth).
//! - **Retention**: the events stream keeps messages for `max_age` (default seven days),
//!   whether or not every group acknowledged them: a group that falls further behind than
//!   that loses the oldest messages without a dead letter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self as js, ErrorCode};
use async_nats::{HeaderMap, HeaderValue, RequestErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot, watch};

use crate::{
    DeadLetter, DeadLetters, Delivery, GroupSpec, GroupStats, Message, Published, Queue,
    QueueError, Receipt, Subscription,
};

const HEADER_MSG_ID: &str = "Nats-Msg-Id";
const HEADER_ID: &str = "Bazaar-Id";
const HEADER_KEY: &str = "Bazaar-Key";
const HEADER_TOPIC: &str = "Bazaar-Topic";
const HEADER_DELAY: &str = "Bazaar-Delay-Ns";
const HEADER_GROUP: &str = "Bazaar-Group";
const HEADER_PUBLISHED: &str = "Bazaar-Published-Ns";
const HEADER_DEAD: &str = "Bazaar-Dead-Letter";

/// Longest group name: consumer names carry it with a `-p{n}` suffix.
const MAX_GROUP_NAME: usize = 64;
/// Longest `last_error` kept in a dead letter (it travels in a header).
const MAX_ERROR_LEN: usize = 4096;
/// Shortest lease: a held delivery is kept leased with a `+WPI` every third of it.
const MIN_LEASE: Duration = Duration::from_millis(100);
/// How long a puller waits after a failed pull before pulling again.
const PULL_BACKOFF: Duration = Duration::from_millis(250);

/// Where and how the JetStream queue keeps its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// The server (`nats://127.0.0.1:4222`; several separated by commas).
    pub url: String,
    /// The events stream.
    pub stream: String,
    /// The dead-letter stream.
    pub dead_letter_stream: String,
    /// Subjects are `{prefix}.p{n}` for events and `{prefix}-dlq.{group}` for dead letters.
    pub subject_prefix: String,
    /// Partition subjects keys are hashed onto; fixed for the life of the stream. It bounds
    /// how many messages one group works on at once.
    pub partitions: u16,
    /// How long a message id is remembered for deduplication; at most `max_age`.
    pub duplicate_window: Duration,
    /// How long the events stream keeps a message, acknowledged or not.
    pub max_age: Duration,
    /// Stream replicas (1 on a single server; 3 on a cluster).
    pub replicas: usize,
    /// How long one pull request waits on the server; it bounds how long a pull outlives the
    /// `receive` that asked for it.
    pub pull_expiry: Duration,
    /// Bound on connecting.
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream: "BAZAAR_EVENTS".to_owned(),
            dead_letter_stream: "BAZAAR_DLQ".to_owned(),
            subject_prefix: "bazaar.events".to_owned(),
            partitions: 16,
            duplicate_window: Duration::from_secs(60 * 60),
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            replicas: 1,
            pull_expiry: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsConfig {
    /// The defaults, at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), QueueError> {
        for (what, name) in [
            ("stream name", &self.stream),
            ("dead-letter stream name", &self.dead_letter_stream),
        ] {
            if !is_stream_name(name) {
                return Err(invalid(
                    what,
                    format!("{name:?}: letters, digits, `-` and `_` only"),
                ));
            }
        }
        if self.stream == self.dead_letter_stream {
            return Err(invalid(
                "dead-letter stream name",
                "must differ from the events stream".to_owned(),
            ));
        }
        if self.subject_prefix.is_empty() || !self.subject_prefix.split('.').all(is_subject_token) {
            return Err(invalid(
                "subject prefix",
                format!(
                    "{:?}: dot-separated tokens of letters, digits, `-` and `_`",
                    self.subject_prefix
                ),
            ));
        }
        if self.partitions == 0 {
            return Err(invalid("partitions", "at least 1".to_owned()));
        }
        if self.duplicate_window.is_zero() {
            return Err(invalid("duplicate window", "must be positive".to_owned()));
        }
        if !self.max_age.is_zero() && self.duplicate_window > self.max_age {
            return Err(invalid(
                "duplicate window",
                "must not exceed max_age".to_owned(),
            ));
        }
        if self.replicas == 0 {
            return Err(invalid("replicas", "at least 1".to_owned()));
        }
        if self.pull_expiry < Duration::from_millis(10) {
            return Err(invalid("pull expiry", "at least 10 ms".to_owned()));
        }
        Ok(())
    }

    fn description(&self) -> String {
        format!("bazaar-queue events, {} partitions", self.partitions)
    }
}

/// The queue on JetStream. Cheap to share behind an `Arc`; every subscription holds the
/// connection too.
#[derive(Debug)]
pub struct NatsQueue {
    inner: Arc<Inner>,
    dead: NatsDeadLetters,
    _advisories: AbortOnDrop,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    events: stream::Stream,
    dlq: stream::Stream,
    js: js::Context,
    config: NatsConfig,
    /// Per group, deliveries this process's pullers hold for a `receive`: the server counts
    /// them as unacknowledged, `stats` does not count them in flight.
    held: Mutex<HashMap<String, u64>>,
}

impl NatsQueue {
    /// Connects, creates (or checks and updates) both streams, and starts listening for the
    /// server's max-deliveries advisories.
    pub async fn connect(config: NatsConfig) -> Result<Self, QueueError> {
        config.validate()?;
        let client = async_nats::ConnectOptions::new()
            .name("bazaar-queue")
            .connection_timeout(config.connect_timeout)
            .connect(config.url.as_str())
            .await
            .map_err(backend)?;
        let js = js::new(client.clone());
        let events = ensure_stream(
            &js,
            stream::Config {
                name: config.stream.clone(),
                description: Some(config.description()),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                num_replicas: config.replicas,
                duplicate_window: config.duplicate_window,
                max_age: config.max_age,
                ..Default::default()
            },
        )
        .await?;
        let dlq = ensure_stream(
            &js,
            stream::Config {
                name: config.dead_letter_stream.clone(),
                description: Some("bazaar-queue dead letters".to_owned()),
                subjects: vec![format!("{}-dlq.>", config.subject_prefix)],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                num_replicas: config.replicas,
                duplicate_window: config.duplicate_window,
                ..Default::default()
            },
        )
        .await?;
        let inner = Arc::new(Inner {
            client,
            events,
            dlq,
            js,
            config,
            held: Mutex::new(HashMap::new()),
        });
        let advisories = inner
            .client
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
                inner.config.stream
            ))
            .await
            .map_err(backend)?;
        inner.client.flush().await.map_err(backend)?;
        let listener = tokio::spawn(listen_for_advisories(inner.clone(), advisories));
        Ok(Self {
            dead: NatsDeadLetters {
                inner: inner.clone(),
            },
            inner,
            _advisories: AbortOnDrop(listener),
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// Deletes both streams with everything in them (groups included). For tests and
    /// teardown; the queue is unusable afterwards.
    pub async fn delete_streams(&self) -> Result<(), QueueError> {
        for name in [
            &self.inner.config.stream,
            &self.inner.config.dead_letter_stream,
        ] {
            match self.inner.js.delete_stream(name).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }
}

/// Creates the stream, or brings an existing one to `config` (refusing one whose partition
/// count or storage differs).
async fn ensure_stream(
    js: &js::Context,
    config: stream::Config,
) -> Result<stream::Stream, QueueError> {
    match js.get_stream(&config.name).await {
        Ok(existing) => {
            let have = &existing.cached_info().config;
            if have.description != config.description {
                return Err(invalid(
                    "stream",
                    format!(
                        "{} exists as {:?}, not {:?}: another queue layout (partitions) uses it",
                        config.name,
                        have.description.as_deref().unwrap_or(""),
                        config.description.as_deref().unwrap_or("")
                    ),
                ));
            }
            if have.storage != config.storage || have.retention != config.retention {
                return Err(invalid(
                    "stream",
                    format!("{} exists with another storage or retention", config.name),
                ));
            }
            if have.subjects != config.subjects
                || have.duplicate_window != config.duplicate_window
                || have.max_age != config.max_age
                || have.num_replicas != config.num_replicas
            {
                let mut update = have.clone();
                update.subjects = config.subjects.clone();
                update.duplicate_window = config.duplicate_window;
                update.max_age = config.max_age;
                update.num_replicas = config.num_replicas;
                js.update_stream(&update).await.map_err(backend)?;
                return js.get_stream(&config.name).await.map_err(backend);
            }
            Ok(existing)
        }
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            match js.create_stream(config.clone()).await {
                Ok(created) => Ok(created),
                // Another process may have created it meanwhile; if not, the creation's
                // error (subjects overlapping another stream's, no JetStream) is the answer.
                Err(create) => js
                    .get_stream(&config.name)
                    .await
                    .map_err(|_| backend(create)),
            }
        }
        Err(e) => Err(backend(e)),
    }
}

/// The partition an ordering key is hashed onto among `partitions`: keys of one partition
/// are delivered in one order, so a message held back holds back its partition's keys.
pub fn partition_of(key: &str, partitions: u16) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(partitions.max(1))) as u16
}

impl Inner {
    fn partition_of(&self, key: &str) -> u16 {
        partition_of(key, self.config.partitions)
    }

    fn partition_subject(&self, partition: u16) -> String {
        format!("{}.p{partition}", self.config.subject_prefix)
    }

    fn dlq_subject(&self, group: &str) -> String {
        format!("{}-dlq.{group}", self.config.subject_prefix)
    }

    fn dlq_filter(&self) -> String {
        format!("{}-dlq.>", self.config.subject_prefix)
    }

    fn count_held(&self, group: &str, more: bool) {
        let mut held = lock(&self.held);
        let count = held.entry(group.to_owned()).or_default();
        *count = if more {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
    }

    /// Publishes one message with `headers` and waits for the stream's acknowledgement.
    async fn store(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, QueueError> {
        let ack = self
            .js
            .send_publish(
                subject,
                PublishMessage::build().headers(headers).payload(payload),
            )
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(if ack.duplicate {
            Published::Duplicate
        } else {
            Published::Stored
        })
    }

    /// Stores a dead letter for the message at `stream_seq` of the events stream.
    async fn write_dead_letter(&self, meta: &DeadMeta, payload: Bytes) -> Result<(), QueueError> {
        let json = serde_json::to_string(meta).map_err(backend)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_MSG_ID,
            header_value(
                "dead letter",
                &format!("dlq-{}-{}", meta.group, meta.stream_seq),
            )?,
        );
        headers.insert(HEADER_DEAD, header_value("dead letter", &json)?);
        self.store(self.dlq_subject(&meta.group), headers, payload)
            .await
            .map(|_| ())
    }

    /// Sends an ack of `kind` (`+ACK`, `-NAK …`, `+TERM`) and waits for the server to take it.
    async fn settle(&self, reply: &str, kind: js::AckKind) -> Result<(), QueueError> {
        match self.client.request(reply.to_owned(), kind.into()).await {
            Ok(_) => Ok(()),
            // The consumer is gone (the group was deleted): nothing holds the lease.
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Err(QueueError::LeaseLost),
            Err(e) => Err(backend(e)),
        }
    }

    /// `settle` for the pullers' own bookkeeping, where a failure only means the server will
    /// redeliver when the lease runs out.
    async fn settle_quietly(&self, reply: &str, kind: js::AckKind) {
        if let Err(error) = self.settle(reply, kind).await {
            tracing::warn!(%error, reply, "could not settle a JetStream delivery");
        }
    }
}

#[async_trait]
impl Queue for NatsQueue {
    async fn publish(&self, message: &Message) -> Result<Published, QueueError> {
        if message.id.is_empty() {
            return Err(invalid("message id", "must not be empty".to_owned()));
        }
        if message.topic.is_empty() {
            return Err(invalid("topic", "must not be empty".to_owned()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, header_value("message id", &message.id)?);
        headers.insert(HEADER_KEY, header_value("key", &message.key)?);
        headers.insert(HEADER_TOPIC, header_value("topic", &message.topic)?);
        if let Some(delay) = message.delay {
            let nanos = u64::try_from(delay.as_nanos())
                .map_err(|_| invalid("delay", "longer than 584 years".to_owned()))?;
            headers.insert(HEADER_DELAY, HeaderValue::from(nanos));
        }
        let subject = self
            .inner
            .partition_subject(self.inner.partition_of(&message.key));
        self.inner
            .store(subject, headers, message.payload.clone())
            .await
    }

    async fn declare(&self, group: &GroupSpec) -> Result<Box<dyn Subscription>, QueueError> {
        validate_group(group)?;
        let partitions = self.inner.config.partitions;
        let mut existing: Vec<Option<consumer::Info>> = Vec::with_capacity(partitions.into());
        for partition in 0..partitions {
            let name = consumer_name(&group.name, partition);
            match self.inner.events.consumer_info(&name).await {
                Ok(info) => existing.push(Some(info)),
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => existing.push(None),
                Err(e) => return Err(backend(e)),
            }
        }
        // A group starts at messages published after its first declaration. Partitions a
        // crashed declare did not create start where their first sibling did.
        let start = existing
            .iter()
            .flatten()
            .map(|info| info.created)
            .min()
            .map_or(DeliverPolicy::New, |start_time| {
                DeliverPolicy::ByStartTime { start_time }
            });
        let mut consumers = Vec::with_capacity(partitions.into());
        for (partition, info) in (0..partitions).zip(existing) {
            let name = consumer_name(&group.name, partition);
            let filter = self.inner.partition_subject(partition);
            let wanted = |deliver_policy: DeliverPolicy| pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("bazaar-queue group {}", group.name)),
                filter_subject: filter.clone(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: group.lease,
                max_deliver: i64::from(group.max_attempts) + 2,
                max_ack_pending: 1,
                deliver_policy,
                ..Default::default()
            };
            let config = match info {
                None => wanted(start),
                Some(info) => {
                    if info.config.filter_subject != filter || info.config.max_ack_pending != 1 {
                        return Err(invalid(
                            "group",
                            format!("consumer {name} exists but is not this queue's"),
                        ));
                    }
                    wanted(info.config.deliver_policy)
                }
            };
            let consumer: PullConsumer = match self.inner.events.create_consumer(config).await {
                Ok(consumer) => consumer,
                // Two processes declared a new group at once and the other one won with
                // another start: take the consumer it created.
                Err(create) => self
                    .inner
                    .events
                    .get_consumer(&name)
                    .await
                    .map_err(|_| backend(create))?,
            };
            consumers.push(consumer);
        }
        Ok(Box::new(NatsSubscription::start(
            self.inner.clone(),
            group.clone(),
            consumers,
        )))
    }

    async fn stats(&self) -> Result<Vec<GroupStats>, QueueError> {
        let mut infos = Vec::new();
        let mut listing = self.inner.events.consumers();
        while let Some(info) = listing.next().await {
            infos.push(info.map_err(backend)?);
        }
        let held = lock(&self.inner.held).clone();
        let mut groups: HashMap<String, GroupStats> = HashMap::new();
        let mut oldest: HashMap<String, SystemTime> = HashMap::new();
        for info in infos {
            let Some((group, partition)) = group_of_consumer(&info.name) else {
                continue;
            };
            if partition >= self.inner.config.partitions {
                continue;
            }
            let stats = groups
                .entry(group.to_owned())
                .or_insert_with(|| GroupStats {
                    group: group.to_owned(),
                    depth: 0,
                    in_flight: 0,
                    oldest_age: None,
                });
            let in_flight = info.num_ack_pending as u64;
            stats.depth += info.num_pending + in_flight;
            stats.in_flight += in_flight;
            if info.num_pending + in_flight > 0 {
                let first = self
                    .inner
                    .events
                    .get_first_raw_message_by_subject(
                        self.inner.partition_subject(partition),
                        info.ack_floor.stream_sequence + 1,
                    )
                    .await;
                match first {
                    Ok(message) => {
                        let at = SystemTime::from(message.time);
                        let slot = oldest.entry(group.to_owned()).or_insert(at);
                        *slot = (*slot).min(at);
                    }
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                    Err(e) => return Err(backend(e)),
                }
            }
        }
        let now = SystemTime::now();
        let mut stats: Vec<GroupStats> = groups
            .into_values()
            .map(|mut stats| {
                stats.oldest_age = oldest
                    .get(&stats.group)
                    .map(|at| now.duration_since(*at).unwrap_or_default());
                let held = held.get(&stats.group).copied().unwrap_or(0);
                stats.in_flight = stats.in_flight.saturating_sub(held);
                stats
            })
            .collect();
        stats.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(stats)
    }

    async fn remove_group(&self, name: &str) -> Result<bool, QueueError> {
        let mut removed = false;
        for partition in 0..self.inner.config.partitions {
            match self
                .inner
                .events
                .delete_consumer(&consumer_name(name, partition))
                .await
            {
                Ok(_) => removed = true,
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(removed)
    }

    fn dead_letters(&self) -> &dyn DeadLetters {
        &self.dead
    }
}

/// Receiving for one group: the partitions' pullers, the deliveries they hold for the next
/// `receive`, and the leases this subscription handed out.
#[derive(Debug)]
pub struct NatsSubscription {
    shared: Arc<SubShared>,
}

#[derive(Debug)]
struct SubShared {
    inner: Arc<Inner>,
    group: GroupSpec,
    /// Tells receipts this subscription issued from other processes' ones.
    token: String,
    demand: watch::Sender<Demand>,
    ready: Mutex<VecDeque<Ready>>,
    arrived: Notify,
    /// Reply subject → lease deadline, for deliveries handed out and not yet settled.
    leases: Mutex<HashMap<String, Instant>>,
    /// The last pull failure, reported by a `receive` that found nothing.
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Demand {
    waiting: usize,
    closed: bool,
}

/// A delivery a puller holds until a `receive` takes it.
#[derive(Debug)]
struct Ready {
    delivery: Delivery,
    reply: String,
    /// When the server's ack timer last started (the delivery or the last `+WPI`).
    lease_from: Instant,
    taken: oneshot::Sender<()>,
}

impl NatsSubscription {
    fn start(inner: Arc<Inner>, group: GroupSpec, consumers: Vec<PullConsumer>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let token = format!(
            "{:x}.{:x}.{:x}",
            std::process::id(),
            unix_nanos(SystemTime::now()),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let shared = Arc::new(SubShared {
            inner,
            group,
            token,
            demand: watch::Sender::new(Demand::default()),
            ready: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            leases: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
        });
        for consumer in consumers {
            tokio::spawn(pull_loop(shared.clone(), consumer));
        }
        Self { shared }
    }
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        // Pullers nak what they hold and stop after their pull in progress.
        self.shared.demand.send_modify(|d| d.closed = true);
    }
}

/// Counts a waiting `receive` while it lives.
struct Waiting<'a>(&'a SubShared);

impl<'a> Waiting<'a> {
    fn new(shared: &'a SubShared) -> Self {
        shared.demand.send_modify(|d| d.waiting += 1);
        Self(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.demand.send_modify(|d| d.waiting -= 1);
    }
}

/// One partition's puller: pulls while a `receive` waits, screens each delivery and hands
/// the rest over.
async fn pull_loop(shared: Arc<SubShared>, consumer: PullConsumer) {
    let mut demand = shared.demand.subscribe();
    loop {
        match demand.wait_for(|d| d.closed || d.waiting > 0).await {
            Ok(d) if !d.closed => {}
            _ => return,
        }
        let batch = consumer
            .batch()
            .max_messages(1)
            .expires(shared.inner.config.pull_expiry)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                shared.note_error(&error);
                tokio::time::sleep(PULL_BACKOFF).await;
                continue;
            }
        };
        while let Some(next) = batch.next().await {
            match next {
                Ok(message) => shared.admit(message).await,
                Err(error) => {
                    shared.note_error(&*error);
                    tokio::time::sleep(PULL_BACKOFF).await;
                }
            }
        }
    }
}

impl SubShared {
    fn closed(&self) -> bool {
        self.demand.borrow().closed
    }

    fn note_error(&self, error: &dyn std::error::Error) {
        tracing::debug!(group = %self.group.name, %error, "JetStream pull failed");
        *lock(&self.last_error) = Some(error.to_string());
    }

    /// Screens one delivery from the server: skips replays for other groups, holds back
    /// delayed messages, gives up on exhausted ones, and holds the rest for a `receive`.
    async fn admit(&self, message: js::Message) {
        let inner = &self.inner;
        let Some(reply) = message.reply.as_ref().map(|r| r.to_string()) else {
            return;
        };
        let Some(ack) = AckSubject::parse(&reply) else {
            return;
        };
        if self.closed() {
            inner.settle_quietly(&reply, js::AckKind::Nak(None)).await;
            return;
        }
        let stream_time = message
            .info()
            .map(|info| SystemTime::from(info.published))
            .unwrap_or_else(|_| SystemTime::now());
        let event = match Event::parse(message.headers.as_ref(), &message.payload, stream_time) {
            Ok(event) => event,
            Err(why) => {
                let meta = DeadMeta::malformed(
                    &self.group.name,
                    message.headers.as_ref(),
                    ack.delivered,
                    ack.stream_seq,
                    stream_time,
                    why,
                );
                self.give_up(&reply, &meta, message.payload.clone()).await;
                return;
            }
        };
        if event
            .only_group
            .as_deref()
            .is_some_and(|g| g != self.group.name)
        {
            inner.settle_quietly(&reply, js::AckKind::Ack).await;
            return;
        }
        let hidden = u32::from(event.held_back());
        let attempt = ack.delivered.saturating_sub(hidden).max(1);
        if let Some(delay) = event.message.delay.filter(|_| event.held_back()) {
            let due = event.published_at + delay;
            let left = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            if ack.delivered == 1 || !left.is_zero() {
                inner
                    .settle_quietly(&reply, js::AckKind::Nak(Some(left)))
                    .await;
                return;
            }
        }
        if attempt > self.group.max_attempts {
            let meta = DeadMeta::of(
                &self.group.name,
                &event,
                self.group.max_attempts,
                format!("lease expired {} times", self.group.max_attempts),
                ack.stream_seq,
            );
            self.give_up(&reply, &meta, event.message.payload.clone())
                .await;
            return;
        }
        let (taken, mut taken_rx) = oneshot::channel();
        {
            let mut ready = lock(&self.ready);
            ready.push_back(Ready {
                delivery: Delivery {
                    message: event.message,
                    attempt,
                    published_at: event.published_at,
                    receipt: Receipt(String::new()),
                },
                reply: reply.clone(),
                lease_from: Instant::now(),
                taken,
            });
            // Counted under the same lock a `receive` takes it under.
            inner.count_held(&self.group.name, true);
        }
        self.arrived.notify_waiters();
        // Keep it leased until a `receive` takes it (or the subscription closes).
        let every = self.group.lease / 3;
        let mut demand = self.demand.subscribe();
        loop {
            tokio::select! {
                _ = &mut taken_rx => return,
                _ = demand.wait_for(|d| d.closed).map(|r| r.is_ok()) => {
                    if self.unready(&reply) {
                        inner.settle_quietly(&reply, js::AckKind::Nak(None)).await;
                    }
                    return;
                }
                () = tokio::time::sleep(every) => {
                    let held = lock(&self.ready)
                        .iter_mut()
                        .find(|r| r.reply == reply)
                        .map(|r| r.lease_from = Instant::now())
                        .is_some();
                    if !held {
                        return;
                    }
                    inner.settle_quietly(&reply, js::AckKind::Progress).await;
                }
            }
        }
    }

    /// Removes a held delivery; false if a `receive` took it first.
    fn unready(&self, reply: &str) -> bool {
        let mut ready = lock(&self.ready);
        match ready.iter().position(|r| r.reply == reply) {
            Some(at) => {
                ready.remove(at);
                self.inner.count_held(&self.group.name, false);
                true
            }
            None => false,
        }
    }

    /// Dead-letters a delivery the queue gives up on, then terminates it. If the dead letter
    /// cannot be written the delivery is left to expire and come back.
    async fn give_up(&self, reply: &str, meta: &DeadMeta, payload: Bytes) {
        match self.inner.write_dead_letter(meta, payload).await {
            Ok(()) => self.inner.settle_quietly(reply, js::AckKind::Term).await,
            Err(error) => {
                tracing::warn!(group = %self.group.name, %error, "could not write a dead letter")
            }
        }
    }

    /// Up to `max` held deliveries, each with a fresh lease.
    async fn take(&self, max: usize) -> Vec<Delivery> {
        let lease = self.group.lease;
        let margin = (lease / 10).min(Duration::from_millis(100));
        let mut out = Vec::new();
        let mut refresh = Vec::new();
        {
            let mut ready = lock(&self.ready);
            let mut leases = lock(&self.leases);
            let now = Instant::now();
            leases.retain(|_, deadline| *deadline > now);
            while out.len() < max {
                let Some(mut held) = ready.pop_front() else {
                    break;
                };
                self.inner.count_held(&self.group.name, false);
                let age = now.duration_since(held.lease_from);
                if age + margin >= lease {
                    // Starved past its lease: the server will deliver it again.
                    continue;
                }
                if age > margin {
                    refresh.push(held.reply.clone());
                    held.lease_from = now;
                }
                let deadline = held.lease_from + lease - margin;
                let wall_deadline = SystemTime::now() + (deadline - now);
                held.delivery.receipt = Receipt(format!(
                    "{}|{}|{}",
                    self.token,
                    unix_nanos(wall_deadline),
                    held.reply
                ));
                leases.insert(held.reply.clone(), deadline);
                let _ = held.taken.send(());
                out.push(held.delivery);
            }
        }
        for reply in refresh {
            self.inner
                .settle_quietly(&reply, js::AckKind::Progress)
                .await;
        }
        out
    }

    /// The reply subject of a receipt whose lease this group still holds. With `take`, the
    /// lease is taken out of this subscription's books, so a second settle finds none.
    fn claim(&self, receipt: &Receipt, take: bool) -> Result<Claim, QueueError> {
        let mut parts = receipt.0.splitn(3, '|');
        let (Some(token), Some(deadline), Some(reply)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(QueueError::LeaseLost);
        };
        let ack = AckSubject::parse(reply).ok_or(QueueError::LeaseLost)?;
        if ack.stream != self.inner.config.stream
            || consumer_group(&ack.consumer, &self.group.name).is_none()
        {
            return Err(QueueError::LeaseLost);
        }
        let mut own = None;
        if token == self.token {
            let mut leases = lock(&self.leases);
            match leases.get(reply).copied() {
                Some(deadline) if Instant::now() < deadline => {
                    if take {
                        leases.remove(reply);
                    }
                    own = Some(deadline);
                }
                Some(_) => {
                    leases.remove(reply);
                    return Err(QueueError::LeaseLost);
                }
                None => return Err(QueueError::LeaseLost),
            }
        } else {
            let deadline: u64 = deadline.parse().map_err(|_| QueueError::LeaseLost)?;
            if unix_nanos(SystemTime::now()) >= deadline {
                return Err(QueueError::LeaseLost);
            }
        }
        Ok(Claim {
            reply: reply.to_owned(),
            ack,
            own,
        })
    }

    /// Settles a delivery whose lease is held; a settle lost in transit gives the lease back
    /// so that it may be retried.
    async fn settle(&self, delivery: &Delivery, kind: js::AckKind) -> Result<(), QueueError> {
        let claim = self.claim(&delivery.receipt, true)?;
        let result = self.inner.settle(&claim.reply, kind).await;
        if let (Err(QueueError::Backend(_)), Some(deadline)) = (&result, claim.own) {
            lock(&self.leases).insert(claim.reply, deadline);
        }
        result
    }
}

/// A receipt found to hold its lease.
#[derive(Debug)]
struct Claim {
    reply: String,
    ack: AckSubject,
    /// The deadline in this subscription's books, for a receipt it issued.
    own: Option<Instant>,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let shared = &*self.shared;
        let deadline = tokio::time::Instant::now() + wait;
        let _waiting = Waiting::new(shared);
        loop {
            let arrived = shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = shared.take(max).await;
            if !got.is_empty() {
                return Ok(got);
            }
            tokio::select! {
                () = arrived => {}
                () = tokio::time::sleep_until(deadline) => {
                    let got = shared.take(max).await;
                    if got.is_empty()
                        && shared.inner.client.connection_state()
                            != async_nats::connection::State::Connected
                    {
                        let why = lock(&shared.last_error)
                            .take()
                            .unwrap_or_else(|| "not connected".to_owned());
                        return Err(backend(NatsError(format!("NATS: {why}"))));
                    }
                    return Ok(got);
                }
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.shared.settle(delivery, js::AckKind::Ack).await
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let delay = delay.min(Duration::from_nanos(i64::MAX as u64));
        let kind = if delay.is_zero() {
            js::AckKind::Nak(None)
        } else {
            js::AckKind::Nak(Some(delay))
        };
        self.shared.settle(delivery, kind).await
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError> {
        let shared = &*self.shared;
        // Check the lease before writing anything; the terminate takes it.
        let claim = shared.claim(&delivery.receipt, false)?;
        let meta = DeadMeta {
            group: shared.group.name.clone(),
            id: delivery.message.id.clone(),
            key: delivery.message.key.clone(),
            topic: delivery.message.topic.clone(),
            delay_ns: delivery.message.delay.map(duration_nanos),
            attempts: delivery.attempt,
            last_error: truncate(error, MAX_ERROR_LEN),
            published_at_ns: unix_nanos(delivery.published_at),
            dead_at_ns: unix_nanos(SystemTime::now()),
            stream_seq: claim.ack.stream_seq,
        };
        shared
            .inner
            .write_dead_letter(&meta, delivery.message.payload.clone())
            .await?;
        shared.settle(delivery, js::AckKind::Term).await
    }
}

/// The dead-letter stream, read and edited by sequence.
#[derive(Debug)]
pub struct NatsDeadLetters {
    inner: Arc<Inner>,
}

impl NatsDeadLetters {
    async fn fetch(&self, sequence: u64) -> Result<Option<DeadLetter>, QueueError> {
        match self.inner.dlq.get_raw_message(sequence).await {
            Ok(message) => Ok(dead_letter_of(&message)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }
}

#[async_trait]
impl DeadLetters for NatsDeadLetters {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut next = match after {
            None => 1,
            Some(id) => parse_id(id)
                .ok_or_else(|| invalid("dead letter id", format!("{id:?}")))?
                .saturating_add(1),
        };
        let filter = self.inner.dlq_filter();
        let mut out = Vec::new();
        while out.len() < limit {
            match self
                .inner
                .dlq
                .get_first_raw_message_by_subject(&filter, next)
                .await
            {
                Ok(message) => {
                    next = message.sequence + 1;
                    out.extend(dead_letter_of(&message));
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        match parse_id(id) {
            Some(sequence) => self.fetch(sequence).await,
            None => Ok(None),
        }
    }

    async fn replay(&self, id: &str) -> Result<bool, QueueError> {
        let Some(sequence) = parse_id(id) else {
            return Ok(false);
        };
        let Some(dead) = self.fetch(sequence).await? else {
            return Ok(false);
        };
        let inner = &self.inner;
        let message = &dead.message;
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_MSG_ID,
            header_value(
                "dead letter",
                &format!("replay-{}-{sequence}", inner.config.dead_letter_stream),
            )?,
        );
        headers.insert(HEADER_ID, header_value("message id", &message.id)?);
        headers.insert(HEADER_KEY, header_value("key", &message.key)?);
        headers.insert(HEADER_TOPIC, header_value("topic", &message.topic)?);
        headers.insert(HEADER_GROUP, header_value("group", &dead.group)?);
        headers.insert(
            HEADER_PUBLISHED,
            HeaderValue::from(unix_nanos(dead.published_at)),
        );
        if let Some(delay) = message.delay {
            headers.insert(HEADER_DELAY, HeaderValue::from(duration_nanos(delay)));
        }
        let subject = inner.partition_subject(inner.partition_of(&message.key));
        inner
            .store(subject, headers, message.payload.clone())
            .await?;
        self.delete(id).await
    }

    async fn delete(&self, id: &str) -> Result<bool, QueueError> {
        let Some(sequence) = parse_id(id) else {
            return Ok(false);
        };
        match self.inner.dlq.delete_message(sequence).await {
            Ok(deleted) => Ok(deleted),
            Err(e) if e.to_string().contains("no message found") => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn purge(&self) -> Result<u64, QueueError> {
        let purged = self.inner.dlq.purge().await.map_err(backend)?;
        Ok(purged.purged)
    }

    async fn len(&self) -> Result<u64, QueueError> {
        let info = self.inner.dlq.get_info().await.map_err(backend)?;
        Ok(info.state.messages)
    }
}

/// Handles `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`: the server gave up on a message its
/// group never settled (the puller that should have dead-lettered it crashed too).
async fn listen_for_advisories(inner: Arc<Inner>, mut advisories: async_nats::Subscriber) {
    #[derive(Deserialize)]
    struct MaxDeliveries {
        stream: String,
        consumer: String,
        stream_seq: u64,
        deliveries: u32,
    }
    while let Some(message) = advisories.next().await {
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&message.payload) else {
            continue;
        };
        if advisory.stream != inner.config.stream {
            continue;
        }
        let Some((group, _)) = group_of_consumer(&advisory.consumer) else {
            continue;
        };
        let original = match inner.events.get_raw_message(advisory.stream_seq).await {
            Ok(original) => original,
            Err(error) => {
                tracing::warn!(
                    %error, group, sequence = advisory.stream_seq,
                    "a message the server gave up on is gone; no dead letter"
                );
                continue;
            }
        };
        let stream_time = SystemTime::from(original.time);
        let meta = match Event::parse(Some(&original.headers), &original.payload, stream_time) {
            Ok(event) => {
                let attempts = advisory
                    .deliveries
                    .saturating_sub(u32::from(event.held_back()));
                DeadMeta::of(
                    group,
                    &event,
                    attempts,
                    format!("lease expired {attempts} times"),
                    advisory.stream_seq,
                )
            }
            Err(why) => DeadMeta::malformed(
                group,
                Some(&original.headers),
                advisory.deliveries,
                advisory.stream_seq,
                stream_time,
                why,
            ),
        };
        if let Err(error) = inner.write_dead_letter(&meta, original.payload).await {
            tracing::warn!(%error, group, "could not write a dead letter for an advisory");
        }
    }
}

/// A message as stored on the events stream.
#[derive(Debug)]
struct Event {
    message: Message,
    published_at: SystemTime,
    /// A replay for this group only.
    only_group: Option<String>,
}

impl Event {
    fn parse(
        headers: Option<&HeaderMap>,
        payload: &Bytes,
        stream_time: SystemTime,
    ) -> Result<Self, String> {
        let headers = headers.ok_or("no headers")?;
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let id = get(HEADER_ID)
            .or_else(|| get(HEADER_MSG_ID))
            .ok_or("no message id")?;
        let key = get(HEADER_KEY).ok_or("no Bazaar-Key header")?;
        let topic = get(HEADER_TOPIC).ok_or("no Bazaar-Topic header")?;
        let delay = match get(HEADER_DELAY) {
            None => None,
            Some(nanos) => Some(Duration::from_nanos(
                nanos.parse().map_err(|_| "bad Bazaar-Delay-Ns header")?,
            )),
        };
        let published_at = match get(HEADER_PUBLISHED) {
            None => stream_time,
            Some(nanos) => from_unix_nanos(
                nanos
                    .parse()
                    .map_err(|_| "bad Bazaar-Published-Ns header")?,
            ),
        };
        Ok(Self {
            message: Message {
                id,
                key,
                topic,
                payload: payload.clone(),
                delay,
            },
            published_at,
            only_group: get(HEADER_GROUP),
        })
    }

    /// Whether its first delivery is held back until its delay has passed (a replay is not).
    fn held_back(&self) -> bool {
        self.only_group.is_none() && self.message.delay.is_some_and(|d| !d.is_zero())
    }
}

/// What a dead letter records besides the payload, in its `Bazaar-Dead-Letter` header.
#[derive(Debug, Serialize, Deserialize)]
struct DeadMeta {
    group: String,
    id: String,
    key: String,
    topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ns: Option<u64>,
    attempts: u32,
    last_error: String,
    published_at_ns: u64,
    dead_at_ns: u64,
    /// The message's sequence in the events stream.
    stream_seq: u64,
}

impl DeadMeta {
    fn of(group: &str, event: &Event, attempts: u32, last_error: String, stream_seq: u64) -> Self {
        Self {
            group: group.to_owned(),
            id: event.message.id.clone(),
            key: event.message.key.clone(),
            topic: event.message.topic.clone(),
            delay_ns: event.message.delay.map(duration_nanos),
            attempts,
            last_error,
            published_at_ns: unix_nanos(event.published_at),
            dead_at_ns: unix_nanos(SystemTime::now()),
            stream_seq,
        }
    }

    /// A message on our subjects without our headers (published by something else).
    fn malformed(
        group: &str,
        headers: Option<&HeaderMap>,
        attempts: u32,
        stream_seq: u64,
        stream_time: SystemTime,
        why: String,
    ) -> Self {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let id = get(HEADER_MSG_ID);
        Self {
            group: group.to_owned(),
            id: if id.is_empty() {
                format!("seq-{stream_seq}")
            } else {
                id
            },
            key: get(HEADER_KEY),
            topic: get(HEADER_TOPIC),
            delay_ns: None,
            attempts,
            last_error: format!("malformed message: {why}"),
            published_at_ns: unix_nanos(stream_time),
            dead_at_ns: unix_nanos(SystemTime::now()),
            stream_seq,
        }
    }
}

fn dead_letter_of(message: &StreamMessage) -> Option<DeadLetter> {
    let meta: DeadMeta = serde_json::from_str(message.headers.get(HEADER_DEAD)?.as_str()).ok()?;
    Some(DeadLetter {
        id: message.sequence.to_string(),
        group: meta.group,
        message: Message {
            id: meta.id,
            key: meta.key,
            topic: meta.topic,
            payload: message.payload.clone(),
            delay: meta.delay_ns.map(Duration::from_nanos),
        },
        attempts: meta.attempts,
        last_error: meta.last_error,
        published_at: from_unix_nanos(meta.published_at_ns),
        dead_at: from_unix_nanos(meta.dead_at_ns),
    })
}

/// The parts of a `$JS.ACK.…` reply subject the queue uses (both the 2.9 form,
/// `$JS.ACK.{stream}.{consumer}.{delivered}.{sseq}.{cseq}.{time}.{pending}`, and the later one
/// with a domain and account hash in front).
#[derive(Debug)]
struct AckSubject {
    stream: String,
    consumer: String,
    delivered: u32,
    stream_seq: u64,
}

impl AckSubject {
    fn parse(reply: &str) -> Option<Self> {
        let tokens: Vec<&str> = reply.strip_prefix("$JS.ACK.")?.split('.').collect();
        let at = match tokens.len() {
            7 => 0,
            n if n >= 9 => 2,
            _ => return None,
        };
        Some(Self {
            stream: tokens[at].to_owned(),
            consumer: tokens[at + 1].to_owned(),
            delivered: tokens[at + 2].parse().ok()?,
            stream_seq: tokens[at + 3].parse().ok()?,
        })
    }
}

fn consumer_name(group: &str, partition: u16) -> String {
    format!("{group}-p{partition}")
}

/// The partition of `consumer` if it is one of `group`'s.
fn consumer_group(consumer: &str, group: &str) -> Option<u16> {
    consumer
        .strip_prefix(group)?
        .strip_prefix("-p")?
        .parse()
        .ok()
}

/// `(group, partition)` of one of this queue's consumer names.
fn group_of_consumer(consumer: &str) -> Option<(&str, u16)> {
    let (group, partition) = consumer.rsplit_once("-p")?;
    if group.is_empty() || partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((group, partition.parse().ok()?))
}

fn validate_group(group: &GroupSpec) -> Result<(), QueueError> {
    let name = &group.name;
    if name.is_empty()
        || name.len() > MAX_GROUP_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            "group name",
            format!("{name:?}: 1 to {MAX_GROUP_NAME} letters, digits, `-` and `_`"),
        ));
    }
    if group.lease < MIN_LEASE {
        return Err(invalid("lease", format!("at least {MIN_LEASE:?}")));
    }
    if group.max_attempts == 0 {
        return Err(invalid("max_attempts", "at least 1".to_owned()));
    }
    Ok(())
}

fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_subject_token(token: &str) -> bool {
    is_stream_name(token)
}

fn parse_id(id: &str) -> Option<u64> {
    id.parse().ok().filter(|&n| n > 0)
}

fn header_value(what: &'static str, value: &str) -> Result<HeaderValue, QueueError> {
    value
        .parse()
        .map_err(|_| invalid(what, "must not contain CR or LF".to_owned()))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, duration_nanos)
}

fn from_unix_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn invalid(what: &'static str, reason: String) -> QueueError {
    QueueError::Invalid { what, reason }
}

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Backend(Box::new(error))
}

fn publish_error(error: js::context::PublishError) -> QueueError {
    if error.kind() == PublishErrorKind::MaxPayloadExceeded {
        invalid("message", format!("too large: {error}"))
    } else {
        backend(error)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NatsError(String);

/// Aborts its task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_forms_parse() {
        let v1 = AckSubject::parse("$JS.ACK.EVENTS.orders-p3.2.41.7.1796173023949468263.0")
            .expect("v1 parses");
        assert_eq!(
            (
                v1.stream.as_str(),
                v1.consumer.as_str(),
                v1.delivered,
                v1.stream_seq
            ),
            ("EVENTS", "orders-p3", 2, 41)
        );
        let v2 = AckSubject::parse("$JS.ACK.hub.ACC.EVENTS.orders-p3.5.42.7.17961730.0.xyz")
            .expect("v2 parses");
        assert_eq!((v2.delivered, v2.stream_seq), (5, 42));
        assert!(AckSubject::parse("$JS.ACK.EVENTS.c.1").is_none());
        assert!(AckSubject::parse("nonsense").is_none());
        assert!(AckSubject::parse("$JS.ACK.EVENTS.c.x.1.1.1.0").is_none());
    }

    #[test]
    fn consumer_names_map_back_to_their_group() {
        assert_eq!(group_of_consumer("orders-p3"), Some(("orders", 3)));
        assert_eq!(group_of_consumer("a-pgroup-p12"), Some(("a-pgroup", 12)));
        assert_eq!(group_of_consumer("orders"), None);
        assert_eq!(group_of_consumer("orders-px"), None);
        assert_eq!(group_of_consumer("-p1"), None);
        assert_eq!(consumer_group("a-p1-p0", "a-p1"), Some(0));
        // Group `a` does not own group `a-p1`'s consumers.
        assert_eq!(consumer_group("a-p1-p0", "a"), None);
    }

    #[test]
    fn config_is_checked() {
        assert!(NatsConfig::default().validate().is_ok());
        let bad = [
            NatsConfig {
                stream: "A.B".into(),
                ..NatsConfig::default()
            },
            NatsConfig {
                dead_letter_stream: "BAZAAR_EVENTS".into(),
                ..NatsConfig::default()
            },
            NatsConfig {
                subject_prefix: "a..b".into(),
                ..NatsConfig::default()
            },
            NatsConfig {
                subject_prefix: "a.*".into(),
                ..NatsConfig::default()
            },
            NatsConfig {
                partitions: 0,
                ..NatsConfig::default()
            },
            NatsConfig {
                duplicate_window: Duration::from_secs(3600),
                max_age: Duration::from_secs(60),
                ..NatsConfig::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(QueueError::Invalid { .. })),
                "{config:?}"
            );
        }
    }

    #[test]
    fn events_parse_from_headers_and_refuse_foreign_messages() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, "m-1");
        headers.insert(HEADER_KEY, "order-9");
        headers.insert(HEADER_TOPIC, "order.paid");
        headers.insert(HEADER_DELAY, "1500000000");
        let at = from_unix_nanos(1_000);
        let event = Event::parse(Some(&headers), &Bytes::from_static(b"{}"), at).expect("parses");
        assert_eq!(event.message.id, "m-1");
        assert_eq!(event.message.delay, Some(Duration::from_millis(1500)));
        assert_eq!(event.published_at, at);
        assert!(event.held_back());
        // A replay keeps the original id and time, and is not held back again.
        headers.insert(HEADER_MSG_ID, "replay-DLQ-4");
        headers.insert(HEADER_ID, "m-1");
        headers.insert(HEADER_GROUP, "mail");
        headers.insert(HEADER_PUBLISHED, "777");
        let replay = Event::parse(Some(&headers), &Bytes::new(), at).expect("parses");
        assert_eq!(replay.message.id, "m-1");
        assert_eq!(replay.published_at, from_unix_nanos(777));
        assert!(!replay.held_back());
        assert!(Event::parse(None, &Bytes::new(), at).is_err());
        let mut foreign = HeaderMap::new();
        foreign.insert(HEADER_MSG_ID, "x");
        assert!(Event::parse(Some(&foreign), &Bytes::new(), at).is_err());
        headers.insert(HEADER_DELAY, "soon");
        assert!(Event::parse(Some(&headers), &Bytes::new(), at).is_err());
    }

    #[test]
    fn keys_spread_over_partitions_and_stay_put() {
        // The partition of a key is part of the data layout: pinned.
        let p = |key: &str| (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % 16) as u16;
        let seen: std::collections::HashSet<u16> =
            (0..200).map(|i| p(&format!("order-{i}"))).collect();
        assert_eq!(seen.len(), 16);
        assert_eq!(p("order-1"), p("order-1"));
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("ééé", 3), "é");
    }
}
