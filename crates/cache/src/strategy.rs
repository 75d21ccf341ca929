//! The four caching strategies, by how reads and writes meet the source of truth.
//!
//! | strategy | read miss | write | staleness after a write | loss on a crash |
//! |---|---|---|---|---|
//! | cache-aside | the caller loads and fills the cache; concurrent misses each load | source, then drop the key | none locally; peers until invalidated | none |
//! | read-through | the cache loads, once per key however many miss (single flight) | source, then drop the key | none locally; peers until invalidated | none |
//! | write-through | as read-through | source, then store the new value in the cache | none locally; peers until invalidated | none |
//! | write-back | as read-through | the cache only; flushed to the source in batches | none locally | the unflushed interval |
//!
//! Write-through saves the first read after a write its load, and costs a cache slot for
//! values that may never be read again. Write-back acknowledges writes from memory — fast,
//! and coalesced per key — and is only fit for data whose last seconds may be lost (view
//! counts, not orders).

use std::fmt;
use std::str::FromStr;

/// How a cache meets its source of truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The application reads the cache, and on a miss loads from the source and fills the
    /// cache itself. No coalescing: N concurrent misses are N loads.
    CacheAside,
    /// The cache loads on a miss, one load per key however many callers miss at once; writes
    /// go to the source and drop the key.
    ReadThrough,
    /// As read-through, but a write stores the written value in the cache as well as the
    /// source, so the next read hits.
    WriteThrough,
    /// Writes are acknowledged from the cache and flushed to the source later, coalesced per
    /// key.
    WriteBack,
}

impl Strategy {
    /// Every strategy, in the order of the table above.
    pub const ALL: [Self; 4] = [
        Self::CacheAside,
        Self::ReadThrough,
        Self::WriteThrough,
        Self::WriteBack,
    ];

    /// The strategy's configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CacheAside => "cache-aside",
            Self::ReadThrough => "read-through",
            Self::WriteThrough => "write-through",
            Self::WriteBack => "write-back",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy name that is none of the four.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStrategy(pub String);

impl fmt::Display for UnknownStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown caching strategy `{}`; expected `cache-aside`, `read-through`, `write-through` or `write-back`",
            self.0
        )
    }
}

impl std::error::Error for UnknownStrategy {}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| UnknownStrategy(name.to_owned()))
    }
}
