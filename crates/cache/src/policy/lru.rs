//! Least recently used: the seed's "hashmap coupled with a doubly linked list". A hit moves
//! the entry to the front; the victim is the back.

use super::Policy;
use crate::arena::{Arena, List};
use crate::store::Entry;

/// LRU bookkeeping: one list.
#[derive(Debug, Default)]
pub struct Lru {
    list: List,
}

impl<K, V> Policy<K, V> for Lru {
    fn on_insert(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        arena.push_front(&mut self.list, index);
    }

    fn on_hit(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        arena.move_to_front(&mut self.list, index);
    }

    fn on_remove(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        arena.unlink(&mut self.list, index);
    }

    fn victim(&mut self, _arena: &mut Arena<Entry<K, V>>) -> Option<usize> {
        self.list.back()
    }
}
