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
//! The concurrent cache, the strategies (cache-aside, read-through, write-through,
//! write-back), stampede protection and the Redis tier build on [`Store`].

mod arena;
pub mod policy;
mod store;

pub use policy::PolicyKind;
pub use store::{RemovalCause, Store};

#[cfg(test)]
mod tests;
