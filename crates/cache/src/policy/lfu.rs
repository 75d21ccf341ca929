//! Least frequently used in O(1) (Shah, Mitra & Matani, 2010): entries hang in buckets of
//! equal access count, and the buckets form a list in increasing count. A hit moves an entry
//! to the next bucket (creating it beside the current one if needed); the victim is the least
//! recently arrived entry of the first bucket — the least frequently used, ties broken by
//! least recently used. No operation searches.

use super::Policy;
use crate::arena::{Arena, List, NIL};
use crate::store::Entry;

struct Bucket {
    count: u64,
    entries: List,
}

/// LFU bookkeeping: buckets in their own arena, linked in increasing count.
pub struct Lfu {
    buckets: Arena<Bucket>,
    order: List,
}

impl Default for Lfu {
    fn default() -> Self {
        Self {
            buckets: Arena::new(),
            order: List::default(),
        }
    }
}

impl std::fmt::Debug for Lfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lfu")
            .field("buckets", &self.order.len())
            .finish()
    }
}

impl Lfu {
    /// The bucket for `count` right after `before` (or first, if `before` is `NIL`), created
    /// if it does not exist. Buckets are linked front = lowest count.
    fn bucket_after(&mut self, before: usize, count: u64) -> usize {
        let next = if before == NIL {
            self.front()
        } else {
            self.next_of(before)
        };
        if next != NIL && self.buckets.get(next).count == count {
            return next;
        }
        let bucket = self.buckets.alloc(Bucket {
            count,
            entries: List::default(),
        });
        if before == NIL {
            self.buckets.push_front(&mut self.order, bucket);
        } else {
            self.buckets.insert_after(&mut self.order, before, bucket);
        }
        bucket
    }

    fn front(&self) -> usize {
        self.buckets.front(&self.order).unwrap_or(NIL)
    }

    fn next_of(&self, bucket: usize) -> usize {
        self.buckets.next(bucket)
    }

    fn drop_if_empty(&mut self, bucket: usize) {
        if self.buckets.get(bucket).entries.is_empty() {
            self.buckets.unlink(&mut self.order, bucket);
            self.buckets.release(bucket);
        }
    }
}

impl<K, V> Policy<K, V> for Lfu {
    fn on_insert(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        let bucket = self.bucket_after(NIL, 1);
        arena.get_mut(index).bucket = bucket;
        arena.push_front(&mut self.buckets.get_mut(bucket).entries, index);
    }

    fn on_hit(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        let current = arena.get(index).bucket;
        let count = self.buckets.get(current).count;
        let next = self.bucket_after(current, count + 1);
        arena.unlink(&mut self.buckets.get_mut(current).entries, index);
        arena.push_front(&mut self.buckets.get_mut(next).entries, index);
        arena.get_mut(index).bucket = next;
        self.drop_if_empty(current);
    }

    fn on_remove(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        let bucket = arena.get(index).bucket;
        arena.unlink(&mut self.buckets.get_mut(bucket).entries, index);
        self.drop_if_empty(bucket);
    }

    fn victim(&mut self, _arena: &mut Arena<Entry<K, V>>) -> Option<usize> {
        let first = self.buckets.front(&self.order)?;
        self.buckets.get(first).entries.back()
    }

    fn makes_room_first(&self) -> bool {
        true
    }
}
