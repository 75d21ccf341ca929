//! Carts, orders, stock reservations and idempotency records as the store keeps them (their
//! outbox events are in [`crate::events`]).
//!
//! # Who holds what
//!
//! A buyer's cart, orders and idempotency records live on the buyer's shard; a reservation
//! lives on its product's shard, beside the stock it holds. A checkout touching several
//! shards is therefore not one transaction: the **order row is the truth**, and the
//! reservations follow it. `settled = false` on an order says they may not follow it yet
//! (held stock of a paid order is still to be committed, or that of a cancelled one still to
//! be released); whoever settles it — the checkout itself, or the sweeper after a crash —
//! makes the reservations match and marks the order settled. Every step is idempotent.

use std::fmt;
use std::str::FromStr;

use crate::id::{OrderId, ProductId, UserId, VariantId};
use crate::model::Money;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Created by checkout; stock is being reserved and payment taken.
    Pending,
    Paid,
    /// Every line has been shipped by its seller.
    Shipped,
    Delivered,
    /// Given up before payment: out of stock, payment declined, cancelled by the buyer, or
    /// a checkout interrupted by a crash.
    Cancelled,
    /// Not paid within the reservation time.
    Expired,
    /// Paid, then refunded: its stock went back.
    Refunded,
}

impl OrderStatus {
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Paid,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
        Self::Expired,
        Self::Refunded,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Refunded => "refunded",
        }
    }

    /// Whether `self → to` is one of the order life cycle's transitions:
    /// `pending → paid → shipped → delivered`, `pending → cancelled | expired`,
    /// `paid → refunded`.
    pub fn may_become(self, to: Self) -> bool {
        matches!(
            (self, to),
            (Self::Pending, Self::Paid | Self::Cancelled | Self::Expired)
                | (Self::Paid, Self::Shipped | Self::Refunded)
                | (Self::Shipped, Self::Delivered)
        )
    }

    /// What this status asks of the order's reservations once settled.
    pub fn reservations(self) -> Settlement {
        match self {
            Self::Pending => Settlement::Hold,
            Self::Paid | Self::Shipped | Self::Delivered => Settlement::Commit,
            Self::Cancelled | Self::Expired | Self::Refunded => Settlement::Release,
        }
    }

    /// The outbox topic announcing that an order became this.
    pub fn topic(self) -> &'static str {
        match self {
            Self::Pending => "order.created",
            Self::Paid => "order.paid",
            Self::Shipped => "order.shipped",
            Self::Delivered => "order.delivered",
            Self::Cancelled => "order.cancelled",
            Self::Expired => "order.expired",
            Self::Refunded => "order.refunded",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown order status `{s}`"))
    }
}

/// What an order's reservations must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Stay held (the order is still pending).
    Hold,
    /// Held → committed: the units are sold.
    Commit,
    /// Held or committed → released: the units go back to stock, exactly once.
    Release,
}

/// One line of a buyer's cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartItem {
    pub variant_id: VariantId,
    pub product_id: ProductId,
    pub quantity: i64,
    pub added_at_ms: i64,
}

/// A buyer's cart as stored: its lines, the version every change to them bumps, and the
/// pending order that has claimed it for checkout, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredCart {
    pub items: Vec<CartItem>,
    /// Bumped by every change to the lines; a checkout starts only from the version it priced.
    pub version: i64,
    /// The pending order checking this cart out; while it is set no other checkout starts.
    pub checkout: Option<OrderId>,
}

/// What adding to a cart did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartChange {
    /// The line now holds `quantity`.
    Done { quantity: i64 },
    /// The line would exceed the per-line limit; nothing changed.
    TooMany { quantity: i64 },
    /// The cart already has the most lines allowed; nothing changed.
    TooManyLines,
    /// A checkout (this pending order) holds the cart; nothing changed.
    Busy(OrderId),
}

/// What changing or removing a cart line did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartEdit {
    Done,
    /// The cart has no line for the variant; nothing changed.
    NoSuchLine,
    /// A checkout (this pending order) holds the cart; nothing changed.
    Busy(OrderId),
}

/// One line of an order: what was bought, at the price checkout saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub variant_id: VariantId,
    pub product_id: ProductId,
    pub seller_id: Option<UserId>,
    pub name: String,
    pub sku: String,
    pub unit_price: Money,
    pub quantity: i64,
    pub shipped_at_ms: Option<i64>,
}

/// An order with its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: OrderId,
    pub buyer_id: UserId,
    pub status: OrderStatus,
    pub total: Money,
    /// The shipping address, sealed by the application layer.
    pub address_ct: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub payment_ref: Option<String>,
    /// Why it was cancelled (`out_of_stock`, `payment_declined`, …).
    pub reason: Option<String>,
    /// Whether the reservations match the status (see the module documentation).
    pub settled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub lines: Vec<OrderLine>,
}

/// A claim on an `Idempotency-Key`, made in the transaction that creates the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: String,
    /// A hash of the request, so a reuse with another body is told apart.
    pub request_hash: Vec<u8>,
    pub expires_at_ms: i64,
}

/// A stored idempotency record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub user_id: UserId,
    pub key: String,
    pub request_hash: Vec<u8>,
    pub order_id: Option<OrderId>,
    /// The response to replay; `None` while the first request still runs.
    pub response: Option<StoredResponse>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What creating an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// The idempotency key was already claimed; nothing was written.
    Duplicate(IdempotencyRecord),
    /// Another pending order holds the cart; nothing was written.
    CartBusy(OrderId),
    /// The cart changed since it was priced (another checkout emptied it, or its lines were
    /// edited); nothing was written.
    CartChanged,
}

/// One variant to reserve for an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationLine {
    pub variant_id: VariantId,
    pub product_id: ProductId,
    pub quantity: i64,
}

/// What reserving an order's lines on one shard did: all of them, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// `variant` has fewer than the `wanted` units on hand (`available`); nothing was held.
    OutOfStock {
        variant: VariantId,
        wanted: i64,
        available: i64,
    },
}

/// A status change, applied only if the order is in one of `from`.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub order: OrderId,
    pub buyer: UserId,
    pub from: &'a [OrderStatus],
    pub to: OrderStatus,
    pub now_ms: i64,
    pub reason: Option<&'a str>,
    pub payment_ref: Option<&'a str>,
    /// Completes the checkout's idempotency record with this response, in the same
    /// transaction.
    pub respond: Option<(&'a str, &'a StoredResponse)>,
    /// Takes these variants out of the buyer's cart, in the same transaction.
    pub clear_cart: &'a [VariantId],
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// Applied; the order as it is now.
    Done(OrderRecord),
    /// The order is in another status; nothing changed.
    Refused(OrderStatus),
    NotFound,
}

/// Units of one variant by where they are, for accounting checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StockAccount {
    pub on_hand: i64,
    pub held: i64,
    pub committed: i64,
}

impl StockAccount {
    /// Every unit put in, wherever it is now.
    pub fn total(&self) -> i64 {
        self.on_hand + self.held + self.committed
    }
}
