//! An order's life cycle, without a spelling: the store decides how a status is written in
//! its rows and events, the `api` crate how clients see it.

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
}

/// The status's name in English, for messages to people ("an order that is paid cannot
/// become pending"). Not a format: the store spells it in rows and events, the `api` crate on
/// the wire, each deciding for itself.
impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Refunded => "refunded",
        })
    }
}
