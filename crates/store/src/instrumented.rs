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
use crate::id::{ProductId, VariantId};
use crate::model::{Product, ProductWithVariants, Variant};
use crate::query::ProductQuery;
use crate::shard::{Shard, ShardLayout};

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

#[async_trait]
impl Shard for Instrumented {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn claim_layout(&self, layout: &ShardLayout) -> Result<(), StoreError> {
        self.observe("claim_layout", self.inner.claim_layout(layout))
            .await
    }

    async fn insert_products(&self, products: &[ProductWithVariants]) -> Result<(), StoreError> {
        self.observe("insert_products", self.inner.insert_products(products))
            .await
    }

    async fn product_with_variants(
        &self,
        id: ProductId,
    ) -> Result<Option<ProductWithVariants>, StoreError> {
        self.observe(
            "product_with_variants",
            self.inner.product_with_variants(id),
        )
        .await
    }

    async fn products(&self, ids: &[ProductId]) -> Result<Vec<Product>, StoreError> {
        self.observe("products", self.inner.products(ids)).await
    }

    async fn variants_of(&self, products: &[ProductId]) -> Result<Vec<Variant>, StoreError> {
        self.observe("variants_of", self.inner.variants_of(products))
            .await
    }

    async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, StoreError> {
        self.observe("variant", self.inner.variant(product, variant))
            .await
    }

    async fn list_products(&self, query: &ProductQuery) -> Result<Vec<Product>, StoreError> {
        self.observe("list_products", self.inner.list_products(query))
            .await
    }

    async fn count_products(&self) -> Result<u64, StoreError> {
        self.observe("count_products", self.inner.count_products())
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observe("ping", self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
