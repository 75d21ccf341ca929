//! Bazaar's caching layer.
//!
//! # Layout
//!
//! * [`Store`] — the single-threaded core: map, slab of entries, weight budget, expiry, and a
//!   pluggable eviction policy ([`PolicyKind`]: LRU, LFU, W-TinyLFU).
//! * `policy` — the policies themselves, written here because they are the point of the layer
//!   (and measured beside moka, the best Rust cache, in `examples/hit_ratio.rs`).
//! * `arena` — the O(1) doubly linked lists threaded through one slab that every policy uses.
//!
//! * [`Cache`] — the concurrent cache: stores in lock-striped segments, per-value expiry,
//!   metrics ([`CacheMetrics`]), single-flight loading (`get_or_try_load`) and XFetch early
//!   refresh.
//!
//! * [`WriteBack`] — pending writes acknowledged from memory, coalesced per key, flushed in
//!   batches (view counts).
//!
//! * [`RedisTier`] — Redis as a shared second tier, with a token-checked `SET NX PX` lock so
//!   one process loads a missing key while the others wait for its value or serve stale.
//! * [`RedisInvalidation`] — cross-process invalidation over Redis pub/sub.
//! * [`Cached`] — a source of truth behind L1, optional L2 and invalidation, under one
//!   [`Strategy`] (cache-aside, read-through, write-through).

mod arena;
mod cache;
mod cached;
mod invalidation;
mod metrics;
pub mod policy;
mod redis_tier;
mod store;
pub mod strategy;
mod write_back;

pub use cache::{Cache, CacheConfig, Expiry, LoadError, Weigher};
pub use cached::Cached;
pub use invalidation::{InvalidationError, Invalidator, RedisInvalidation};
pub use metrics::CacheMetrics;
pub use policy::PolicyKind;
pub use redis_tier::{LoadLock, RedisTier, Stored, TierCounters, TierError, TierSettings};
pub use store::{RemovalCause, Store};
pub use strategy::Strategy;
pub use write_back::WriteBack;

#[cfg(test)]
mod tests;
