//! The catalog half of the PostgreSQL shard: products, variants and stock, each write with its
//! event.
//!
//! # Isolation
//!
//! Transactions run at READ COMMITTED. Every version-checked write starts with one conditional
//! write on the product's row (`UPDATE … WHERE id = $1 AND version = $2 RETURNING …`, or a
//! `SELECT … FOR UPDATE` before the check, for a delete): PostgreSQL re-evaluates the `WHERE`
//! on the newest row version after waiting for a concurrent writer's lock, so of two writers
//! expecting one version exactly one proceeds, and the product's row lock, held to commit,
//! serialises every later statement of the write (its variant and stock rows) behind it. The
//! product row is the first row each write locks, then its stock rows in variant id order, so
//! catalog writes do not deadlock with each other or with checkout's stock decrements.

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::{INSERT_CHUNK, PRODUCT_COLUMN_COUNT, PostgresShard, id_array, sql_id};
use crate::error::StoreError;
use crate::events::{self, Touched};
use crate::id::{ProductId, UserId, VariantId};
use crate::model::{
    Money, Product, ProductPatch, ProductWithVariants, StockEdit, Variant, VariantPatch,
    WriteOutcome,
};
use crate::query::{ProductQuery, ProductSort};
use crate::shard::CatalogShard;

/// A product with a variant in stock (`products p` in scope).
const IN_STOCK: &str = "EXISTS (SELECT 1 FROM variants v JOIN stock s ON s.variant_id = v.id \
     WHERE v.product_id = p.id AND s.on_hand > 0)";

/// `variant_columns!()` of a variant row being written, with a stock level of zero (the caller
/// sets it from the stock row).
macro_rules! returned_variant_columns {
    () => {
        "id, product_id, sku, color, size, price_amount, currency, 0::BIGINT"
    };
}

#[async_trait]
impl CatalogShard for PostgresShard {
    async fn insert_products(
        &self,
        products: &[ProductWithVariants],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // Rows go in as arrays expanded by UNNEST: one static statement per table, prepared
        // once, whatever the chunk's size.
        const PRODUCTS: &str = "INSERT INTO products (id, name, description, brand, category, \
             price_amount, currency, created_at, updated_at, seller_id, version) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
             $6::BIGINT[], $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[])";
        const VARIANTS: &str = "INSERT INTO variants (id, product_id, sku, color, size, \
             price_amount, currency) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], \
             $5::TEXT[], $6::BIGINT[], $7::TEXT[])";
        const STOCK: &str = "INSERT INTO stock (variant_id, on_hand) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[])";

