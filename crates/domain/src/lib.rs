//! Bazaar's shared vocabulary, below every other crate: identifiers, money, the catalog's
//! entities, an order's status and the event envelope.
//!
//! Nothing here does I/O or knows how a value is stored or spelled on the wire: the store
//! decides its column encodings, the `api` crate what clients see. So the search, queue and
//! notification layers can speak of products and orders without depending on the storage
//! layer.

pub mod catalog;
pub mod envelope;
pub mod id;
pub mod money;

pub use catalog::{Product, ProductWithVariants, Variant};
pub use envelope::Envelope;
pub use id::{ApiKeyId, IdGenerator, InvalidId, OrderId, ProductId, SessionId, UserId, VariantId};
pub use money::{Currency, Money};
