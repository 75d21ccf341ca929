//! The single-threaded core of a cache: a hash map from key to slot, the slab of entries, an
//! eviction policy, a weight budget and expiry. [`crate::Cache`] shards these behind locks.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::Instant;

use crate::arena::{Arena, NIL};
use crate::policy::{self, Policy, PolicyKind};

/// Which W-TinyLFU segment an entry is in (unused by the other policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Region {
    Window,
    Probation,
    Protected,
}

/// One cached value with its bookkeeping.
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    pub(crate) hash: u64,
    pub(crate) weight: u64,
    pub(crate) expires_at: Option<Instant>,
    /// LFU's frequency bucket.
    pub(crate) bucket: usize,
    /// W-TinyLFU's segment.
    pub(crate) region: Region,
}

/// Why an entry left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemovalCause {
    /// The policy chose it to make room.
    Size,
    /// Its time to live ran out.
    Expired,
    /// A new value was stored under its key.
    Replaced,
    /// It was removed on purpose (invalidation).
    Explicit,
}

impl RemovalCause {
    /// The cause's metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Expired => "expired",
            Self::Replaced => "replaced",
            Self::Explicit => "explicit",
        }
    }
}

/// A bounded map with an eviction policy. Not thread-safe; see [`crate::Cache`].
pub struct Store<K, V> {
    map: HashMap<K, usize>,
    arena: Arena<Entry<K, V>>,
    policy: Box<dyn Policy<K, V>>,
    hasher: RandomState,
    weight: u64,
    capacity: u64,
}

impl<K, V> std::fmt::Debug for Store<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.map.len())
            .field("weight", &self.weight)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<K: Hash + Eq + Clone + Send, V: Send> Store<K, V> {
    /// An empty store holding at most `capacity` weight (entry count when every weight is 1).
    pub fn new(kind: PolicyKind, capacity: u64) -> Self {
        Self {
            map: HashMap::new(),
            arena: Arena::new(),
            policy: policy::build(kind, capacity),
            hasher: RandomState::new(),
            weight: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The total weight held.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The value under `key` unless it is absent or expired at `now` (an expired entry is
    /// removed and reported in `removed`). A hit counts as a use for the policy.
    pub fn get(
        &mut self,
        key: &K,
        now: Instant,
        removed: &mut Vec<(K, V, RemovalCause)>,
    ) -> Option<&V> {
        self.policy.record_access(self.hasher.hash_one(key));
        let index = *self.map.get(key)?;
        if self.arena.get(index).expires_at.is_some_and(|at| at <= now) {
            removed.push(self.remove_index(index, RemovalCause::Expired));
            return None;
        }
        self.policy.on_hit(&mut self.arena, index);
        Some(&self.arena.get(index).value)
    }

    /// Whether `key` is present and unexpired, without counting a use.
    pub fn contains(&self, key: &K, now: Instant) -> bool {
        self.map
            .get(key)
            .is_some_and(|&i| self.arena.get(i).expires_at.is_none_or(|at| at > now))
    }

    /// Stores `value` under `key` with `weight`, expiring at `expires_at`, and evicts until the
    /// store fits its capacity. Everything that left is appended to `removed` (possibly the
    /// new entry itself, if the policy refuses it or it is heavier than the whole capacity).
    pub fn insert(
        &mut self,
        key: K,
        value: V,
        weight: u64,
        expires_at: Option<Instant>,
        removed: &mut Vec<(K, V, RemovalCause)>,
    ) {
        let hash = self.hasher.hash_one(&key);
        self.policy.record_access(hash);
        if let Some(&old) = self.map.get(&key) {
            removed.push(self.remove_index(old, RemovalCause::Replaced));
        }
        if weight > self.capacity {
            removed.push((key, value, RemovalCause::Size));
            return;
        }
        if self.policy.makes_room_first() {
            self.evict_while(|store| store.weight + weight > store.capacity, removed);
        }
        let entry = Entry {
            key: key.clone(),
            value,
            hash,
            weight,
            expires_at,
            bucket: NIL,
            region: Region::Window,
        };
        let index = self.arena.alloc(entry);
        self.map.insert(key, index);
        self.weight += weight;
        self.policy.on_insert(&mut self.arena, index);
        self.evict_while(|store| store.weight > store.capacity, removed);
    }

    fn evict_while(
        &mut self,
        over: impl Fn(&Self) -> bool,
        removed: &mut Vec<(K, V, RemovalCause)>,
    ) {
        while over(self) {
            let Some(victim) = self.policy.victim(&mut self.arena) else {
                break;
            };
            removed.push(self.remove_index(victim, RemovalCause::Size));
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let index = *self.map.get(key)?;
        Some(self.remove_index(index, RemovalCause::Explicit).1)
    }

    fn remove_index(&mut self, index: usize, cause: RemovalCause) -> (K, V, RemovalCause) {
        self.policy.on_remove(&mut self.arena, index);
        let entry = self.arena.release(index);
        self.map.remove(&entry.key);
        self.weight -= entry.weight;
        (entry.key, entry.value, cause)
    }
}
