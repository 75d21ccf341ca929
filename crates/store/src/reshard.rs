//! Adding a shard online (`bazaar shards add`): the keys the new layout gives to other
//! shards move range by range while the store keeps serving.
//!
//! # The move
//!
//! 1. **Plan.** The mover opens the new shard, gives it the store's identity, and records a
//!    [`MoveRecord`] on the directory shard. Every process (each `Store` is a participant)
//!    opens the new shard too and acknowledges; from then on shard-by-shard maintenance
//!    pauses ([`Store::maintenance`]).
//! 2. **Scan.** The ids of every product and user on the old shards are read (ids only) and
//!    hashed; a key whose owner differs under the new layout is bucketed by its range.
//! 3. **Per range:** *fence* it (the record says so; every process acknowledges once no write
//!    to the range is in flight, and holds new ones); *catch up* with entities created since
//!    the scan (ids made from 30 s before the scan on, see [`CLOCK_SKEW`]); *copy* each moving
//!    entity's rows as one snapshot into its new owner (replacing what a killed run left
//!    there); *switch* (the range is served by its new owners; processes acknowledge, and the
//!    held writes go there); *delete* the moved rows from the old owners.
//! 4. **Done.** The record says the store has `to` shards; maintenance resumes.
//!
//! Every step is recorded before the next begins and each is idempotent, so a mover killed at
//! any point is resumed by running it again: copies are replaced, deletions repeated, rows
//! of switched ranges still on an old shard deleted by the next run's scan.
//!
//! # What a move costs the running store
//!
//! Reads are never held. A write to a key that does not move is never held. A write to a
//! moving key waits while its range is fenced — two acknowledgement rounds (each a few watcher
//! polls, [`POLL_EVERY`](crate::placement::POLL_EVERY)) and the copy of one range — at most
//! [`HOLD_LIMIT`], after which it fails with [`StoreError::Moving`] (503, nothing written); the
//! report gives the longest fence. A process that died without leaving keeps each
//! acknowledgement round waiting until its entry expires
//! ([`PARTICIPANT_TTL`](crate::placement::PARTICIPANT_TTL)).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::moving::Entity;
use crate::placement::{
    Generation, MOVE_KEY, MoveRecord, PARTICIPANT_PREFIX, Participant, range_of,
};
use crate::shard::Shard;
use crate::{Store, now_ms};

/// How far behind the mover's clock another process's id generator may run: entities created
/// after the scan are found by their ids from this long before it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Ranges the hash circle is cut into unless the caller chooses.
pub const DEFAULT_RANGES: u32 = 32;

/// Ids read or moved per call.
const CHUNK: usize = 1_000;

/// How a move runs.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    /// Ranges moved one by one: more ranges hold each write for less time.
    pub ranges: u32,
    /// Where the new shard is, when the backend needs telling (a PostgreSQL URL).
    pub new_shard: Option<String>,
    /// For tests: stop (as if killed) after this many recorded steps.
    pub stop_after_steps: Option<u64>,
}

impl Default for MoveOptions {
    fn default() -> Self {
        Self {
            ranges: DEFAULT_RANGES,
            new_shard: None,
            stop_after_steps: None,
        }
    }
}

/// What the mover reports as it goes (a progress bar, a log).
pub trait Progress: Send + Sync {
    /// A phase begins ("scanning", "waiting for 3 processes").
    fn phase(&self, message: &str);
    /// `done` of `total` ranges have switched; `rows` rows copied so far.
    fn ranges(&self, done: u32, total: u32, rows: u64);
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str) {}
    fn ranges(&self, _: u32, _: u32, _: u64) {}
}

/// What a finished move did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoveReport {
    pub from: usize,
    pub to: usize,
    /// Whether this run resumed one that stopped.
    pub resumed: bool,
    /// Entities on the old shards when the scan ran, by kind.
    pub scanned: BTreeMap<&'static str, u64>,
    /// Entities moved, by kind (those created during the move included).
    pub moved: BTreeMap<&'static str, u64>,
    /// Of the scanned entities, those whose owner changed: the share the placement moves.
    pub moved_of_scanned: u64,
    /// Entities created on an old shard in a moving range after the scan, moved too.
    pub caught_up: u64,
    /// Rows copied over all tables.
    pub rows_copied: u64,
    /// Rows of switched ranges that a stopped run had left on an old shard, deleted now.
    pub leftovers_deleted: u64,
    /// The longest time one range was fenced.
    pub longest_fence: Duration,
    pub took: Duration,
}

