//! The boundary every storage backend implements: one partition of the catalog.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::id::{ProductId, VariantId};
use crate::model::{Product, ProductWithVariants, Variant};
use crate::query::ProductQuery;

/// What the sharded [`Store`](crate::Store) needs from one partition. Implementations answer
/// only for rows they hold; routing and merging across partitions is the store's job.
#[async_trait]
pub trait Shard: Send + Sync + std::fmt::Debug {
    /// A stable name for logs and metrics (`shard-0`), equal to its node name on the ring.
    fn name(&self) -> &str;

    /// Records which layout this shard belongs to the first time, and afterwards fails with
    /// [`StoreError::Layout`] if `layout` differs from what was recorded.
    async fn claim_layout(&self, layout: &ShardLayout) -> Result<(), StoreError>;

    /// Writes products with their variants and stock in one transaction: all or none.
    async fn insert_products(&self, products: &[ProductWithVariants]) -> Result<(), StoreError>;

    /// One product with its variants, in one round trip.
    async fn product_with_variants(
        &self,
        id: ProductId,
    ) -> Result<Option<ProductWithVariants>, StoreError>;

    /// Products by id, in no particular order; unknown ids are skipped.
    async fn products(&self, ids: &[ProductId]) -> Result<Vec<Product>, StoreError>;

    /// The variants of all the given products, ordered by product then variant id.
    async fn variants_of(&self, products: &[ProductId]) -> Result<Vec<Variant>, StoreError>;

    /// One variant, if it exists and belongs to `product`.
    async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, StoreError>;

    /// Up to `query.limit` products after `query.after`, in `query.sort` order.
    async fn list_products(&self, query: &ProductQuery) -> Result<Vec<Product>, StoreError>;

    /// How many products this shard holds.
    async fn count_products(&self) -> Result<u64, StoreError>;

    /// Answers if the shard can serve a query now.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Waits for in-flight queries and releases the backend's resources.
    async fn close(&self);
}

/// The shape of a sharded data set: changing any field moves rows between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// This shard's position on the ring (`shard-{index}`).
    pub index: usize,
    /// How many shards the ring was built with.
    pub count: usize,
    /// Virtual nodes per shard.
    pub vnodes: u32,
}
