//! Bazaar's storage layer: a backend-neutral API over shards placed by the hash ring.
//!
//! # Layout
//!
//! * [`model`], [`id`], [`query`] — the entities, identifiers and listing queries, in plain
//!   Rust types. Nothing from sqlx or SQLite appears in the public interface.
//! * [`Shard`] — the trait one partition implements; [`sqlite::SqliteShard`] is the embedded
//!   backend (a PostgreSQL one will implement the same trait).
//! * [`events`] — the outbox: every change writes its event in its own transaction, which the
//!   relay publishes through [`EventShard`].
//! * [`Store`] — routes each key to its shard with [`bazaar_ring::Ring`], fans listings out to
//!   every shard and merges the sorted answers. Every shard is wrapped so that its calls are
//!   timed per shard and operation (`bazaar_store_query_duration_seconds`).
//!
//! # Placement
//!
//! A product, its variants and their stock live on the shard that owns the product id
//! (`ProductId::ring_key`); a user and what the user owns (sessions, refresh tokens, API keys)
//! on the shard that owns the user id. Nothing else decides placement, so a product read never
//! touches more than one shard, and a listing touches each shard exactly once per page. Small
//! global tables — the email directory and the audit log — live on the directory shard,
//! `shard-0`.

pub mod error;
pub mod events;
pub mod id;
pub mod identity;
mod instrumented;
pub mod model;
pub mod orders;
pub mod postgres;
pub mod query;
mod shard;
pub mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use bazaar_ring::{Node, Ring};
use bazaar_telemetry::Metrics;
use futures::future::try_join_all;

pub use error::{BackendKind, StoreError};
pub use events::{OutboxBacklog, OutboxEvent, WrittenEvent, capturing_events};
pub use id::{ApiKeyId, IdGenerator, OrderId, ProductId, SessionId, UserId, VariantId};
pub use identity::{
    ApiKeyRecord, AuditEvent, EmailClaim, QuotaUse, RefreshOutcome, RefreshRecord, Role, UserRecord,
};
pub use model::{
    Currency, Money, Product, ProductPatch, ProductWithVariants, Variant, VariantPatch,
    WriteOutcome,
};
pub use orders::{
    CartChange, CartEdit, CartItem, IdempotencyClaim, IdempotencyRecord, OrderLine, OrderRecord,
    OrderStatus, ReservationLine, ReserveOutcome, Settlement, StartOutcome, StockAccount,
    StoredCart, StoredResponse, Transition, TransitionOutcome,
};
pub use query::{ProductFilter, ProductPage, ProductQuery, ProductSort, SortKey};
pub use shard::{CatalogShard, EventShard, IdentityShard, OrderShard, Shard};

use instrumented::{Instrumented, StoreMetrics};

/// The catalog over all shards.
#[derive(Debug)]
pub struct Store {
    ring: Ring,
    /// `shards[i]` is the ring's node `i`.
    shards: Vec<Instrumented>,
    metrics: StoreMetrics,
}

impl Store {
    /// Opens `count` SQLite shards under `config.data_dir`, placed by a ring with `vnodes`
    /// virtual nodes per shard, and checks that the directory was created with that layout.
    pub async fn open_sqlite(
        config: &sqlite::SqliteConfig,
        count: usize,
        vnodes: u32,
        metrics: &Metrics,
    ) -> Result<Self, StoreError> {
        if count == 0 {
            return Err(StoreError::Layout(
                "a store needs at least one shard".into(),
            ));
        }
        let mut shards: Vec<Box<dyn Shard>> = Vec::with_capacity(count);
        for index in 0..count {
            shards.push(Box::new(
                sqlite::SqliteShard::open(&shard_name(index), config).await?,
            ));
        }
        Self::from_shards(shards, vnodes, metrics).await
    }

