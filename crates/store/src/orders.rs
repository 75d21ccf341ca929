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

impl Settlement {
    /// The reservation states this settlement moves a reservation out of (none for
    /// [`Hold`](Self::Hold)). A backend moves each reservation with a write conditional on
    /// the state it read, so a unit moves at most once however many settlers race.
    pub fn moves_from(self) -> &'static [ReservationState] {
        match self {
            Self::Hold => &[],
            Self::Commit => &[ReservationState::Held],
            Self::Release => &[ReservationState::Held, ReservationState::Committed],
        }
    }

    /// The state a moved reservation ends in (`None` for [`Hold`](Self::Hold): nothing moves).
    pub fn moves_to(self) -> Option<ReservationState> {
        match self {
            Self::Hold => None,
            Self::Commit => Some(ReservationState::Committed),
            Self::Release => Some(ReservationState::Released),
        }
    }

    /// Whether a moved reservation's units go back on hand (and a `stock.released` event says
    /// so): only when they are released.
    pub fn restocks(self) -> bool {
        self == Self::Release
    }
}

/// Where a reservation's units are. `held` units were taken from on-hand stock for an order
/// still pending; `committed` ones were sold; `released` ones went back on hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationState {
    Held,
    Committed,
    Released,
}

impl ReservationState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }
}

impl fmt::Display for ReservationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReservationState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Held, Self::Committed, Self::Released]
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown reservation state `{s}`"))
    }
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

impl CartChange {
    /// The cart limits' decision on adding `adding` units of a variant to a cart whose line
    /// for it holds `current` units (`None`: no line yet) and which has `lines` lines in all.
    /// [`Done`](Self::Done) carries the quantity to write; anything else is the refusal to
    /// return with nothing written. `Busy` is never decided here (the backend knows it from
    /// the cart's claim).
    ///
    /// The backend must read `current` and `lines` while it holds the cart row's lock (after
    /// its version bump), so that no concurrent change to the cart can make them stale before
    /// the write: that is what keeps the limits under concurrent adds.
    pub fn decide(
        current: Option<i64>,
        lines: i64,
        adding: i64,
        max_quantity: i64,
        max_lines: i64,
    ) -> Self {
        let quantity = current.unwrap_or(0).saturating_add(adding);
        if quantity > max_quantity {
            Self::TooMany { quantity }
        } else if current.is_none() && lines >= max_lines {
            Self::TooManyLines
        } else {
            Self::Done { quantity }
        }
    }
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

impl OrderRecord {
    /// Why `seller`'s lines (`None`: every line) of this order cannot be shipped, if they
    /// cannot: `NotFound` when it has no such line, `Refused(status)` unless it is paid.
    /// The backend must have read the order under its row lock.
    pub fn ship_refusal(&self, seller: Option<UserId>) -> Option<TransitionOutcome> {
        if !self.lines.iter().any(|l| l.ships_with(seller)) {
            Some(TransitionOutcome::NotFound)
        } else if self.status != OrderStatus::Paid {
            Some(TransitionOutcome::Refused(self.status))
        } else {
            None
        }
    }

    /// Marks `seller`'s unshipped lines (`None`: every line) shipped at `now_ms`, as the
    /// backend just stored them; once every line is shipped the order becomes `shipped`.
    /// Returns whether it did (the backend then stores the status and writes the order's
    /// event).
    pub fn ship(&mut self, seller: Option<UserId>, now_ms: i64) -> bool {
        for line in self.lines.iter_mut().filter(|l| l.ships_with(seller)) {
            line.shipped_at_ms.get_or_insert(now_ms);
        }
        if self.lines.iter().all(|l| l.shipped_at_ms.is_some()) {
            self.status = OrderStatus::Shipped;
            self.updated_at_ms = now_ms;
            true
        } else {
            false
        }
    }
}

impl OrderLine {
    /// Whether this line is among `seller`'s (`None`: every seller's).
    fn ships_with(&self, seller: Option<UserId>) -> bool {
        seller.is_none() || self.seller_id == seller
    }
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

impl Transition<'_> {
    /// Why this change cannot apply to `order` as read, if it cannot: `NotFound` when the
    /// order is another buyer's, `Refused(status)` when it is not in one of `from`, and
    /// `Refused(Shipped)` for a refund once any line has shipped (a shipped line is not coming
    /// back, so such an order is neither refunded nor restocked, even while other lines still
    /// wait to ship). The backend must have read `order` under its row lock (or as the single
    /// writer), so the decision still holds when it writes.
    pub fn refusal(&self, order: &OrderRecord) -> Option<TransitionOutcome> {
        if order.buyer_id != self.buyer {
            Some(TransitionOutcome::NotFound)
        } else if !self.from.contains(&order.status) {
            Some(TransitionOutcome::Refused(order.status))
        } else if self.to == OrderStatus::Refunded
            && order.lines.iter().any(|l| l.shipped_at_ms.is_some())
        {
            Some(TransitionOutcome::Refused(OrderStatus::Shipped))
        } else {
            None
        }
    }

    /// Whether applying this change to an order now in `status` releases the order's claim
    /// on the buyer's cart: an order holds it only while pending.
    pub fn releases_cart(&self, status: OrderStatus) -> bool {
        status == OrderStatus::Pending
    }