        let mut tx = self.pool.begin().await?;
        for chunk in products.chunks(INSERT_CHUNK) {
            let rows = chunk.iter().map(|p| &p.product);
            sqlx::query(PRODUCTS)
                .bind(rows.clone().map(|p| sql_id(p.id.get())).collect::<Vec<_>>())
                .bind(rows.clone().map(|p| p.name.as_str()).collect::<Vec<_>>())
                .bind(
                    rows.clone()
                        .map(|p| p.description.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(rows.clone().map(|p| p.brand.as_str()).collect::<Vec<_>>())
                .bind(
                    rows.clone()
                        .map(|p| p.category.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(rows.clone().map(|p| p.price.amount).collect::<Vec<_>>())
                .bind(
                    rows.clone()
                        .map(|p| p.price.currency.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(rows.clone().map(|p| p.created_at_ms).collect::<Vec<_>>())
                .bind(rows.clone().map(|p| p.updated_at_ms).collect::<Vec<_>>())
                .bind(
                    rows.clone()
                        .map(|p| p.seller_id.map(|s| sql_id(s.get())))
                        .collect::<Vec<_>>(),
                )
                .bind(rows.map(|p| p.version).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;

            let variants: Vec<&Variant> = chunk.iter().flat_map(|p| &p.variants).collect();
            for variants in variants.chunks(INSERT_CHUNK) {
                let ids: Vec<i64> = variants.iter().map(|v| sql_id(v.id.get())).collect();
                sqlx::query(VARIANTS)
                    .bind(&ids)
                    .bind(
                        variants
                            .iter()
                            .map(|v| sql_id(v.product_id.get()))
                            .collect::<Vec<_>>(),
                    )
                    .bind(variants.iter().map(|v| v.sku.as_str()).collect::<Vec<_>>())
                    .bind(
                        variants
                            .iter()
                            .map(|v| v.color.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(variants.iter().map(|v| v.size.as_str()).collect::<Vec<_>>())
                    .bind(variants.iter().map(|v| v.price.amount).collect::<Vec<_>>())
                    .bind(
                        variants
                            .iter()
                            .map(|v| v.price.currency.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(STOCK)
                    .bind(&ids)
                    .bind(variants.iter().map(|v| v.stock_level).collect::<Vec<_>>())
                    .execute(&mut *tx)
                    .await?;
            }
            // After the chunk's rows (the ordering rule of `write_event`).
            let created = chunk.iter().map(events::product_created).collect();
            self.write_events(&mut tx, created, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn product_with_variants(
        &self,
        id: ProductId,
    ) -> Result<Option<ProductWithVariants>, StoreError> {
        // One statement, so one snapshot: the product's columns repeat on every variant row.
        const SQL: &str = concat!(
            "SELECT ",
            product_columns!(),
            ", ",
            variant_columns!(),
            " FROM products p",
            " LEFT JOIN variants v ON v.product_id = p.id",
            " LEFT JOIN stock s ON s.variant_id = v.id",
            " WHERE p.id = $1 ORDER BY v.id"
        );
        let rows = sqlx::query(SQL)
            .bind(sql_id(id.get()))
            .fetch_all(&self.pool)
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let product = self.product_from(first)?;
        let mut variants = Vec::with_capacity(rows.len());
        for row in &rows {
            // A product without variants yields one row whose variant columns are NULL.
            if row
                .try_get::<Option<i64>, _>(PRODUCT_COLUMN_COUNT)?
                .is_some()
            {
                variants.push(self.variant_from(row, PRODUCT_COLUMN_COUNT)?);
            }
        }
        Ok(Some(ProductWithVariants { product, variants }))
    }

    async fn products(&self, ids: &[ProductId]) -> Result<Vec<Product>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            product_columns!(),
            " FROM products p WHERE p.id = ANY($1)"
        );
        let rows = sqlx::query(SQL)
            .bind(id_array(ids.iter().map(|id| id.get())))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| self.product_from(row)).collect()
    }

    async fn variants_of(&self, products: &[ProductId]) -> Result<Vec<Variant>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            variant_columns!(),
            " FROM variants v LEFT JOIN stock s ON s.variant_id = v.id",
            " WHERE v.product_id = ANY($1)",
            " ORDER BY v.product_id, v.id"
        );
        let rows = sqlx::query(SQL)
            .bind(id_array(products.iter().map(|id| id.get())))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| self.variant_from(row, 0)).collect()
    }

    async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            variant_columns!(),
            " FROM variants v LEFT JOIN stock s ON s.variant_id = v.id",
            " WHERE v.id = $1 AND v.product_id = $2"
        );
        let row = sqlx::query(SQL)
            .bind(sql_id(variant.get()))
            .bind(sql_id(product.get()))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| self.variant_from(&row, 0)).transpose()
    }

    async fn list_products(&self, query: &ProductQuery) -> Result<Vec<Product>, StoreError> {
        // The statement's shape depends on which filters are set (a handful of shapes, each
        // prepared once); every value is bound.
        let mut sql = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            product_columns!(),
            " FROM products p WHERE 1=1"
        ));
        let filter = &query.filter;
        if let Some(category) = &filter.category {
            sql.push(" AND p.category = ").push_bind(category.clone());
        }
        if let Some(min) = filter.min_price {
            sql.push(" AND p.price_amount >= ").push_bind(min);
        }
        if let Some(max) = filter.max_price {
            sql.push(" AND p.price_amount <= ").push_bind(max);
        }
        match filter.in_stock {
            Some(true) => {
                sql.push(" AND ").push(IN_STOCK);
            }
            Some(false) => {
                sql.push(" AND NOT ").push(IN_STOCK);
            }
            None => {}
        }
        if let Some(after) = query.after {
            let id = sql_id(after.id.get());
            match query.sort {
                ProductSort::Newest => {
                    sql.push(" AND p.id < ").push_bind(id);
                }
                ProductSort::PriceAsc => {
                    sql.push(" AND (p.price_amount, p.id) > (")
                        .push_bind(after.price);
                    sql.push(", ").push_bind(id).push(")");
                }
                ProductSort::PriceDesc => {
                    sql.push(" AND (p.price_amount, p.id) < (")
                        .push_bind(after.price);
                    sql.push(", ").push_bind(id).push(")");
                }
            }
        }
        sql.push(match query.sort {
            ProductSort::Newest => " ORDER BY p.id DESC",
            ProductSort::PriceAsc => " ORDER BY p.price_amount ASC, p.id ASC",
            ProductSort::PriceDesc => " ORDER BY p.price_amount DESC, p.id DESC",
        });
        sql.push(" LIMIT ")
            .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(|row| self.product_from(row)).collect()
    }

    async fn count_products(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn add_views(&self, views: &[(ProductId, i64)]) -> Result<(), StoreError> {
        if views.is_empty() {
            return Ok(());
        }
        // Sums per product (a product may appear twice, as SQLite's per-row updates add both),
        // and locks the rows in id order first so two flushes never deadlock.
        let ids: Vec<i64> = views.iter().map(|(id, _)| sql_id(id.get())).collect();
        let counts: Vec<i64> = views.iter().map(|(_, n)| *n).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE products p SET view_count = p.view_count + v.n \
             FROM (SELECT id, SUM(n)::BIGINT AS n FROM UNNEST($1::BIGINT[], $2::BIGINT[]) \
                   AS u(id, n) GROUP BY id) v \
             WHERE p.id = v.id",
        )
        .bind(&ids)
        .bind(&counts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_product(
        &self,
        id: ProductId,
        expected_version: i64,
        patch: &ProductPatch,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The version check is the write's own WHERE.
        let after = sqlx::query(concat!(
            "UPDATE products SET name = COALESCE($1, name), \
             description = COALESCE($2, description), brand = COALESCE($3, brand), \
             category = COALESCE($4, category), updated_at = $5, version = version + 1 \
             WHERE id = $6 AND version = $7 RETURNING ",
            returned_product_columns!()
        ))
        .bind(patch.name.as_deref())
        .bind(patch.description.as_deref())
        .bind(patch.brand.as_deref())
        .bind(patch.category.as_deref())
        .bind(now_ms)
        .bind(sql_id(id.get()))
        .bind(expected_version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(after) = after else {
            return self.refused(&mut tx, id).await;
        };
        let after = self.product_from(&after)?;
        self.write_event(&mut tx, events::product_updated(&after), now_ms)
            .await?;
        self.commit_and_read(tx, id).await
    }

    async fn delete_product(
        &self,
        id: ProductId,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The product's lock first, then the check: a variant write waits for it, so the
        // variants read next are exactly the ones the delete takes.
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM products WHERE id = $1 FOR UPDATE")
                .bind(sql_id(id.get()))
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(outcome) = WriteOutcome::precondition(current, expected_version) {
            return Ok(outcome);
        }
        let variants: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM variants WHERE product_id = $1 ORDER BY id")
                .bind(sql_id(id.get()))
                .fetch_all(&mut *tx)
                .await?;
        // The cascade deletes the stock rows in no set order; locking them in variant id
        // order first keeps it from deadlocking with a reservation holding two of them.
        sqlx::query(
            "SELECT 1 FROM stock WHERE variant_id = ANY($1) ORDER BY variant_id FOR UPDATE",
        )
        .bind(&variants)
        .execute(&mut *tx)
        .await?;
        let variants = variants
            .into_iter()
            .map(|raw| self.id_from(raw).map(VariantId::new))
            .collect::<Result<Vec<_>, _>>()?;
        // Variants and stock go with it (ON DELETE CASCADE).
        let row = sqlx::query("DELETE FROM products WHERE id = $1 RETURNING seller_id, version")
            .bind(sql_id(id.get()))
            .fetch_one(&mut *tx)
            .await?;
        let seller = row
            .try_get::<Option<i64>, _>(0)?
            .map(|raw| self.id_from(raw).map(UserId::new))
            .transpose()?;
        let version: i64 = row.try_get(1)?;
        let event = events::product_deleted(id, seller, version, &variants);
        self.write_event(&mut tx, event, now_ms).await?;
        tx.commit().await?;
        Ok(WriteOutcome::Done(None))
    }

    async fn insert_variant(
        &self,
        variant: &Variant,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let product = variant.product_id;
        let mut tx = self.pool.begin().await?;
        if let Some(outcome) = self
            .claim_version(&mut tx, product, expected_version, now_ms)
            .await?
        {
            return Ok(outcome);
        }
        sqlx::query(
            "INSERT INTO variants (id, product_id, sku, color, size, price_amount, currency) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(sql_id(variant.id.get()))
        .bind(sql_id(product.get()))
        .bind(&variant.sku)
        .bind(&variant.color)
        .bind(&variant.size)
        .bind(variant.price.amount)
        .bind(variant.price.currency.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO stock (variant_id, on_hand) VALUES ($1, $2)")
            .bind(sql_id(variant.id.get()))
            .bind(variant.stock_level)
            .execute(&mut *tx)
            .await?;
        let touched = self.reprice(&mut tx, product).await?;
        let event = events::variant_written(true, variant, touched);
        self.write_event(&mut tx, event, now_ms).await?;
        self.commit_and_read(tx, product).await
    }

    async fn update_variant(
        &self,
        product: ProductId,
        variant: VariantId,
        expected_version: i64,
        patch: &VariantPatch,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(outcome) = self
            .claim_version(&mut tx, product, expected_version, now_ms)
            .await?
        {
            return Ok(outcome);
        }
        let updated = sqlx::query(concat!(
            "UPDATE variants SET sku = COALESCE($1, sku), color = COALESCE($2, color), \
             size = COALESCE($3, size), price_amount = COALESCE($4, price_amount), \
             currency = COALESCE($5, currency) WHERE id = $6 AND product_id = $7 RETURNING ",
            returned_variant_columns!()
        ))
        .bind(patch.sku.as_deref())
        .bind(patch.color.as_deref())
        .bind(patch.size.as_deref())
        .bind(patch.price.map(|p| p.amount))
        .bind(patch.price.as_ref().map(|p| p.currency.as_str()))
        .bind(sql_id(variant.get()))
        .bind(sql_id(product.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(updated) = updated else {
            // Rolled back on drop: the version claimed above is not kept.
            return Ok(WriteOutcome::NotFound);
        };
        let mut after = self.variant_from(&updated, 0)?;
        // The level the edit replaces. Setting it reads it under the stock row's lock, so a
        // reservation committing meanwhile is not overwritten unseen (it is waited for, and
        // `before` is what it left).
        let stock_before: Option<i64> = if patch.stock_level.is_some() {
            sqlx::query_scalar("SELECT on_hand FROM stock WHERE variant_id = $1 FOR UPDATE")
        } else {
            sqlx::query_scalar("SELECT on_hand FROM stock WHERE variant_id = $1")
        }
        .bind(sql_id(variant.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let stock = StockEdit::new(product, variant, patch.stock_level, stock_before);
        if let Some(level) = stock.write {
            sqlx::query("UPDATE stock SET on_hand = $1 WHERE variant_id = $2")
                .bind(level)
                .bind(sql_id(variant.get()))
                .execute(&mut *tx)
                .await?;
        }
        after.stock_level = stock.level;
        let touched = self.reprice(&mut tx, product).await?;
        let event = events::variant_written(false, &after, touched);
        self.write_event(&mut tx, event, now_ms).await?;
        // After the stock row's write (the ordering rule of `write_event`).
        if let Some(event) = stock.changed {
            self.write_event(&mut tx, event, now_ms).await?;
        }
        self.commit_and_read(tx, product).await
    }

    async fn delete_variant(
        &self,
        product: ProductId,
        variant: VariantId,
        expected_version: i64,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(outcome) = self
            .claim_version(&mut tx, product, expected_version, now_ms)
            .await?
        {
            return Ok(outcome);
        }
        let deleted = sqlx::query("DELETE FROM variants WHERE id = $1 AND product_id = $2")
            .bind(sql_id(variant.get()))
            .bind(sql_id(product.get()))
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(WriteOutcome::NotFound);
        }
        let touched = self.reprice(&mut tx, product).await?;
        let event = events::variant_deleted(product, variant, touched);
        self.write_event(&mut tx, event, now_ms).await?;
        self.commit_and_read(tx, product).await
    }
}

impl PostgresShard {
    /// Bumps the product's version if it is still `expected`, taking its row lock for the
    /// rest of the transaction; `Some(outcome)` if the write must not proceed.
    async fn claim_version(
        &self,
        conn: &mut PgConnection,
        id: ProductId,
        expected: i64,
        now_ms: i64,
    ) -> Result<Option<WriteOutcome>, StoreError> {
        let claimed: Option<i64> = sqlx::query_scalar(
            "UPDATE products SET version = version + 1, updated_at = $1 \
             WHERE id = $2 AND version = $3 RETURNING version",
        )
        .bind(now_ms)
        .bind(sql_id(id.get()))
        .bind(expected)
        .fetch_optional(&mut *conn)
        .await?;
        if claimed.is_some() {
            return Ok(None);
        }
        self.refused(conn, id).await.map(Some)
    }

    /// Why a conditional write on product `id` matched no row: it is gone, or at another
    /// version (read now; the writer that moved it has committed, or the write would still be
    /// waiting for its lock).
    async fn refused(
        &self,
        conn: &mut PgConnection,
        id: ProductId,
    ) -> Result<WriteOutcome, StoreError> {
        let current: Option<i64> = sqlx::query_scalar("SELECT version FROM products WHERE id = $1")
            .bind(sql_id(id.get()))
            .fetch_optional(&mut *conn)
            .await?;
        Ok(WriteOutcome::refused(current))
    }

    /// After a variant changed (the product's row already locked and its version bumped by
    /// [`claim_version`](Self::claim_version)): recompute the product's "from" price and
    /// return it with the version, as they now are.
    async fn reprice(&self, conn: &mut PgConnection, id: ProductId) -> Result<Touched, StoreError> {
        let row = sqlx::query(
            "UPDATE products SET price_amount = COALESCE(\
             (SELECT MIN(price_amount) FROM variants WHERE product_id = $1), price_amount) \
             WHERE id = $1 RETURNING version, price_amount, currency",
        )
        .bind(sql_id(id.get()))
        .fetch_one(&mut *conn)
        .await?;
        Ok(Touched {
            version: row.try_get(0)?,
            price: Money {
                amount: row.try_get(1)?,
                currency: self.currency_from(row.try_get(2)?)?,
            },
        })
    }

    /// Commits, then reads the product as it now is (as the SQLite backend does: a separate
    /// read, which may already see a later write).
    async fn commit_and_read(
        &self,
        tx: sqlx::Transaction<'static, Postgres>,
        id: ProductId,
    ) -> Result<WriteOutcome, StoreError> {
        tx.commit().await?;
        Ok(WriteOutcome::Done(self.product_with_variants(id).await?))
    }
}
