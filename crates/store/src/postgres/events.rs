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

use super::PostgresShard;
use crate::shard::EventShard;

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
