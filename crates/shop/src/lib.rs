//! Bazaar's application layer.
//!
//! # Layout
//!
//! * [`catalog`] — the catalog service the API calls: product and variant reads and listings
//!   with opaque cursors over the sharded [`bazaar_store::Store`], and sellers' writes.
//! * [`accounts`] — sign-up, sign-in, refresh-token rotation with reuse detection, sign-out,
//!   profiles, roles; [`api_keys`] — sellers' API keys with daily quotas.
//! * [`authz`] — the one authorization policy: [`authz::authorize`]`(principal, action)`.
//! * [`crypto`] — password hashing (argon2id), sealed personal data (XChaCha20-Poly1305),
//!   blind indexes (HMAC-SHA256), token hashes.
//! * [`audit`] — the security event log.
//! * [`params`] — the newtypes that user input is parsed into at the edge ([`params::Limit`],
//!   [`params::Cursor`], [`params::PriceBound`]); once parsed, a value is valid.
//! * [`orders`] — carts, checkout as a saga across shards, the order life cycle and its
//!   sweeper; [`payments`] — the payment provider boundary and its simulation;
//!   [`address`] — shipping addresses.
//! * [`events`] — the outbox relay, the consumers (cache invalidation, tally, log) and the
//!   dead-letter queue's operations, over the [`bazaar_queue::Queue`].
//! * [`search`] — product search over this process's index ([`bazaar_search`]), its
//!   freshness from the store, and rebuilds beside live traffic.
//! * [`demo`] — the deterministic demo catalog that `bazaar serve` and `bazaar seed` load.

pub mod accounts;
pub mod address;
pub mod api_keys;
pub mod audit;
pub mod authz;
pub mod catalog;
pub mod crypto;
pub mod demo;
mod error;
pub mod events;
pub mod orders;
pub mod params;
pub mod payments;
pub mod search;

pub use accounts::Accounts;
pub use api_keys::ApiKeys;
pub use authz::{Credential, Principal};
pub use catalog::{Catalog, ListRequest, Listing};
pub use error::ShopError;
pub use orders::Orders;
pub use search::Search;

/// Who is acting, and under which request: what every operation that checks permissions or
/// writes audit events takes.
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: Principal,
    /// The `x-request-id` of the HTTP request, recorded with audit events.
    pub request_id: Option<String>,
}

impl Actor {
    /// An anonymous actor outside any request (tests, the command line).
    pub fn anonymous() -> Self {
        Self {
            principal: Principal::Anonymous,
            request_id: None,
        }
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    i64::try_from(bazaar_store::id::wall_clock_ms()).unwrap_or(i64::MAX)
}
