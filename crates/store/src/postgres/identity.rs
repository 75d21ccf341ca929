//! Stubs to be replaced by the PostgreSQL implementation of [`IdentityShard`].

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
use crate::shard::IdentityShard;

#[async_trait]
impl IdentityShard for PostgresShard {
    async fn claim_email(
        &self,
        email_index: &[u8],
        user: UserId,
        now_ms: i64,
    ) -> Result<EmailClaim, StoreError> {
        todo!("postgres: claim_email")
    }

    async fn release_email(&self, email_index: &[u8], user: UserId) -> Result<(), StoreError> {
        todo!("postgres: release_email")
    }

    async fn lookup_email(&self, email_index: &[u8]) -> Result<Option<UserId>, StoreError> {
        todo!("postgres: lookup_email")
    }

    async fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        todo!("postgres: insert_user")
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        todo!("postgres: user")
    }

    async fn update_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        todo!("postgres: update_user")
    }

    async fn users_after(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        todo!("postgres: users_after")
    }

    async fn create_session(
        &self,
        session: SessionId,
        user: UserId,
        first: &RefreshRecord,
    ) -> Result<(), StoreError> {
        todo!("postgres: create_session")
    }

    async fn rotate_refresh(
        &self,
        presented: &[u8],
        next: &RefreshRecord,
        now_ms: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        todo!("postgres: rotate_refresh")
    }

    async fn revoke_session(
        &self,
        session: SessionId,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        todo!("postgres: revoke_session")
    }

    async fn active_session(
        &self,
        session: SessionId,
    ) -> Result<Option<(UserId, Role)>, StoreError> {
        todo!("postgres: active_session")
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        todo!("postgres: insert_api_key")
    }

    async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        todo!("postgres: api_key")
    }

    async fn api_keys_of(&self, user: UserId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        todo!("postgres: api_keys_of")
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        todo!("postgres: revoke_api_key")
    }

    async fn consume_quota(
        &self,
        id: ApiKeyId,
        day: i64,
        quota: i64,
    ) -> Result<QuotaUse, StoreError> {
        todo!("postgres: consume_quota")
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        todo!("postgres: append_audit")
    }

    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        todo!("postgres: audit_events")
    }

    async fn claim_generator(
        &self,
        holder: &str,
        range: std::ops::RangeInclusive<u16>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<u16>, StoreError> {
        todo!("postgres: claim_generator")
    }

    async fn renew_generator(
        &self,
        generator: u16,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        todo!("postgres: renew_generator")
    }

    async fn release_generator(&self, generator: u16, holder: &str) -> Result<(), StoreError> {
        todo!("postgres: release_generator")
    }

    async fn held_generators(&self, now_ms: i64) -> Result<Vec<u16>, StoreError> {
        todo!("postgres: held_generators")
    }
}
