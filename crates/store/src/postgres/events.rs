//! Stubs to be replaced by the PostgreSQL implementation of [`EventShard`].

#![allow(unused_imports, unused_variables)]

use async_trait::async_trait;

use crate::error::StoreError;
use crate::events::{OutboxBacklog, OutboxEvent};
use crate::id::{ApiKeyId, OrderId, ProductId, SessionId, UserId, VariantId};
use crate::identity::{
    ApiKeyRecord, AuditEvent, EmailClaim, QuotaUse, RefreshOutcome, RefreshRecord, Role, UserRecord,
};
use crate::model::{
    Product, ProductPatch, ProductWithVariants, Variant, VariantPatch, WriteOutcome,
};
use crate::orders::{
    CartChange, CartEdit, CartItem, IdempotencyClaim, IdempotencyRecord, OrderRecord, OrderStatus,
    ReservationLine, ReserveOutcome, Settlement, StartOutcome, StockAccount, StoredCart,
    StoredResponse, Transition, TransitionOutcome,
};
use crate::query::ProductQuery;

use super::{INSERT_CHUNK, PostgresShard};
use crate::events::{NewEvent, new_event_id};
use crate::shard::EventShard;
use sqlx::{PgConnection, Postgres, QueryBuilder};

impl PostgresShard {
    /// Writes `event` to the outbox inside the transaction on `conn`, with a new event id.
    ///
    /// Call it **after** the transaction has written the aggregate's row (the product, the
    /// variant's stock, the order, the user), never before: the row write takes the row's lock,
    /// so a concurrent change to the same aggregate waits for this commit before it draws its
    /// own outbox id, and ids follow commit order per key (see the SQLite backend's
    /// `write_event`, whose rule this is).
    pub(super) async fn write_event(
        &self,
        conn: &mut PgConnection,
        event: NewEvent,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.write_events {
            return Ok(());
        }
        let event_id = new_event_id();
        crate::events::note_written(&self.name, &event_id);
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, key, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(event_id)
        .bind(event.topic)
        .bind(event.key)
        .bind(event.payload)
        .bind(now_ms)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Writes many events in as few statements as bound parameters allow, in the order given.
    /// The ordering rule of [`write_event`](Self::write_event) applies.
    pub(super) async fn write_events(
        &self,
        conn: &mut PgConnection,
        events: Vec<NewEvent>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.write_events {
            return Ok(());
        }
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<NewEvent> = events.by_ref().take(INSERT_CHUNK).collect();
            let mut insert = QueryBuilder::<Postgres>::new(
                "INSERT INTO outbox (event_id, topic, key, payload, created_at) ",
            );
            insert.push_values(chunk, |mut row, event| {
                let event_id = new_event_id();
                crate::events::note_written(&self.name, &event_id);
                row.push_bind(event_id)
                    .push_bind(event.topic)
                    .push_bind(event.key)
                    .push_bind(event.payload)
                    .push_bind(now_ms);
            });
            insert.build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl EventShard for PostgresShard {
    async fn outbox(&self, after: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        todo!("postgres: outbox")
    }

    async fn events_with_ids(&self, ids: &[String]) -> Result<Vec<OutboxEvent>, StoreError> {
        todo!("postgres: events_with_ids")
    }

    async fn unpublished_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        todo!("postgres: unpublished_events")
    }

    async fn mark_published(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
        todo!("postgres: mark_published")
    }

    async fn prune_published(&self, published_before_ms: i64) -> Result<u64, StoreError> {
        todo!("postgres: prune_published")
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        todo!("postgres: outbox_backlog")
    }

    async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        todo!("postgres: claim_lease")
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        todo!("postgres: release_lease")
    }

    async fn record_processed(
        &self,
        consumer: &str,
        event_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        todo!("postgres: record_processed")
    }

    async fn is_processed(&self, consumer: &str, event_id: &str) -> Result<bool, StoreError> {
        todo!("postgres: is_processed")
    }

    async fn processed(
        &self,
        consumer: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        todo!("postgres: processed")
    }

    async fn apply_tally(
        &self,
        consumer: &str,
        event_id: &str,
        topic: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        todo!("postgres: apply_tally")
    }

    async fn tally(&self) -> Result<Vec<(String, i64)>, StoreError> {
        todo!("postgres: tally")
    }

    async fn prune_processed(&self, applied_before_ms: i64) -> Result<u64, StoreError> {
        todo!("postgres: prune_processed")
    }
}
