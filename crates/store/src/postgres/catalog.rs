//! Stubs to be replaced by the PostgreSQL implementation of [`CatalogShard`].

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
use crate::shard::CatalogShard;

#[async_trait]
impl CatalogShard for PostgresShard {
    async fn insert_products(
        &self,
        products: &[ProductWithVariants],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        todo!("postgres: insert_products")
    }

    async fn product_with_variants(
        &self,
        id: ProductId,
    ) -> Result<Option<ProductWithVariants>, StoreError> {
        todo!("postgres: product_with_variants")
    }

    async fn products(&self, ids: &[ProductId]) -> Result<Vec<Product>, StoreError> {
        todo!("postgres: products")
    }

    async fn variants_of(&self, products: &[ProductId]) -> Result<Vec<Variant>, StoreError> {
        todo!("postgres: variants_of")
    }

    async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, StoreError> {
        todo!("postgres: variant")
    }

    async fn list_products(&self, query: &ProductQuery) -> Result<Vec<Product>, StoreError> {
        todo!("postgres: list_products")
    }

    async fn count_products(&self) -> Result<u64, StoreError> {
        todo!("postgres: count_products")
    }

    async fn add_views(&self, views: &[(ProductId, i64)]) -> Result<(), StoreError> {
        todo!("postgres: add_views")
    }

    async fn update_product(
        &self,
        id: ProductId,
        expected_version: i64,
        patch: &ProductPatch,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        todo!("postgres: update_product")
    }

    async fn delete_product(
        &self,
        id: ProductId,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        todo!("postgres: delete_product")
    }

    async fn insert_variant(
        &self,
        variant: &Variant,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        todo!("postgres: insert_variant")
    }

    async fn update_variant(
        &self,
        product: ProductId,
        variant: VariantId,
        expected_version: i64,
        patch: &VariantPatch,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        todo!("postgres: update_variant")
    }

    async fn delete_variant(
        &self,
        product: ProductId,
        variant: VariantId,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        todo!("postgres: delete_variant")
    }
}
