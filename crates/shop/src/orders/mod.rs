//! Carts, checkout and the order life cycle.
//!
//! # Layout
//!
//! * `cart` — the buyer's cart, priced from the catalog;
//! * `checkout` — the checkout saga, its idempotency and the cart claim;
//! * `lifecycle` — reading orders (as each principal may see them), cancel, refund, ship,
//!   deliver;
//! * `sweeper` — settling reservations and the sweeper that finishes what a crash left.
//!
//! # Checkout is a saga
//!
//! A cart's products may live on several shards and the buyer's orders on another, so a
//! checkout cannot be one transaction. It is a sequence of local transactions, each
//! idempotent, with the **order row on the buyer's shard as the truth**:
//!
//! 1. the order is written `pending` with its lines, its `order.created` event, the claim
//!    on the request's `Idempotency-Key` and the claim on the cart — one transaction on the
//!    buyer's shard. The cart claim is a conditional write on the cart's version, so of any
//!    number of checkouts of one cart, whatever their keys, exactly one starts an order; the
//!    others are told the cart is being checked out (or, once it is paid, that it is empty);
//! 2. stock is reserved on each product's shard — one all-or-nothing transaction per shard,
//!    a conditional decrement that never takes stock below zero;
//! 3. payment is authorised and captured, the order id being the provider's idempotency key;
//! 4. the order becomes `paid`, in the same transaction as the stored response, the event and
//!    the cart's cleanup;
//! 5. the reservations are committed and the order marked settled.
//!
//! If stock runs out or payment fails, the order becomes `cancelled` (with its stored
//! response) and its reservations are released. If the process dies anywhere, the order is
//! left unsettled; the sweeper finds it after `stale_after` and finishes it: a pending order
//! whose payment the provider reports captured is completed, any other is cancelled and its
//! stock released; a settled status is made true on the product shards. No step can be lost:
//! each one either happened (and is visible in a row) or is redone.

mod cart;
mod checkout;
mod lifecycle;
mod sweeper;

use std::sync::Arc;
use std::time::Duration;

use bazaar_cache::Cache;
use bazaar_store::{
    IdGenerator, Money, OrderId, OrderLine, OrderRecord, OrderStatus, ProductId, ReservationLine,
    Store, StoredResponse, UserId, VariantId,
};

use crate::Actor;
use crate::address::{AddressInput, ShippingAddress};
use crate::authz::{Action, authorize};
use crate::catalog::Catalog;
use crate::crypto::PiiCipher;
use crate::error::ShopError;
use crate::payments::PaymentProvider;

/// Limits and timings of carts and orders.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// How long stock stays held for an unpaid order before the sweeper returns it.
    pub reservation_ttl: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// An order left unsettled this long belongs to a checkout that died; the sweeper
    /// finishes it. Must exceed the longest payment call.
    pub stale_after: Duration,
    /// How long a request waits for another request with the same key to finish.
    pub idempotency_wait: Duration,
    /// Units of one variant a cart line may hold.
    pub max_quantity: i64,
    /// Lines a cart may hold.
    pub max_lines: i64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            reservation_ttl: Duration::from_secs(15 * 60),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            stale_after: Duration::from_secs(30),
            idempotency_wait: Duration::from_secs(10),
            max_quantity: 100,
            max_lines: 50,
        }
    }
}

/// One line of a cart, priced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub variant_id: VariantId,
    pub product_id: ProductId,
    pub name: String,
    pub sku: String,
    pub color: String,
    pub size: String,
    pub unit_price: Money,
    pub quantity: i64,
    pub line_total: Money,
    /// Units on hand as last read (possibly from the product cache).
    pub available: i64,
}

/// A buyer's cart, priced by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    pub lines: Vec<CartLine>,
    /// The sum of the lines; zero USD when empty.
    pub total: Money,
}

/// An order as one principal may see it.
///
/// The buyer and admins see all of it. A seller who is neither sees only their part of it:
/// their own lines, `total` as the subtotal of those lines, the masked address they ship to,
/// and no buyer id or payment reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    /// `None` in a seller's view.
    pub buyer_id: Option<UserId>,
    pub status: OrderStatus,
    /// The order's total; in a seller's view, the subtotal of the seller's lines.
    pub total: Money,
    /// Every line; in a seller's view, the seller's own.
    pub lines: Vec<OrderLine>,
    /// Why it was cancelled, if it was.
    pub reason: Option<String>,
    /// `None` in a seller's view.
    pub payment_ref: Option<String>,
    /// In full for the buyer and admins; masked for sellers.
    pub shipping_address: ShippingAddress,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which orders a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderScope {
    /// The caller's own purchases.
    #[default]
    Mine,
    /// Orders with a line the caller sells (sellers and admins).
    Selling,
    /// Every order (admins).
    All,
}

