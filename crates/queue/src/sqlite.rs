//! The embedded queue: one SQLite file (`{data_dir}/queue.sqlite`) through sqlx, safe for
//! several processes at once.
//!
//! # Model
//!
//! Publishing is one `INSERT` into `messages`, whatever the number of groups: a group does not
//! get a row per message up front. Instead each group keeps
//!
//! - a **cursor** (`groups.cursor`): every message with `seq <= cursor` has been reached by the
//!   group, every message beyond it is untouched — pending, never delivered, attempt 0;
//! - a **delivery row** (`deliveries`) for each message it has reached and not settled.
//!
//! A group's backlog is therefore its delivery rows plus the messages beyond its cursor.
//! Acknowledging deletes the row, so in the steady state a message costs each group one
//! insert (at receive) and one delete (at ack), and rows exist only for what is in flight or
//! waiting.
//!
//! Order per key is kept by the rows themselves: of one key's rows in a group exactly one is
//! **active** — leased (`due_ms` is the lease's end, `token` is in the receipt) or waiting
//! (`due_ms` is when it may go: after a nack's delay or the message's own delay) — and the
//! others are **held** (`due_ms` is `i64::MAX`). Settling the active row (ack, dead letter)
//! deletes it and, in the same transaction, makes the key's held row with the lowest `seq`
//! active. So "what may go now" is one range of the `(grp, due_ms)` index, every row in it is
//! of a different key, and a key's later message is never leased while an earlier one is
//! leased, waiting on retry or delayed.
//!
//! Receiving, in one `BEGIN IMMEDIATE` transaction (so receivers in any process are
//! serialised and a lease is a conditional write: two receivers never hold one message):
//!
//! 1. leases that ran out on the group's last attempt are moved to the dead letters ("lease
//!    expired on attempt N") — the queue gives up on a message whose receivers keep dying —
//!    and their keys' next rows become active;
//! 2. active rows that are due (waiting rows whose time has come, leases that ran out) are
//!    leased, oldest first, with the attempt raised;
//! 3. messages beyond the cursor are taken in `seq` order: each gets a held row if its key
//!    already has one, else an active row — leased now if it is visible, waiting for its delay
//!    if not — and the cursor moves past it. (SQLite serialises writers, so `seq` order is
//!    commit order and the cursor never skips a message committed late with a lower `seq`;
//!    `seq` is `AUTOINCREMENT`, so a pruned highest `seq` is never reused below a cursor.)
//!
//! A replayed dead letter gets its row back with no attempts made: active now if its key has
//! no rows in the group, else held, next in line.
//!
//! An idle receiver first checks with a read (no write lock) whether anything is deliverable,
//! then sleeps until a publish, ack, nack or dead letter in this process wakes it, or for
//! [`EmbeddedConfig::poll_interval`] — the only way to hear of other processes' writes.
//!
//! Within a process, writes take an async gate before SQLite's lock: they queue in order
//! instead of polling in SQLite's busy handler (whose sleeps grow to 100 ms and can starve a
//! writer under steady contention). Across processes the busy timeout remains.
//!
//! A group declared now starts with its cursor at the newest message: it sees only what is
//! published after.
//!
//! # Deduplication and pruning
//!
//! `messages.id` is unique, so publishing an id again is absorbed for as long as its row
//! exists: at least [`EmbeddedConfig::dedupe_window`], and until every group has settled the
//! message and no dead letter refers to it. [`EmbeddedQueue::prune`] then deletes it; the
//! lead's worker calls it periodically.
//!
//! # Limits
//!
//! Every publish and every ack is one commit, so one fsync at `synchronous=FULL`: throughput is
//! bounded by the disk's fsync rate. A key with a long backlog behind its active message gets
//! a held row per message as the cursor passes them.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tokio::sync::Notify;

use crate::{
    DeadLetter, DeadLetters, Delivery, GroupSpec, GroupStats, Message, Published, Queue,
    QueueError, Receipt, Subscription,
};

/// How hard each commit tries to survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: a publish is on disk before it returns.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in WAL mode a power loss may drop the last commits (never
    /// corrupts the file); a process crash loses nothing.
    Normal,
}

