//! Wraps any [`Shard`] to time every call per shard and operation and count round trips.
//!
//! Instrumentation is a wrapper rather than code inside each backend so that every backend —
//! SQLite today, PostgreSQL later — reports the same metrics the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use bazaar_telemetry::{LATENCY_BUCKETS, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

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
use crate::shard::{CatalogShard, EventShard, IdentityShard, OrderShard, Shard, ShardLayout};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    shard: String,
    op: &'static str,
}

/// The store's metric families, registered once and shared by every shard's wrapper.
#[derive(Debug, Clone)]
pub(crate) struct StoreMetrics {
    latency: Family<QueryLabels, Histogram>,
    /// Round trips to any shard since start; tests read it to prove batching.
    round_trips: Arc<AtomicU64>,
}

impl StoreMetrics {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let latency = Family::<QueryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS.iter().copied())
        });
        metrics.registry().register(
            "store_query_duration_seconds",
            "Time a shard took to answer one store call, by shard and operation",
            latency.clone(),
        );
        Self {
            latency,
            round_trips: Arc::default(),
        }
    }

    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
}

/// A shard whose calls are timed and counted.
#[derive(Debug)]
pub(crate) struct Instrumented {
    inner: Box<dyn Shard>,
    metrics: StoreMetrics,
}

impl Instrumented {
    pub(crate) fn new(inner: Box<dyn Shard>, metrics: StoreMetrics) -> Self {
        Self { inner, metrics }
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.round_trips.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .latency
            .get_or_create(&QueryLabels {
                shard: self.inner.name().to_owned(),
                op,
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Implements a shard trait for [`Instrumented`] by timing and forwarding every method.
macro_rules! observed {
    ($trait:ident { $( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )* }) => {
        #[async_trait]
        impl $trait for Instrumented {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    self.observe(stringify!($name), self.inner.$name($($arg),*)).await
                }
            )*
        }
    };
}

#[async_trait]
impl Shard for Instrumented {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn claim_layout(&self, layout: &ShardLayout) -> Result<(), StoreError> {
        self.observe("claim_layout", self.inner.claim_layout(layout))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observe("ping", self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

observed!(CatalogShard {
    fn insert_products(&self, products: &[ProductWithVariants], now_ms: i64) -> ();
    fn product_with_variants(&self, id: ProductId) -> Option<ProductWithVariants>;
    fn products(&self, ids: &[ProductId]) -> Vec<Product>;
    fn variants_of(&self, products: &[ProductId]) -> Vec<Variant>;
    fn variant(&self, product: ProductId, variant: VariantId) -> Option<Variant>;
    fn list_products(&self, query: &ProductQuery) -> Vec<Product>;
    fn count_products(&self) -> u64;
    fn add_views(&self, views: &[(ProductId, i64)]) -> ();
    fn update_product(&self, id: ProductId, expected_version: i64, patch: &ProductPatch, now_ms: i64) -> WriteOutcome;
    fn delete_product(&self, id: ProductId, expected_version: i64, now_ms: i64) -> WriteOutcome;
    fn insert_variant(&self, variant: &Variant, expected_version: i64, now_ms: i64) -> WriteOutcome;
    fn update_variant(&self, product: ProductId, variant: VariantId, expected_version: i64, patch: &VariantPatch, now_ms: i64) -> WriteOutcome;
    fn delete_variant(&self, product: ProductId, variant: VariantId, expected_version: i64, now_ms: i64) -> WriteOutcome;
});

observed!(IdentityShard {
    fn claim_email(&self, email_index: &[u8], user: UserId, now_ms: i64) -> EmailClaim;
    fn release_email(&self, email_index: &[u8], user: UserId) -> ();
    fn lookup_email(&self, email_index: &[u8]) -> Option<UserId>;
    fn insert_user(&self, user: &UserRecord) -> ();
    fn user(&self, id: UserId) -> Option<UserRecord>;
    fn update_user(&self, user: &UserRecord) -> bool;
    fn users_after(&self, after: Option<UserId>, limit: usize) -> Vec<UserRecord>;
    fn create_session(&self, session: SessionId, user: UserId, first: &RefreshRecord) -> ();
    fn rotate_refresh(&self, presented: &[u8], next: &RefreshRecord, now_ms: i64) -> RefreshOutcome;
    fn revoke_session(&self, session: SessionId, reason: &str, now_ms: i64) -> bool;
    fn active_session(&self, session: SessionId) -> Option<(UserId, Role)>;
    fn insert_api_key(&self, key: &ApiKeyRecord) -> ();
    fn api_key(&self, id: ApiKeyId) -> Option<ApiKeyRecord>;
    fn api_keys_of(&self, user: UserId) -> Vec<ApiKeyRecord>;
    fn revoke_api_key(&self, user: UserId, id: ApiKeyId, now_ms: i64) -> bool;
    fn consume_quota(&self, id: ApiKeyId, day: i64, quota: i64) -> QuotaUse;
    fn append_audit(&self, event: &AuditEvent) -> ();
    fn audit_events(&self, limit: usize) -> Vec<AuditEvent>;
    fn claim_generator(&self, holder: &str, range: std::ops::RangeInclusive<u16>, now_ms: i64, ttl_ms: i64) -> Option<u16>;
    fn renew_generator(&self, generator: u16, holder: &str, now_ms: i64, ttl_ms: i64) -> bool;
    fn release_generator(&self, generator: u16, holder: &str) -> ();
    fn held_generators(&self, now_ms: i64) -> Vec<u16>;
});

observed!(OrderShard {
    fn cart(&self, user: UserId) -> StoredCart;
    fn add_to_cart(&self, user: UserId, item: &CartItem, max_quantity: i64, max_lines: i64) -> CartChange;
    fn set_cart_quantity(&self, user: UserId, variant: VariantId, quantity: i64) -> CartEdit;
    fn remove_from_cart(&self, user: UserId, variant: VariantId) -> CartEdit;
    fn variant_product(&self, variant: VariantId) -> Option<ProductId>;
    fn start_order(&self, order: &OrderRecord, claim: Option<&IdempotencyClaim>, cart_version: Option<i64>) -> StartOutcome;
    fn reserve(&self, order: OrderId, buyer: UserId, lines: &[ReservationLine], expires_at_ms: i64, now_ms: i64) -> ReserveOutcome;
    fn settle_reservations(&self, order: OrderId, settlement: Settlement, now_ms: i64) -> u64;
    fn transition(&self, change: &Transition<'_>) -> TransitionOutcome;
    fn mark_settled(&self, order: OrderId, status: OrderStatus, now_ms: i64) -> bool;
    fn ship_lines(&self, order: OrderId, seller: Option<UserId>, now_ms: i64) -> TransitionOutcome;
    fn order(&self, id: OrderId) -> Option<OrderRecord>;
    fn orders_of_buyer(&self, buyer: UserId, before: Option<OrderId>, limit: usize) -> Vec<OrderRecord>;
    fn orders_of_seller(&self, seller: UserId, before: Option<OrderId>, limit: usize) -> Vec<OrderRecord>;
    fn all_orders(&self, before: Option<OrderId>, limit: usize) -> Vec<OrderRecord>;
    fn unsettled_orders(&self, updated_before_ms: i64, limit: usize) -> Vec<OrderRecord>;
    fn expired_reservations(&self, now_ms: i64, limit: usize) -> Vec<(OrderId, UserId)>;
    fn idempotency(&self, user: UserId, key: &str) -> Option<IdempotencyRecord>;
    fn complete_idempotency(&self, user: UserId, key: &str, response: &StoredResponse) -> bool;
    fn purge_idempotency(&self, now_ms: i64) -> u64;
    fn stock_account(&self, variant: VariantId) -> StockAccount;
});

observed!(EventShard {
    fn outbox(&self, after: i64, limit: usize) -> Vec<OutboxEvent>;
    fn events_with_ids(&self, ids: &[String]) -> Vec<OutboxEvent>;
    fn unpublished_events(&self, limit: usize) -> Vec<OutboxEvent>;
    fn mark_published(&self, ids: &[i64], now_ms: i64) -> u64;
    fn prune_published(&self, published_before_ms: i64) -> u64;
    fn outbox_backlog(&self) -> OutboxBacklog;
    fn claim_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> bool;
    fn release_lease(&self, name: &str, holder: &str) -> bool;
    fn record_processed(&self, consumer: &str, event_id: &str, now_ms: i64) -> bool;
    fn is_processed(&self, consumer: &str, event_id: &str) -> bool;
    fn processed(&self, consumer: &str, after: &str, limit: usize) -> Vec<(String, i64)>;
    fn apply_tally(&self, consumer: &str, event_id: &str, topic: &str, now_ms: i64) -> bool;
    fn tally(&self) -> Vec<(String, i64)>;
    fn prune_processed(&self, applied_before_ms: i64) -> u64;
});