impl MoveReport {
    /// The share of the entities present at the scan whose owner changed.
    pub fn moved_fraction(&self) -> f64 {
        let scanned: u64 = self.scanned.values().sum();
        if scanned == 0 {
            0.0
        } else {
            self.moved_of_scanned as f64 / scanned as f64
        }
    }
}

/// Why the mover stopped early on purpose (tests of resumption).
fn stopped() -> StoreError {
    StoreError::Moving("the move stopped where it was asked to (a test of resumption)".into())
}

/// One moving entity: its kind and id, and its old and new owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Mover {
    kind_index: u8,
    id: i64,
    from: usize,
    to: usize,
}

impl Mover {
    fn kind(self) -> Entity {
        Entity::ALL[usize::from(self.kind_index)]
    }
}

struct Run<'a> {
    store: &'a Store,
    record: MoveRecord,
    progress: &'a dyn Progress,
    steps: u64,
    stop_after: Option<u64>,
}

/// Adds one shard to `store` and moves the keys it and the others now own, resuming a move
/// that a stopped run left recorded. `store` must have been opened with the old shard list;
/// it leaves the placement first (see [`Store::leave_placement`]), so that the move never
/// waits for the mover's own entry — nor, if the mover is killed, for that entry to expire.
pub async fn add_shard(
    store: &Store,
    options: &MoveOptions,
    progress: &dyn Progress,
) -> Result<MoveReport, StoreError> {
    store.leave_placement().await?;
    let directory = store.core().slot(0).raw();
    let holder = format!("mover/{}", uuid::Uuid::now_v7());
    take_lease(directory, &holder, progress).await?;
    // The move runs only while the lease is held: the renewal ends it (as a kill would,
    // between two steps' writes) the moment another mover could have taken over.
    let outcome = tokio::select! {
        moved = run_move(store, options, progress) => moved,
        lost = keep_lease(directory, &holder) => Err(lost),
    };
    if let Err(error) = directory.release_lease(MOVER_LEASE, &holder).await {
        tracing::warn!(%error, "could not release the mover's lease; it expires on its own");
    }
    outcome
}

/// The directory shard's lease that makes one mover at a time.
const MOVER_LEASE: &str = "shard-move";

