//! The outbox, leases and consumer records on PostgreSQL.
//!
//! Every method is one statement or one short transaction, correct at READ COMMITTED:
//!
//! * Outbox ids come from an `IDENTITY` sequence, drawn when a row is inserted, not when its
//!   transaction commits, so a lower id can become visible after a higher one. The relay
//!   therefore reads unpublished rows with no id cursor
//!   ([`EventShard::unpublished_events`]), and marking is a conditional write
//!   (`… AND published_at IS NULL`) that keeps the first publication time.
//! * A lease claim is one `INSERT … ON CONFLICT … DO UPDATE … WHERE`: PostgreSQL locks the
//!   conflicting row and evaluates the condition on its newest version, so of two claimants
//!   of a free or expired lease exactly one takes it.
//! * A consumer record is an `INSERT … ON CONFLICT DO NOTHING` on the primary key: a second
//!   insert of the same key waits for the first's transaction and then finds the row, so of
//!   concurrent deliveries of one event exactly one records it (and only that one counts it).

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::{INSERT_CHUNK, PostgresShard};
use crate::error::StoreError;
use crate::events::{NewEvent, OutboxBacklog, OutboxEvent, new_event_id};
use crate::shard::EventShard;

macro_rules! outbox_columns {
    () => {
        "id, event_id, topic, key, payload, created_at"
    };
}

impl PostgresShard {
    /// Writes `event` to the outbox inside the transaction on `conn`, with a new event id.
    ///
    /// Call it **after** the transaction has written the aggregate's row (the product, the
    /// variant's stock, the order, the user), never before: the row write takes the row's lock,
    /// so a concurrent change to the same aggregate waits for this commit before it draws its
    /// own outbox id, and ids follow commit order per key (see the SQLite backend's
    /// `write_event`, whose rule this is).
    pub(crate) async fn write_event(
        &self,
        conn: &mut PgConnection,
        event: NewEvent,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.write_events {
            return Ok(());
        }
        let event_id = new_event_id();
        crate::events::note_written(&self.name, &event_id);
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, key, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(event_id)
        .bind(event.topic)
        .bind(event.key)
        .bind(event.payload)
        .bind(now_ms)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Writes many events in as few statements as bound parameters allow, in the order given.
    /// The ordering rule of [`write_event`](Self::write_event) applies.
    pub(crate) async fn write_events(
        &self,
        conn: &mut PgConnection,
        events: Vec<NewEvent>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.write_events {
            return Ok(());
        }
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<NewEvent> = events.by_ref().take(INSERT_CHUNK).collect();
            let mut insert = QueryBuilder::<Postgres>::new(
                "INSERT INTO outbox (event_id, topic, key, payload, created_at) ",
            );
            insert.push_values(chunk, |mut row, event| {
                let event_id = new_event_id();
                crate::events::note_written(&self.name, &event_id);
                row.push_bind(event_id)
                    .push_bind(event.topic)
                    .push_bind(event.key)
                    .push_bind(event.payload)
                    .push_bind(now_ms);
            });
            insert.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    fn event_from(row: &PgRow) -> Result<OutboxEvent, StoreError> {
        Ok(OutboxEvent {
            id: row.try_get(0)?,
            event_id: row.try_get(1)?,
            topic: row.try_get(2)?,
            key: row.try_get(3)?,
            payload: row.try_get(4)?,
            created_at_ms: row.try_get(5)?,
        })
    }
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Reads `(TEXT, BIGINT)` rows: consumer records and tallies.
fn pairs(rows: &[PgRow]) -> Result<Vec<(String, i64)>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

#[async_trait]
impl EventShard for PostgresShard {
    async fn outbox(&self, after: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::event_from).collect()
    }

    async fn events_with_ids(&self, ids: &[String]) -> Result<Vec<OutboxEvent>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One `TEXT[]` parameter, served by the unique index on `event_id`.
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE event_id = ANY($1) ORDER BY id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::event_from).collect()
    }

