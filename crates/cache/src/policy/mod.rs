//! Eviction policies: which entry leaves when the cache is full.
//!
//! Each policy keeps its own bookkeeping — lists threaded through the shared
//! [`Arena`](crate::arena::Arena) — and answers four events: an entry arrived, was read, left,
//! and "who goes next?". The [`Store`](crate::store::Store) owns the entries and the map and
//! calls these; a policy never allocates per operation.

mod lfu;
mod lru;
mod sketch;
mod tinylfu;

pub use lfu::Lfu;
pub use lru::Lru;
pub use tinylfu::WTinyLfu;

use crate::arena::Arena;
use crate::store::Entry;

/// Which eviction policy a cache uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Least recently used: one list, most recent at the front.
    Lru,
    /// Least frequently used, ties broken by least recently used; O(1) with frequency buckets.
    Lfu,
    /// Window TinyLFU: a small LRU window in front of a segmented LRU main space, admitting
    /// into main only entries that a frequency sketch says are more popular than the victim.
    WTinyLfu,
}

impl PolicyKind {
    /// All policies, for tests and benchmarks.
    pub const ALL: [Self; 3] = [Self::Lru, Self::Lfu, Self::WTinyLfu];

    /// The policy's configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Lfu => "lfu",
            Self::WTinyLfu => "w-tinylfu",
        }
    }
}

/// The events a policy answers. `index` is an entry's slot in the arena.
pub(crate) trait Policy<K, V>: Send {
    /// A new entry was stored (unlinked); link it.
    fn on_insert(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize);
    /// An entry was read.
    fn on_hit(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize);
    /// An entry is leaving (removed, replaced, expired or evicted); unlink it.
    fn on_remove(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize);
    /// The entry to evict next, if any. May reorganise (W-TinyLFU moves its window's overflow
    /// into the main space and returns whichever of candidate and victim loses).
    fn victim(&mut self, arena: &mut Arena<Entry<K, V>>) -> Option<usize>;
    /// Every lookup and insert of a key, hit or miss: feeds frequency estimates.
    fn record_access(&mut self, _hash: u64) {}
    /// Whether room is made *before* a new entry is linked. LFU needs it: a newcomer always
    /// has the lowest count, so evicting after linking it would evict the newcomer itself.
    fn makes_room_first(&self) -> bool {
        false
    }
}

/// A boxed policy of `kind` for a cache of `capacity` weight.
pub(crate) fn build<K: Send, V: Send>(kind: PolicyKind, capacity: u64) -> Box<dyn Policy<K, V>> {
    match kind {
        PolicyKind::Lru => Box::new(Lru::default()),
        PolicyKind::Lfu => Box::new(Lfu::default()),
        PolicyKind::WTinyLfu => Box::new(WTinyLfu::new(capacity)),
    }
}
