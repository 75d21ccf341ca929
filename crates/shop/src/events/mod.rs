//! Events: from the outbox rows every change writes, through the queue, to the consumers
//! that apply their effects.
//!
//! ```text
//!  write txn ──▶ outbox row ──relay──▶ queue (embedded | NATS) ──▶ consumer group ──▶ effect
//!  (shard)       (same txn)  (leased     dedupe id = event id       lease, retry,      recorded
//!                             per shard)                            dead letters       with its id
//! ```
//!
//! - [`envelope`]: the CloudEvents 1.0 envelope an outbox row travels in.
//! - [`relay`]: moves each shard's unpublished rows to the queue, in id order, under a lease
//!   so one process at a time publishes a shard; marks them published; prunes old ones.
//! - [`consumers`]: the effects (`cache`, `tally`, `log`), each idempotent, and the handler
//!   that adapts them to the queue's retry runner.
//! - [`SyncEffects`]: with `events.side_effects = "sync"`, the request itself applies every
//!   shared consumer's effect to the events it wrote before it answers.

pub mod consumers;
pub mod envelope;
pub mod relay;

pub use consumers::{Applied, Consumer, ConsumerError, ConsumerHandler, EventMetrics, FaultSwitch};
pub use envelope::Envelope;
pub use relay::{Relay, RelayPass};

use std::sync::Arc;

use bazaar_store::{Store, WrittenEvent};

use crate::Actor;
use crate::ShopError;
use crate::authz::{Action, authorize};

/// Applies every consumer's effect on the request path (`events.side_effects = "sync"`).
///
/// The request's store calls run under [`bazaar_store::capturing_events`], which notes each
/// event they write; after the request succeeds, [`SyncEffects::apply_written`] runs every
/// shared consumer on exactly those events, in id order per shard. A request that wrote no
/// event (a sign-in, a replayed checkout) has nothing to apply and cannot fail here.
/// Consumers are idempotent, so the relay publishing the same rows later, and the consumer
/// groups receiving them, skip what was applied here. A failure fails the request (after its
/// commit: the change stands and its event is retried asynchronously), which is the cost of
/// synchronous side effects the trade-off lab measures.
#[derive(Debug, Clone)]
pub struct SyncEffects {
    store: Arc<Store>,
    consumers: Arc<[ConsumerHandler]>,
}

impl SyncEffects {
    pub fn new(store: Arc<Store>, consumers: Vec<ConsumerHandler>) -> Self {
        Self {
            store,
            consumers: consumers.into(),
        }
    }

    /// Runs every consumer on the committed events among `written`; the first failure is
    /// returned. (An id whose transaction rolled back is in no outbox and is skipped.)
    pub async fn apply_written(&self, written: &[WrittenEvent]) -> Result<(), ShopError> {
        for shard in self.store.shards() {
            let ids: Vec<String> = written
                .iter()
                .filter(|event| event.shard == shard.name())
                .map(|event| event.event_id.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            for row in shard.events_with_ids(&ids).await? {
                let event = envelope::from_outbox(shard.name(), &row);
                for consumer in self.consumers.iter() {
                    consumer.apply_now(&event).await?;
                }
            }
        }
        Ok(())
    }
}

/// The dead-letter queue as operators see it (`/admin/dlq`): admins only.
#[derive(Debug, Clone)]
pub struct DeadLetterOps {
    queue: Arc<dyn bazaar_queue::Queue>,
}

impl DeadLetterOps {
    pub fn new(queue: Arc<dyn bazaar_queue::Queue>) -> Self {
        Self { queue }
    }

    /// Oldest first, after the dead letter `after`.
    pub async fn list(
        &self,
        actor: &Actor,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<bazaar_queue::DeadLetter>, ShopError> {
        authorize(&actor.principal, Action::OperateEvents)?;
        if let Some(after) = after
            && !is_dead_letter_id(after)
        {
            return Err(ShopError::InvalidParam {
                param: "cursor",
                reason: crate::params::InvalidParam(format!(
                    "expected the `next_cursor` of an earlier page, found `{}`",
                    after.chars().take(40).collect::<String>()
                )),
            });
        }
        Ok(self.queue.dead_letters().list(after, limit).await?)
    }

    pub async fn get(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<bazaar_queue::DeadLetter, ShopError> {
        authorize(&actor.principal, Action::OperateEvents)?;
        if !is_dead_letter_id(id) {
            return Err(no_such_dead_letter(id));
        }
        self.queue
            .dead_letters()
            .get(id)
            .await?
            .ok_or_else(|| no_such_dead_letter(id))
    }

    /// Delivers it again to the consumer that gave up on it, and removes it.
    pub async fn replay(&self, actor: &Actor, id: &str) -> Result<(), ShopError> {
        authorize(&actor.principal, Action::OperateEvents)?;
        if is_dead_letter_id(id) && self.queue.dead_letters().replay(id).await? {
            Ok(())
        } else {
            Err(no_such_dead_letter(id))
        }
    }

    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<(), ShopError> {
        authorize(&actor.principal, Action::OperateEvents)?;
        if is_dead_letter_id(id) && self.queue.dead_letters().delete(id).await? {
            Ok(())
        } else {
            Err(no_such_dead_letter(id))
        }
    }
}

/// Dead-letter ids are positive decimal numbers written without leading zeros (both queues
/// number them), so `01` is not `1` and no other spelling reaches a backend.
fn is_dead_letter_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0')
}

fn no_such_dead_letter(id: &str) -> ShopError {
    let shown: String = id.chars().take(40).collect();
    ShopError::NotFound(format!("no dead letter `{shown}`"))
}
