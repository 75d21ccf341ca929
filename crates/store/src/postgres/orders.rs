//! Stubs to be replaced by the PostgreSQL implementation of [`OrderShard`].

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
use crate::shard::OrderShard;

#[async_trait]
impl OrderShard for PostgresShard {
    async fn cart(&self, user: UserId) -> Result<StoredCart, StoreError> {
        todo!("postgres: cart")
    }

    async fn add_to_cart(
        &self,
        user: UserId,
        item: &CartItem,
        max_quantity: i64,
        max_lines: i64,
    ) -> Result<CartChange, StoreError> {
        todo!("postgres: add_to_cart")
    }

    async fn set_cart_quantity(
        &self,
        user: UserId,
        variant: VariantId,
        quantity: i64,
    ) -> Result<CartEdit, StoreError> {
        todo!("postgres: set_cart_quantity")
    }

    async fn remove_from_cart(
        &self,
        user: UserId,
        variant: VariantId,
    ) -> Result<CartEdit, StoreError> {
        todo!("postgres: remove_from_cart")
    }

    async fn variant_product(&self, variant: VariantId) -> Result<Option<ProductId>, StoreError> {
        todo!("postgres: variant_product")
    }

    async fn start_order(
        &self,
        order: &OrderRecord,
        claim: Option<&IdempotencyClaim>,
        cart_version: Option<i64>,
    ) -> Result<StartOutcome, StoreError> {
        todo!("postgres: start_order")
    }

    async fn reserve(
        &self,
        order: OrderId,
        buyer: UserId,
        lines: &[ReservationLine],
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<ReserveOutcome, StoreError> {
        todo!("postgres: reserve")
    }

    async fn settle_reservations(
        &self,
        order: OrderId,
        settlement: Settlement,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        todo!("postgres: settle_reservations")
    }

    async fn transition(&self, change: &Transition<'_>) -> Result<TransitionOutcome, StoreError> {
        todo!("postgres: transition")
    }

    async fn mark_settled(
        &self,
        order: OrderId,
        status: OrderStatus,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        todo!("postgres: mark_settled")
    }

    async fn ship_lines(
        &self,
        order: OrderId,
        seller: Option<UserId>,
        now_ms: i64,
    ) -> Result<TransitionOutcome, StoreError> {
        todo!("postgres: ship_lines")
    }

    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, StoreError> {
        todo!("postgres: order")
    }

    async fn orders_of_buyer(
        &self,
        buyer: UserId,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        todo!("postgres: orders_of_buyer")
    }

    async fn orders_of_seller(
        &self,
        seller: UserId,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        todo!("postgres: orders_of_seller")
    }

    async fn all_orders(
        &self,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        todo!("postgres: all_orders")
    }

    async fn unsettled_orders(
        &self,
        updated_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        todo!("postgres: unsettled_orders")
    }

    async fn expired_reservations(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(OrderId, UserId)>, StoreError> {
        todo!("postgres: expired_reservations")
    }

    async fn idempotency(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        todo!("postgres: idempotency")
    }

    async fn complete_idempotency(
        &self,
        user: UserId,
        key: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        todo!("postgres: complete_idempotency")
    }

    async fn purge_idempotency(&self, now_ms: i64) -> Result<u64, StoreError> {
        todo!("postgres: purge_idempotency")
    }

    async fn stock_account(&self, variant: VariantId) -> Result<StockAccount, StoreError> {
        todo!("postgres: stock_account")
    }
}
