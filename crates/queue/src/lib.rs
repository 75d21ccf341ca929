//! The message queue: durable, at-least-once delivery to named consumer groups, behind one
//! trait with two implementations — an embedded queue on SQLite (its own file in the data
//! directory) and NATS JetStream.
//!
//! # What is promised
//!
//! - **Durable publish.** [`Queue::publish`] returns once the message is stored (on disk for
//!   the embedded queue at `synchronous=FULL`; acknowledged by the stream for JetStream).
//! - **Deduplication.** A message carries an id; publishing an id already published within the
//!   queue's deduplication window is absorbed ([`Published::Duplicate`]) and delivered once.
//!   This is what lets the outbox relay republish after a crash without doubling events.
//! - **Consumer groups.** A group ([`GroupSpec`]) is durable and named. Every group sees every
//!   message published after the group was first declared; within a group each message is
//!   given to one receiver at a time, so several processes receiving for one group share the
//!   work.
//! - **Leases.** A received message is leased for the group's `lease` (visibility timeout). If
//!   it is neither acknowledged, nacked nor dead-lettered before the lease ends — the receiver
//!   crashed — it is delivered again, with its attempt count raised.
//! - **At-least-once.** A message is delivered until a receiver acknowledges it or it is
//!   dead-lettered. A receiver may therefore see a message more than once; **exactly-once
//!   effect is the consumer's job** (record applied message ids with the effect), never the
//!   queue's.
//! - **Order per key.** Within a group, messages with the same ordering key are delivered in
//!   publish order, and a message is not delivered while an earlier one with its key is
//!   leased or waiting to be retried. Messages with different keys carry no order. (On
//!   JetStream, keys are hashed onto a fixed number of partitions and the order holds per
//!   partition, which implies it per key; a message waiting on retry holds up the other keys
//!   of its partition — see the implementation's docs.)
//! - **Delayed delivery.** A message may name a delay; it is not delivered before it.
//! - **Nack with delay** puts a message back to be delivered again after a delay; **dead
//!   letter** takes it out of its group's stream into the dead-letter queue, with its last
//!   error, attempts and timestamps, where operators can list, show, replay and purge it.
//!
//! # What is not promised
//!
//! - Exactly-once delivery. No order between different keys, or between groups.
//! - That a message published before a group was first declared reaches that group.
//!
//! Retrying with backoff and deciding when to give up is [`run`]'s job, above the trait:
//! an implementation only stores, leases and redelivers.

#[cfg(feature = "contract")]
pub mod contract;
pub mod nats;
pub mod run;
pub mod sqlite;

pub use run::{Handler, HandlerError, PassReport, RetryPolicy, process};
pub use sqlite::{Durability, EmbeddedConfig, EmbeddedQueue};

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The deduplication id: unique per logical message (an event id).
    pub id: String,
    /// The ordering key (an order id, a product id): messages with one key are delivered in
    /// publish order within a group.
    pub key: String,
    /// What the message is (`order.paid`); consumers filter on it.
    pub topic: String,
    /// The body, opaque to the queue.
    pub payload: Bytes,
    /// Not delivered before this much time after publishing.
    pub delay: Option<Duration>,
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored; it will be delivered to every group.
    Stored,
    /// Its id was published before, within the deduplication window: nothing was stored.
    Duplicate,
}

/// A durable consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// A stable name (`cache-invalidation`); letters, digits, `-` and `_`.
    pub name: String,
    /// How long a received message is leased before it is delivered again.
    pub lease: Duration,
    /// Deliveries before the queue itself gives up on a message that is never settled (its
    /// receivers keep crashing) and dead-letters it. The runner gives up after the same
    /// count on messages whose handling fails.
    pub max_attempts: u32,
}

/// One delivery of a message to a group.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Message,
    /// 1 on the first delivery, raised by every redelivery.
    pub attempt: u32,
    /// When the message was published.
    pub published_at: SystemTime,
    /// Identifies this delivery to `ack`, `nack` and `dead_letter`; opaque.
    pub receipt: Receipt,
}