    async fn unpublished_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        // Served by the partial index `outbox_unpublished (id) WHERE published_at IS NULL`.
        // No id cursor: a row whose id was drawn before a published one's but committed after
        // it is still unpublished, so it is returned here (first, being oldest) on the next read.
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1"
        ))
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::event_from).collect()
    }

    async fn mark_published(&self, ids: &[i64], now_ms: i64) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        // The rows are locked in id order first, so two relays marking overlapping batches
        // (one whose lease ran out while it published) queue instead of deadlocking. A row
        // another transaction marked meanwhile fails `published_at IS NULL` when re-read
        // after its lock, so it keeps its first time and is not counted.
        let done = sqlx::query(
            "WITH marked AS ( \
                 SELECT id FROM outbox WHERE id = ANY($2) AND published_at IS NULL \
                 ORDER BY id FOR UPDATE \
             ) \
             UPDATE outbox SET published_at = $1 FROM marked \
             WHERE outbox.id = marked.id AND outbox.published_at IS NULL",
        )
        .bind(now_ms)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_published(&self, published_before_ms: i64) -> Result<u64, StoreError> {
        // An identity sequence never hands out a value twice, so pruning the newest rows
        // cannot make a later event look older than a published one.
        let done =
            sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
                .bind(published_before_ms)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        // One statement: the count and the oldest time come from one snapshot.
        let row =
            sqlx::query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let unpublished: i64 = row.try_get(0)?;
        Ok(OutboxBacklog {
            unpublished: u64::try_from(unpublished).unwrap_or(0),
            oldest_created_at_ms: row.try_get(1)?,
        })
    }

    async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        // One conditional write. Of concurrent inserts of a missing lease, one inserts and the
        // rest wait for it, then meet its row as a conflict; the update's condition is then
        // evaluated on the newest version of the locked row, so a claimant that lost finds the
        // winner's unexpired lease and changes nothing (no row returned).
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE leases.expires_at <= $4 OR leases.holder = excluded.holder \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.as_deref() == Some(holder))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let released = sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(released.rows_affected() == 1)
    }

    async fn record_processed(
        &self,
        consumer: &str,
        event_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let recorded = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, applied_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(event_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(recorded.rows_affected() == 1)
    }

    async fn is_processed(&self, consumer: &str, event_id: &str) -> Result<bool, StoreError> {
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2)",
        )
        .bind(consumer)
        .bind(event_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(found)
    }

    async fn processed(
        &self,
        consumer: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        // The primary key (consumer, event_id) serves the range and the order, in the
        // column's collation (byte order for event ids under a `C` collation; UUIDv7 strings
        // sort the same under any common locale).
        let rows = sqlx::query(
            "SELECT event_id, applied_at FROM processed_events \
             WHERE consumer = $1 AND event_id > $2 ORDER BY event_id LIMIT $3",
        )
        .bind(consumer)
        .bind(after)
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        pairs(&rows)
    }

    async fn apply_tally(
        &self,
        consumer: &str,
        event_id: &str,
        topic: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The record is the guard: of concurrent deliveries of one event, the first insert
        // takes the key and the others wait for its transaction; once it commits they find
        // the row and insert nothing, so only the first counts. Should it roll back, one of
        // them inserts and counts instead.
        let recorded = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, applied_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(event_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            // Dropping the transaction rolls it back; it wrote nothing.
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO event_tally (topic, count) VALUES ($1, 1) \
             ON CONFLICT (topic) DO UPDATE SET count = event_tally.count + 1",
        )
        .bind(topic)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn tally(&self) -> Result<Vec<(String, i64)>, StoreError> {
        // Byte order of topics, as SQLite sorts them, whatever the database's locale.
        let rows = sqlx::query("SELECT topic, count FROM event_tally ORDER BY topic COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await?;
        pairs(&rows)
    }

    async fn prune_processed(&self, applied_before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM processed_events WHERE applied_at < $1")
            .bind(applied_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
