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
pub mod moving;
pub mod orders;
pub mod placement;
pub mod postgres;
pub mod query;

/// The shard traits, for calling methods on a [`Routed`] shard (`use bazaar_store::prelude::*`).
pub mod prelude {
    pub use crate::shard::{CatalogShard, EventShard, IdentityShard, MoveShard, OrderShard, Shard};
}
pub mod reshard;
mod shard;
pub mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bazaar_telemetry::Metrics;
use futures::future::{BoxFuture, try_join_all};

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
pub use shard::{CatalogShard, EventShard, IdentityShard, MoveShard, OrderShard, Shard};

use instrumented::{Instrumented, StoreMetrics};
use moving::{Entity, EntityRows};
use placement::{
    Generation, HOLD_LIMIT, Layout, MOVE_KEY, MoveRecord, PARTICIPANT_PREFIX, PARTICIPANT_TTL,
    POLL_EVERY, Participant, PlacementKind, RENEW_EVERY, WriteRoute,
};

/// The most shards a store can grow to. Slots are reserved up front so that adding a shard
/// online never moves the shards that callers hold references to.
pub const MAX_SHARDS: usize = 256;

/// Opens shard `index` of a running store when a move adds it, from where the move record
/// says it is (`None` for the SQLite backend, which finds it in its data directory).
pub type ShardOpener = Arc<
    dyn Fn(usize, Option<String>) -> BoxFuture<'static, Result<Box<dyn Shard>, StoreError>>
        + Send
        + Sync,
>;

/// How a store places keys: the layout's kind and the ring's virtual nodes per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementConfig {
    pub kind: PlacementKind,
    pub vnodes: u32,
}

impl PlacementConfig {
    /// The ring with `vnodes` virtual nodes per shard.
    pub fn ring(vnodes: u32) -> Self {
        Self {
            kind: PlacementKind::Ring,
            vnodes,
        }
    }
}

/// The catalog over all shards.
///
/// Each store is a *participant* of its shards' placement: a watcher task follows the move
/// record on the directory shard (see [`placement`]), opens a shard that a move adds, and
/// acknowledges each new epoch once the calls it started under the previous one are done.
#[derive(Debug)]
pub struct Store {
    core: Arc<Core>,
    watcher: tokio::task::JoinHandle<()>,
}

