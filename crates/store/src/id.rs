//! Identifiers, re-exported from `bazaar-domain` (where they live so that layers above the
//! store can name products and users without depending on it). `ring_key` is what placement
//! hashes.

pub use bazaar_domain::id::*;
