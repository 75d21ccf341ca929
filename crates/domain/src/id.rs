//! Time-ordered 63-bit identifiers.
//!
//! Layout, most significant bit first: one zero bit (so ids fit SQLite's and PostgreSQL's
//! signed 64-bit integers), 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of generator
//! (process) number and 12 bits of sequence within the millisecond. Sorting by id therefore
//! sorts by creation time, which is how "newest first" is served from the primary key.
//!
//! On the wire ids are decimal strings: JavaScript cannot hold 63-bit integers exactly.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z in milliseconds since the Unix epoch; 41 bits of milliseconds after it
/// last until 2093.
pub const EPOCH_MS: u64 = 1_704_067_200_000;

const SEQUENCE_BITS: u32 = 12;
const GENERATOR_BITS: u32 = 10;
const TIMESTAMP_BITS: u32 = 41;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a positive decimal integer below 2^63, found `{0}`")]
pub struct InvalidId(pub String);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw value; ids from storage are trusted, ids from users go through
            /// [`FromStr`].
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw 63-bit value.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// The bytes the hash ring places this id by (little-endian).
            pub const fn ring_key(self) -> [u8; 8] {
                self.0.to_le_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, InvalidId> {
                parse_raw(s).map(Self).ok_or_else(|| InvalidId(s.chars().take(64).collect()))
            }
        }
    };
}

id_type!(
    /// Identifies a product; also its partition key.
    ProductId
);
id_type!(
    /// Identifies a variant (a sellable colour/size of a product).
    VariantId
);
id_type!(
    /// Identifies a user; also the partition key of everything the user owns.
    UserId
);
id_type!(
    /// Identifies a login session: one family of refresh tokens.
    SessionId
);
id_type!(
    /// Identifies a seller API key.
    ApiKeyId
);
id_type!(
    /// Identifies an order; it lives on its buyer's shard.
    OrderId
);

/// The smallest raw id any generator stamps at `ms` (ms since the Unix epoch): every id made at
/// `ms` or later is at least this, whatever its generator number and sequence.
pub fn first_raw_id_at(ms: u64) -> u64 {
    let elapsed = ms.saturating_sub(EPOCH_MS) & ((1 << TIMESTAMP_BITS) - 1);
    elapsed << (GENERATOR_BITS + SEQUENCE_BITS)
}

fn parse_raw(s: &str) -> Option<u64> {
    // `u64::from_str` accepts a leading `+`; ids have exactly one spelling.
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let raw: u64 = s.parse().ok()?;
    (raw > 0 && raw < (1 << 63) && !(s.len() > 1 && s.starts_with('0'))).then_some(raw)
}

/// Hands out time-ordered ids, unique per generator number.
#[derive(Debug)]
pub struct IdGenerator {
    /// The generator number, in the id's bits already; changed only by [`IdGenerator::renumber`].
    generator: AtomicU64,
    /// `(last millisecond, next sequence)`. A `std` mutex: held for a few instructions.
    state: Mutex<(u64, u64)>,
    clock: fn() -> u64,
}

impl IdGenerator {
    /// A generator stamped with `generator` (0..1024); processes that write concurrently must
    /// use different numbers.
    pub fn new(generator: u16) -> Self {
        Self::with_clock(generator, wall_clock_ms)
    }

    /// A generator whose clock starts at `start_ms` and only moves when a millisecond's
    /// sequence is exhausted: the same calls produce the same ids, which the demo catalog
    /// relies on.
    pub fn deterministic(generator: u16, start_ms: u64) -> Self {
        let mut generator = Self::with_clock(generator, || 0);
        generator.state = Mutex::new((start_ms, 0));
        generator
    }

