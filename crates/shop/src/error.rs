//! The application layer's one error type. Each variant says which HTTP status the API gives
//! it, but nothing here knows HTTP.

use bazaar_store::{Money, OrderId, OrderStatus, StoreError, VariantId};

use crate::authz::Denied;
use crate::params::InvalidParam;

/// Why an operation of the application layer failed.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// A query or path parameter is invalid; `param` names it as the client spelled it. 400.
    #[error("invalid `{param}`: {reason}")]
    InvalidParam {
        param: &'static str,
        reason: InvalidParam,
    },
    /// A field of a request body is invalid; `field` names it. 422.
    #[error("invalid `{field}`: {reason}")]
    InvalidField { field: String, reason: String },
    /// No valid credentials (wrong password, expired or revoked token). 401. The message is
    /// deliberately the same whatever the cause.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Signed in but not allowed. 403.
    #[error("{0}")]
    Forbidden(String),
    /// The object does not exist (or is hidden from this principal). 404.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing data, e.g. an email already registered. 409.
    #[error("{0}")]
    Conflict(String),
    /// The object changed since the client read it (If-Match). 412.
    #[error(
        "the resource changed since it was read (its ETag is now different); read it again and retry"
    )]
    PreconditionFailed,
    /// An API key's daily quota is spent. 429.
    #[error("the API key's daily quota of {limit} calls is spent; it resets at 00:00 UTC")]
    QuotaExhausted { limit: i64, reset_in_secs: u64 },
    /// The storage layer failed; an internal error, not the client's. 500.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message queue failed; an internal error. 500.
    #[error(transparent)]
    Queue(#[from] bazaar_queue::QueueError),
    /// With synchronous side effects, a consumer failed after the change committed: the
    /// change stands and its event is retried in the background. 503, type
    /// `side-effect-failed`.
    #[error("the change was saved, but its `{consumer}` side effect failed: {reason}")]
    SideEffect {
        consumer: &'static str,
        reason: String,
    },
    /// The search index failed; an internal error. 500.
    #[error("search failed: {0}")]
    Search(String),
    /// A load through a cache failed (the store's error, shared by every waiter). 500.
    #[error("loading through the cache failed: {0}")]
    Load(String),
    /// Stored data could not be decrypted or parsed; an internal error. 500.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// Not enough stock of `variant` for a checkout. 409, type `out-of-stock`.
    #[error("variant {variant} is out of stock: {wanted} wanted, {available} on hand")]
    OutOfStock {
        variant: VariantId,
        wanted: i64,
        available: i64,
    },
    /// The payment was refused; nothing was charged. 402.
    #[error("{0}")]
    PaymentDeclined(String),
    /// The payment provider could not be reached or did not answer; nothing was charged. 503.
    #[error("the payment could not be taken: {0}")]
    PaymentUnavailable(String),
    /// An `Idempotency-Key` sent again with a different request. 422.
    #[error(
        "this Idempotency-Key was used with a different request body; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// A request with the same `Idempotency-Key` is still running. 409.
    #[error("a request with this Idempotency-Key is still being processed; retry in a moment")]
    IdempotencyInProgress,
    /// Another checkout of the same cart (with another `Idempotency-Key`) holds it: one cart
    /// becomes at most one order. 409, type `checkout-in-progress`.
    #[error(
        "this cart is being checked out by order {order}; wait for it to finish, then read the cart again"
    )]
    CheckoutInProgress { order: OrderId },
    /// The cart's lines changed while the checkout priced them. 409, type `cart-changed`.
    #[error("the cart changed during checkout; read it again and check out what it holds now")]
    CartChanged,
    /// The cart's priced total is not the `expected_total` the client sent; nothing was
    /// reserved or charged. 409, type `price-changed`.
    #[error(
        "the cart's total is now {} {}, not the expected {} {}; review the cart and check out again with the new total",
        .total.amount, .total.currency, .expected.amount, .expected.currency
    )]
    PriceChanged { expected: Money, total: Money },
    /// An order cannot go from its status to the one asked for. 409.
    #[error("an order that is {from} cannot become {to}")]
    InvalidTransition { from: OrderStatus, to: OrderStatus },
}

impl ShopError {
    /// A rejected body field.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<Denied> for ShopError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated => Self::Unauthenticated(
                "sign in first: send `Authorization: Bearer <access token>` or an API key",
            ),
            Denied::Forbidden => {
                Self::Forbidden("your role or ownership does not allow this".into())
            }
        }
    }
}