    /// Opens one PostgreSQL shard per URL in `config.shards` (`shard-{i}` is the `i`-th),
    /// migrating each, placed by a ring with `vnodes` virtual nodes per shard, and checks that
    /// the databases were created with that layout.
    pub async fn open_postgres(
        config: &postgres::PostgresConfig,
        vnodes: u32,
        metrics: &Metrics,
    ) -> Result<Self, StoreError> {
        if config.shards.is_empty() {
            return Err(StoreError::Layout(
                "store.postgres.shards names no database; a store needs at least one shard".into(),
            ));
        }
        let shards = try_join_all(config.shards.iter().enumerate().map(
            |(index, url)| async move {
                let shard = postgres::PostgresShard::open(&shard_name(index), url, config).await?;
                Ok::<_, StoreError>(Box::new(shard) as Box<dyn Shard>)
            },
        ))
        .await?;
        Self::from_shards(shards, vnodes, metrics).await
    }

    /// Builds a store over already opened shards, which must be named `shard-0..`, in order.
    pub async fn from_shards(
        shards: Vec<Box<dyn Shard>>,
        vnodes: u32,
        metrics: &Metrics,
    ) -> Result<Self, StoreError> {
        let ring = Ring::with_vnodes(shards.iter().map(|s| Node::new(s.name())), vnodes)
            .map_err(|e| StoreError::Layout(e.to_string()))?;
        let metrics = StoreMetrics::register(metrics);
        let shards: Vec<Instrumented> = shards
            .into_iter()
            .map(|s| Instrumented::new(s, metrics.clone()))
            .collect();
        claim_layout(&shards, vnodes).await?;
        Ok(Self {
            ring,
            shards,
            metrics,
        })
    }

    /// How many shards the store spans.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The index of the shard that owns `product` (and its variants and stock).
    pub fn shard_of(&self, product: ProductId) -> usize {
        self.ring
            .locate(&product.ring_key())
            .expect("a store has at least one shard")
    }

    fn shard(&self, product: ProductId) -> &dyn Shard {
        &self.shards[self.shard_of(product)]
    }

    /// The shard holding `product`, its variants and stock, for writes through
    /// [`CatalogShard`].
    pub fn for_product(&self, product: ProductId) -> &dyn Shard {
        self.shard(product)
    }

    /// The shard holding `user` and everything the user owns (sessions, API keys).
    pub fn for_user(&self, user: UserId) -> &dyn Shard {
        &self.shards[self
            .ring
            .locate(&user.ring_key())
            .expect("a store has at least one shard")]
    }

    /// The directory shard (`shard-0`): global uniqueness entries (emails) and the audit log.
    pub fn directory(&self) -> &dyn Shard {
        &self.shards[0]
    }

    /// Every shard, in ring order, for maintenance that visits all rows (and the outbox
    /// relay, which publishes each shard's events). Placement stays [`shard_of`](Self::shard_of)'s
    /// and [`for_user`](Self::for_user)'s: rows are written through those.
    pub fn shards(&self) -> impl Iterator<Item = &dyn Shard> {
        self.shards.iter().map(|s| s as &dyn Shard)
    }

    /// Shard `index` (`shard-{index}`) of [`shards`](Self::shards), for a task that works on
    /// one shard and holds the store rather than a borrow of it (a relay per shard). Not a way
    /// to place rows.
    pub fn shard_at(&self, index: usize) -> Option<&dyn Shard> {
        self.shards.get(index).map(|s| s as &dyn Shard)
    }

    /// Every shard's outbox backlog, by shard name, in ring order.
    pub async fn outbox_backlog(&self) -> Result<Vec<(String, OutboxBacklog)>, StoreError> {
        try_join_all(self.shards.iter().map(|s| async move {
            Ok::<_, StoreError>((s.name().to_owned(), s.outbox_backlog().await?))
        }))
        .await
    }

    /// Calls to any shard since the store was opened: a batching check for tests.
    pub fn round_trips(&self) -> u64 {
        self.metrics.round_trips()
    }

    /// Writes products with their variants and their `product.created` events; each shard's
    /// part is one transaction.
    pub async fn insert_products(
        &self,
        products: Vec<ProductWithVariants>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut by_shard: Vec<Vec<ProductWithVariants>> = vec![Vec::new(); self.shards.len()];
        for product in products {
            by_shard[self.shard_of(product.product.id)].push(product);
        }
        try_join_all(
            by_shard
                .iter()
                .enumerate()
                .filter(|(_, batch)| !batch.is_empty())
                .map(|(index, batch)| self.shards[index].insert_products(batch, now_ms)),
        )
        .await
        .map(drop)
    }