    /// `order` as the backend has just stored the change: the new status, unsettled (its
    /// reservations must follow), with the reason and payment reference when given.
    pub fn apply(&self, order: &mut OrderRecord) {
        order.status = self.to;
        order.settled = false;
        order.updated_at_ms = self.now_ms;
        if let Some(reason) = self.reason {
            order.reason = Some(reason.to_owned());
        }
        if let Some(payment) = self.payment_ref {
            order.payment_ref = Some(payment.to_owned());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Currency;

    #[test]
    fn cart_limits_check_the_line_first_and_count_lines_only_for_a_new_one() {
        let decide = |current, lines, adding| CartChange::decide(current, lines, adding, 5, 2);
        assert_eq!(decide(None, 0, 5), CartChange::Done { quantity: 5 });
        assert_eq!(decide(Some(4), 2, 1), CartChange::Done { quantity: 5 });
        assert_eq!(decide(Some(4), 2, 2), CartChange::TooMany { quantity: 6 });
        assert_eq!(decide(None, 2, 1), CartChange::TooManyLines);
        assert_eq!(decide(None, 2, 9), CartChange::TooMany { quantity: 9 });
        assert_eq!(
            decide(Some(i64::MAX), 1, 1),
            CartChange::TooMany { quantity: i64::MAX }
        );
    }

    #[test]
    fn settlements_say_which_reservations_move_where() {
        assert!(Settlement::Hold.moves_from().is_empty());
        assert_eq!(Settlement::Hold.moves_to(), None);
        assert_eq!(Settlement::Commit.moves_from(), [ReservationState::Held]);
        assert_eq!(
            Settlement::Commit.moves_to(),
            Some(ReservationState::Committed)
        );
        assert!(!Settlement::Commit.restocks());
        assert_eq!(
            Settlement::Release.moves_from(),
            [ReservationState::Held, ReservationState::Committed]
        );
        assert!(Settlement::Release.restocks());
        for state in [
            ReservationState::Held,
            ReservationState::Committed,
            ReservationState::Released,
        ] {
            assert_eq!(state.as_str().parse::<ReservationState>(), Ok(state));
        }
    }

    fn paid_order(shipped: bool) -> OrderRecord {
        let line = |seller, shipped_at_ms| OrderLine {
            variant_id: VariantId::new(1),
            product_id: ProductId::new(2),
            seller_id: Some(UserId::new(seller)),
            name: "n".into(),
            sku: "s".into(),
            unit_price: Money {
                amount: 1,
                currency: Currency::from_str("USD").unwrap(),
            },
            quantity: 1,
            shipped_at_ms,
        };
        OrderRecord {
            id: OrderId::new(9),
            buyer_id: UserId::new(3),
            status: OrderStatus::Paid,
            total: Money {
                amount: 2,
                currency: Currency::from_str("USD").unwrap(),
            },
            address_ct: Vec::new(),
            idempotency_key: None,
            payment_ref: None,
            reason: None,
            settled: true,
            created_at_ms: 0,
            updated_at_ms: 0,
            lines: vec![line(10, shipped.then_some(5)), line(11, None)],
        }
    }

    #[test]
    fn transitions_are_refused_for_strangers_other_statuses_and_refunds_after_shipping() {
        let order = paid_order(false);
        let change = |buyer, from: &'static [OrderStatus], to| Transition {
            order: order.id,
            buyer: UserId::new(buyer),
            from,
            to,
            now_ms: 7,
            reason: Some("why"),
            payment_ref: None,
            respond: None,
            clear_cart: &[],
        };
        let refund = change(3, &[OrderStatus::Paid], OrderStatus::Refunded);
        assert_eq!(refund.refusal(&order), None);
        assert_eq!(
            change(4, &[OrderStatus::Paid], OrderStatus::Refunded).refusal(&order),
            Some(TransitionOutcome::NotFound)
        );
        assert_eq!(
            change(3, &[OrderStatus::Pending], OrderStatus::Cancelled).refusal(&order),
            Some(TransitionOutcome::Refused(OrderStatus::Paid))
        );
        assert_eq!(
            refund.refusal(&paid_order(true)),
            Some(TransitionOutcome::Refused(OrderStatus::Shipped))
        );
        let mut applied = order.clone();
        refund.apply(&mut applied);
        assert_eq!(applied.status, OrderStatus::Refunded);
        assert!(!applied.settled);
        assert_eq!(
            (applied.updated_at_ms, applied.reason.as_deref()),
            (7, Some("why"))
        );
        assert!(refund.releases_cart(OrderStatus::Pending));
        assert!(!refund.releases_cart(OrderStatus::Paid));
    }

    #[test]
    fn an_order_ships_once_every_sellers_lines_have() {
        let mut order = paid_order(false);
        assert_eq!(
            order.ship_refusal(Some(UserId::new(12))),
            Some(TransitionOutcome::NotFound)
        );
        assert_eq!(order.ship_refusal(Some(UserId::new(10))), None);
        assert!(!order.ship(Some(UserId::new(10)), 20));
        assert_eq!(order.status, OrderStatus::Paid);
        assert!(order.ship(Some(UserId::new(11)), 21));
        assert_eq!(order.status, OrderStatus::Shipped);
        assert_eq!(
            order
                .lines
                .iter()
                .map(|l| l.shipped_at_ms)
                .collect::<Vec<_>>(),
            [Some(20), Some(21)]
        );
        assert_eq!(
            order.ship_refusal(None),
            Some(TransitionOutcome::Refused(OrderStatus::Shipped))
        );
    }
}