struct Core {
    slots: Box<[OnceLock<Instrumented>]>,
    /// Slots `0..open` are set.
    open: AtomicUsize,
    placement: ArcSwap<Generation>,
    config: PlacementConfig,
    metrics: StoreMetrics,
    opener: Option<ShardOpener>,
    /// This store's participant key on the directory shard.
    participant: String,
    /// When the participant entry was last renewed (ms since the epoch).
    renewed_at_ms: AtomicI64,
    /// Set by [`Store::leave_placement`]: the store no longer follows moves, so it writes
    /// nothing through its routed shards.
    left: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("open", &self.open)
            .field("placement", &self.placement.load())
            .field("config", &self.config)
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

/// A write waits for its range rather than for a renewal it missed by less than this.
const SELF_FENCE_AFTER: Duration = PARTICIPANT_TTL.saturating_sub(Duration::from_secs(5));

/// Whether a routed call reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
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
        Self::open_sqlite_placed(config, count, PlacementConfig::ring(vnodes), metrics).await
    }

    /// [`open_sqlite`](Self::open_sqlite) with any placement.
    pub async fn open_sqlite_placed(
        config: &sqlite::SqliteConfig,
        count: usize,
        placement: PlacementConfig,
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
        let config = config.clone();
        let opener: ShardOpener = Arc::new(move |index, _| {
            let config = config.clone();
            Box::pin(async move {
                let shard = sqlite::SqliteShard::open(&shard_name(index), &config).await?;
                Ok(Box::new(shard) as Box<dyn Shard>)
            })
        });
        Self::from_parts(shards, placement, Some(opener), metrics).await
    }

    /// Opens one PostgreSQL shard per URL in `config.shards` (`shard-{i}` is the `i`-th),
    /// migrating each, placed by a ring with `vnodes` virtual nodes per shard, and checks that
    /// the databases were created with that layout.
    pub async fn open_postgres(
        config: &postgres::PostgresConfig,
        vnodes: u32,
        metrics: &Metrics,
    ) -> Result<Self, StoreError> {
        Self::open_postgres_placed(config, PlacementConfig::ring(vnodes), metrics).await
    }

    /// [`open_postgres`](Self::open_postgres) with any placement.
    pub async fn open_postgres_placed(
        config: &postgres::PostgresConfig,
        placement: PlacementConfig,
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
        let config = config.clone();
        let opener: ShardOpener = Arc::new(move |index, url| {
            let config = config.clone();
            Box::pin(async move {
                let url = url.ok_or_else(|| {
                    StoreError::Layout(format!(
                        "the shard move names no database for {}",
                        shard_name(index)
                    ))
                })?;
                let shard =
                    postgres::PostgresShard::open(&shard_name(index), &url, &config).await?;
                Ok(Box::new(shard) as Box<dyn Shard>)
            })
        });
        Self::from_parts(shards, placement, Some(opener), metrics).await
    }

    /// Builds a store over already opened shards, which must be named `shard-0..`, in order,
    /// placed by a ring. Such a store cannot open a shard that a move adds.
    pub async fn from_shards(
        shards: Vec<Box<dyn Shard>>,
        vnodes: u32,
        metrics: &Metrics,
    ) -> Result<Self, StoreError> {
        Self::from_parts(shards, PlacementConfig::ring(vnodes), None, metrics).await
    }

    /// Builds a store over already opened shards (`shard-0..`, in order), checks their layout,
    /// joins the placement as a participant and starts its watcher.
    pub async fn from_parts(
        shards: Vec<Box<dyn Shard>>,
        config: PlacementConfig,
        opener: Option<ShardOpener>,
        metrics: &Metrics,
    ) -> Result<Self, StoreError> {
        let count = shards.len();
        if count > MAX_SHARDS {
            return Err(StoreError::Layout(format!(
                "{count} shards; a store has at most {MAX_SHARDS}"
            )));
        }
        // Builds the layout first: it refuses zero shards and zero virtual nodes.
        let layout = Layout::new(config.kind, count, config.vnodes)?;
        let metrics = StoreMetrics::register(metrics);
        let slots: Box<[OnceLock<Instrumented>]> =
            (0..MAX_SHARDS).map(|_| OnceLock::new()).collect();
        for (index, shard) in shards.into_iter().enumerate() {
            if shard.name() != shard_name(index) {
                return Err(StoreError::Layout(format!(
                    "shard {index} is named `{}`; expected `{}`",
                    shard.name(),
                    shard_name(index)
                )));
            }
            let _ = slots[index].set(Instrumented::new(shard, metrics.clone()));
        }
        let core = Core {
            slots,
            open: AtomicUsize::new(count),
            placement: ArcSwap::from_pointee(Generation::settled(0, layout)),
            config,
            metrics,
            opener,
            participant: format!("{PARTICIPANT_PREFIX}{}", uuid::Uuid::now_v7()),
            renewed_at_ms: AtomicI64::new(0),
            left: std::sync::atomic::AtomicBool::new(false),
        };
        let record = claim_layout(&core.open_shards(), config).await?;
        if let Some(record) = &record {
            core.open_added(record).await?;
            core.placement.store(Arc::new(Generation::of(
                record,
                config.kind,
                config.vnodes,
            )?));
        }
        // Registered first, then the record read again: a mover that listed the participants
        // before this entry existed published its change before that, so it is read here.
        core.renew().await?;
        core.follow().await?;
        let core = Arc::new(core);
        let watcher = tokio::spawn(watch(Arc::downgrade(&core)));
        Ok(Self { core, watcher })
    }

    /// How many shards the store spans (during a move, the added shard included).
    pub fn shard_count(&self) -> usize {
        self.core.open.load(AtomicOrdering::Acquire)
    }

    /// The index of the shard that serves reads of `product` (and its variants and stock).
    pub fn shard_of(&self, product: ProductId) -> usize {
        self.core
            .placement
            .load()
            .read_owner(bazaar_ring::key_hash(&product.ring_key()))
    }

    /// The index of the shard that serves reads of `user` and what the user owns.
    pub fn shard_of_user(&self, user: UserId) -> usize {
        self.core
            .placement
            .load()
            .read_owner(bazaar_ring::key_hash(&user.ring_key()))
    }

    /// The shard holding `product`, its variants and stock, for writes through
    /// [`CatalogShard`]. Each call is routed when it runs: during a move, a write to a range
    /// being copied waits for it (see [`placement`]).
    pub fn for_product(&self, product: ProductId) -> Routed<'_> {
        Routed::new(&self.core, &product.ring_key())
    }

    /// The shard holding `user` and everything the user owns (sessions, API keys, the cart,
    /// orders), routed per call like [`for_product`](Self::for_product).
    pub fn for_user(&self, user: UserId) -> Routed<'_> {
        Routed::new(&self.core, &user.ring_key())
    }

    /// The directory shard (`shard-0`): global uniqueness entries (emails) and the audit log.
    /// Its rows never move.
    pub fn directory(&self) -> &dyn Shard {
        self.core.slot(0)
    }

    /// Every shard, in ring order, for maintenance that visits all rows (and the outbox
    /// relay, which publishes each shard's events). Placement stays the routed calls':
    /// rows are written through [`for_product`](Self::for_product) and
    /// [`for_user`](Self::for_user). A task that writes shard by shard takes
    /// [`maintenance`](Self::maintenance) first.
    pub fn shards(&self) -> impl Iterator<Item = &dyn Shard> {
        self.core.open_shards().into_iter().map(|s| s as &dyn Shard)
    }

    /// Shard `index` (`shard-{index}`) of [`shards`](Self::shards), for a task that works on
    /// one shard and holds the store rather than a borrow of it (a relay per shard). Not a way
    /// to place rows.
    pub fn shard_at(&self, index: usize) -> Option<&dyn Shard> {
        (index < self.shard_count()).then(|| self.core.slot(index) as &dyn Shard)
    }

    /// Leave to write shard by shard (sweeps of expired reservations, settling, re-encryption),
    /// or `None` while a shard move runs: rows such a task would touch may be mid-copy, so it
    /// skips its round. Hold the guard for the round; the move waits for it.
    pub fn maintenance(&self) -> Option<Maintenance> {
        let generation = self.core.placement.load_full();
        (!generation.is_moving()).then_some(Maintenance {
            _generation: generation,
        })
    }

    /// A metadata entry of the directory shard, read around the instrumented path: for
    /// background polls (the search layer's reindex requests) that should not show among the
    /// store's round trips or be retried.
    pub async fn poll_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.core.slot(0).raw().meta(key).await
    }

    /// Whether a shard move is running.
    pub fn is_moving(&self) -> bool {
        self.core.placement.load().is_moving()
    }

    /// Every shard's outbox backlog, by shard name, in ring order.
    pub async fn outbox_backlog(&self) -> Result<Vec<(String, OutboxBacklog)>, StoreError> {
        try_join_all(self.core.open_shards().into_iter().map(|s| async move {
            Ok::<_, StoreError>((s.name().to_owned(), s.outbox_backlog().await?))
        }))
        .await
    }

    /// Calls to any shard since the store was opened: a batching check for tests.
    pub fn round_trips(&self) -> u64 {
        self.core.metrics.round_trips()
    }

    /// Writes products with their variants and their `product.created` events; each shard's
    /// part is one transaction.
    pub async fn insert_products(
        &self,
        products: Vec<ProductWithVariants>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let hashes: Vec<u64> = products
            .iter()
            .map(|p| product_hash(p.product.id))
            .collect();
        let generation = self.core.write_generation(&hashes).await?;
        let mut by_shard: Vec<Vec<ProductWithVariants>> = vec![Vec::new(); self.shard_count()];
        for (product, hash) in products.into_iter().zip(hashes) {
            by_shard[write_owner(&generation, hash)].push(product);
        }
        try_join_all(
            by_shard
                .iter()
                .enumerate()
                .filter(|(_, batch)| !batch.is_empty())
                .map(|(index, batch)| self.core.slot(index).insert_products(batch, now_ms)),
        )
        .await
        .map(drop)
    }

    /// One product with its variants.
    pub async fn product_with_variants(
        &self,
        id: ProductId,
    ) -> Result<Option<ProductWithVariants>, StoreError> {
        self.for_product(id).product_with_variants(id).await
    }

    /// The variants of every given product, grouped per product in id order: one round trip
    /// per shard involved, however many products are asked for.
    pub async fn variants_of(
        &self,
        products: &[ProductId],
    ) -> Result<HashMap<ProductId, Vec<Variant>>, StoreError> {
        let (by_shard, _generation) = self.group_by_shard(products);
        let answers = try_join_all(
            by_shard
                .iter()
                .map(|(index, ids)| self.core.slot(*index).variants_of(ids)),
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
        let (by_shard, _generation) = self.group_by_shard(ids);
        let answers = try_join_all(
            by_shard
                .iter()
                .map(|(index, ids)| self.core.slot(*index).products(ids)),
        )
        .await?;
        Ok(answers.into_iter().flatten().map(|p| (p.id, p)).collect())
    }

    /// Product ids grouped by the shard that serves their reads, with the generation that
    /// decided it (held while the reads run).
    fn group_by_shard(&self, ids: &[ProductId]) -> (Vec<(usize, Vec<ProductId>)>, Arc<Generation>) {
        let generation = self.core.placement.load_full();
        let mut by_shard: Vec<Vec<ProductId>> = vec![Vec::new(); self.shard_count()];
        for &id in ids {
            by_shard[generation.read_owner(product_hash(id))].push(id);
        }
        let grouped = by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .collect();
        (grouped, generation)
    }

    /// One variant of one product.
    pub async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, StoreError> {
        self.for_product(product).variant(product, variant).await
    }

    /// A page of products across all shards: each shard returns its first `limit + 1`
    /// matches after the cursor that it serves, and a k-way merge takes the first `limit`
    /// overall. The extra row per shard is what tells whether another page exists. During a
    /// move a shard may also hold copies it does not serve; they are skipped, and the shard
    /// asked for more until it has given `limit + 1` of its own or has none left.
    pub async fn list_products(&self, query: &ProductQuery) -> Result<ProductPage, StoreError> {
        let generation = self.core.placement.load_full();
        let want = query.limit + 1;
        let answers = try_join_all(self.core.open_shards().into_iter().enumerate().map(
            |(index, shard)| {
                let generation = &generation;
                async move {
                    let mut query = ProductQuery {
                        limit: want,
                        ..query.clone()
                    };
                    let mut served = Vec::new();
                    loop {
                        let page = shard.list_products(&query).await?;
                        let exhausted = page.len() < want;
                        query.after = page.last().map(SortKey::of);
                        served.extend(
                            page.into_iter()
                                .filter(|p| generation.read_owner(product_hash(p.id)) == index),
                        );
                        if exhausted || served.len() >= want {
                            served.truncate(want);
                            return Ok::<_, StoreError>(served);
                        }
                    }
                }
            },
        ))
        .await?;
        let mut items = merge_sorted(answers, query.sort, want);
        let has_more = items.len() > query.limit;
        items.truncate(query.limit);
        Ok(ProductPage { items, has_more })
    }

    /// Adds view counts, grouped into one transaction per shard.
    pub async fn add_views(&self, views: &[(ProductId, i64)]) -> Result<(), StoreError> {
        let hashes: Vec<u64> = views.iter().map(|(id, _)| product_hash(*id)).collect();
        let generation = self.core.write_generation(&hashes).await?;
        let mut by_shard: Vec<Vec<(ProductId, i64)>> = vec![Vec::new(); self.shard_count()];
        for (&view, hash) in views.iter().zip(hashes) {
            by_shard[write_owner(&generation, hash)].push(view);
        }
        try_join_all(
            by_shard
                .iter()
                .enumerate()
                .filter(|(_, batch)| !batch.is_empty())
                .map(|(index, batch)| self.core.slot(index).add_views(batch)),
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
        let generation = self.core.placement.load_full();
        let answers = try_join_all(
            self.core
                .open_shards()
                .into_iter()
                .map(|s| s.variant_product(variant)),
        )
        .await?;
        Ok(answers
            .into_iter()
            .enumerate()
            .find_map(|(index, product)| {
                product.filter(|&p| generation.read_owner(product_hash(p)) == index)
            }))
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
        let hashes: Vec<u64> = lines.iter().map(|l| product_hash(l.product_id)).collect();
        let generation = self.core.write_generation(&hashes).await?;
        let mut by_shard: Vec<Vec<ReservationLine>> = vec![Vec::new(); self.shard_count()];
        for (line, hash) in lines.iter().zip(hashes) {
            by_shard[write_owner(&generation, hash)].push(*line);
        }
        let outcomes = try_join_all(
            by_shard
                .iter()
                .enumerate()
                .filter(|(_, lines)| !lines.is_empty())
                .map(|(index, lines)| {
                    self.core
                        .slot(index)
                        .reserve(order, buyer, lines, expires_at_ms, now_ms)
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
        let hashes: Vec<u64> = order
            .lines
            .iter()
            .map(|l| product_hash(l.product_id))
            .collect();
        let generation = self.core.write_generation(&hashes).await?;
        let mut shards: Vec<usize> = hashes
            .iter()
            .map(|&h| write_owner(&generation, h))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let moved = try_join_all(shards.into_iter().map(|index| {
            self.core
                .slot(index)
                .settle_reservations(order.id, settlement, now_ms)
        }))
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
        let generation = self.core.placement.load_full();
        let answers =
            try_join_all(self.core.open_shards().into_iter().map(|s| s.order(id))).await?;
        Ok(answers.into_iter().enumerate().find_map(|(index, order)| {
            order.filter(|o| generation.read_owner(user_hash(o.buyer_id)) == index)
        }))
    }

    /// A page of orders from every shard, newest first: each shard's first `limit` older than
    /// `before`, merged by id. During a move, copies a shard does not serve are skipped (and
    /// the page may then hold fewer than `limit` while more exist; the next page has them).
    pub async fn orders_everywhere(
        &self,
        seller: Option<UserId>,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let generation = self.core.placement.load_full();
        let answers = try_join_all(self.core.open_shards().into_iter().map(|s| async move {
            match seller {
                Some(seller) => s.orders_of_seller(seller, before, limit).await,
                None => s.all_orders(before, limit).await,
            }
        }))
        .await?;
        let mut orders: Vec<OrderRecord> = answers
            .into_iter()
            .enumerate()
            .flat_map(|(index, orders)| {
                let generation = &generation;
                orders
                    .into_iter()
                    .filter(move |o| generation.read_owner(user_hash(o.buyer_id)) == index)
            })
            .collect();
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
        self.for_product(product).stock_account(variant).await
    }

    /// Products on every shard (during a move, a range being copied is counted on both its
    /// shards until it switches).
    pub async fn count_products(&self) -> Result<u64, StoreError> {
        let counts = try_join_all(
            self.core
                .open_shards()
                .into_iter()
                .map(|s| s.count_products()),
        )
        .await?;
        Ok(counts.into_iter().sum())
    }

    /// Fails with the first shard that does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        try_join_all(self.core.open_shards().into_iter().map(|s| s.ping()))
            .await
            .map(drop)
    }

    /// Stops following the placement: no move waits for this store any more, and its routed
    /// writes fail from now on. For a tool that only reads and writes bookkeeping (the mover
    /// itself), so that a move it runs never waits for its own entry.
    pub async fn leave_placement(&self) -> Result<(), StoreError> {
        self.core.left.store(true, AtomicOrdering::Release);
        self.watcher.abort();
        self.core
            .slot(0)
            .raw()
            .delete_meta(&self.core.participant)
            .await
    }

    /// Leaves the placement (a move no longer waits for this store) and closes every shard,
    /// waiting for in-flight queries.
    pub async fn close(&self) {
        self.watcher.abort();
        let directory = self.core.slot(0).raw();
        if let Err(error) = directory.delete_meta(&self.core.participant).await {
            tracing::warn!(%error, "could not leave the shard placement; a move waits for this entry to expire");
        }
        futures::future::join_all(self.core.open_shards().into_iter().map(|s| s.close())).await;
    }

    /// The placement machinery, for the mover in [`reshard`].
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Leave for one round of shard-by-shard maintenance; see [`Store::maintenance`].
#[derive(Debug)]
pub struct Maintenance {
    _generation: Arc<Generation>,
}

fn product_hash(id: ProductId) -> u64 {
    bazaar_ring::key_hash(&id.ring_key())
}

fn user_hash(id: UserId) -> u64 {
    bazaar_ring::key_hash(&id.ring_key())
}

/// The owner `generation` routes a write of `hash` to; [`Core::write_generation`] has made
/// sure it routes every hash of the call.
fn write_owner(generation: &Generation, hash: u64) -> usize {
    match generation.write_route(hash) {
        WriteRoute::To(index) => index,
        WriteRoute::Held => {
            unreachable!("write_generation returns a generation that routes every hash")
        }
    }
}

impl Core {
    fn slot(&self, index: usize) -> &Instrumented {
        self.slots[index]
            .get()
            .expect("routing only names open shards")
    }

    fn open_shards(&self) -> Vec<&Instrumented> {
        let open = self.open.load(AtomicOrdering::Acquire);
        (0..open).map(|i| self.slot(i)).collect()
    }

    async fn move_record(&self) -> Result<Option<MoveRecord>, StoreError> {
        match self.slot(0).raw().meta(MOVE_KEY).await? {
            Some(text) => MoveRecord::parse(&text).map(Some),
            None => Ok(None),
        }
    }

    /// Opens the shards `record` adds that this store has not opened yet.
    async fn open_added(&self, record: &MoveRecord) -> Result<(), StoreError> {
        let open = self.open.load(AtomicOrdering::Acquire);
        for index in open..record.shard_count().min(MAX_SHARDS) {
            let Some(opener) = &self.opener else {
                return Err(StoreError::Layout(format!(
                    "a shard move to {} shards is recorded, and this store cannot open {}",
                    record.to,
                    shard_name(index)
                )));
            };
            let shard = opener(index, record.new_shard.clone()).await?;
            let _ = self.slots[index].set(Instrumented::new(shard, self.metrics.clone()));
            self.open.store(index + 1, AtomicOrdering::Release);
        }
        Ok(())
    }

    /// Renews this store's participant entry, acknowledging the epoch it routes by.
    async fn renew(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let entry = Participant {
            acked: self.placement.load().epoch,
            expires_ms: now + i64::try_from(PARTICIPANT_TTL.as_millis()).unwrap_or(i64::MAX),
        };
        let text = serde_json::to_string(&entry).expect("a participant serialises");
        self.slot(0)
            .raw()
            .set_meta(&self.participant, &text)
            .await?;
        self.renewed_at_ms.store(now, AtomicOrdering::Release);
        Ok(())
    }

    /// One look at the move record: a new epoch is adopted (opening any added shard),
    /// the calls started under the previous one are waited for, and the epoch acknowledged.
    async fn follow(&self) -> Result<(), StoreError> {
        let record = self.move_record().await?;
        let epoch = record.as_ref().map_or(0, |r| r.epoch);
        if epoch != self.placement.load().epoch {
            if let Some(record) = &record {
                self.open_added(record).await?;
                let next = Generation::of(record, self.config.kind, self.config.vnodes)?;
                let previous = self.placement.swap(Arc::new(next));
                drain(previous).await;
            }
            return self.renew().await;
        }
        let since = now_ms() - self.renewed_at_ms.load(AtomicOrdering::Acquire);
        if since >= i64::try_from(RENEW_EVERY.as_millis()).unwrap_or(i64::MAX) {
            self.renew().await?;
        }
        Ok(())
    }

    /// Whether this store may write now: its participant entry has been renewed recently
    /// enough that a mover still waits for it.
    fn may_write(&self) -> bool {
        if self.left.load(AtomicOrdering::Acquire) {
            return false;
        }
        let since = now_ms() - self.renewed_at_ms.load(AtomicOrdering::Acquire);
        since < i64::try_from(SELF_FENCE_AFTER.as_millis()).unwrap_or(i64::MAX)
    }

    /// The shard a call of `access` to the key hashed to `hash` goes to, and the generation
    /// that chose it, to hold for the call. A write to a fenced range waits for it to switch,
    /// at most [`HOLD_LIMIT`].
    async fn enter(
        &self,
        hash: u64,
        access: Access,
    ) -> Result<(&Instrumented, Arc<Generation>), StoreError> {
        if access == Access::Read {
            let generation = self.placement.load_full();
            let index = generation.read_owner(hash);
            return Ok((self.slot(index), generation));
        }
        let generation = self.write_generation(&[hash]).await?;
        let index = write_owner(&generation, hash);
        Ok((self.slot(index), generation))
    }

    /// A generation under which every hash of a write has an owner, waiting (at most
    /// [`HOLD_LIMIT`]) while any of them is in a fenced range or this store's participant
    /// entry is overdue.
    async fn write_generation(&self, hashes: &[u64]) -> Result<Arc<Generation>, StoreError> {
        if self.left.load(AtomicOrdering::Acquire) {
            return Err(StoreError::Moving(
                "this store has left the shard placement (it runs a move) and writes nothing"
                    .into(),
            ));
        }
        let started = Instant::now();
        loop {
            let generation = self.placement.load_full();
            let routed = hashes
                .iter()
                .all(|&h| generation.write_route(h) != WriteRoute::Held);
            if routed && self.may_write() {
                return Ok(generation);
            }
            drop(generation);
            if started.elapsed() >= HOLD_LIMIT {
                return Err(StoreError::Moving(format!(
                    "a write was held for {} s: {}; try again shortly",
                    HOLD_LIMIT.as_secs(),
                    if routed {
                        "this process has not reached the directory shard to renew its place in the shard placement"
                    } else {
                        "its rows are being moved to another shard and the move has not finished their range"
                    }
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Waits until no call holds `previous` any more.
async fn drain(previous: Arc<Generation>) {
    let started = Instant::now();
    let mut warned = false;
    while Arc::strong_count(&previous) > 1 {
        if !warned && started.elapsed() > Duration::from_secs(5) {
            tracing::warn!("a store call has run for 5 s; the shard move waits for it");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Follows the move record for as long as the store exists.
async fn watch(core: std::sync::Weak<Core>) {
    let mut failing_since: Option<Instant> = None;
    let mut pause = POLL_EVERY;
    loop {
        tokio::time::sleep(pause).await;
        let Some(core) = core.upgrade() else {
            return;
        };
        // Fast while a move runs (each of its steps waits for this store); otherwise one
        // look per renewal, which is also how long a move's first step waits for it.
        pause = if core.placement.load().is_moving() {
            POLL_EVERY
        } else {
            RENEW_EVERY
        };
        match core.follow().await {
            Ok(()) => failing_since = None,
            Err(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    tracing::warn!(%error, "cannot read the shard placement from the directory shard");
                    failing_since = Some(Instant::now());
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
}

/// A shard reached through the store's placement: every call is routed when it runs (see
/// [`Store::for_product`]).
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    core: &'a Core,
    hash: u64,
}

impl<'a> Routed<'a> {
    fn new(core: &'a Core, key: &[u8]) -> Self {
        Self {
            core,
            hash: bazaar_ring::key_hash(key),
        }
    }

    async fn enter(
        &self,
        access: Access,
    ) -> Result<(&'a Instrumented, Arc<Generation>), StoreError> {
        self.core.enter(self.hash, access).await
    }

    /// The shard that serves this key's reads now.
    fn reader(&self) -> &'a Instrumented {
        self.core
            .slot(self.core.placement.load().read_owner(self.hash))
    }
}

#[async_trait::async_trait]
impl Shard for Routed<'_> {
    fn name(&self) -> &str {
        self.reader().name()
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.reader().meta(key).await
    }

    async fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.reader().claim_meta(key, value).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.reader().set_meta(key, value).await
    }

    async fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.reader().delete_meta(key).await
    }

    async fn metas(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.reader().metas(prefix).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.reader().ping().await
    }

    async fn close(&self) {}
}

/// Implements a shard trait for [`Routed`]: each method routes, holds its generation for the
/// call, and forwards.
macro_rules! routed {
    ($trait:ident { $( $kind:ident fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )* }) => {
        #[async_trait::async_trait]
        impl $trait for Routed<'_> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    let (shard, _generation) = self.enter(routed!(@access $kind)).await?;
                    shard.$name($($arg),*).await
                }
            )*
        }
    };
    (@access read) => { Access::Read };
    (@access write) => { Access::Write };
}

instrumented::shard_methods!(routed);

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
async fn claim_layout(
    shards: &[&Instrumented],
    config: PlacementConfig,
) -> Result<Option<MoveRecord>, StoreError> {
    let vnodes = config.vnodes;
    let count = shards.len();
    let directory = shards[0];
    // After `bazaar shards add`, the move record, not the count a shard was created with, says
    // how many shards the store has: while it runs, the old ones; once done, the new count.
    let record = match directory.meta(MOVE_KEY).await? {
        Some(text) => Some(MoveRecord::parse(&text)?),
        None => None,
    };
    if let Some(record) = &record {
        let expected = if record.done { record.to } else { record.from };
        if count != expected {
            return Err(StoreError::Layout(if record.done {
                format!(
                    "the store has {} shards since `bazaar shards add`, but {count} are \
                     configured; list all {}",
                    record.to, record.to
                )
            } else {
                format!(
                    "a move from {} to {} shards is running (`bazaar shards add`); start with \
                     the {} shards the store had until it reports done",
                    record.from, record.to, record.from
                )
            }));
        }
    }
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
    let created_with = match &record {
        // Shards keep the count they were created with; the record checked it above.
        Some(_) => directory
            .meta("shard_count")
            .await?
            .unwrap_or_else(|| count.to_string()),
        None => count.to_string(),
    };
    for (index, shard) in shards.iter().enumerate() {
        let shard_count = match &record {
            Some(_) => shard
                .meta("shard_count")
                .await?
                .unwrap_or_else(|| created_with.clone()),
            None => count.to_string(),
        };
        for (key, value) in [
            ("shard_index", index.to_string()),
            ("shard_count", shard_count),
            ("ring_vnodes", vnodes.to_string()),
            ("placement", config.kind.name().to_owned()),
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
    Ok(record)
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
