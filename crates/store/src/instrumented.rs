//! Wraps any [`Shard`] to time every call per shard and operation and count round trips.
//!
//! Instrumentation is a wrapper rather than code inside each backend so that every backend —
//! SQLite today, PostgreSQL later — reports the same metrics the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bazaar_telemetry::{LATENCY_BUCKETS, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
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
use crate::moving::{Entity, EntityRows};
use crate::orders::{
    CartChange, CartEdit, CartItem, IdempotencyClaim, IdempotencyRecord, OrderRecord, OrderStatus,
    ReservationLine, ReserveOutcome, Settlement, StartOutcome, StockAccount, StoredCart,
    StoredResponse, Transition, TransitionOutcome,
};
use crate::query::ProductQuery;
use crate::shard::{CatalogShard, EventShard, IdentityShard, MoveShard, OrderShard, Shard};

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
    /// Attempts repeated after a retryable failure.
    retries: Counter,
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
        let retries = Counter::default();
        metrics.registry().register(
            "store_retries",
            "Shard calls run again after a retryable failure (deadlock, serialization, busy)",
            retries.clone(),
        );
        Self {
            latency,
            round_trips: Arc::default(),
            retries,
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

    /// The shard itself, for the store's own bookkeeping (the placement watcher), which is
    /// neither timed nor counted as a round trip.
    pub(crate) fn raw(&self) -> &dyn Shard {
        self.inner.as_ref()
    }

    /// Runs `call`, timing each attempt, and runs it again while it fails in a way that
    /// [`Retry`] allows: every shard method is one transaction, so an attempt the backend
    /// rolled back can be repeated whole. Errors leave with this shard's name on them.
    async fn observe<T, F>(
        &self,
        op: &'static str,
        retry: Retry,
        mut call: impl FnMut() -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = call().await;
            self.metrics.round_trips.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .latency
                .get_or_create(&QueryLabels {
                    shard: self.inner.name().to_owned(),
                    op,
                })
                .observe(started.elapsed().as_secs_f64());
            match result {
                Err(error) if attempt < ATTEMPTS && retry.allows(&error) => {
                    self.metrics.retries.inc();
                    tracing::debug!(shard = self.inner.name(), op, attempt, %error, "retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                result => return result.map_err(|e| e.on_shard(self.inner.name())),
            }
        }
    }
}

/// Attempts a call gets before a retryable error is returned to the caller.
const ATTEMPTS: u32 = 4;

/// The longest pause before one retry, and the first pause's bound.
const BACKOFF_CAP: Duration = Duration::from_millis(80);
const BACKOFF_BASE: Duration = Duration::from_millis(5);

/// Full jitter: a pause drawn uniformly below an exponentially growing bound, so callers that
/// failed together (the losers of one deadlock) do not collide again together.
fn backoff(attempt: u32) -> Duration {
    let bound = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    bound.mul_f64(rand::random::<f64>())
}

/// Hands an argument to one more attempt of a call: the macro below cannot tell a reference
/// (copied) from an owned value such as a range (cloned), and need not.
fn again<T: Clone>(value: &T) -> T {
    value.clone()
}

/// Which failures a call may be repeated after.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// A read: after a rolled-back attempt or a broken connection.
    Read,
    /// A write: only after a rolled-back attempt; a broken connection may have committed it.
    Write,
}

impl Retry {
    fn allows(self, error: &StoreError) -> bool {
        match self {
            Self::Read => error.is_retryable_read(),
            Self::Write => error.is_retryable(),
        }
    }
}

/// Implements a shard trait for [`Instrumented`] by timing and forwarding every method.
/// Each method is marked `read` or `write`, which decides what it may be retried after.
macro_rules! observed {
    ($trait:ident { $( $kind:ident fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )* }) => {
        #[async_trait]
        impl $trait for Instrumented {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    self.observe(stringify!($name), observed!(@retry $kind), || {
                        self.inner.$name($(again(&$arg)),*)
                    })
                    .await
                }
            )*
        }
    };
    (@retry read) => { Retry::Read };
    (@retry write) => { Retry::Write };
}

