//! Which shard owns a key, before, during and after a shard is added.
//!
//! A store places keys by a [`Layout`]: the consistent hash ring (the default), or
//! `hash mod N`, kept as the seed's point of comparison — adding a shard to a ring moves about
//! `1/(N+1)` of the keys, to `hash mod N` about `N/(N+1)`. The key hash is the ring's
//! documented one ([`bazaar_ring::key_hash`]) for both.
//!
//! # During a move
//!
//! While `bazaar shards add` runs, the directory shard records a [`MoveRecord`] and every
//! process routes by a [`Generation`] built from it. The hash circle is cut into
//! `ranges` equal slices; a key whose owner differs between the old layout and the new one
//! *moves*, and it moves with its slice:
//!
//! * ranges below `switched` are done: the key's rows are on its new owner, which serves it;
//! * the range at `switched` is *fenced* while it is copied: reads go to the old owner, writes
//!   wait (at most [`HOLD_LIMIT`]) until the range switches;
//! * the others are still on their old owner, which serves reads and writes.
//!
//! A key that does not move is never affected. Every change of the record bumps its `epoch`;
//! the mover goes on only once every live process has acknowledged the new epoch *and*
//! finished the calls it started under the old one (see `Store`'s watcher), so "fenced" means
//! no write to the range is in flight anywhere.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bazaar_ring::{Node, Ring};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// How long a write to a fenced range waits for the range to switch before it fails with
/// [`StoreError::Moving`]: longer than any range's copy takes unless the mover died.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// How keys are placed on shards: the `store.placement` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementKind {
    /// The consistent hash ring with virtual nodes.
    #[default]
    Ring,
    /// `hash mod N`: the naive placement, for comparison.
    Modulo,
}

impl PlacementKind {
    /// The name in configuration and in the shard metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::Modulo => "modulo",
        }
    }
}

impl fmt::Display for PlacementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PlacementKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ring" => Ok(Self::Ring),
            "modulo" => Ok(Self::Modulo),
            other => Err(format!(
                "unknown placement `{other}`; expected `ring` or `modulo`"
            )),
        }
    }
}

/// The owner of every key for one shard count.
#[derive(Debug, Clone)]
pub enum Layout {
    Ring(Ring),
    Modulo(usize),
}

impl Layout {
    /// The layout of `count` shards named `shard-0..`.
    pub fn new(kind: PlacementKind, count: usize, vnodes: u32) -> Result<Self, StoreError> {
        if count == 0 {
            return Err(StoreError::Layout(
                "a store needs at least one shard".into(),
            ));
        }
        Ok(match kind {
            PlacementKind::Ring => Self::Ring(
                Ring::with_vnodes((0..count).map(|i| Node::new(crate::shard_name(i))), vnodes)
                    .map_err(|e| StoreError::Layout(e.to_string()))?,
            ),
            PlacementKind::Modulo => Self::Modulo(count),
        })
    }

    /// The index of the shard that owns the key hashed to `hash`.
    pub fn locate_hash(&self, hash: u64) -> usize {
        match self {
            Self::Ring(ring) => ring.locate_hash(hash).expect("a layout has a shard"),
            Self::Modulo(count) => {
                usize::try_from(hash % u64::try_from(*count).expect("usize fits u64"))
                    .expect("below the count")
            }
        }
    }

    /// How many shards it places on.
    pub fn count(&self) -> usize {
        match self {
            Self::Ring(ring) => ring.nodes().len(),
            Self::Modulo(count) => *count,
        }
    }
}

/// The slice of the hash circle `hash` falls in, of `ranges` equal slices.
pub fn range_of(hash: u64, ranges: u32) -> u32 {
    u32::try_from((u128::from(hash) * u128::from(ranges)) >> 64).expect("below ranges")
}

/// The directory shard's record of a move, under [`MOVE_KEY`]: written by the mover only, read
/// by every process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    /// Bumped by every change; what processes acknowledge.
    pub epoch: u64,
    /// Shards before the move.
    pub from: usize,
    /// Shards after it: `from + 1`.
    pub to: usize,
    /// Where the added shard is, for backends that need to be told (a PostgreSQL URL); the
    /// SQLite backend finds `shard-{from}.sqlite` in its data directory.
    pub new_shard: Option<String>,
    /// Slices of the hash circle, each switched on its own.
    pub ranges: u32,
    /// Ranges `0..switched` are on their new owners.
    pub switched: u32,
    /// Whether range `switched` is fenced (its writes held) for its copy.
    pub fenced: bool,
    /// Every range switched and the layout recorded: the store has `to` shards.
    pub done: bool,
}

/// The metadata key of the [`MoveRecord`] on the directory shard.
pub const MOVE_KEY: &str = "move";

impl MoveRecord {
    /// Parses the stored record, naming it when it is not one.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        serde_json::from_str(text)
            .map_err(|e| StoreError::Layout(format!("the recorded shard move is unreadable: {e}")))
    }

    /// The stored spelling.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a move record serialises")
    }

    /// Shards a process must have open while this record stands.
    pub fn shard_count(&self) -> usize {
        self.to
    }
}

/// What every routed call of a process follows, built from the [`MoveRecord`] (or its absence).
#[derive(Debug)]
pub struct Generation {
    pub epoch: u64,
    current: Layout,
    moving: Option<Moving>,
}

#[derive(Debug)]
struct Moving {
    target: Layout,
    ranges: u32,
    switched: u32,
    fenced: bool,
}

/// Where a write may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRoute {
    /// To this shard.
    To(usize),
    /// Nowhere yet: the key's range is fenced for its copy.
    Held,
}