/// How long the mover's lease lasts unrenewed: a killed mover's successor waits this long.
const MOVER_LEASE_TTL: Duration = Duration::from_secs(3);

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Takes the mover's lease, waiting out one a killed mover left (it expires within
/// [`MOVER_LEASE_TTL`]); refuses while another mover keeps renewing it.
async fn take_lease(
    directory: &dyn Shard,
    holder: &str,
    progress: &dyn Progress,
) -> Result<(), StoreError> {
    let started = Instant::now();
    while !directory
        .claim_lease(MOVER_LEASE, holder, now_ms(), ttl_ms(MOVER_LEASE_TTL))
        .await?
    {
        if started.elapsed() > MOVER_LEASE_TTL * 2 {
            return Err(StoreError::Conflict {
                shard: directory.name().to_owned(),
                detail: "another `bazaar shards add` is running on this store; wait for it to \
                         finish (a move that was killed is taken over within 3 s)"
                    .into(),
            });
        }
        progress.phase("waiting for the previous mover's lease to expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Renews the mover's lease until it cannot — it was taken over, or renewals failed for
/// half its lifetime — and returns why.
async fn keep_lease(directory: &dyn Shard, holder: &str) -> StoreError {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(MOVER_LEASE_TTL / 6).await;
        match directory
            .claim_lease(MOVER_LEASE, holder, now_ms(), ttl_ms(MOVER_LEASE_TTL))
            .await
        {
            Ok(true) => renewed = Instant::now(),
            Err(error) if renewed.elapsed() < MOVER_LEASE_TTL / 2 => {
                tracing::warn!(%error, "renewing the mover's lease failed; trying again");
            }
            Ok(false) => {
                return StoreError::Conflict {
                    shard: directory.name().to_owned(),
                    detail: "the mover's lease was taken by another `bazaar shards add`; \
                             this one stopped"
                        .into(),
                };
            }
            Err(error) => return error,
        }
    }
}

/// The move itself, under the lease.
async fn run_move(
    store: &Store,
    options: &MoveOptions,
    progress: &dyn Progress,
) -> Result<MoveReport, StoreError> {
    let started = Instant::now();
    let core = store.core();
    let directory = core.slot(0).raw();
    let previous = core.move_record().await?;
    let (record, resumed) = match previous {
        Some(record) if !record.done => {
            if options
                .new_shard
                .as_ref()
                .is_some_and(|url| record.new_shard.as_ref() != Some(url))
            {
                return Err(StoreError::Layout(format!(
                    "a move to {} shards is recorded with another new shard; run it again \
                     without naming one to finish it",
                    record.to
                )));
            }
            (record, true)
        }
        previous => {
            let from = store.shard_count();
            if let Some(done) = &previous
                && done.to != from
            {
                return Err(StoreError::Layout(format!(
                    "the store has {} shards now, not the {from} this run was opened with \
                     (another move finished meanwhile); run it again with the new count",
                    done.to
                )));
            }
            if options.ranges == 0 {
                return Err(StoreError::Layout("a move needs at least one range".into()));
            }
            (
                MoveRecord {
                    epoch: previous.map_or(0, |r| r.epoch) + 1,
                    from,
                    to: from + 1,
                    new_shard: options.new_shard.clone(),
                    ranges: options.ranges,
                    switched: 0,
                    fenced: false,
                    done: false,
                },
                false,
            )
        }
    };
    let mut report = MoveReport {
        from: record.from,
        to: record.to,
        resumed,
        ..MoveReport::default()
    };
    let mut run = Run {
        store,
        record,
        progress,
        steps: 0,
        stop_after: options.stop_after_steps,
    };

    // 1. Plan: the new shard joins the store, then the record is published.
    progress.phase("opening the new shard");
    run.claim_new_shard(resumed).await?;
    if !resumed {
        directory.set_meta(MOVE_KEY, &run.record.to_text()).await?;
    }
    core.open_added(&run.record).await?;
    run.acknowledged().await?;

    // 2. Scan.
    progress.phase("scanning the old shards");
    let scan_started_ms = now_ms();
    let mut buckets = run.scan(&mut report).await?;

    // 3. Range by range.
    let total = run.record.ranges;
    progress.ranges(run.record.switched, total, 0);
    while run.record.switched < total {
        let range = run.record.switched;
        run.record.fenced = true;
        run.publish().await?;
        let fenced_at = Instant::now();
        let bucket = buckets.entry(range).or_default();
        let scanned = bucket.len();
        run.catch_up(range, scan_started_ms, bucket).await?;
        report.caught_up += (bucket.len() - scanned) as u64;
        for group in groups(bucket) {
            for chunk in group.chunks(CHUNK) {
                let first = chunk[0];
                let ids: Vec<i64> = chunk.iter().map(|m| m.id).collect();
                let rows = core
                    .slot(first.from)
                    .raw()
                    .export_entities(first.kind(), &ids)
                    .await?;
                core.slot(first.to)
                    .raw()
                    .import_entities(first.kind(), &ids, &rows)
                    .await?;
                report.rows_copied += rows.row_count() as u64;
            }
            *report.moved.entry(kind_name(group[0].kind())).or_default() += group.len() as u64;
        }
        run.step()?;
        run.record.switched = range + 1;
        run.record.fenced = false;
        run.publish().await?;
        report.longest_fence = report.longest_fence.max(fenced_at.elapsed());
        for group in groups(bucket) {
            for chunk in group.chunks(CHUNK) {
                let ids: Vec<i64> = chunk.iter().map(|m| m.id).collect();
                core.slot(chunk[0].from)
                    .raw()
                    .delete_entities(chunk[0].kind(), &ids)
                    .await?;
            }
        }
        run.step()?;
        progress.ranges(run.record.switched, total, report.rows_copied);
    }

    // 4. Done: the last step, which a test stop does not interrupt (there is nothing after it
    // to resume).
    run.record.done = true;
    run.options_stop_disabled();
    run.publish().await?;
    report.took = started.elapsed();
    progress.phase("done");
    Ok(report)
}

impl Run<'_> {
    /// Counts one recorded step, stopping here if the options ask to.
    fn step(&mut self) -> Result<(), StoreError> {
        self.steps += 1;
        match self.stop_after {
            Some(limit) if self.steps >= limit => Err(stopped()),
            _ => Ok(()),
        }
    }

    fn options_stop_disabled(&mut self) {
        self.stop_after = None;
    }

    /// Records the next epoch and waits until every live process routes by it.
    async fn publish(&mut self) -> Result<(), StoreError> {
        self.record.epoch += 1;
        self.store
            .core()
            .slot(0)
            .raw()
            .set_meta(MOVE_KEY, &self.record.to_text())
            .await?;
        self.acknowledged().await?;
        self.step()
    }

    /// Waits until every participant whose entry has not expired has acknowledged the
    /// record's epoch.
    async fn acknowledged(&self) -> Result<(), StoreError> {
        let directory = self.store.core().slot(0).raw();
        let mut reported = 0;
        loop {
            let now = now_ms();
            let mut waiting = 0;
            for (key, value) in directory.metas(PARTICIPANT_PREFIX).await? {
                let Ok(entry) = serde_json::from_str::<Participant>(&value) else {
                    tracing::warn!(key, "ignoring an unreadable participant entry");
                    continue;
                };
                if entry.expires_ms <= now {
                    // Gone for longer than its lease: it writes nothing any more (see
                    // `Core::may_write`); its entry is only litter.
                    directory.delete_meta(&key).await?;
                } else if entry.acked < self.record.epoch {
                    waiting += 1;
                }
            }
            if waiting == 0 {
                return Ok(());
            }
            if waiting != reported {
                self.progress.phase(&format!(
                    "waiting for {waiting} process(es) to route by the new placement"
                ));
                reported = waiting;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Gives the new shard this store's identity and its place, refusing one that belongs
    /// to another store or (on a first run) already holds entities.
    async fn claim_new_shard(&self, resumed: bool) -> Result<(), StoreError> {
        let core = self.store.core();
        let directory = core.slot(0).raw();
        let opener = core.opener.as_ref().ok_or_else(|| {
            StoreError::Layout(
                "this store cannot open a new shard (it was built from open shards)".into(),
            )
        })?;
        // Opened on its own for the checks: it joins the store only once the move is recorded.
        let shard = opener(self.record.from, self.record.new_shard.clone()).await?;
        let claimed = self.claim(shard.as_ref(), directory, resumed).await;
        shard.close().await;
        claimed
    }

    async fn claim(
        &self,
        shard: &dyn Shard,
        directory: &dyn Shard,
        resumed: bool,
    ) -> Result<(), StoreError> {
        let core = self.store.core();
        let store_id = directory
            .meta(crate::STORE_ID)
            .await?
            .ok_or_else(|| StoreError::Layout("the directory shard records no store id".into()))?;
        if let Some(other) = shard.meta(crate::STORE_ID).await?
            && other != store_id
        {
            return Err(StoreError::Layout(format!(
                "the new shard belongs to another store (store id {other}; this one is \
                 {store_id}); add an empty database or file"
            )));
        }
        if !resumed {
            for kind in Entity::ALL {
                if !shard.entity_ids(kind, 0, 1).await?.is_empty() {
                    return Err(StoreError::Layout(format!(
                        "the new shard already holds {}s; add an empty database or file",
                        kind_name(kind)
                    )));
                }
            }
        }
        for (key, value) in [
            (crate::STORE_ID, store_id.clone()),
            ("shard_index", self.record.from.to_string()),
            ("shard_count", self.record.to.to_string()),
            ("ring_vnodes", core.config.vnodes.to_string()),
            ("placement", core.config.kind.name().to_owned()),
        ] {
            let recorded = shard.claim_meta(key, &value).await?;
            if recorded != value {
                return Err(StoreError::Layout(format!(
                    "the new shard records {key} = {recorded}, not {value}: it belongs to \
                     another store or another place; add an empty database or file"
                )));
            }
        }
        Ok(())
    }

    /// Every entity on the old shards: moving ones into their range's bucket, and rows of
    /// switched ranges a stopped run left behind deleted.
    async fn scan(
        &self,
        report: &mut MoveReport,
    ) -> Result<BTreeMap<u32, BTreeSet<Mover>>, StoreError> {
        let core = self.store.core();
        let generation = self.generation()?;
        let mut buckets: BTreeMap<u32, BTreeSet<Mover>> = BTreeMap::new();
        for index in 0..self.record.from {
            let shard = core.slot(index).raw();
            for (kind_index, kind) in Entity::ALL.into_iter().enumerate() {
                let mut leftovers = Vec::new();
                each_id(shard, kind, 0, |id| {
                    let hash = bazaar_ring::key_hash(&kind.ring_key(id));
                    let (from, to) = generation.owners(hash);
                    if from != index {
                        return;
                    }
                    *report.scanned.entry(kind_name(kind)).or_default() += 1;
                    if from == to {
                        return;
                    }
                    report.moved_of_scanned += 1;
                    let range = range_of(hash, self.record.ranges);
                    if range < self.record.switched {
                        leftovers.push(id);
                    } else {
                        buckets.entry(range).or_default().insert(Mover {
                            kind_index: u8::try_from(kind_index).expect("two kinds"),
                            id,
                            from,
                            to,
                        });
                    }
                })
                .await?;
                for chunk in leftovers.chunks(CHUNK) {
                    report.leftovers_deleted += shard.delete_entities(kind, chunk).await?;
                }
            }
        }
        Ok(buckets)
    }

    /// Adds to `bucket` the entities of `range` created on the old shards since the scan.
    async fn catch_up(
        &self,
        range: u32,
        scan_started_ms: i64,
        bucket: &mut BTreeSet<Mover>,
    ) -> Result<(), StoreError> {
        let core = self.store.core();
        let generation = self.generation()?;
        let since = u64::try_from(scan_started_ms)
            .unwrap_or(0)
            .saturating_sub(u64::try_from(CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX));
        let floor = i64::try_from(bazaar_domain::id::first_raw_id_at(since)).unwrap_or(0);
        for index in 0..self.record.from {
            let shard = core.slot(index).raw();
            for (kind_index, kind) in Entity::ALL.into_iter().enumerate() {
                each_id(shard, kind, floor.saturating_sub(1), |id| {
                    let hash = bazaar_ring::key_hash(&kind.ring_key(id));
                    let (from, to) = generation.owners(hash);
                    if from == index && from != to && range_of(hash, self.record.ranges) == range {
                        bucket.insert(Mover {
                            kind_index: u8::try_from(kind_index).expect("two kinds"),
                            id,
                            from,
                            to,
                        });
                    }
                })
                .await?;
            }
        }
        Ok(())
    }

    fn generation(&self) -> Result<Generation, StoreError> {
        let config = self.store.core().config;
        Generation::of(&self.record, config.kind, config.vnodes)
    }
}

/// Calls `visit` with every id of `kind` on `shard` above `after`, ascending, a page at a
/// time.
async fn each_id(
    shard: &dyn Shard,
    kind: Entity,
    mut after: i64,
    mut visit: impl FnMut(i64),
) -> Result<(), StoreError> {
    loop {
        let ids = shard.entity_ids(kind, after, CHUNK * 10).await?;
        let Some(&last) = ids.last() else {
            return Ok(());
        };
        after = last;
        ids.into_iter().for_each(&mut visit);
    }
}

/// A bucket's movers grouped by kind and by old and new owner, each group in id order.
fn groups(bucket: &BTreeSet<Mover>) -> Vec<Vec<Mover>> {
    let mut grouped: BTreeMap<(u8, usize, usize), Vec<Mover>> = BTreeMap::new();
    for &mover in bucket {
        grouped
            .entry((mover.kind_index, mover.from, mover.to))
            .or_default()
            .push(mover);
    }
    grouped.into_values().collect()
}

/// The entity's name in reports.
pub fn kind_name(kind: Entity) -> &'static str {
    match kind {
        Entity::Product => "product",
        Entity::User => "user",
    }
}