#[async_trait]
impl Shard for Instrumented {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.observe("meta", Retry::Read, || self.inner.meta(key))
            .await
    }

    async fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.observe("claim_meta", Retry::Write, || {
            self.inner.claim_meta(key, value)
        })
        .await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.observe("set_meta", Retry::Write, || self.inner.set_meta(key, value))
            .await
    }

    async fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.observe("delete_meta", Retry::Write, || self.inner.delete_meta(key))
            .await
    }

    async fn metas(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.observe("metas", Retry::Read, || self.inner.metas(prefix))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observe("ping", Retry::Read, || self.inner.ping())
            .await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

/// Calls `$callback!` once per shard trait with its methods, each marked `read` or `write`:
/// the one list of the [`Shard`] surface, for the wrappers that forward every method
/// ([`Instrumented`] here, the store's routed shard).
macro_rules! shard_methods {
    ($callback:ident) => {
        $callback!(MoveShard {
            read fn entity_ids(&self, kind: Entity, after: i64, limit: usize) -> Vec<i64>;
            read fn export_entities(&self, kind: Entity, ids: &[i64]) -> EntityRows;
            write fn import_entities(&self, kind: Entity, ids: &[i64], rows: &EntityRows) -> ();
            write fn delete_entities(&self, kind: Entity, ids: &[i64]) -> u64;
        });

        $callback!(CatalogShard {
            write fn insert_products(&self, products: &[ProductWithVariants], now_ms: i64) -> ();
            read fn product_with_variants(&self, id: ProductId) -> Option<ProductWithVariants>;
            read fn products(&self, ids: &[ProductId]) -> Vec<Product>;
            read fn variants_of(&self, products: &[ProductId]) -> Vec<Variant>;
            read fn variant(&self, product: ProductId, variant: VariantId) -> Option<Variant>;
            read fn list_products(&self, query: &ProductQuery) -> Vec<Product>;
            read fn count_products(&self) -> u64;
            write fn add_views(&self, views: &[(ProductId, i64)]) -> ();
            write fn update_product(&self, id: ProductId, expected_version: i64, patch: &ProductPatch, now_ms: i64) -> WriteOutcome;
            write fn delete_product(&self, id: ProductId, expected_version: i64, now_ms: i64) -> WriteOutcome;
            write fn insert_variant(&self, variant: &Variant, expected_version: i64, now_ms: i64) -> WriteOutcome;
            write fn update_variant(&self, product: ProductId, variant: VariantId, expected_version: i64, patch: &VariantPatch, now_ms: i64) -> WriteOutcome;
            write fn delete_variant(&self, product: ProductId, variant: VariantId, expected_version: i64, now_ms: i64) -> WriteOutcome;
        });

        $callback!(IdentityShard {
            write fn claim_email(&self, email_index: &[u8], user: UserId, now_ms: i64) -> EmailClaim;
            write fn release_email(&self, email_index: &[u8], user: UserId) -> ();
            read fn lookup_email(&self, email_index: &[u8]) -> Option<UserId>;
            write fn insert_user(&self, user: &UserRecord) -> ();
            read fn user(&self, id: UserId) -> Option<UserRecord>;
            write fn update_user(&self, user: &UserRecord) -> bool;
            read fn users_after(&self, after: Option<UserId>, limit: usize) -> Vec<UserRecord>;
            write fn create_session(&self, session: SessionId, user: UserId, first: &RefreshRecord) -> ();
            write fn rotate_refresh(&self, presented: &[u8], next: &RefreshRecord, now_ms: i64) -> RefreshOutcome;
            write fn revoke_session(&self, session: SessionId, reason: &str, now_ms: i64) -> bool;
            read fn active_session(&self, session: SessionId) -> Option<(UserId, Role)>;
            write fn insert_api_key(&self, key: &ApiKeyRecord) -> ();
            read fn api_key(&self, id: ApiKeyId) -> Option<ApiKeyRecord>;
            read fn api_keys_of(&self, user: UserId) -> Vec<ApiKeyRecord>;
            write fn revoke_api_key(&self, user: UserId, id: ApiKeyId, now_ms: i64) -> bool;
            write fn consume_quota(&self, id: ApiKeyId, day: i64, quota: i64) -> QuotaUse;
            write fn append_audit(&self, event: &AuditEvent) -> ();
            read fn audit_events(&self, limit: usize) -> Vec<AuditEvent>;
            write fn claim_generator(&self, holder: &str, range: std::ops::RangeInclusive<u16>, now_ms: i64, ttl_ms: i64) -> Option<u16>;
            write fn renew_generator(&self, generator: u16, holder: &str, now_ms: i64, ttl_ms: i64) -> bool;
            write fn release_generator(&self, generator: u16, holder: &str) -> ();
            read fn held_generators(&self, now_ms: i64) -> Vec<u16>;
        });

        $callback!(OrderShard {
            read fn cart(&self, user: UserId) -> StoredCart;
            write fn add_to_cart(&self, user: UserId, item: &CartItem, max_quantity: i64, max_lines: i64) -> CartChange;
            write fn set_cart_quantity(&self, user: UserId, variant: VariantId, quantity: i64) -> CartEdit;
            write fn remove_from_cart(&self, user: UserId, variant: VariantId) -> CartEdit;
            read fn variant_product(&self, variant: VariantId) -> Option<ProductId>;
            write fn start_order(&self, order: &OrderRecord, claim: Option<&IdempotencyClaim>, cart_version: Option<i64>) -> StartOutcome;
            write fn reserve(&self, order: OrderId, buyer: UserId, lines: &[ReservationLine], expires_at_ms: i64, now_ms: i64) -> ReserveOutcome;
            write fn settle_reservations(&self, order: OrderId, settlement: Settlement, now_ms: i64) -> u64;
            write fn transition(&self, change: &Transition<'_>) -> TransitionOutcome;
            write fn mark_settled(&self, order: OrderId, status: OrderStatus, now_ms: i64) -> bool;
            write fn ship_lines(&self, order: OrderId, seller: Option<UserId>, now_ms: i64) -> TransitionOutcome;
            read fn order(&self, id: OrderId) -> Option<OrderRecord>;
            read fn orders_of_buyer(&self, buyer: UserId, before: Option<OrderId>, limit: usize) -> Vec<OrderRecord>;
            read fn orders_of_seller(&self, seller: UserId, before: Option<OrderId>, limit: usize) -> Vec<OrderRecord>;
            read fn all_orders(&self, before: Option<OrderId>, limit: usize) -> Vec<OrderRecord>;
            read fn unsettled_orders(&self, updated_before_ms: i64, limit: usize) -> Vec<OrderRecord>;
            read fn expired_reservations(&self, now_ms: i64, limit: usize) -> Vec<(OrderId, UserId)>;
            read fn idempotency(&self, user: UserId, key: &str) -> Option<IdempotencyRecord>;
            write fn complete_idempotency(&self, user: UserId, key: &str, response: &StoredResponse) -> bool;
            write fn purge_idempotency(&self, now_ms: i64) -> u64;
            read fn stock_account(&self, variant: VariantId) -> StockAccount;
        });

        $callback!(EventShard {
            read fn outbox(&self, after: i64, limit: usize) -> Vec<OutboxEvent>;
            read fn events_with_ids(&self, ids: &[String]) -> Vec<OutboxEvent>;
            read fn unpublished_events(&self, limit: usize) -> Vec<OutboxEvent>;
            write fn mark_published(&self, ids: &[i64], now_ms: i64) -> u64;
            write fn prune_published(&self, published_before_ms: i64) -> u64;
            read fn outbox_backlog(&self) -> OutboxBacklog;
            write fn claim_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> bool;
            write fn release_lease(&self, name: &str, holder: &str) -> bool;
            write fn record_processed(&self, consumer: &str, event_id: &str, now_ms: i64) -> bool;
            read fn is_processed(&self, consumer: &str, event_id: &str) -> bool;
            read fn processed(&self, consumer: &str, after: &str, limit: usize) -> Vec<(String, i64)>;
            write fn apply_tally(&self, consumer: &str, event_id: &str, topic: &str, now_ms: i64) -> bool;
            read fn tally(&self) -> Vec<(String, i64)>;
            write fn prune_processed(&self, applied_before_ms: i64) -> u64;
        });
    };
}
pub(crate) use shard_methods;

shard_methods!(observed);
