//! The outbox relay: every shard's unpublished outbox rows, to the queue, exactly as written.
//!
//! A pass visits each shard. It first takes (or renews) the shard's `outbox-relay` lease, so
//! one process at a time publishes a shard and a shard's rows reach the queue in id order —
//! which, because every transaction writes its outbox row after its aggregate's row (the row
//! lock orders them), is commit order per aggregate. It then publishes the oldest unpublished
//! rows with their event id as the deduplication id and marks them published.
//!
//! - **No cursor.** A pass asks for rows whose `published_at` is unset, not rows after an id:
//!   where commit order differs from id order (PostgreSQL sequences), a row that commits late
//!   is still unpublished the next time and is picked up then.
//! - **Nothing lost, nothing doubled.** A crash after publishing and before marking leaves
//!   rows unpublished; the next pass publishes them again and the queue's deduplication
//!   window absorbs them (`Published::Duplicate`, counted). A crash before publishing loses
//!   nothing either: the rows are in the shard until marked.

use std::sync::Arc;
use std::time::Duration;

use bazaar_queue::{Message, Published, Queue};
use bazaar_store::{OutboxBacklog, Shard, Store};
use bytes::Bytes;

use crate::events::envelope;
use crate::{ShopError, now_ms};

/// The lease name each shard's relay holds.
pub const RELAY_LEASE: &str = "outbox-relay";

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Rows the queue stored.
    pub published: u64,
    /// Rows the queue had already (a republish after a crash).
    pub duplicates: u64,
    /// Shards another process holds the lease of.
    pub skipped_shards: u64,
}

/// Moves outbox rows to the queue.
#[derive(Debug, Clone)]
pub struct Relay {
    store: Arc<Store>,
    queue: Arc<dyn Queue>,
    /// Who holds the leases: this process (`node-{generator}`).
    holder: String,
    batch: usize,
    lease_ttl: Duration,
}

impl Relay {
    pub fn new(
        store: Arc<Store>,
        queue: Arc<dyn Queue>,
        holder: String,
        batch: usize,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            store,
            queue,
            holder,
            batch,
            lease_ttl,
        }
    }

    /// Publishes every shard's unpublished rows whose lease this process holds or gets.
    pub async fn pass(&self) -> Result<RelayPass, ShopError> {
        let mut pass = RelayPass::default();
        for shard in self.store.shards() {
            if !self.hold(shard).await? {
                pass.skipped_shards += 1;
                continue;
            }
            loop {
                let rows = shard.unpublished_events(self.batch).await?;
                if rows.is_empty() {
                    break;
                }
                let messages: Vec<Message> = rows
                    .iter()
                    .map(|row| Message {
                        id: row.event_id.clone(),
                        key: row.key.clone(),
                        topic: row.topic.clone(),
                        payload: Bytes::from(envelope::from_outbox(shard.name(), row).to_json()),
                        delay: None,
                    })
                    .collect();
                let outcomes = self.queue.publish_batch(&messages).await?;
                for outcome in &outcomes {
                    match outcome {
                        Published::Stored => pass.published += 1,
                        Published::Duplicate => pass.duplicates += 1,
                    }
                }
                let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
                shard.mark_published(&ids, now_ms()).await?;
                if rows.len() < self.batch || !self.hold(shard).await? {
                    break;
                }
            }
        }
        Ok(pass)
    }

    /// Takes or renews `shard`'s relay lease.
    async fn hold(&self, shard: &dyn Shard) -> Result<bool, ShopError> {
        let ttl = i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX);
        Ok(shard
            .claim_lease(RELAY_LEASE, &self.holder, now_ms(), ttl)
            .await?)
    }

    /// Gives back every shard's lease (at stop), so another process takes over at once.
    pub async fn release(&self) -> Result<(), ShopError> {
        for shard in self.store.shards() {
            shard.release_lease(RELAY_LEASE, &self.holder).await?;
        }
        Ok(())
    }

    /// Deletes published rows older than `retention`; how many.
    pub async fn prune(&self, retention: Duration) -> Result<u64, ShopError> {
        let before = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let mut pruned = 0;
        for shard in self.store.shards() {
            pruned += shard.prune_published(before).await?;
        }
        Ok(pruned)
    }

    /// Each shard's unpublished rows, by shard name.
    pub async fn backlog(&self) -> Result<Vec<(String, OutboxBacklog)>, ShopError> {
        let mut backlog = Vec::new();
        for shard in self.store.shards() {
            backlog.push((shard.name().to_owned(), shard.outbox_backlog().await?));
        }
        Ok(backlog)
    }
}
