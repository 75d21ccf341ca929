//! The outbox, leases and consumer records on SQLite.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{INSERT_CHUNK, SqliteShard};
use crate::error::StoreError;
use crate::events::{NewEvent, OutboxBacklog, OutboxEvent, new_event_id};
use crate::shard::EventShard;

macro_rules! outbox_columns {
    () => {
        "id, event_id, topic, key, payload, created_at"
    };
}

impl SqliteShard {
    /// Writes `event` to the outbox inside the transaction on `conn`, with a new event id.
    ///
    /// # The ordering rule
    ///
    /// Call it **after** the transaction has written the aggregate's row (the product, the
    /// variant's stock, the order, the user), never before. The relay publishes in outbox id
    /// order, and ids must follow commit order per key. Writing the row first takes the row's
    /// lock first: a concurrent change to the same aggregate waits for this transaction to
    /// commit before it can write its own row, so its event id is drawn later. An event
    /// written before the row write could draw its id, wait for the lock, and commit after a
    /// later change with a higher id. (SQLite has one writer, so its ids follow commit order
    /// anyway; a PostgreSQL backend relies on this rule. For stock events the row written is
    /// the variant's stock row, so there the order holds per variant.)
    pub(super) async fn write_event(
        &self,
        conn: &mut SqliteConnection,
        event: NewEvent,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.write_events {
            return Ok(());
        }
        let event_id = new_event_id();
        crate::events::note_written(&self.name, &event_id);
        sqlx::query(concat!(
            "INSERT INTO outbox (event_id, topic, key, payload, created_at) ",
            "VALUES (?, ?, ?, ?, ?)"
        ))
        .bind(event_id)
        .bind(event.topic)
        .bind(event.key)
        .bind(event.payload)
        .bind(now_ms)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Writes many events in as few statements as bounded parameters allow (seeding writes
    /// thousands in one transaction), in the order given. The ordering rule of
    /// [`write_event`](Self::write_event) applies.
    pub(super) async fn write_events(
        &self,
        conn: &mut SqliteConnection,
        events: Vec<NewEvent>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.write_events {
            return Ok(());
        }
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<NewEvent> = events.by_ref().take(INSERT_CHUNK).collect();
            let mut insert = QueryBuilder::<Sqlite>::new(
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

    fn event_from(row: &SqliteRow) -> Result<OutboxEvent, StoreError> {
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

/// Reads `(TEXT, INTEGER)` rows: consumer records and tallies.
fn pairs(rows: &[SqliteRow]) -> Result<Vec<(String, i64)>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

#[async_trait]
impl EventShard for SqliteShard {
    async fn outbox(&self, after: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE id > ? ORDER BY id LIMIT ?"
        ))
        .bind(after)
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::event_from).collect()
    }

    async fn events_with_ids(&self, ids: &[String]) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut events = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut select = QueryBuilder::<Sqlite>::new(concat!(
                "SELECT ",
                outbox_columns!(),
                " FROM outbox WHERE event_id IN ("
            ));
            let mut list = select.separated(", ");
            for id in chunk {
                list.push_bind(id);
            }
            select.push(") ORDER BY id");
            let rows = select.build().fetch_all(&self.pool).await?;
            for row in &rows {
                events.push(Self::event_from(row)?);
            }
        }
        events.sort_by_key(|event| event.id);
        Ok(events)
    }

    async fn unpublished_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        // Served by the partial index `outbox_unpublished (id) WHERE published_at IS NULL`.
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?"
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
        let ids = serde_json::Value::from(ids).to_string();
        let done = sqlx::query(
            "UPDATE outbox SET published_at = ? \
             WHERE id IN (SELECT value FROM json_each(?)) AND published_at IS NULL",
        )
        .bind(now_ms)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_published(&self, published_before_ms: i64) -> Result<u64, StoreError> {
        // AUTOINCREMENT: ids of deleted rows are never handed out again, so pruning the
        // newest rows cannot make a later event look older than a published one.
        let done =
            sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?")
                .bind(published_before_ms)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
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
        // One conditional write: an insert if the lease never existed, else a takeover only
        // where it is the holder's own (a renewal) or has expired.
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
        )
        .bind(name)
        .bind(holder)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let released = sqlx::query("DELETE FROM leases WHERE name = ? AND holder = ?")
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
            "INSERT INTO processed_events (consumer, event_id, applied_at) VALUES (?, ?, ?) \
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
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM processed_events WHERE consumer = ? AND event_id = ?",
        )
        .bind(consumer)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn processed(
        &self,
        consumer: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        // The primary key (consumer, event_id) serves the range and the order.
        let rows = sqlx::query(
            "SELECT event_id, applied_at FROM processed_events \
             WHERE consumer = ? AND event_id > ? ORDER BY event_id LIMIT ?",
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
        let mut tx = self.write_tx().await?;
        // The record is the guard: of concurrent deliveries of one event, exactly one insert
        // finds no row (the primary key serialises them), and only that one counts.
        let recorded = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, applied_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(event_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO event_tally (topic, count) VALUES (?, 1) \
             ON CONFLICT (topic) DO UPDATE SET count = count + 1",
        )
        .bind(topic)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn tally(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT topic, count FROM event_tally ORDER BY topic")
            .fetch_all(&self.pool)
            .await?;
        pairs(&rows)
    }

    async fn prune_processed(&self, applied_before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM processed_events WHERE applied_at < ?")
            .bind(applied_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
