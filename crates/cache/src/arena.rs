//! Doubly linked lists threaded through one slab of entries, addressed by index.
//!
//! The seed describes LRU as "a hashmap coupled with a doubly linked list"; this is that list,
//! written so that one allocation holds every entry and any number of lists (LRU's one, LFU's
//! one per frequency, W-TinyLFU's window, probation and protected segments) can link the same
//! entries without pointers or `unsafe`. Every operation is O(1).

/// The index that links nowhere.
pub(crate) const NIL: usize = usize::MAX;

struct Slot<T> {
    item: Option<T>,
    prev: usize,
    next: usize,
}

/// The slab. Freed slots are reused, so indexes stay small and memory stays bounded by the
/// peak number of live entries.
pub(crate) struct Arena<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
}

/// One list inside an [`Arena`]: the front is the most recently pushed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct List {
    head: usize,
    tail: usize,
    len: usize,
}

impl Default for List {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl List {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The least recently pushed entry.
    pub(crate) fn back(&self) -> Option<usize> {
        (self.tail != NIL).then_some(self.tail)
    }
}

impl<T> Arena<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `item` unlinked and returns its index.
    pub(crate) fn alloc(&mut self, item: T) -> usize {
        let slot = Slot {
            item: Some(item),
            prev: NIL,
            next: NIL,
        };
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = slot;
                index
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    /// Takes an (already unlinked) item out and frees its slot.
    pub(crate) fn release(&mut self, index: usize) -> T {
        let item = self.slots[index]
            .item
            .take()
            .expect("releasing a live slot");
        self.free.push(index);
        item
    }

    pub(crate) fn get(&self, index: usize) -> &T {
        self.slots[index].item.as_ref().expect("a live slot")
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> &mut T {
        self.slots[index].item.as_mut().expect("a live slot")
    }

    /// Links `index` at the front of `list`.
    pub(crate) fn push_front(&mut self, list: &mut List, index: usize) {
        self.slots[index].prev = NIL;
        self.slots[index].next = list.head;
        if list.head != NIL {
            self.slots[list.head].prev = index;
        } else {
            list.tail = index;
        }
        list.head = index;
        list.len += 1;
    }

    /// Links `index` right after `after`, which must be in `list`.
    pub(crate) fn insert_after(&mut self, list: &mut List, after: usize, index: usize) {
        let next = self.slots[after].next;
        self.slots[index].prev = after;
        self.slots[index].next = next;
        self.slots[after].next = index;
        if next != NIL {
            self.slots[next].prev = index;
        } else {
            list.tail = index;
        }
        list.len += 1;
    }

    /// The front (most recently pushed) entry of `list`.
    pub(crate) fn front(&self, list: &List) -> Option<usize> {
        (list.head != NIL).then_some(list.head)
    }

    /// The entry after `index` in its list, or `NIL`.
    pub(crate) fn next(&self, index: usize) -> usize {
        self.slots[index].next
    }

    /// Unlinks `index` from `list`, which must contain it.
    pub(crate) fn unlink(&mut self, list: &mut List, index: usize) {
        let (prev, next) = (self.slots[index].prev, self.slots[index].next);
        if prev != NIL {
            self.slots[prev].next = next;
        } else {
            list.head = next;
        }
        if next != NIL {
            self.slots[next].prev = prev;
        } else {
            list.tail = prev;
        }
        self.slots[index].prev = NIL;
        self.slots[index].next = NIL;
        list.len -= 1;
    }

    /// Moves `index` to the front of `list` (it must be in `list`).
    pub(crate) fn move_to_front(&mut self, list: &mut List, index: usize) {
        if list.head != index {
            self.unlink(list, index);
            self.push_front(list, index);
        }
    }

    /// Indexes of `list` from front to back (for tests and debugging).
    #[cfg(test)]
    pub(crate) fn iter(&self, list: &List) -> Vec<usize> {
        let mut out = Vec::with_capacity(list.len);
        let mut at = list.head;
        while at != NIL {
            out.push(at);
            at = self.slots[at].next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_link_push_move_and_unlink_in_order() {
        let mut arena = Arena::new();
        let mut list = List::default();
        let ids: Vec<usize> = (0..4).map(|i| arena.alloc(i)).collect();
        for &id in &ids {
            arena.push_front(&mut list, id);
        }
        assert_eq!(arena.iter(&list), [3, 2, 1, 0]);
        assert_eq!(list.back(), Some(0));
        arena.move_to_front(&mut list, ids[0]);
        assert_eq!(arena.iter(&list), [0, 3, 2, 1]);
        arena.unlink(&mut list, ids[2]);
        assert_eq!(arena.iter(&list), [0, 3, 1]);
        assert_eq!(arena.release(ids[2]), 2);
        let reused = arena.alloc(9);
        assert_eq!(reused, ids[2], "freed slots are reused");
        arena.insert_after(&mut list, ids[0], reused);
        assert_eq!(arena.iter(&list), [0, 2, 3, 1]);
        for id in [ids[0], ids[3], ids[1], reused] {
            arena.unlink(&mut list, id);
        }
        assert!(list.is_empty() && list.back().is_none());
    }
}
