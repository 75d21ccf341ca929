//! W-TinyLFU (Einziger, Friedman & Manes, 2017), the policy of Caffeine and moka.
//!
//! New entries enter a small LRU **window** (1% of the capacity). When the window overflows,
//! its least recent entry becomes a *candidate* for the **main** space, a segmented LRU of a
//! **probation** and a **protected** segment (80% of main). If main has room the candidate
//! joins probation; otherwise the frequency sketch decides between the candidate and main's
//! victim (probation's least recent entry): the one asked for more often recently stays. A hit
//! in probation promotes an entry to protected, whose overflow is demoted back to probation.
//! The window absorbs bursts of new keys; the sketch keeps one-hit wonders out of main.

use super::Policy;
use super::sketch::Sketch;
use crate::arena::{Arena, List};
use crate::store::{Entry, Region};

/// W-TinyLFU bookkeeping.
#[derive(Debug)]
pub struct WTinyLfu {
    window: List,
    probation: List,
    protected: List,
    window_weight: u64,
    probation_weight: u64,
    protected_weight: u64,
    window_capacity: u64,
    main_capacity: u64,
    protected_capacity: u64,
    sketch: Sketch,
}

impl WTinyLfu {
    /// Bookkeeping for a cache of `capacity` weight.
    pub fn new(capacity: u64) -> Self {
        let window_capacity = (capacity / 100).max(1);
        let main_capacity = capacity.saturating_sub(window_capacity);
        Self {
            window: List::default(),
            probation: List::default(),
            protected: List::default(),
            window_weight: 0,
            probation_weight: 0,
            protected_weight: 0,
            window_capacity,
            main_capacity,
            protected_capacity: main_capacity * 8 / 10,
            sketch: Sketch::new(capacity),
        }
    }

    fn main_weight(&self) -> u64 {
        self.probation_weight + self.protected_weight
    }

    fn link<K, V>(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize, region: Region) {
        let weight = arena.get(index).weight;
        arena.get_mut(index).region = region;
        let (list, total) = match region {
            Region::Window => (&mut self.window, &mut self.window_weight),
            Region::Probation => (&mut self.probation, &mut self.probation_weight),
            Region::Protected => (&mut self.protected, &mut self.protected_weight),
        };
        arena.push_front(list, index);
        *total += weight;
    }

    fn unlink<K, V>(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        let entry = arena.get(index);
        let (region, weight) = (entry.region, entry.weight);
        let (list, total) = match region {
            Region::Window => (&mut self.window, &mut self.window_weight),
            Region::Probation => (&mut self.probation, &mut self.probation_weight),
            Region::Protected => (&mut self.protected, &mut self.protected_weight),
        };
        arena.unlink(list, index);
        *total -= weight;
    }

    /// Main's victim: probation's least recent entry, else protected's.
    fn main_victim(&self) -> Option<usize> {
        self.probation.back().or_else(|| self.protected.back())
    }
}

impl<K, V> Policy<K, V> for WTinyLfu {
    fn on_insert(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        self.link(arena, index, Region::Window);
    }

    fn on_hit(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        match arena.get(index).region {
            Region::Window => arena.move_to_front(&mut self.window, index),
            Region::Protected => arena.move_to_front(&mut self.protected, index),
            Region::Probation => {
                self.unlink(arena, index);
                self.link(arena, index, Region::Protected);
                // Protected overflow goes back to probation, least recent first.
                while self.protected_weight > self.protected_capacity {
                    let Some(demoted) = self.protected.back() else {
                        break;
                    };
                    self.unlink(arena, demoted);
                    self.link(arena, demoted, Region::Probation);
                }
            }
        }
    }

    fn on_remove(&mut self, arena: &mut Arena<Entry<K, V>>, index: usize) {
        self.unlink(arena, index);
    }

    fn victim(&mut self, arena: &mut Arena<Entry<K, V>>) -> Option<usize> {
        // Move the window's overflow into main while main has room for it.
        while self.window_weight > self.window_capacity {
            let candidate = self.window.back()?;
            let weight = arena.get(candidate).weight;
            if self.main_weight() + weight <= self.main_capacity {
                self.unlink(arena, candidate);
                self.link(arena, candidate, Region::Probation);
                continue;
            }
            // Main is full: the candidate must beat main's victim to get in.
            let Some(victim) = self.main_victim() else {
                return Some(candidate);
            };
            let (candidate_hash, victim_hash) = (arena.get(candidate).hash, arena.get(victim).hash);
            if self.sketch.estimate(candidate_hash) > self.sketch.estimate(victim_hash) {
                self.unlink(arena, candidate);
                self.link(arena, candidate, Region::Probation);
                return Some(victim);
            }
            return Some(candidate);
        }
        self.main_victim().or_else(|| self.window.back())
    }

    fn record_access(&mut self, hash: u64) {
        self.sketch.increment(hash);
    }
}
