//! A Count-Min sketch of 4-bit counters: TinyLFU's memory of how often each key was asked for.
//!
//! Four rows of counters; a key's estimate is the smallest of its four counters, so
//! collisions only ever over-estimate. Counters saturate at 15, and after `10 × capacity`
//! increments every counter is halved ("aging"), so the sketch tracks recent popularity and a
//! key that was hot last hour does not squat in the cache for ever.

/// The frequency sketch.
#[derive(Debug)]
pub(crate) struct Sketch {
    /// Counters packed two per byte, `width` per row, four rows back to back.
    table: Vec<u8>,
    mask: usize,
    increments: u64,
    sample: u64,
}

const ROWS: usize = 4;
const MAX: u8 = 15;

impl Sketch {
    /// A sketch sized for `capacity` entries.
    pub(crate) fn new(capacity: u64) -> Self {
        let width = usize::try_from(capacity.max(16))
            .unwrap_or(1 << 20)
            .next_power_of_two()
            .min(1 << 24);
        Self {
            table: vec![0; width * ROWS / 2],
            mask: width - 1,
            increments: 0,
            sample: capacity.max(16) * 10,
        }
    }

    fn slot(&self, hash: u64, row: usize) -> usize {
        // Four cheap, independent-enough indexes from one 64-bit hash (double hashing).
        let h = hash.wrapping_add(
            (row as u64)
                .wrapping_mul(hash >> 32 | 1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let column = (h ^ (h >> 29)) as usize & self.mask;
        row * (self.mask + 1) + column
    }

    fn read(&self, slot: usize) -> u8 {
        let byte = self.table[slot / 2];
        if slot.is_multiple_of(2) {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }

    fn write(&mut self, slot: usize, value: u8) {
        let byte = &mut self.table[slot / 2];
        *byte = if slot.is_multiple_of(2) {
            (*byte & 0xF0) | value
        } else {
            (*byte & 0x0F) | (value << 4)
        };
    }

    /// Counts one access of `hash`.
    pub(crate) fn increment(&mut self, hash: u64) {
        let mut changed = false;
        for row in 0..ROWS {
            let slot = self.slot(hash, row);
            let value = self.read(slot);
            if value < MAX {
                self.write(slot, value + 1);
                changed = true;
            }
        }
        if changed {
            self.increments += 1;
            if self.increments >= self.sample {
                self.age();
            }
        }
    }

    /// The estimated number of recent accesses of `hash`, 0 to 15.
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        (0..ROWS)
            .map(|row| self.read(self.slot(hash, row)))
            .min()
            .unwrap_or(0)
    }

    fn age(&mut self) {
        for byte in &mut self.table {
            // Halve both nibbles at once.
            *byte = (*byte >> 1) & 0x77;
        }
        self.increments /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_count_saturate_and_age() {
        let mut sketch = Sketch::new(1000);
        for _ in 0..5 {
            sketch.increment(42);
        }
        assert_eq!(sketch.estimate(42), 5);
        assert_eq!(sketch.estimate(43), 0);
        for _ in 0..100 {
            sketch.increment(42);
        }
        assert_eq!(sketch.estimate(42), 15, "counters saturate at 15");
        // Enough other traffic triggers aging, which halves the hot key's count.
        for key in 0..20_000u64 {
            sketch.increment(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63);
        }
        assert!(sketch.estimate(42) < 15, "aging halves old counts");
    }
}
