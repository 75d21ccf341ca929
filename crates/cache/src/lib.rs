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
//! * [`RedisInvalidation`] — cross-process invalidation over Redis pub/sub.
//!
//! Write-through, the lock-based stampede protection, stale-while-revalidate and a Redis L2
//! value tier are still to come.

mod arena;
mod cache;
mod invalidation;
mod metrics;
pub mod policy;
mod store;
mod write_back;

pub use cache::{Cache, CacheConfig, Expiry, LoadError};
pub use invalidation::{InvalidationError, Invalidator, RedisInvalidation};
pub use metrics::CacheMetrics;
pub use policy::PolicyKind;
pub use store::{RemovalCause, Store};
pub use write_back::WriteBack;

#[cfg(test)]
mod tests;
