//! The distributed backend: one PostgreSQL database per shard, through sqlx.
//!
//! Each shard is its own database, named by its own URL, so shards can sit on one server or on
//! many. Every transaction runs at PostgreSQL's default isolation, READ COMMITTED, and every
//! method is written to be correct there: check-then-act is a conditional write
//! (`UPDATE … WHERE … RETURNING`) or a read under a row lock (`SELECT … FOR UPDATE`), never a
//! plain read followed by a write. Each method's comment in [`crate::shard`] states what it
//! needs; the conformance suite runs the same concurrency cases against this backend and the
//! SQLite one.
//!
//! The schema is migrated at open with sqlx's migrator, which holds a PostgreSQL advisory lock
//! while it runs, so several processes can start against one database together.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use crate::error::StoreError;
use crate::id::{ProductId, UserId, VariantId};
use crate::model::{Currency, Money, Product, Variant};
use crate::shard::Shard;

/// Settings of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// One connection URL per shard, in ring order: `shards[i]` is `shard-{i}`. Any mix of
    /// servers; a URL with `sslmode=require` (or stricter) connects over rustls.
    pub shards: Vec<String>,
    /// Connections per shard.
    pub max_connections: u32,
    /// How long opening a connection (or waiting for a free one) may take.
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every connection: a statement running longer is
    /// cancelled and its transaction rolled back.
    pub statement_timeout: Duration,
    /// `false` writes no outbox events (see [`crate::sqlite::SqliteConfig::write_events`]).
    pub write_events: bool,
}

/// One shard stored in one PostgreSQL database.
#[derive(Debug)]
pub struct PostgresShard {
    name: String,
    pool: PgPool,
    write_events: bool,
}

/// Rows per multi-row `INSERT`: 500 products × 12 columns stays far under PostgreSQL's 65,535
/// bind parameters.
const INSERT_CHUNK: usize = 500;

// Column lists as macros so that `concat!` can build `&'static str` statements from them.
macro_rules! product_columns {
    () => {
        "p.id, p.name, p.description, p.brand, p.category, p.price_amount, p.currency, \
         p.created_at, p.updated_at, p.seller_id, p.version, p.view_count"
    };
}

/// `product_columns!()` without the table alias, for `RETURNING`.
macro_rules! returned_product_columns {
    () => {
        "id, name, description, brand, category, price_amount, currency, created_at, \
         updated_at, seller_id, version, view_count"
    };
}

/// Read by [`PostgresShard::variant_from`]; needs `stock s` joined.
macro_rules! variant_columns {
    () => {
        "v.id, v.product_id, v.sku, v.color, v.size, v.price_amount, v.currency, \
         COALESCE(s.on_hand, 0)"
    };
}

/// The number of columns `product_columns!()` reads.
const PRODUCT_COLUMN_COUNT: usize = 12;

impl PostgresShard {
    /// Connects to the database at `url` as shard `name` and brings its schema up to date.
    pub async fn open(name: &str, url: &str, config: &PostgresConfig) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Layout(format!("{name}: bad PostgreSQL URL: {e}")))?
            .application_name("bazaar")
            .options([(
                "statement_timeout",
                config.statement_timeout.as_millis().to_string(),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::from(e).on_shard(name))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::from(e).on_shard(name))?;
        Ok(Self {
            name: name.to_owned(),
            pool,
            write_events: config.write_events,
        })
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            shard: self.name.clone(),
            detail: detail.into(),
        }
    }

    fn product_from(&self, row: &PgRow) -> Result<Product, StoreError> {
        Ok(Product {
            id: ProductId::new(self.id_from(row.try_get(0)?)?),
            name: row.try_get(1)?,
            description: row.try_get(2)?,
            brand: row.try_get(3)?,
            category: row.try_get(4)?,
            price: Money {
                amount: row.try_get(5)?,
                currency: self.currency_from(row.try_get(6)?)?,
            },
            created_at_ms: row.try_get(7)?,
            updated_at_ms: row.try_get(8)?,
            seller_id: row
                .try_get::<Option<i64>, _>(9)?
                .map(|raw| self.id_from(raw).map(UserId::new))
                .transpose()?,
            version: row.try_get(10)?,
            view_count: row.try_get(11)?,
        })
    }

    /// Reads `variant_columns!()` starting at column `at`.
    fn variant_from(&self, row: &PgRow, at: usize) -> Result<Variant, StoreError> {
        Ok(Variant {
            id: VariantId::new(self.id_from(row.try_get(at)?)?),
            product_id: ProductId::new(self.id_from(row.try_get(at + 1)?)?),
            sku: row.try_get(at + 2)?,
            color: row.try_get(at + 3)?,
            size: row.try_get(at + 4)?,
            price: Money {
                amount: row.try_get(at + 5)?,
                currency: self.currency_from(row.try_get(at + 6)?)?,
            },
            stock_level: row.try_get(at + 7)?,
        })
    }

    fn id_from(&self, raw: i64) -> Result<u64, StoreError> {
        u64::try_from(raw).map_err(|_| self.corrupt(format!("negative id {raw}")))
    }

    fn currency_from(&self, code: &str) -> Result<Currency, StoreError> {
        Currency::from_str(code).map_err(|e| self.corrupt(e))
    }
}

/// Ids as PostgreSQL stores them (`BIGINT`). Every id is below 2^63 by construction
/// ([`crate::id`]).
fn sql_id(raw: u64) -> i64 {
    i64::try_from(raw).expect("ids are 63-bit")
}

/// Ids bound as one `BIGINT[]` parameter and matched with `= ANY($n)`: the SQL text stays the
/// same for any number of ids, so its prepared statement is reused.
fn id_array(ids: impl Iterator<Item = u64>) -> Vec<i64> {
    ids.map(sql_id).collect()
}

#[async_trait]
impl Shard for PostgresShard {
    fn name(&self) -> &str {
        &self.name
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM shard_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        // Insert-if-absent, then read: under READ COMMITTED the insert waits for a concurrent
        // claimant's commit, and the read (a new statement) sees the value that won.
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO shard_meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        let recorded: String = sqlx::query_scalar("SELECT value FROM shard_meta WHERE key = $1")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO shard_meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM shard_meta WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn metas(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        // `starts_with` rather than LIKE: the prefix is compared as is, wildcards and all.
        Ok(sqlx::query_as(
            "SELECT key, value FROM shard_meta WHERE starts_with(key, $1) ORDER BY key",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

mod catalog;
mod events;
mod identity;
mod moving;
mod orders;