    /// One product with its variants.
    pub async fn product_with_variants(
        &self,
        id: ProductId,
    ) -> Result<Option<ProductWithVariants>, StoreError> {
        self.shard(id).product_with_variants(id).await
    }

    /// The variants of every given product, grouped per product in id order: one round trip
    /// per shard involved, however many products are asked for.
    pub async fn variants_of(
        &self,
        products: &[ProductId],
    ) -> Result<HashMap<ProductId, Vec<Variant>>, StoreError> {
        let by_shard = self.group_by_shard(products);
        let answers = try_join_all(
            by_shard
                .iter()
                .map(|(index, ids)| self.shards[*index].variants_of(ids)),
        )
        .await?;
        let mut grouped: HashMap<ProductId, Vec<Variant>> =
            products.iter().map(|&id| (id, Vec::new())).collect();
        for variant in answers.into_iter().flatten() {
            grouped.entry(variant.product_id).or_default().push(variant);
        }
        Ok(grouped)
    }

    /// Products by id (unknown ids are absent): one round trip per shard involved.
    pub async fn products(
        &self,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Product>, StoreError> {
        let by_shard = self.group_by_shard(ids);
        let answers = try_join_all(
            by_shard
                .iter()
                .map(|(index, ids)| self.shards[*index].products(ids)),
        )
        .await?;
        Ok(answers.into_iter().flatten().map(|p| (p.id, p)).collect())
    }

    fn group_by_shard(&self, ids: &[ProductId]) -> Vec<(usize, Vec<ProductId>)> {
        let mut by_shard: Vec<Vec<ProductId>> = vec![Vec::new(); self.shards.len()];
        for &id in ids {
            by_shard[self.shard_of(id)].push(id);
        }
        by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .collect()
    }

    /// One variant of one product.
    pub async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, StoreError> {
        self.shard(product).variant(product, variant).await
    }

    /// A page of products across all shards: each shard returns its first `limit + 1`
    /// matches after the cursor, and a k-way merge takes the first `limit` overall. The extra
    /// row per shard is what tells whether another page exists.
    pub async fn list_products(&self, query: &ProductQuery) -> Result<ProductPage, StoreError> {
        let per_shard = ProductQuery {
            limit: query.limit + 1,
            ..query.clone()
        };
        let answers = try_join_all(
            self.shards
                .iter()
                .map(|shard| shard.list_products(&per_shard)),
        )
        .await?;
        let mut items = merge_sorted(answers, query.sort, query.limit + 1);
        let has_more = items.len() > query.limit;
        items.truncate(query.limit);
        Ok(ProductPage { items, has_more })
    }

    /// Adds view counts, grouped into one transaction per shard.
    pub async fn add_views(&self, views: &[(ProductId, i64)]) -> Result<(), StoreError> {
        let mut by_shard: Vec<Vec<(ProductId, i64)>> = vec![Vec::new(); self.shards.len()];
        for &(id, count) in views {
            by_shard[self.shard_of(id)].push((id, count));
        }
        try_join_all(
            by_shard
                .iter()
                .enumerate()
                .filter(|(_, batch)| !batch.is_empty())
                .map(|(index, batch)| self.shards[index].add_views(batch)),
        )
        .await
        .map(drop)
    }

    /// The product `variant` belongs to, asking every shard at once (a variant id alone does
    /// not say where it lives).
    pub async fn variant_product(
        &self,
        variant: VariantId,
    ) -> Result<Option<ProductId>, StoreError> {
        let answers = try_join_all(self.shards.iter().map(|s| s.variant_product(variant))).await?;
        Ok(answers.into_iter().flatten().next())
    }

    /// Holds stock for `lines` on their products' shards, one all-or-nothing transaction per
    /// shard, the shards in parallel. On `OutOfStock` other shards may have held their lines:
    /// the caller releases the order's reservations (idempotently) as it cancels.
    pub async fn reserve(
        &self,
        order: OrderId,
        buyer: UserId,
        lines: &[ReservationLine],
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<ReserveOutcome, StoreError> {
        let mut by_shard: Vec<Vec<ReservationLine>> = vec![Vec::new(); self.shards.len()];
        for line in lines {
            by_shard[self.shard_of(line.product_id)].push(*line);
        }
        let outcomes = try_join_all(
            by_shard
                .iter()
                .enumerate()
                .filter(|(_, lines)| !lines.is_empty())
                .map(|(index, lines)| {
                    self.shards[index].reserve(order, buyer, lines, expires_at_ms, now_ms)
                }),
        )
        .await?;
        Ok(outcomes
            .into_iter()
            .find(|o| *o != ReserveOutcome::Reserved)
            .unwrap_or(ReserveOutcome::Reserved))
    }

    /// Moves `order`'s reservations on every shard its lines touch as `settlement` says.
    pub async fn settle_reservations(
        &self,
        order: &OrderRecord,
        settlement: Settlement,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut shards: Vec<usize> = order
            .lines
            .iter()
            .map(|l| self.shard_of(l.product_id))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let moved = try_join_all(
            shards
                .into_iter()
                .map(|index| self.shards[index].settle_reservations(order.id, settlement, now_ms)),
        )
        .await?;
        Ok(moved.into_iter().sum())
    }

    /// One order, wherever it lives: its buyer's shard when known, else every shard.
    pub async fn order(
        &self,
        id: OrderId,
        buyer: Option<UserId>,
    ) -> Result<Option<OrderRecord>, StoreError> {
        if let Some(buyer) = buyer {
            return self.for_user(buyer).order(id).await;
        }
        let answers = try_join_all(self.shards.iter().map(|s| s.order(id))).await?;
        Ok(answers.into_iter().flatten().next())
    }

    /// A page of orders from every shard, newest first: each shard's first `limit` older than
    /// `before`, merged by id.
    pub async fn orders_everywhere(
        &self,
        seller: Option<UserId>,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let answers = try_join_all(self.shards.iter().map(|s| async move {
            match seller {
                Some(seller) => s.orders_of_seller(seller, before, limit).await,
                None => s.all_orders(before, limit).await,
            }
        }))
        .await?;
        let mut orders: Vec<OrderRecord> = answers.into_iter().flatten().collect();
        orders.sort_unstable_by_key(|o| std::cmp::Reverse(o.id));
        orders.truncate(limit);
        Ok(orders)
    }

    /// Units of `variant` (of `product`) on hand, held and committed.
    pub async fn stock_account(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<StockAccount, StoreError> {
        self.shard(product).stock_account(variant).await
    }

    /// Products on every shard.
    pub async fn count_products(&self) -> Result<u64, StoreError> {
        let counts = try_join_all(self.shards.iter().map(|s| s.count_products())).await?;
        Ok(counts.into_iter().sum())
    }

    /// Fails with the first shard that does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        try_join_all(self.shards.iter().map(|s| s.ping()))
            .await
            .map(drop)
    }

    /// Closes every shard, waiting for in-flight queries.
    pub async fn close(&self) {
        futures::future::join_all(self.shards.iter().map(|s| s.close())).await;
    }
}

/// Keys of `shard_meta` that say which layout, and which store, a shard belongs to.
const STORE_ID: &str = "store_id";
const LAYOUT_COMPLETE: &str = "layout_complete";

/// Checks that `shards`, in this order, are one store with this layout, recording the layout
/// in each when the store is new.
///
/// Every shard records its index, the shard count and the ring's virtual nodes, and the id
/// of the store it belongs to; the directory shard records, last, that the store's layout is
/// complete. Once it is, every shard must hold the same records: a shard in another position
/// (a reordered list), a count or ring that differs, a shard of another store, or a fresh,
/// empty shard in place of one that held data (which would lose its rows and, for the
/// directory shard, the uniqueness of emails) is refused with [`StoreError::Layout`] naming
/// it. A first start that died half-way has no completion mark and is simply finished.
async fn claim_layout(shards: &[Instrumented], vnodes: u32) -> Result<(), StoreError> {
    let count = shards.len();
    let directory = &shards[0];
    if directory.meta(LAYOUT_COMPLETE).await?.is_some() {
        for shard in &shards[1..] {
            if shard.meta("shard_count").await?.is_none() {
                return Err(StoreError::Layout(format!(
                    "{} holds no store, but {} belongs to one with {count} or more shards: a \
                     fresh database or file in place of one that held data would lose its rows; \
                     restore the shard, or list the shards exactly as the store was created",
                    shard.name(),
                    directory.name()
                )));
            }
        }
    } else if directory.meta("shard_count").await?.is_none() {
        // A fresh directory shard with others that hold data: the email directory is gone.
        for shard in &shards[1..] {
            if shard.meta("shard_count").await?.is_some() {
                return Err(StoreError::Layout(format!(
                    "{} holds no store, but {} belongs to one: the directory shard (emails, \
                     the audit log) would start empty; restore it, or list the shards exactly \
                     as the store was created",
                    directory.name(),
                    shard.name()
                )));
            }
        }
    }
    let proposed = uuid::Uuid::now_v7().to_string();
    let store_id = directory.claim_meta(STORE_ID, &proposed).await?;
    for (index, shard) in shards.iter().enumerate() {
        for (key, value) in [
            ("shard_index", index.to_string()),
            ("shard_count", count.to_string()),
            ("ring_vnodes", vnodes.to_string()),
            (STORE_ID, store_id.clone()),
        ] {
            let recorded = shard.claim_meta(key, &value).await?;
            if recorded != value && key == STORE_ID {
                return Err(StoreError::Layout(format!(
                    "{} belongs to another store (store id {recorded}; {} is in store \
                     {value}): list the shards of one store only",
                    shard.name(),
                    directory.name()
                )));
            }
            if recorded != value {
                return Err(StoreError::Layout(format!(
                    "{} was created with {key} = {recorded}, but the configuration asks for \
                     {value}; use the original store settings, in the original order",
                    shard.name()
                )));
            }
        }
    }
    directory.claim_meta(LAYOUT_COMPLETE, "1").await?;
    Ok(())
}

/// The ring's name for shard `index`; also its file name (`shard-0.sqlite`).
pub fn shard_name(index: usize) -> String {
    format!("shard-{index}")
}

/// Merges lists that are each sorted in `sort` order into the first `take` items overall.
fn merge_sorted(lists: Vec<Vec<Product>>, sort: ProductSort, take: usize) -> Vec<Product> {
    struct Head {
        key: SortKey,
        list: usize,
        sort: ProductSort,
    }
    impl PartialEq for Head {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == Ordering::Equal
        }
    }
    impl Eq for Head {}
    impl PartialOrd for Head {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Head {
        // `BinaryHeap` pops the greatest element; reversing makes it pop the first in order.
        fn cmp(&self, other: &Self) -> Ordering {
            self.sort.compare(&other.key, &self.key)
        }
    }

    let mut iters: Vec<std::vec::IntoIter<Product>> =
        lists.into_iter().map(Vec::into_iter).collect();
    let mut pending: Vec<Option<Product>> = iters.iter_mut().map(Iterator::next).collect();
    let mut heap: BinaryHeap<Head> = pending
        .iter()
        .enumerate()
        .filter_map(|(list, p)| {
            p.as_ref().map(|p| Head {
                key: SortKey::of(p),
                list,
                sort,
            })
        })
        .collect();
    let mut merged = Vec::with_capacity(take);
    while merged.len() < take {
        let Some(Head { list, .. }) = heap.pop() else {
            break;
        };
        let product = pending[list]
            .take()
            .expect("a heap entry has a pending product");
        merged.push(product);
        if let Some(next) = iters[list].next() {
            heap.push(Head {
                key: SortKey::of(&next),
                list,
                sort,
            });
            pending[list] = Some(next);
        }
    }
    merged
}

#[cfg(test)]
mod tests;
