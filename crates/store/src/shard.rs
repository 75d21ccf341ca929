//! The boundary every storage backend implements: one partition of Bazaar's data.
//!
//! [`Shard`] is split by concern — catalog, identity, orders, events — so each backend can keep
//! them in separate files; a backend implements every one of the traits.

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
use crate::moving::{Entity, EntityRows};
use crate::orders::{
    CartChange, CartEdit, CartItem, IdempotencyClaim, IdempotencyRecord, OrderRecord, OrderStatus,
    ReservationLine, ReserveOutcome, Settlement, StartOutcome, StockAccount, StoredCart,
    StoredResponse, Transition, TransitionOutcome,
};
use crate::query::ProductQuery;

/// One partition. Implementations answer only for rows they hold; routing and merging across
/// partitions is the [`Store`](crate::Store)'s job.
#[async_trait]
pub trait Shard:
    CatalogShard + IdentityShard + OrderShard + EventShard + MoveShard + Send + Sync + std::fmt::Debug
{
    /// A stable name for logs and metrics (`shard-0`), equal to its node name on the ring.
    fn name(&self) -> &str;

    /// The value recorded under `key` in this shard's own metadata (`shard_meta`), if any:
    /// where the store keeps which layout and which store a shard belongs to.
    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Records `value` under `key` unless something is recorded there already, and returns
    /// what is recorded now (this value or the earlier one). One transaction: of two
    /// processes claiming a fresh shard together, both read the one value that won.
    async fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError>;

    /// Records `value` under `key`, replacing what was there. One statement.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Removes `key`, if recorded. One statement.
    async fn delete_meta(&self, key: &str) -> Result<(), StoreError>;

    /// Every recorded key that starts with `prefix`, with its value, in key order.
    async fn metas(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Answers if the shard can serve a query now.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Waits for in-flight queries and releases the backend's resources.
    async fn close(&self);
}

/// The catalog's rows on one partition: products, their variants and stock.
///
/// Every write writes its event (`product.*`, `variant.*`, `stock.changed`; see
/// [`crate::events`]) in its own transaction; a write that is refused writes none.
///
/// Every version-checked write takes the product's row first, with a conditional write on
/// its version (`UPDATE … WHERE id = $1 AND version = $2`) or a read under its lock, and only
/// then touches variants and stock: so it is correct under READ COMMITTED as well as behind
/// SQLite's single writer, and of concurrent writers expecting one version exactly one wins.
/// Reads are single statements (one snapshot each).
#[async_trait]
pub trait CatalogShard: Send + Sync {
    /// Writes products with their variants and stock in one transaction: all or none, each
    /// product with its `product.created` event. Any isolation: it only inserts, and a
    /// duplicate id is a [`StoreError::Conflict`] that writes nothing.
    async fn insert_products(
        &self,
        products: &[ProductWithVariants],
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// One product with its variants, in one round trip (one statement, so one snapshot).
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

    /// Up to `query.limit` products after `query.after`, in `query.sort` order. One
    /// statement; pages are not one snapshot (a product edited between pages may move).
    async fn list_products(&self, query: &ProductQuery) -> Result<Vec<Product>, StoreError>;

    /// How many products this shard holds.
    async fn count_products(&self) -> Result<u64, StoreError>;

    /// Adds view counts to products in one transaction; unknown products are skipped. Each
    /// addition is relative (`view_count + n`), so concurrent flushes never lose counts; rows
    /// are locked in id order so they do not deadlock.
    async fn add_views(&self, views: &[(ProductId, i64)]) -> Result<(), StoreError>;

    /// Applies `patch` if the product is still at `expected_version`, bumping the version.
    /// Atomic under READ COMMITTED: the check is the update's own `WHERE version = …`.
    async fn update_product(
        &self,
        id: ProductId,
        expected_version: i64,
        patch: &ProductPatch,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError>;

    /// Deletes the product with its variants and stock if it is still at `expected_version`.
    /// The product's row is locked before the check, so the variants its event lists are
    /// exactly the ones deleted.
    async fn delete_product(
        &self,
        id: ProductId,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError>;

    /// Adds a variant (with its stock) to a product still at `expected_version`. Atomic: the
    /// version bump is the conditional write that admits it.
    async fn insert_variant(
        &self,
        variant: &Variant,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError>;

    /// Applies `patch` to a variant of a product still at `expected_version`. A stock level
    /// that differs from the stored one also writes `stock.changed`
    /// ([`StockEdit`](crate::model::StockEdit) decides). Atomic: the version bump admits it,
    /// and the level it replaces is read under the stock row's lock.
    async fn update_variant(
        &self,
        product: ProductId,
        variant: VariantId,
        expected_version: i64,
        patch: &VariantPatch,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError>;

    /// Removes a variant of a product still at `expected_version`. Atomic: the version bump
    /// admits it.
    async fn delete_variant(
        &self,
        product: ProductId,
        variant: VariantId,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError>;
}

/// Users and what they own, plus the directory and audit tables of the directory shard.
///
/// The rules (token rotation, quota answers, when a role change writes its event) are in
/// [`crate::identity`]; backends store. Each method below states what it needs to be correct
/// under READ COMMITTED; a method that says nothing is one statement or only inserts.
#[async_trait]
pub trait IdentityShard: Send + Sync {
    /// Claims `email_index` for `user` unless another user holds it. Atomic: the directory's
    /// primary key serialises concurrent claims, so of many claims at once exactly one wins
    /// and the others see the winner.
    async fn claim_email(
        &self,
        email_index: &[u8],
        user: UserId,
        now_ms: i64,
    ) -> Result<EmailClaim, StoreError>;

    /// Gives up a claim, if `user` holds it.
    async fn release_email(&self, email_index: &[u8], user: UserId) -> Result<(), StoreError>;

    /// The user holding `email_index`.
    async fn lookup_email(&self, email_index: &[u8]) -> Result<Option<UserId>, StoreError>;

    /// Writes a new user with its `user.created` event (stamped `user.created_at_ms`).
    async fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError>;

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;

    /// Rewrites a user's mutable fields (everything but the id and creation time); false if
    /// there is no such user. A role that differs from the stored one writes
    /// `user.role_changed` (stamped `user.updated_at_ms`), decided in the same transaction
    /// from the role the first update returns under the row's lock.
    async fn update_user(&self, user: &UserRecord) -> Result<bool, StoreError>;

    /// Users in id order after `after`, for maintenance such as re-encryption.
    async fn users_after(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError>;

    /// Starts a session with its first refresh token.
    async fn create_session(
        &self,
        session: SessionId,
        user: UserId,
        first: &RefreshRecord,
    ) -> Result<(), StoreError>;

    /// Presents the token hashed as `presented`; see [`RefreshOutcome`]. `next` (for the same
    /// session) is stored only when the outcome is `Rotated`. Atomic: the token and its
    /// session are read under their row locks (`FOR UPDATE`) before the decision, so of two
    /// presentations of one token exactly one rotates and the other is a reuse.
    async fn rotate_refresh(
        &self,
        presented: &[u8],
        next: &RefreshRecord,
        now_ms: i64,
    ) -> Result<RefreshOutcome, StoreError>;

    /// Revokes a session and so every token of its family; false if it was not active. One
    /// conditional write.
    async fn revoke_session(
        &self,
        session: SessionId,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// The session's owner and the owner's current role, while the session is active.
    async fn active_session(
        &self,
        session: SessionId,
    ) -> Result<Option<(UserId, Role)>, StoreError>;

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError>;

    async fn api_keys_of(&self, user: UserId) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Revokes a key of `user`; false if there is no such active key. One conditional write.
    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Counts one call against the key's quota for `day` unless the quota is spent. Atomic:
    /// one conditional upsert (`… DO UPDATE … WHERE used < quota`), so concurrent calls admit
    /// exactly `quota`.
    async fn consume_quota(
        &self,
        id: ApiKeyId,
        day: i64,
        quota: i64,
    ) -> Result<QuotaUse, StoreError>;

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// The newest `limit` events, newest first.
    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;

    /// Leases the lowest id generator number in `range` that no live lease holds to
    /// `holder` until `now_ms + ttl_ms`; `None` if every one is held. One transaction with a
    /// conditional write, so two processes never get the same number; a claimant that loses a
    /// number to a concurrent one moves on to the next free number (READ COMMITTED).
    async fn claim_generator(
        &self,
        holder: &str,
        range: std::ops::RangeInclusive<u16>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<u16>, StoreError>;

    /// Extends `holder`'s lease of `generator`; `false` if it no longer holds it. One
    /// conditional write.
    async fn renew_generator(
        &self,
        generator: u16,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives `generator` back, if `holder` holds it.
    async fn release_generator(&self, generator: u16, holder: &str) -> Result<(), StoreError>;

    /// The generator numbers whose lease has not expired at `now_ms`: the live processes.
    async fn held_generators(&self, now_ms: i64) -> Result<Vec<u16>, StoreError>;
}

/// Carts, orders, reservations, idempotency records and the outbox (see [`crate::orders`]).
///
/// Methods that change an order or a reservation write their outbox events in the same
/// transaction.
#[async_trait]
pub trait OrderShard: Send + Sync {
    /// `user`'s cart: its lines oldest first, its version and its checkout claim, read as one
    /// consistent snapshot (one statement; no lock, any isolation).
    async fn cart(&self, user: UserId) -> Result<StoredCart, StoreError>;

    /// Adds `item.quantity` units to a line (creating it), unless the line would exceed
    /// `max_quantity` or the cart `max_lines`; bumps the cart's version. Every cart change
    /// bumps the version in the transaction that makes it, with a conditional write that
    /// fails while a checkout holds the cart (its lines are being bought: an edit now would be
    /// lost when the paid order clears them).
    ///
    /// Atomic; correct under READ COMMITTED: the version bump comes first and takes the cart
    /// row's lock, so the line count and quantity the limits
    /// ([`CartChange::decide`](crate::orders::CartChange::decide)) are checked against cannot
    /// change before commit — every cart change bumps first.
    async fn add_to_cart(
        &self,
        user: UserId,
        item: &CartItem,
        max_quantity: i64,
        max_lines: i64,
    ) -> Result<CartChange, StoreError>;

    /// Sets a line's quantity, unless the line is missing or a checkout holds the cart.
    /// Atomic; takes the cart row's lock first (the version bump), like every cart change.
    async fn set_cart_quantity(
        &self,
        user: UserId,
        variant: VariantId,
        quantity: i64,
    ) -> Result<CartEdit, StoreError>;

    /// Removes a line, unless it is missing or a checkout holds the cart.
    /// Atomic; takes the cart row's lock first (the version bump), like every cart change.
    async fn remove_from_cart(
        &self,
        user: UserId,
        variant: VariantId,
    ) -> Result<CartEdit, StoreError>;

    /// The product a variant on this shard belongs to (one read, any isolation).
    async fn variant_product(&self, variant: VariantId) -> Result<Option<ProductId>, StoreError>;

    /// Writes a new pending order with its lines and its `order.created` event, claiming the
    /// idempotency key and the buyer's cart in the same transaction; nothing is written if the
    /// key is taken, another order holds the cart, or the cart is no longer at `cart_version`.
    ///
    /// The cart claim is one conditional write (`… WHERE version = ? AND checkout_order IS
    /// NULL`), which serialises concurrent checkouts of one cart under any isolation level that
    /// re-checks a row's condition after waiting for its lock (SQLite's single writer,
    /// PostgreSQL's READ COMMITTED). `cart_version: None` starts an order with no cart (tests
    /// and recovery tools). The idempotency claim is an insert-if-absent on the key's primary
    /// key, so of racing claims of one key exactly one commits. Atomic.
    async fn start_order(
        &self,
        order: &OrderRecord,
        claim: Option<&IdempotencyClaim>,
        cart_version: Option<i64>,
    ) -> Result<StartOutcome, StoreError>;

    /// Holds stock for `lines` (all on this shard) in one transaction: each variant's stock is
    /// decremented only if enough is on hand, so it never goes below zero, and either every
    /// line is held or none is. Lines already reserved for `order` are skipped.
    ///
    /// Correct under READ COMMITTED: the decrement is a conditional write (`… WHERE on_hand >=
    /// quantity`); a backend with row locks locks the stock rows in variant order first, so
    /// concurrent multi-line reservations do not deadlock.
    async fn reserve(
        &self,
        order: OrderId,
        buyer: UserId,
        lines: &[ReservationLine],
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<ReserveOutcome, StoreError>;

    /// Moves `order`'s reservations on this shard as `settlement` says; each unit moves at
    /// most once. Returns how many reservations moved.
    ///
    /// Atomic; correct under READ COMMITTED: each move is a write conditional on the state it
    /// was read in ([`Settlement::moves_from`]), so concurrent settlers move (and restock) a
    /// reservation once between them.
    async fn settle_reservations(
        &self,
        order: OrderId,
        settlement: Settlement,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Applies a status change if the order is in one of `change.from`. An order leaving
    /// `pending` releases its claim on the buyer's cart in the same transaction; clearing cart
    /// lines bumps the cart's version.
    ///
    /// Atomic; correct under READ COMMITTED: the order is read under its row lock (`SELECT …
    /// FOR UPDATE`) before [`Transition::refusal`] decides, so of concurrent transitions of
    /// one order only those valid after the previous one apply. Locks the order row, then the
    /// cart row.
    async fn transition(&self, change: &Transition<'_>) -> Result<TransitionOutcome, StoreError>;

    /// Marks `order` settled if it is still `status`: one conditional write, any isolation.
    async fn mark_settled(
        &self,
        order: OrderId,
        status: OrderStatus,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Marks the lines of `seller` (`None`: every line) shipped in a paid order; when every
    /// line is shipped the order becomes `shipped`.
    ///
    /// Atomic; correct under READ COMMITTED: the order row is locked before
    /// [`OrderRecord::ship_refusal`] decides, so a shipment and a refund (or two sellers'
    /// shipments) of one order serialise.
    async fn ship_lines(
        &self,
        order: OrderId,
        seller: Option<UserId>,
        now_ms: i64,
    ) -> Result<TransitionOutcome, StoreError>;

    /// One order with its lines (read without locks; under READ COMMITTED the order row and
    /// its lines are two statements, each a committed state).
    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, StoreError>;

    /// A buyer's orders, newest first, older than `before`.
    async fn orders_of_buyer(
        &self,
        buyer: UserId,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// Orders on this shard with a line of `seller`'s, newest first, older than `before`.
    async fn orders_of_seller(
        &self,
        seller: UserId,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// Every order on this shard, newest first, older than `before`.
    async fn all_orders(
        &self,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// Orders not settled since before `updated_before_ms`: what the sweeper finishes.
    async fn unsettled_orders(
        &self,
        updated_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// Orders with stock still held past its expiry, with their buyers.
    async fn expired_reservations(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(OrderId, UserId)>, StoreError>;

    async fn idempotency(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Stores the response of the request that claimed `key`, unless one is stored: one
    /// conditional write (`… WHERE status IS NULL`), so racing completions store one.
    async fn complete_idempotency(
        &self,
        user: UserId,
        key: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError>;

    /// Deletes idempotency records expired at `now_ms`; returns how many.
    async fn purge_idempotency(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Units of `variant` on hand, held and committed (zero if it is not on this shard), read
    /// as one snapshot (one statement).
    async fn stock_account(&self, variant: VariantId) -> Result<StockAccount, StoreError>;
}

/// The outbox as the relay reads it, leases, and what consumers record to apply each event
/// once (see [`crate::events`]).
///
/// The relay holds the lease `outbox-relay` on a shard while it publishes that shard's rows,
/// so one process publishes them at a time and the order per key holds; consumers record
/// what they applied on the directory shard.
///
/// Every method is one statement or one transaction that is safe to run again whole; none
/// needs more than READ COMMITTED (each check-then-act below is one conditional write).
#[async_trait]
pub trait EventShard: Send + Sync {
    /// Outbox events with an id above `after`, oldest first, published or not (tests and
    /// tools; the relay uses [`unpublished_events`](Self::unpublished_events)). One statement:
    /// a consistent snapshot of committed rows, which may miss a lower id committed later.
    async fn outbox(&self, after: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The committed events with these event ids, in id order; unknown ids are skipped. A
    /// read (one snapshot per statement).
    async fn events_with_ids(&self, ids: &[String]) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The oldest `limit` events not yet published, in id order. There is deliberately no id
    /// cursor: a backend whose ids are drawn before commit (PostgreSQL sequences) can commit a
    /// lower id after a higher one was published, and that row must still come back. One
    /// statement: any isolation level that reads committed rows.
    async fn unpublished_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Marks events published at `now_ms`; ids already published keep their first time.
    /// Returns how many were newly marked. A conditional write (`… AND published_at IS NULL`,
    /// re-checked after each row's lock), so racing relays mark and count each row once.
    async fn mark_published(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError>;

    /// Deletes published events published before `published_before_ms`; never an unpublished
    /// one. Returns how many. One conditional delete; ids of deleted rows are never reused.
    async fn prune_published(&self, published_before_ms: i64) -> Result<u64, StoreError>;

    /// How many events wait to be published, and since when. One statement, so the count and
    /// the time come from one snapshot.
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError>;

    /// Takes the lease `name` for `holder` until `now_ms + ttl_ms` if it is free, expired
    /// (`expires_at <= now_ms`) or already `holder`'s (a renewal); one conditional write, so of
    /// two claimants exactly one gets a free lease. True if `holder` now holds it. Correct
    /// under READ COMMITTED: the condition is evaluated on the newest version of the locked
    /// row (an `INSERT … ON CONFLICT DO UPDATE … WHERE`), never on an earlier read.
    async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives the lease back, if `holder` holds it; true if it did. One conditional delete.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError>;

    /// Records that `consumer` applied `event_id`; true if it was not recorded before. An
    /// insert-if-absent on the primary key, so of concurrent records of one event exactly one
    /// returns true.
    async fn record_processed(
        &self,
        consumer: &str,
        event_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Whether `consumer` recorded `event_id`. A read: it may be stale by the time it is
    /// used, so it is never the guard against applying an event twice (the record is).
    async fn is_processed(&self, consumer: &str, event_id: &str) -> Result<bool, StoreError>;

    /// The events `consumer` applied, each with when it was applied (ms since the Unix epoch),
    /// in event id order after `after` (`""` for the first page): tools measuring how long
    /// effects lag their events (`bazaar lab tradeoff sync-async`), and tests. One statement
    /// per page; pages are not one snapshot.
    async fn processed(
        &self,
        consumer: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError>;

    /// In one transaction: records `event_id` for `consumer` and, only if that record is new,
    /// adds one to the tally of `topic`. True if it was applied now; a redelivery (or a
    /// concurrent delivery of the same event) returns false and counts nothing. Atomic: the
    /// record is an insert-if-absent on the primary key (a concurrent one waits for this
    /// transaction and then finds the row), and the tally is added only after it inserted.
    async fn apply_tally(
        &self,
        consumer: &str,
        event_id: &str,
        topic: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Every topic's tally, by topic (byte order). One statement.
    async fn tally(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Forgets processed records applied before `applied_before_ms`; returns how many. A
    /// redelivery older than that would be applied again, so the bound must exceed the
    /// longest a message can wait in the queue. One delete.
    async fn prune_processed(&self, applied_before_ms: i64) -> Result<u64, StoreError>;
}

/// Rows as stored, for moving entities between shards of one backend (see [`crate::moving`]).
/// None of these writes an event: a move changes where rows live, not what they say.
#[async_trait]
pub trait MoveShard: Send + Sync {
    /// Ids of this shard's entities of `kind` above `after`, ascending, at most `limit`.
    async fn entity_ids(
        &self,
        kind: Entity,
        after: i64,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError>;

    /// Every row of the entities `ids` of `kind`, table by table, as one snapshot
    /// (REPEATABLE READ on PostgreSQL, one read transaction on SQLite).
    async fn export_entities(&self, kind: Entity, ids: &[i64]) -> Result<EntityRows, StoreError>;

    /// Makes this shard hold exactly `rows` for the entities `ids`: deletes whatever it held
    /// of them, then inserts `rows`, in one transaction, so a repeated import is the same as
    /// one.
    async fn import_entities(
        &self,
        kind: Entity,
        ids: &[i64],
        rows: &EntityRows,
    ) -> Result<(), StoreError>;

    /// Deletes every row of the entities `ids` of `kind`, children first, in one transaction;
    /// returns the rows deleted.
    async fn delete_entities(&self, kind: Entity, ids: &[i64]) -> Result<u64, StoreError>;
}