    /// Moves this generator's clock forward to `ms` (never backwards): the next id is stamped
    /// with `ms` unless the clock is already past it.
    pub fn advance_to(&self, ms: u64) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ms > state.0 {
            *state = (ms, 0);
        }
    }

    fn with_clock(generator: u16, clock: fn() -> u64) -> Self {
        assert!(
            u32::from(generator) < 1 << GENERATOR_BITS,
            "generator number out of range"
        );
        Self {
            generator: AtomicU64::new(u64::from(generator)),
            state: Mutex::new((0, 0)),
            clock,
        }
    }

    /// The generator number the next id is stamped with.
    pub fn generator(&self) -> u16 {
        u16::try_from(self.generator.load(Ordering::Relaxed)).expect("set from a u16")
    }

    /// Stamps the ids from now on with `generator` (0..1024): for a process whose lease on
    /// its number was lost and that has claimed another.
    pub fn renumber(&self, generator: u16) {
        assert!(
            u32::from(generator) < 1 << GENERATOR_BITS,
            "generator number out of range"
        );
        // Under the state lock, so no id is stamped half with the old number.
        let _state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generator
            .store(u64::from(generator), Ordering::Relaxed);
    }

    /// The next id: greater than every id this generator returned before.
    pub fn next_raw(&self) -> u64 {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last_ms, next_seq) = *state;
        let now = (self.clock)().max(last_ms);
        let (ms, seq) = match (now > last_ms, next_seq > MAX_SEQUENCE) {
            (true, _) => (now, 0),
            (false, false) => (last_ms, next_seq),
            // The millisecond is used up: borrow the next one rather than repeat an id.
            (false, true) => (last_ms + 1, 0),
        };
        *state = (ms, seq + 1);
        let elapsed = ms.saturating_sub(EPOCH_MS) & ((1 << TIMESTAMP_BITS) - 1);
        let generator = self.generator.load(Ordering::Relaxed);
        (elapsed << (GENERATOR_BITS + SEQUENCE_BITS)) | (generator << SEQUENCE_BITS) | seq
    }

    /// The next product id.
    pub fn product_id(&self) -> ProductId {
        ProductId(self.next_raw())
    }

    /// The next variant id.
    pub fn variant_id(&self) -> VariantId {
        VariantId(self.next_raw())
    }

    /// The next user id.
    pub fn user_id(&self) -> UserId {
        UserId(self.next_raw())
    }

    /// The next session id.
    pub fn session_id(&self) -> SessionId {
        SessionId(self.next_raw())
    }

    /// The next API key id.
    pub fn api_key_id(&self) -> ApiKeyId {
        ApiKeyId(self.next_raw())
    }

    /// The next order id.
    pub fn order_id(&self) -> OrderId {
        OrderId(self.next_raw())
    }
}

/// Milliseconds since the Unix epoch by the wall clock.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The creation time encoded in an id, in ms since the Unix epoch.
pub fn created_ms(raw: u64) -> u64 {
    (raw >> (GENERATOR_BITS + SEQUENCE_BITS)) + EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_in_their_one_decimal_spelling() {
        assert_eq!("42".parse::<ProductId>(), Ok(ProductId::new(42)));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "042",
            "1.0",
            "abc",
            " 1",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<ProductId>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "9223372036854775807"
                .parse::<VariantId>()
                .map(VariantId::get),
            Ok(i64::MAX as u64)
        );
    }

    #[test]
    fn ids_increase_and_carry_their_time() {
        let generator = IdGenerator::new(3);
        let ids: Vec<u64> = (0..10_000).map(|_| generator.next_raw()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let now = wall_clock_ms();
        assert!(created_ms(ids[0]).abs_diff(now) < 60_000);
        assert!(ids.iter().all(|&id| id < 1 << 63));
    }

    #[test]
    fn a_deterministic_generator_repeats_itself_and_rolls_over_milliseconds() {
        let a = IdGenerator::deterministic(0, EPOCH_MS + 1000);
        let b = IdGenerator::deterministic(0, EPOCH_MS + 1000);
        let first: Vec<u64> = (0..5000).map(|_| a.next_raw()).collect();
        let second: Vec<u64> = (0..5000).map(|_| b.next_raw()).collect();
        assert_eq!(first, second);
        assert!(first.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(created_ms(first[0]), EPOCH_MS + 1000);
        assert_eq!(created_ms(first[4999]), EPOCH_MS + 1001);
    }
}
