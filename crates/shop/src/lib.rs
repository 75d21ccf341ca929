//! Bazaar's application layer.
//!
//! # Layout
//!
//! * [`catalog`] — the catalog service the API calls: product and variant reads and listings
//!   with opaque cursors, over the sharded [`bazaar_store::Store`].
//! * [`params`] — the newtypes that user input is parsed into at the edge ([`params::Limit`],
//!   [`params::Cursor`], [`params::PriceBound`]); once parsed, a value is valid.
//! * [`demo`] — the deterministic demo catalog that `bazaar serve` and `bazaar seed` load.

pub mod catalog;
pub mod demo;
pub mod params;

pub use catalog::{Catalog, ListRequest, Listing, ShopError};