/// Settings of the embedded queue.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub durability: Durability,
    /// A message id is remembered at least this long after its publish (and until every group
    /// has settled the message): publishing it again within the window is a duplicate.
    pub dedupe_window: Duration,
    /// How long a connection waits for another's write lock (another process's, too).
    pub busy_timeout: Duration,
    /// How often an idle receiver looks for messages when nothing in its process woke it.
    pub poll_interval: Duration,
    /// Connections in the pool; writes are serialised by SQLite whatever the number.
    pub max_connections: u32,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            dedupe_window: Duration::from_secs(3600),
            busy_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(25),
            max_connections: 4,
            max_payload: 1 << 20,
        }
    }
}

/// The embedded queue; see the module docs.
#[derive(Debug)]
pub struct EmbeddedQueue {
    shared: Arc<Shared>,
    dead: EmbeddedDeadLetters,
}

#[derive(Debug)]
struct Shared {
    pool: SqlitePool,
    config: EmbeddedConfig,
    /// Woken by every write in this process that may make a message deliverable.
    wake: Notify,
    /// Taken by every write in this process (see the module docs).
    gate: tokio::sync::Mutex<()>,
}

impl Shared {
    /// A transaction holding the gate and the file's write lock.
    async fn write_tx(&self) -> Result<WriteTx<'_>, QueueError> {
        let gate = self.gate.lock().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        Ok(WriteTx { tx, _gate: gate })
    }
}

/// A write transaction and the gate it holds; dropped uncommitted, it rolls back.
struct WriteTx<'a> {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _gate: tokio::sync::MutexGuard<'a, ()>,
}

impl WriteTx<'_> {
    async fn commit(self) -> Result<(), QueueError> {
        self.tx.commit().await.map_err(backend)
    }
}

/// Messages beyond a group's cursor looked at by one receive, at most: bounds the work (and
/// the write lock's hold) of a receive that finds every key held.
const SCAN_LIMIT: usize = 512;

/// Messages deleted per statement by [`EmbeddedQueue::prune`].
const PRUNE_BATCH: i64 = 1000;

/// Longest accepted message id, key, topic (bytes) and group name (characters).
const MAX_ID_LEN: usize = 256;
const MAX_GROUP_LEN: usize = 64;

/// Delivery row states.
const WAITING: i64 = 0;
const LEASED: i64 = 1;