impl Generation {
    /// The placement with no move running, at `epoch`.
    pub fn settled(epoch: u64, layout: Layout) -> Self {
        Self {
            epoch,
            current: layout,
            moving: None,
        }
    }

    /// The placement `record` describes, over layouts of `kind`.
    pub fn of(record: &MoveRecord, kind: PlacementKind, vnodes: u32) -> Result<Self, StoreError> {
        if record.done {
            return Ok(Self::settled(
                record.epoch,
                Layout::new(kind, record.to, vnodes)?,
            ));
        }
        Ok(Self {
            epoch: record.epoch,
            current: Layout::new(kind, record.from, vnodes)?,
            moving: Some(Moving {
                target: Layout::new(kind, record.to, vnodes)?,
                ranges: record.ranges.max(1),
                switched: record.switched,
                fenced: record.fenced,
            }),
        })
    }

    /// Whether a move is running: background maintenance that writes shard by shard waits.
    pub fn is_moving(&self) -> bool {
        self.moving.is_some()
    }

    /// The shard that serves reads of the key hashed to `hash`.
    pub fn read_owner(&self, hash: u64) -> usize {
        let old = self.current.locate_hash(hash);
        match &self.moving {
            Some(m) => {
                let new = m.target.locate_hash(hash);
                if new != old && range_of(hash, m.ranges) < m.switched {
                    new
                } else {
                    old
                }
            }
            None => old,
        }
    }

    /// Where a write of the key hashed to `hash` goes now.
    pub fn write_route(&self, hash: u64) -> WriteRoute {
        let old = self.current.locate_hash(hash);
        let Some(m) = &self.moving else {
            return WriteRoute::To(old);
        };
        let new = m.target.locate_hash(hash);
        if new == old {
            return WriteRoute::To(old);
        }
        let range = range_of(hash, m.ranges);
        match range.cmp(&m.switched) {
            std::cmp::Ordering::Less => WriteRoute::To(new),
            std::cmp::Ordering::Equal if m.fenced => WriteRoute::Held,
            _ => WriteRoute::To(old),
        }
    }

    /// The owners of the key hashed to `hash` before and after the running move (equal when
    /// it does not move, or when no move runs).
    pub fn owners(&self, hash: u64) -> (usize, usize) {
        let old = self.current.locate_hash(hash);
        match &self.moving {
            Some(m) => (old, m.target.locate_hash(hash)),
            None => (old, old),
        }
    }
}

/// A live process's entry on the directory shard, under `participant/{id}`: the last epoch it
/// acknowledged and until when it counts as alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub acked: u64,
    pub expires_ms: i64,
}

/// The prefix of participant keys.
pub const PARTICIPANT_PREFIX: &str = "participant/";

/// How long a participant counts as alive after its last renewal.
pub const PARTICIPANT_TTL: Duration = Duration::from_secs(30);

/// How often the watcher renews its participant entry.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How often the watcher reads the move record while a move runs (otherwise it reads it
/// once per renewal, [`RENEW_EVERY`]).
pub const POLL_EVERY: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(switched: u32, fenced: bool) -> MoveRecord {
        MoveRecord {
            epoch: 3,
            from: 4,
            to: 5,
            new_shard: None,
            ranges: 8,
            switched,
            fenced,
            done: false,
        }
    }

    #[test]
    fn ranges_cut_the_circle_evenly_and_in_order() {
        assert_eq!(range_of(0, 8), 0);
        assert_eq!(range_of(u64::MAX, 8), 7);
        assert_eq!(range_of(1 << 63, 8), 4);
        assert_eq!(range_of((1 << 63) - 1, 8), 3);
    }

    #[test]
    fn a_key_moves_with_its_range_and_only_moving_keys_are_held() {
        for kind in [PlacementKind::Ring, PlacementKind::Modulo] {
            let before = Generation::of(&record(0, false), kind, 1024).unwrap();
            let fenced = Generation::of(&record(4, true), kind, 1024).unwrap();
            let after = Generation::of(
                &MoveRecord {
                    done: true,
                    ..record(8, false)
                },
                kind,
                1024,
            )
            .unwrap();
            let (mut held, mut moved) = (0, 0);
            for i in 0..20_000u64 {
                let hash = bazaar_ring::key_hash(&i.to_be_bytes());
                let (old, new) = fenced.owners(hash);
                assert_eq!(before.read_owner(hash), old);
                assert_eq!(after.read_owner(hash), new);
                let range = range_of(hash, 8);
                let expected_read = if old != new && range < 4 { new } else { old };
                assert_eq!(fenced.read_owner(hash), expected_read);
                match fenced.write_route(hash) {
                    WriteRoute::Held => {
                        held += 1;
                        assert!(old != new && range == 4);
                    }
                    WriteRoute::To(shard) => assert_eq!(shard, expected_read),
                }
                moved += usize::from(old != new);
            }
            assert!(
                held > 0,
                "{kind}: some moving key falls in the fenced range"
            );
            let share = moved as f64 / 20_000.0;
            match kind {
                // About 1/5 of the keys move to the fifth shard of a ring...
                PlacementKind::Ring => assert!((share - 0.2).abs() < 0.02, "ring moved {share}"),
                // ...and about 4/5 under `hash mod N`.
                PlacementKind::Modulo => assert!((share - 0.8).abs() < 0.02, "mod moved {share}"),
            }
        }
    }

    #[test]
    fn placement_names_parse_and_unknown_ones_are_named() {
        assert_eq!("ring".parse::<PlacementKind>(), Ok(PlacementKind::Ring));
        assert_eq!("modulo".parse::<PlacementKind>(), Ok(PlacementKind::Modulo));
        let err = "hash".parse::<PlacementKind>().unwrap_err();
        assert!(err.contains("`hash`"), "{err}");
    }
}
