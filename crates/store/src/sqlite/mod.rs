//! The embedded backend: one SQLite file per shard, through sqlx.
//!
//! Every connection runs in WAL mode (readers never block the writer), with foreign keys on,
//! a busy timeout instead of immediate `SQLITE_BUSY`, and `synchronous=FULL` unless the
//! configuration trades durability for write speed.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::error::{BackendKind, StoreError};
use crate::id::{ProductId, UserId, VariantId};
use crate::model::{Currency, Money, Product, Variant};
use crate::shard::Shard;

/// How hard each commit tries to survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: a commit is on disk before it is acknowledged.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in WAL mode, a power loss may drop the last commits (never
    /// corrupts). Faster bulk loads.
    Normal,
}

/// Settings of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Directory holding `shard-{i}.sqlite` files; created if missing.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// How long a connection waits for a lock before failing.
    pub busy_timeout: Duration,
    /// Connections per shard; each is a thread inside sqlx.
    pub max_connections: u32,
    /// `false` writes no outbox events: only for measuring what the outbox costs a write
    /// (nothing downstream learns of a change then).
    pub write_events: bool,
}

/// One shard stored in one SQLite file.
#[derive(Debug)]
pub struct SqliteShard {
    name: String,
    pool: SqlitePool,
    write_events: bool,
}

/// Rows per multi-row `INSERT`: 500 products × 11 columns stays far under SQLite's 32,766
/// bound parameters, and batching cuts the per-statement cost that dominates bulk loads.
const INSERT_CHUNK: usize = 500;

// Column lists as macros so that `concat!` can build `&'static str` statements from them:
// sqlx prepares and caches static SQL without an `AssertSqlSafe`.
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

/// Read by [`SqliteShard::variant_from`]; needs `stock s` joined.
macro_rules! variant_columns {
    () => {
        "v.id, v.product_id, v.sku, v.color, v.size, v.price_amount, v.currency, \
         COALESCE(s.on_hand, 0)"
    };
}

const IN_STOCK: &str = "EXISTS (SELECT 1 FROM variants v JOIN stock s ON s.variant_id = v.id \
     WHERE v.product_id = p.id AND s.on_hand > 0)";

impl SqliteShard {
    /// Opens (creating if needed) `{data_dir}/{name}.sqlite` and brings its schema up to date.
    pub async fn open(name: &str, config: &SqliteConfig) -> Result<Self, StoreError> {
        let path = config.data_dir.join(format!("{name}.sqlite"));
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Backend {
            shard: name.to_owned(),
            kind: BackendKind::Permanent,
            source: format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            )
            .into(),
        })?;
        let options = connect_options(&path, config);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::from(e).on_shard(name))?;
        sqlx::migrate!("./migrations/sqlite")
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

    fn product_from(&self, row: &SqliteRow) -> Result<Product, StoreError> {
        let get_i64 = |i: usize| row.try_get::<i64, _>(i);
        let get_str = |i: usize| row.try_get::<String, _>(i);
        Ok(Product {
            id: ProductId::new(self.id_from(get_i64(0)?)?),
            name: get_str(1)?,
            description: get_str(2)?,
            brand: get_str(3)?,
            category: get_str(4)?,
            price: Money {
                amount: get_i64(5)?,
                currency: self.currency_from(&get_str(6)?)?,
            },
            created_at_ms: get_i64(7)?,
            updated_at_ms: get_i64(8)?,
            seller_id: row
                .try_get::<Option<i64>, _>(9)?
                .map(|raw| self.id_from(raw).map(UserId::new))
                .transpose()?,
            version: get_i64(10)?,
            view_count: get_i64(11)?,
        })
    }

    /// Reads `variant_columns!()` starting at column `at`.
    fn variant_from(&self, row: &SqliteRow, at: usize) -> Result<Variant, StoreError> {
        let get_i64 = |i: usize| row.try_get::<i64, _>(at + i);
        let get_str = |i: usize| row.try_get::<String, _>(at + i);
        Ok(Variant {
            id: VariantId::new(self.id_from(get_i64(0)?)?),
            product_id: ProductId::new(self.id_from(get_i64(1)?)?),
            sku: get_str(2)?,
            color: get_str(3)?,
            size: get_str(4)?,
            price: Money {
                amount: get_i64(5)?,
                currency: self.currency_from(&get_str(6)?)?,
            },
            stock_level: get_i64(7)?,
        })
    }

    fn id_from(&self, raw: i64) -> Result<u64, StoreError> {
        u64::try_from(raw).map_err(|_| self.corrupt(format!("negative id {raw}")))
    }

    fn currency_from(&self, code: &str) -> Result<Currency, StoreError> {
        Currency::from_str(code).map_err(|e| self.corrupt(e))
    }
}

fn connect_options(path: &Path, config: &SqliteConfig) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .foreign_keys(true)
        .busy_timeout(config.busy_timeout)
        // Keeps the most recent pages of a hot catalog in memory per connection (negative
        // values are KiB): 16 MiB.
        .pragma("cache_size", "-16384")
}

/// A transaction holding the shard's write lock.
type WriteTx = sqlx::Transaction<'static, sqlx::Sqlite>;

impl SqliteShard {
    /// A write transaction that takes the write lock up front: a deferred one would read, then
    /// fail to upgrade under a concurrent writer with a busy error no timeout can cure.
    async fn write_tx(&self) -> Result<WriteTx, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// The number of columns `product_columns!()` reads.
const PRODUCT_COLUMN_COUNT: usize = 12;

/// Ids as SQLite stores them. Every id is below 2^63 by construction ([`crate::id`]).
fn sql_id(raw: u64) -> i64 {
    i64::try_from(raw).expect("ids are 63-bit")
}

/// A JSON array of ids, bound as one parameter and expanded by `json_each`: the SQL text stays
/// the same for any number of ids, so its prepared statement is reused.
fn id_array(ids: impl Iterator<Item = u64>) -> String {
    let mut out = String::from("[");
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}

#[async_trait]
impl Shard for SqliteShard {
    fn name(&self) -> &str {
        &self.name
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM shard_meta WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO shard_meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        let recorded: String = sqlx::query_scalar("SELECT value FROM shard_meta WHERE key = ?")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO shard_meta (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM shard_meta WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn metas(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        // `substr` rather than LIKE: a prefix is compared byte for byte, wildcards and all.
        Ok(sqlx::query_as(
            "SELECT key, value FROM shard_meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
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
        // Closing the last connection checkpoints the WAL into the main file.
        self.pool.close().await;
    }
}

mod catalog;
mod events;
mod identity;
mod moving;
mod orders;