/// The `due_ms` of a held row: after every real time.
const HELD: i64 = i64::MAX;

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue file at `path` and brings its schema up to date.
    /// Several processes may open one file at once.
    pub async fn open(path: &Path, config: EmbeddedConfig) -> Result<Self, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                QueueError::Backend(
                    format!("cannot create queue directory {}: {e}", dir.display()).into(),
                )
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match config.durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(config.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(backend)?;
        migrate(&pool).await?;
        let shared = Arc::new(Shared {
            pool,
            config,
            wake: Notify::new(),
            gate: tokio::sync::Mutex::new(()),
        });
        Ok(Self {
            dead: EmbeddedDeadLetters {
                shared: Arc::clone(&shared),
            },
            shared,
        })
    }

    /// Deletes the messages no one needs any more: published before the deduplication window,
    /// settled by every group, with no dead letter. Returns how many went.
    pub async fn prune(&self) -> Result<u64, QueueError> {
        let cutoff = now_ms().saturating_sub(ms_ceil(self.shared.config.dedupe_window));
        let mut total = 0;
        loop {
            let gate = self.shared.gate.lock().await;
            let done = sqlx::query(
                "DELETE FROM messages WHERE seq IN ( \
                   SELECT m.seq FROM messages m \
                   WHERE m.published_at_ms < ?1 \
                     AND m.seq <= (SELECT COALESCE(MIN(cursor), 9223372036854775807) FROM groups) \
                     AND NOT EXISTS (SELECT 1 FROM groups g JOIN deliveries d \
                                     ON d.grp = g.id AND d.seq = m.seq) \
                     AND NOT EXISTS (SELECT 1 FROM dead_letters x WHERE x.seq = m.seq) \
                   ORDER BY m.seq LIMIT ?2)",
            )
            .bind(cutoff)
            .bind(PRUNE_BATCH)
            .execute(&self.shared.pool)
            .await
            .map_err(backend)?;
            drop(gate);
            total += done.rows_affected();
            if done.rows_affected() < PRUNE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

/// Runs the embedded migrations. Two processes opening a new file at once race to create
/// the schema; the loser fails and, retrying, finds it applied.
async fn migrate(pool: &SqlitePool) -> Result<(), QueueError> {
    let mut tries = 0;
    loop {
        match sqlx::migrate!("./migrations").run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 3 => {
                tries += 1;
                tracing::debug!(error = %e, "queue migration raced; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(QueueError::Backend(Box::new(e))),
        }
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn publish(&self, message: &Message) -> Result<Published, QueueError> {
        validate_message(message, self.shared.config.max_payload)?;
        let now = now_ms();
        let delay_ms = message.delay.map(ms_ceil);
        let _gate = self.shared.gate.lock().await;
        let done = sqlx::query(
            "INSERT INTO messages \
               (id, key, topic, payload, published_at_ms, visible_at_ms, delay_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(message.id.as_str())
        .bind(message.key.as_str())
        .bind(message.topic.as_str())
        .bind(message.payload.as_ref())
        .bind(now)
        .bind(now.saturating_add(delay_ms.unwrap_or(0)))
        .bind(delay_ms)
        .execute(&self.shared.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(Published::Duplicate);
        }
        self.shared.wake.notify_waiters();
        Ok(Published::Stored)
    }

    async fn declare(&self, group: &GroupSpec) -> Result<Box<dyn Subscription>, QueueError> {
        validate_group(group)?;
        let lease_ms = ms_ceil(group.lease);
        let _gate = self.shared.gate.lock().await;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO groups (name, lease_ms, max_attempts, cursor, created_at_ms) \
             VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(seq), 0) FROM messages), ?4) \
             ON CONFLICT (name) DO UPDATE \
               SET lease_ms = excluded.lease_ms, max_attempts = excluded.max_attempts \
             RETURNING id",
        )
        .bind(group.name.as_str())
        .bind(lease_ms)
        .bind(i64::from(group.max_attempts))
        .bind(now_ms())
        .fetch_one(&self.shared.pool)
        .await
        .map_err(backend)?;
        Ok(Box::new(EmbeddedSubscription {
            shared: Arc::clone(&self.shared),
            group: id,
            name: group.name.clone(),
            lease_ms,
            max_attempts: i64::from(group.max_attempts),
        }))
    }

    async fn stats(&self) -> Result<Vec<GroupStats>, QueueError> {
        let now = now_ms();
        // One statement, so one snapshot: the counts agree with each other.
        let rows = sqlx::query(
            "SELECT g.name, \
               (SELECT COUNT(*) FROM deliveries d WHERE d.grp = g.id), \
               (SELECT COUNT(*) FROM messages m WHERE m.seq > g.cursor), \
               (SELECT COUNT(*) FROM deliveries d \
                  WHERE d.grp = g.id AND d.state = ?1 AND d.due_ms > ?2), \
               (SELECT MIN(m.published_at_ms) FROM deliveries d JOIN messages m \
                  ON m.seq = d.seq WHERE d.grp = g.id), \
               (SELECT m.published_at_ms FROM messages m WHERE m.seq > g.cursor \
                  ORDER BY m.seq LIMIT 1) \
             FROM groups g ORDER BY g.name",
        )
        .bind(LEASED)
        .bind(now)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let count = |i: usize| {
                    row.try_get::<i64, _>(i)
                        .map(|n| n.unsigned_abs())
                        .map_err(backend)
                };
                let rows_min = row.try_get::<Option<i64>, _>(4).map_err(backend)?;
                let beyond_min = row.try_get::<Option<i64>, _>(5).map_err(backend)?;
                let oldest = match (rows_min, beyond_min) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Ok(GroupStats {
                    group: row.try_get(0).map_err(backend)?,
                    depth: count(1)? + count(2)?,
                    in_flight: count(3)?,
                    oldest_age: oldest.map(|at| ms_duration(now.saturating_sub(at))),
                })
            })
            .collect()
    }

    async fn remove_group(&self, name: &str) -> Result<bool, QueueError> {
        let mut tx = self
            .shared
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM groups WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(id) = id else {
            return Ok(false);
        };
        for statement in [
            "DELETE FROM deliveries WHERE grp = ?",
            "DELETE FROM dead_letters WHERE grp = ?",
            "DELETE FROM groups WHERE id = ?",
        ] {
            sqlx::query(statement)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn prune(&self) -> Result<u64, QueueError> {
        EmbeddedQueue::prune(self).await
    }

    fn dead_letters(&self) -> &dyn DeadLetters {
        &self.dead
    }
}

/// Receiving for one group of an [`EmbeddedQueue`].
#[derive(Debug)]
struct EmbeddedSubscription {
    shared: Arc<Shared>,
    group: i64,
    name: String,
    lease_ms: i64,
    max_attempts: i64,
}

impl EmbeddedSubscription {
    /// A read without the write lock: is anything deliverable now? Keeps idle receivers from
    /// queueing behind publishers for nothing.
    async fn anything_due(&self, now: i64) -> Result<bool, QueueError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE grp = ?1 AND due_ms <= ?2) \
               OR EXISTS (SELECT 1 FROM messages \
                 WHERE seq > (SELECT cursor FROM groups WHERE id = ?1))",
        )
        .bind(self.group)
        .bind(now)
        .fetch_one(&self.shared.pool)
        .await
        .map_err(backend)
    }

    /// One attempt at leasing up to `max` deliveries (see the module docs for the steps).
    async fn take(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        if !self.anything_due(now_ms()).await? {
            return Ok(Vec::new());
        }
        let mut w = self.shared.write_tx().await?;
        let tx = &mut w.tx;
        let now = now_ms();
        let lease_end = now.saturating_add(self.lease_ms);

        // 1. Give up on messages whose last lease ran out.
        let expired = sqlx::query(
            "DELETE FROM deliveries \
             WHERE grp = ?1 AND due_ms <= ?2 AND state = ?3 AND attempt >= ?4 \
             RETURNING seq, attempt, key",
        )
        .bind(self.group)
        .bind(now)
        .bind(LEASED)
        .bind(self.max_attempts)
        .fetch_all(&mut **tx)
        .await
        .map_err(backend)?;
        for row in &expired {
            let seq: i64 = row.try_get(0).map_err(backend)?;
            let attempt: i64 = row.try_get(1).map_err(backend)?;
            let key: String = row.try_get(2).map_err(backend)?;
            insert_dead_letter(
                tx,
                self.group,
                seq,
                attempt,
                &format!("lease expired on attempt {attempt}"),
                now,
            )
            .await?;
            activate_next(tx, self.group, &key).await?;
            tracing::warn!(group = %self.name, seq, attempt, "lease expired on the last attempt; dead-lettered");
        }

        // 2. Active rows that are due: one per key by construction.
        let mut out = Vec::new();
        let due = sqlx::query(
            "SELECT d.seq, d.attempt, m.id, m.key, m.topic, m.payload, m.published_at_ms, \
                    m.delay_ms \
             FROM deliveries d JOIN messages m ON m.seq = d.seq \
             WHERE d.grp = ?1 AND d.due_ms <= ?2 ORDER BY d.seq LIMIT ?3",
        )
        .bind(self.group)
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut **tx)
        .await
        .map_err(backend)?;
        for row in &due {
            let seq: i64 = row.try_get(0).map_err(backend)?;
            let attempt = row.try_get::<i64, _>(1).map_err(backend)? + 1;
            let token = rand::random::<i64>();
            sqlx::query(
                "UPDATE deliveries SET state = ?1, attempt = ?2, due_ms = ?3, token = ?4 \
                 WHERE grp = ?5 AND seq = ?6",
            )
            .bind(LEASED)
            .bind(attempt)
            .bind(lease_end)
            .bind(token)
            .bind(self.group)
            .bind(seq)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
            out.push(delivery_from(row, 2, seq, attempt, token)?);
        }

        // 3. Messages beyond the cursor, in publish order.
        if out.len() < max {
            let mut cursor: i64 = sqlx::query_scalar("SELECT cursor FROM groups WHERE id = ?")
                .bind(self.group)
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
            let start = cursor;
            let chunk = max.clamp(16, SCAN_LIMIT);
            // Keys known to have a row in the group: they stay so within this transaction.
            let mut has_rows: HashSet<String> = HashSet::new();
            let mut scanned = 0;
            'scan: while out.len() < max && scanned < SCAN_LIMIT {
                let rows = sqlx::query(
                    "SELECT seq, id, key, topic, payload, published_at_ms, delay_ms, \
                            visible_at_ms \
                     FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                )
                .bind(cursor)
                .bind(i64::try_from(chunk).unwrap_or(16))
                .fetch_all(&mut **tx)
                .await
                .map_err(backend)?;
                let last_chunk = rows.len() < chunk;
                for row in &rows {
                    if out.len() >= max {
                        break 'scan;
                    }
                    let seq: i64 = row.try_get(0).map_err(backend)?;
                    let key: String = row.try_get(2).map_err(backend)?;
                    let visible_at: i64 = row.try_get(7).map_err(backend)?;
                    let held =
                        has_rows.contains(&key) || key_has_rows(tx, self.group, &key).await?;
                    let (state, attempt, due, token) = if held {
                        (WAITING, 0, HELD, None)
                    } else if visible_at > now {
                        (WAITING, 0, visible_at, None)
                    } else {
                        (LEASED, 1, lease_end, Some(rand::random::<i64>()))
                    };
                    sqlx::query(
                        "INSERT INTO deliveries \
                           (grp, seq, key, state, attempt, due_ms, ready_ms, token) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(self.group)
                    .bind(seq)
                    .bind(key.as_str())
                    .bind(state)
                    .bind(attempt)
                    .bind(due)
                    .bind(visible_at)
                    .bind(token)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?;
                    if let Some(token) = token {
                        out.push(delivery_from(row, 1, seq, 1, token)?);
                    }
                    has_rows.insert(key);
                    cursor = seq;
                    scanned += 1;
                }
                if last_chunk {
                    break;
                }
            }
            if cursor != start {
                sqlx::query("UPDATE groups SET cursor = ? WHERE id = ?")
                    .bind(cursor)
                    .bind(self.group)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?;
            }
        }
        w.commit().await?;
        if !expired.is_empty() {
            // Keys unblocked by giving up may have work for other receivers.
            self.shared.wake.notify_waiters();
        }
        Ok(out)
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

async fn key_has_rows(tx: &mut Tx, group: i64, key: &str) -> Result<bool, QueueError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deliveries WHERE grp = ? AND key = ?)")
        .bind(group)
        .bind(key)
        .fetch_one(&mut **tx)
        .await
        .map_err(backend)
}

