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
//!   consumer's effect to the rows its commit left before it answers.

pub mod consumers;
pub mod envelope;
pub mod relay;

pub use consumers::{Applied, Consumer, ConsumerError, ConsumerHandler, EventMetrics, FaultSwitch};
pub use envelope::Envelope;
pub use relay::{Relay, RelayPass};

use std::sync::Arc;

use bazaar_store::Store;

use crate::Actor;
use crate::ShopError;
use crate::authz::{Action, authorize};

/// Applies every consumer's effect on the request path (`events.side_effects = "sync"`).
///
/// It reads the outbox rows not yet published on every shard — the caller's own and any
/// others still waiting — and runs each consumer on each, in id order per shard. Consumers
/// are idempotent, so the relay publishing the same rows later, and the consumer groups
/// receiving them, skip what was applied here. A failure fails the request (after its
/// commit: the change stands and its event is retried asynchronously), which is the cost of
/// synchronous side effects the trade-off lab measures.
#[derive(Debug, Clone)]
pub struct SyncEffects {
    store: Arc<Store>,
    consumers: Arc<[ConsumerHandler]>,
    batch: usize,
    /// One pass at a time in this process: concurrent requests would only repeat each
    /// other's work and race on the consumers' records.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl SyncEffects {
    pub fn new(store: Arc<Store>, consumers: Vec<ConsumerHandler>, batch: usize) -> Self {
        Self {
            store,
            consumers: consumers.into(),
            batch,
            turn: Arc::default(),
        }
    }

    /// Runs every consumer on every unpublished outbox row; the first failure is returned.
    pub async fn apply_pending(&self) -> Result<(), ShopError> {
        let _turn = self.turn.lock().await;
        for shard in self.store.shards() {
            let rows = shard.unpublished_events(self.batch).await?;
            for row in rows {
                let event = Envelope::from_outbox(shard.name(), &row);
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
        Ok(self.queue.dead_letters().list(after, limit).await?)
    }

    pub async fn get(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<bazaar_queue::DeadLetter, ShopError> {
        authorize(&actor.principal, Action::OperateEvents)?;
        self.queue
            .dead_letters()
            .get(id)
            .await?
            .ok_or_else(|| no_such_dead_letter(id))
    }

    /// Delivers it again to the consumer that gave up on it, and removes it.
    pub async fn replay(&self, actor: &Actor, id: &str) -> Result<(), ShopError> {
        authorize(&actor.principal, Action::OperateEvents)?;
        if self.queue.dead_letters().replay(id).await? {
            Ok(())
        } else {
            Err(no_such_dead_letter(id))
        }
    }

    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<(), ShopError> {
        authorize(&actor.principal, Action::OperateEvents)?;
        if self.queue.dead_letters().delete(id).await? {
            Ok(())
        } else {
            Err(no_such_dead_letter(id))
        }
    }
}

fn no_such_dead_letter(id: &str) -> ShopError {
    ShopError::NotFound(format!("no dead letter `{id}`"))
}