/// An implementation's handle on one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt(pub String);

/// A message taken out of its group after its last attempt, or on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead letter's own id (for `show`, `replay`, `delete`).
    pub id: String,
    /// The group that gave up on it.
    pub group: String,
    pub message: Message,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u32,
    /// The last handler error, or why the queue gave up (`lease expired 5 times`).
    pub last_error: String,
    pub published_at: SystemTime,
    pub dead_at: SystemTime,
}

/// A group's backlog, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    pub group: String,
    /// Messages not yet acknowledged or dead-lettered by the group (including in flight).
    pub depth: u64,
    /// Messages leased to a receiver now.
    pub in_flight: u64,
    /// Age of the oldest message in `depth`.
    pub oldest_age: Option<Duration>,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend failed (I/O, connection, protocol); the operation may be retried.
    #[error("queue backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The receipt is not (or no longer) this group's lease: the lease ran out and the
    /// message was given to another receiver, or it was settled already.
    #[error("the lease on this delivery is no longer held")]
    LeaseLost,
    /// Bad input: a group or topic name, a message too large.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// A durable queue.
#[async_trait]
pub trait Queue: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a message for every group. Durable when it returns.
    async fn publish(&self, message: &Message) -> Result<Published, QueueError>;

    /// Publishes messages in order, each as [`Queue::publish`] would; an implementation may
    /// store them in one transaction or pipeline them. On error, a prefix may be stored.
    async fn publish_batch(&self, messages: &[Message]) -> Result<Vec<Published>, QueueError> {
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            outcomes.push(self.publish(message).await?);
        }
        Ok(outcomes)
    }

    /// Creates the group if it does not exist (it starts at messages published from now on)
    /// or updates its lease and attempts; returns a handle to receive for it.
    async fn declare(&self, group: &GroupSpec) -> Result<Box<dyn Subscription>, QueueError>;

    /// Every declared group's backlog.
    async fn stats(&self) -> Result<Vec<GroupStats>, QueueError>;

    /// Removes a group: its place in the stream, its unsettled deliveries and its dead
    /// letters. For a group that belongs to one process (its cache's invalidations), which
    /// gives it up at stop and starts afresh. `false` if there was none.
    async fn remove_group(&self, name: &str) -> Result<bool, QueueError>;

    /// Housekeeping: deletes messages that every group has settled and the deduplication
    /// window no longer needs; how many. A backend whose server does this itself (JetStream's
    /// retention) has nothing to do.
    async fn prune(&self) -> Result<u64, QueueError> {
        Ok(0)
    }

    /// The dead-letter queue.
    fn dead_letters(&self) -> &dyn DeadLetters;
}

/// Receiving for one group.
#[async_trait]
pub trait Subscription: Send + Sync + std::fmt::Debug + 'static {
    /// Up to `max` deliveries, waiting up to `wait` for the first; each is leased to this
    /// receiver for the group's lease.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Done: never delivered to this group again.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;

    /// Not done: delivered again (attempt + 1) after `delay`.
    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError>;

    /// Given up: moved to the dead-letter queue with `error`; its key's later messages flow.
    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError>;
}

/// Operating on the dead-letter queue.
#[async_trait]
pub trait DeadLetters: Send + Sync + std::fmt::Debug {
    /// Oldest first, after the dead letter `after` (exclusive).
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    async fn get(&self, id: &str) -> Result<Option<DeadLetter>, QueueError>;

    /// Delivers the message again to the group that gave up on it (only that group), with a
    /// fresh attempt count, and removes the dead letter. `false` if there is no such id.
    async fn replay(&self, id: &str) -> Result<bool, QueueError>;

    /// Removes one dead letter; `false` if there is no such id.
    async fn delete(&self, id: &str) -> Result<bool, QueueError>;

    /// Removes every dead letter; how many there were.
    async fn purge(&self) -> Result<u64, QueueError>;

    async fn len(&self) -> Result<u64, QueueError>;

    async fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len().await? == 0)
    }
}