/// After a key's active row is gone: its held row with the lowest seq becomes active.
async fn activate_next(tx: &mut Tx, group: i64, key: &str) -> Result<(), QueueError> {
    sqlx::query(
        "UPDATE deliveries SET due_ms = ready_ms \
         WHERE grp = ?1 AND seq = (SELECT MIN(seq) FROM deliveries WHERE grp = ?1 AND key = ?2)",
    )
    .bind(group)
    .bind(key)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn insert_dead_letter(
    tx: &mut Tx,
    group: i64,
    seq: i64,
    attempts: i64,
    error: &str,
    now: i64,
) -> Result<(), QueueError> {
    sqlx::query(
        "INSERT INTO dead_letters (grp, seq, attempts, last_error, dead_at_ms) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(group)
    .bind(seq)
    .bind(attempts)
    .bind(error)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

impl EmbeddedSubscription {
    /// Deletes the leased row `receipt` names, and activates its key's next row; the deleted
    /// row's attempt. `LeaseLost` if the receipt no longer holds the lease.
    async fn settle(&self, tx: &mut Tx, receipt: &Receipt) -> Result<i64, QueueError> {
        let (seq, token) = parse_receipt(receipt)?;
        let row = sqlx::query(
            "DELETE FROM deliveries WHERE grp = ? AND seq = ? AND state = ? AND token = ? \
             RETURNING attempt, key",
        )
        .bind(self.group)
        .bind(seq)
        .bind(LEASED)
        .bind(token)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Err(QueueError::LeaseLost);
        };
        let attempt: i64 = row.try_get(0).map_err(backend)?;
        let key: String = row.try_get(1).map_err(backend)?;
        activate_next(tx, self.group, &key).await?;
        Ok(attempt)
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let start = tokio::time::Instant::now();
        loop {
            // Registered before looking, so a publish between the look and the sleep still
            // wakes this receiver.
            let woken = self.shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let got = self.take(max).await?;
            let elapsed = start.elapsed();
            if !got.is_empty() || elapsed >= wait {
                return Ok(got);
            }
            let nap = (wait - elapsed).min(self.shared.config.poll_interval);
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let mut w = self.shared.write_tx().await?;
        self.settle(&mut w.tx, &delivery.receipt).await?;
        w.commit().await?;
        // The key's next message may go.
        self.shared.wake.notify_waiters();
        Ok(())
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let (seq, token) = parse_receipt(&delivery.receipt)?;
        let _gate = self.shared.gate.lock().await;
        // The row stays its key's active one: the key waits with it.
        let done = sqlx::query(
            "UPDATE deliveries SET state = ?1, due_ms = ?2, token = NULL \
             WHERE grp = ?3 AND seq = ?4 AND state = ?5 AND token = ?6",
        )
        .bind(WAITING)
        .bind(now_ms().saturating_add(ms_ceil(delay)))
        .bind(self.group)
        .bind(seq)
        .bind(LEASED)
        .bind(token)
        .execute(&self.shared.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(QueueError::LeaseLost);
        }
        self.shared.wake.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &str) -> Result<(), QueueError> {
        let mut w = self.shared.write_tx().await?;
        let attempt = self.settle(&mut w.tx, &delivery.receipt).await?;
        let (seq, _) = parse_receipt(&delivery.receipt)?;
        insert_dead_letter(&mut w.tx, self.group, seq, attempt, error, now_ms()).await?;
        w.commit().await?;
        self.shared.wake.notify_waiters();
        Ok(())
    }
}

/// The dead letters of an [`EmbeddedQueue`]. Ids are decimal integers, increasing.
#[derive(Debug)]
struct EmbeddedDeadLetters {
    shared: Arc<Shared>,
}

macro_rules! dead_letter_select {
    () => {
        "SELECT x.id, g.name, m.id, m.key, m.topic, m.payload, m.published_at_ms, m.delay_ms, \
                x.attempts, x.last_error, x.dead_at_ms \
         FROM dead_letters x JOIN groups g ON g.id = x.grp JOIN messages m ON m.seq = x.seq "
    };
}

#[async_trait]
impl DeadLetters for EmbeddedDeadLetters {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let after = match after {
            None => 0,
            Some(id) => id.parse::<i64>().map_err(|_| QueueError::Invalid {
                what: "dead letter id",
                reason: format!("{id:?} is not an id of this queue"),
            })?,
        };
        let rows = sqlx::query(concat!(
            dead_letter_select!(),
            "WHERE x.id > ? ORDER BY x.id LIMIT ?"
        ))
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.shared.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(dead_letter_from).collect()
    }

    async fn get(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        let Ok(id) = id.parse::<i64>() else {
            return Ok(None);
        };
        let row = sqlx::query(concat!(dead_letter_select!(), "WHERE x.id = ?"))
            .bind(id)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(dead_letter_from).transpose()
    }

    async fn replay(&self, id: &str) -> Result<bool, QueueError> {
        let Ok(id) = id.parse::<i64>() else {
            return Ok(false);
        };
        let mut w = self.shared.write_tx().await?;
        let tx = &mut w.tx;
        let row = sqlx::query("DELETE FROM dead_letters WHERE id = ? RETURNING grp, seq")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Ok(false);
        };
        let grp: i64 = row.try_get(0).map_err(backend)?;
        let seq: i64 = row.try_get(1).map_err(backend)?;
        // Pruning keeps a message while a dead letter refers to it.
        let key: String = sqlx::query_scalar("SELECT key FROM messages WHERE seq = ?")
            .bind(seq)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?
            .ok_or_else(|| {
                QueueError::Backend(
                    format!("dead letter {id} refers to message {seq}, which is gone").into(),
                )
            })?;
        // Back in its group with no attempts made: now, or next in its key's line.
        let now = now_ms();
        let due = if key_has_rows(tx, grp, &key).await? {
            HELD
        } else {
            now
        };
        sqlx::query(
            "INSERT INTO deliveries (grp, seq, key, state, attempt, due_ms, ready_ms, token) \
             VALUES (?, ?, ?, ?, 0, ?, ?, NULL)",
        )
        .bind(grp)
        .bind(seq)
        .bind(key.as_str())
        .bind(WAITING)
        .bind(due)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
        w.commit().await?;
        self.shared.wake.notify_waiters();
        Ok(true)
    }

    async fn delete(&self, id: &str) -> Result<bool, QueueError> {
        let Ok(id) = id.parse::<i64>() else {
            return Ok(false);
        };
        let _gate = self.shared.gate.lock().await;
        let done = sqlx::query("DELETE FROM dead_letters WHERE id = ?")
            .bind(id)
            .execute(&self.shared.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge(&self) -> Result<u64, QueueError> {
        let _gate = self.shared.gate.lock().await;
        let done = sqlx::query("DELETE FROM dead_letters")
            .execute(&self.shared.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn len(&self) -> Result<u64, QueueError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(&self.shared.pool)
            .await
            .map_err(backend)?;
        Ok(n.unsigned_abs())
    }
}

/// A delivery from a row holding `id, key, topic, payload, published_at_ms, delay_ms` from
/// column `at`.
fn delivery_from(
    row: &SqliteRow,
    at: usize,
    seq: i64,
    attempt: i64,
    token: i64,
) -> Result<Delivery, QueueError> {
    Ok(Delivery {
        message: message_from(row, at)?,
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        published_at: ms_time(row.try_get(at + 4).map_err(backend)?),
        receipt: Receipt(format!("{seq}:{token}")),
    })
}

fn message_from(row: &SqliteRow, at: usize) -> Result<Message, QueueError> {
    let payload: Vec<u8> = row.try_get(at + 3).map_err(backend)?;
    let delay: Option<i64> = row.try_get(at + 5).map_err(backend)?;
    Ok(Message {
        id: row.try_get(at).map_err(backend)?,
        key: row.try_get(at + 1).map_err(backend)?,
        topic: row.try_get(at + 2).map_err(backend)?,
        payload: Bytes::from(payload),
        delay: delay.map(ms_duration),
    })
}

fn dead_letter_from(row: &SqliteRow) -> Result<DeadLetter, QueueError> {
    let id: i64 = row.try_get(0).map_err(backend)?;
    let attempts: i64 = row.try_get(8).map_err(backend)?;
    Ok(DeadLetter {
        id: id.to_string(),
        group: row.try_get(1).map_err(backend)?,
        message: message_from(row, 2)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: row.try_get(9).map_err(backend)?,
        published_at: ms_time(row.try_get(6).map_err(backend)?),
        dead_at: ms_time(row.try_get(10).map_err(backend)?),
    })
}

/// Receipts are `{seq}:{token}`.
fn parse_receipt(receipt: &Receipt) -> Result<(i64, i64), QueueError> {
    receipt
        .0
        .split_once(':')
        .and_then(|(seq, token)| Some((seq.parse().ok()?, token.parse().ok()?)))
        .ok_or_else(|| QueueError::Invalid {
            what: "receipt",
            reason: format!("{:?} is not a receipt of the embedded queue", receipt.0),
        })
}

fn validate_message(message: &Message, max_payload: usize) -> Result<(), QueueError> {
    let invalid = |what, reason: String| Err(QueueError::Invalid { what, reason });
    if message.id.is_empty() || message.id.len() > MAX_ID_LEN {
        return invalid(
            "message id",
            format!("must be 1 to {MAX_ID_LEN} bytes, not {}", message.id.len()),
        );
    }
    if message.topic.is_empty() || message.topic.len() > MAX_ID_LEN {
        return invalid(
            "topic",
            format!(
                "must be 1 to {MAX_ID_LEN} bytes, not {}",
                message.topic.len()
            ),
        );
    }
    if message.key.len() > MAX_ID_LEN {
        return invalid(
            "ordering key",
            format!(
                "must be at most {MAX_ID_LEN} bytes, not {}",
                message.key.len()
            ),
        );
    }
    if message.payload.len() > max_payload {
        return invalid(
            "payload",
            format!(
                "{} bytes is more than the {max_payload} allowed",
                message.payload.len()
            ),
        );
    }
    Ok(())
}

fn validate_group(group: &GroupSpec) -> Result<(), QueueError> {
    let invalid = |what, reason: String| Err(QueueError::Invalid { what, reason });
    let name_ok = !group.name.is_empty()
        && group.name.len() <= MAX_GROUP_LEN
        && group
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return invalid(
            "group name",
            format!(
                "{:?}: 1 to {MAX_GROUP_LEN} letters, digits, '-' or '_'",
                group.name
            ),
        );
    }
    if group.lease.is_zero() {
        return invalid("lease", "must be longer than zero".to_owned());
    }
    if group.max_attempts == 0 {
        return invalid("max_attempts", "must be at least 1".to_owned());
    }
    Ok(())
}

fn backend(source: sqlx::Error) -> QueueError {
    QueueError::Backend(Box::new(source))
}

/// Milliseconds since the Unix epoch: lease ends and due times are compared across processes.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whole milliseconds, rounded up: a delay is never cut short by the rounding.
fn ms_ceil(d: Duration) -> i64 {
    i64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

/// Negative spans (another process's clock a little behind) count as zero.
fn ms_duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn ms_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + ms_duration(ms)
}