/// A checkout request, parsed at the edge.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub idempotency_key: String,
    /// A hash of the request body: a key reused with another body is refused.
    pub request_hash: Vec<u8>,
    pub shipping_address: AddressInput,
    /// The total the client expects to pay (the cart's `total` as it last read it). When
    /// set and the cart prices to anything else, the checkout is refused with
    /// [`ShopError::PriceChanged`] before anything is reserved or charged.
    pub expected_total: Option<Money>,
}

/// What a checkout answers: a fresh outcome, or the stored response of an earlier request
/// with the same key.
#[derive(Debug)]
pub enum CheckoutReply {
    Fresh(Box<Result<Order, ShopError>>),
    Replay(StoredResponse),
}

/// Turns a checkout outcome into the bytes a client receives, so that exactly those bytes
/// can be stored for replay. The API layer provides it: only it knows the wire format.
pub type Render<'a> = &'a (dyn Fn(&Result<Order, ShopError>) -> StoredResponse + Sync);

/// Carts, checkout and orders. Cheap to clone.
#[derive(Clone)]
pub struct Orders {
    inner: Arc<Inner>,
    /// Which product each variant belongs to: a fact that never changes, so it is cached
    /// without expiry (absence is not cached).
    variant_products: Option<Cache<VariantId, Option<ProductId>>>,
}

struct Inner {
    store: Arc<Store>,
    catalog: Catalog,
    payments: Arc<dyn PaymentProvider>,
    pii: PiiCipher,
    ids: Arc<IdGenerator>,
    config: OrdersConfig,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("payments", &self.inner.payments)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The reasons orders are cancelled for, as stored.
pub mod reasons {
    pub const OUT_OF_STOCK: &str = "out_of_stock";
    pub const PAYMENT_DECLINED: &str = "payment_declined";
    pub const PAYMENT_FAILED: &str = "payment_failed";
    pub const INTERRUPTED: &str = "interrupted";
    pub const BY_BUYER: &str = "cancelled_by_buyer";
    pub const RESERVATION_EXPIRED: &str = "reservation_expired";
}

pub(crate) fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Orders {
    pub fn new(
        store: Arc<Store>,
        catalog: Catalog,
        payments: Arc<dyn PaymentProvider>,
        pii: PiiCipher,
        ids: Arc<IdGenerator>,
        config: OrdersConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                catalog,
                payments,
                pii,
                ids,
                config,
            }),
            variant_products: None,
        }
    }

    /// Remembers which product each variant belongs to in `cache`.
    pub fn with_variant_cache(mut self, cache: Cache<VariantId, Option<ProductId>>) -> Self {
        self.variant_products = Some(cache);
        self
    }

    pub fn config(&self) -> &OrdersConfig {
        &self.inner.config
    }
}

/// What to reserve for `order`: each line's units of its variant.
pub(crate) fn reservation_lines(order: &OrderRecord) -> Vec<ReservationLine> {
    order
        .lines
        .iter()
        .map(|l| ReservationLine {
            variant_id: l.variant_id,
            product_id: l.product_id,
            quantity: l.quantity,
        })
        .collect()
}

/// The shopper acting: any signed-in user.
pub(crate) fn shopper(actor: &Actor) -> Result<UserId, ShopError> {
    authorize(&actor.principal, Action::Shop)?;
    Ok(actor.principal.user_id()?)
}

pub(crate) fn not_in_cart(variant: VariantId) -> ShopError {
    ShopError::NotFound(format!("the cart has no line for variant {variant}"))
}

pub(crate) fn view(
    record: &OrderRecord,
    status: OrderStatus,
    payment_ref: Option<&str>,
    reason: Option<&str>,
    address: &ShippingAddress,
) -> Order {
    Order {
        id: record.id,
        buyer_id: Some(record.buyer_id),
        status,
        total: record.total,
        lines: record.lines.clone(),
        reason: reason.map(str::to_owned),
        payment_ref: payment_ref.map(str::to_owned),
        shipping_address: address.clone(),
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
}
