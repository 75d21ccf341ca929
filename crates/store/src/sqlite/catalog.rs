//! The catalog half of the SQLite shard: products, variants and stock, each write with its
//! event.

use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{IN_STOCK, INSERT_CHUNK, PRODUCT_COLUMN_COUNT, SqliteShard, WriteTx, id_array, sql_id};
use crate::error::StoreError;
use crate::events::{self, Touched};
use crate::id::{ProductId, UserId, VariantId};
use crate::model::{
    Money, Product, ProductPatch, ProductWithVariants, StockEdit, Variant, VariantPatch,
    WriteOutcome,
};
use crate::query::{ProductQuery, ProductSort};
use crate::shard::CatalogShard;

#[async_trait]
impl CatalogShard for SqliteShard {
    async fn insert_products(
        &self,
        products: &[ProductWithVariants],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in products.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO products (id, name, description, brand, category, price_amount, \
                 currency, created_at, updated_at, seller_id, version) ",
            );
            insert.push_values(chunk, |mut row, p| {
                let p = &p.product;
                row.push_bind(sql_id(p.id.get()))
                    .push_bind(p.name.clone())
                    .push_bind(p.description.clone())
                    .push_bind(p.brand.clone())
                    .push_bind(p.category.clone())
                    .push_bind(p.price.amount)
                    .push_bind(p.price.currency.as_str().to_owned())
                    .push_bind(p.created_at_ms)
                    .push_bind(p.updated_at_ms)
                    .push_bind(p.seller_id.map(|s| sql_id(s.get())))
                    .push_bind(p.version);
            });
            insert.build().execute(&mut *tx).await?;

            let variants: Vec<&Variant> = chunk.iter().flat_map(|p| &p.variants).collect();
            for variants in variants.chunks(INSERT_CHUNK) {
                let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO variants (id, product_id, sku, color, size, price_amount, \
                     currency) ",
                );
                insert.push_values(variants, |mut row, v| {
                    row.push_bind(sql_id(v.id.get()))
                        .push_bind(sql_id(v.product_id.get()))
                        .push_bind(v.sku.clone())
                        .push_bind(v.color.clone())
                        .push_bind(v.size.clone())
                        .push_bind(v.price.amount)
                        .push_bind(v.price.currency.as_str().to_owned());
                });
                insert.build().execute(&mut *tx).await?;

                let mut stock =
                    QueryBuilder::<Sqlite>::new("INSERT INTO stock (variant_id, on_hand) ");
                stock.push_values(variants, |mut row, v| {
                    row.push_bind(sql_id(v.id.get())).push_bind(v.stock_level);
                });
                stock.build().execute(&mut *tx).await?;
            }
            // After the chunk's rows (the ordering rule of `write_event`), in multi-row
            // statements like the rows themselves.
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
        // One round trip: the product's columns repeat on every variant row.
        const SQL: &str = concat!(
            "SELECT ",
            product_columns!(),
            ", ",
            variant_columns!(),
            " FROM products p",
            " LEFT JOIN variants v ON v.product_id = p.id",
            " LEFT JOIN stock s ON s.variant_id = v.id",
            " WHERE p.id = ? ORDER BY v.id"
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
            " FROM products p WHERE p.id IN (SELECT value FROM json_each(?))"
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
            " WHERE v.product_id IN (SELECT value FROM json_each(?))",
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
            " WHERE v.id = ? AND v.product_id = ?"
        );
        let row = sqlx::query(SQL)
            .bind(sql_id(variant.get()))
            .bind(sql_id(product.get()))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| self.variant_from(&row, 0)).transpose()
    }

    async fn list_products(&self, query: &ProductQuery) -> Result<Vec<Product>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new(concat!(
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
                sql.push(format!(" AND {IN_STOCK}"));
            }
            Some(false) => {
                sql.push(format!(" AND NOT {IN_STOCK}"));
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
        let mut tx = self.write_tx().await?;
        for &(id, views) in views {
            sqlx::query("UPDATE products SET view_count = view_count + ? WHERE id = ?")
                .bind(views)
                .bind(sql_id(id.get()))
                .execute(&mut *tx)
                .await?;
        }
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
        let mut tx = self.write_tx().await?;
        if let Some(outcome) = self.check_version(&mut tx, id, expected_version).await? {
            return Ok(outcome);
        }
        let after = sqlx::query(concat!(
            "UPDATE products SET name = COALESCE(?, name), description = COALESCE(?, description), \
             brand = COALESCE(?, brand), category = COALESCE(?, category), \
             updated_at = ?, version = version + 1 WHERE id = ? RETURNING ",
            returned_product_columns!()
        ))
        .bind(patch.name.clone())
        .bind(patch.description.clone())
        .bind(patch.brand.clone())
        .bind(patch.category.clone())
        .bind(now_ms)
        .bind(sql_id(id.get()))
        .fetch_one(&mut *tx)
        .await?;
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
        let mut tx = self.write_tx().await?;
        if let Some(outcome) = self.check_version(&mut tx, id, expected_version).await? {
            return Ok(outcome);
        }
        // Read under the write lock, so these are exactly the variants the delete takes.
        let variants: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM variants WHERE product_id = ? ORDER BY id")
                .bind(sql_id(id.get()))
                .fetch_all(&mut *tx)
                .await?;
        let variants = variants
            .into_iter()
            .map(|raw| self.id_from(raw).map(VariantId::new))
            .collect::<Result<Vec<_>, _>>()?;
        // Variants and stock go with it (ON DELETE CASCADE).
        let row = sqlx::query("DELETE FROM products WHERE id = ? RETURNING seller_id, version")
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
        let mut tx = self.write_tx().await?;
        if let Some(outcome) = self
            .check_version(&mut tx, product, expected_version)
            .await?
        {
            return Ok(outcome);
        }
        sqlx::query(
            "INSERT INTO variants (id, product_id, sku, color, size, price_amount, currency) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        sqlx::query("INSERT INTO stock (variant_id, on_hand) VALUES (?, ?)")
            .bind(sql_id(variant.id.get()))
            .bind(variant.stock_level)
            .execute(&mut *tx)
            .await?;
        let touched = self.touch_product(&mut tx, product, now_ms).await?;
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
        let mut tx = self.write_tx().await?;
        if let Some(outcome) = self
            .check_version(&mut tx, product, expected_version)
            .await?
        {
            return Ok(outcome);
        }
        let updated = sqlx::query(
            "UPDATE variants SET sku = COALESCE(?, sku), color = COALESCE(?, color), \
             size = COALESCE(?, size), price_amount = COALESCE(?, price_amount), \
             currency = COALESCE(?, currency) WHERE id = ? AND product_id = ? \
             RETURNING id, product_id, sku, color, size, price_amount, currency, 0",
        )
        .bind(patch.sku.clone())
        .bind(patch.color.clone())
        .bind(patch.size.clone())
        .bind(patch.price.map(|p| p.amount))
        .bind(patch.price.map(|p| p.currency.as_str().to_owned()))
        .bind(sql_id(variant.get()))
        .bind(sql_id(product.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(updated) = updated else {
            return Ok(WriteOutcome::NotFound);
        };
        let mut after = self.variant_from(&updated, 0)?;
        // Read under the write lock, before the stock is set: the level the edit replaces.
        let stock_before: Option<i64> =
            sqlx::query_scalar("SELECT on_hand FROM stock WHERE variant_id = ?")
                .bind(sql_id(variant.get()))
                .fetch_optional(&mut *tx)
                .await?;
        let stock = StockEdit::new(product, variant, patch.stock_level, stock_before);
        if let Some(level) = stock.write {
            sqlx::query("UPDATE stock SET on_hand = ? WHERE variant_id = ?")
                .bind(level)
                .bind(sql_id(variant.get()))
                .execute(&mut *tx)
                .await?;
        }
        after.stock_level = stock.level;
        let touched = self.touch_product(&mut tx, product, now_ms).await?;
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
        let mut tx = self.write_tx().await?;
        if let Some(outcome) = self
            .check_version(&mut tx, product, expected_version)
            .await?
        {
            return Ok(outcome);
        }
        let deleted = sqlx::query("DELETE FROM variants WHERE id = ? AND product_id = ?")
            .bind(sql_id(variant.get()))
            .bind(sql_id(product.get()))
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(WriteOutcome::NotFound);
        }
        let touched = self.touch_product(&mut tx, product, now_ms).await?;
        let event = events::variant_deleted(product, variant, touched);
        self.write_event(&mut tx, event, now_ms).await?;
        self.commit_and_read(tx, product).await
    }
}

impl SqliteShard {
    /// `Some(outcome)` if the write must not proceed: no such product, or another version.
    /// A plain read is enough here: the transaction holds SQLite's write lock
    /// ([`write_tx`](Self::write_tx)), so the version cannot move before the write.
    async fn check_version(
        &self,
        conn: &mut SqliteConnection,
        id: ProductId,
        expected: i64,
    ) -> Result<Option<WriteOutcome>, StoreError> {
        let current: Option<i64> = sqlx::query_scalar("SELECT version FROM products WHERE id = ?")
            .bind(sql_id(id.get()))
            .fetch_optional(&mut *conn)
            .await?;
        Ok(WriteOutcome::precondition(current, expected))
    }

    /// After a variant changed: bump the product's version and recompute its "from" price;
    /// returns both as they now are.
    async fn touch_product(
        &self,
        conn: &mut SqliteConnection,
        id: ProductId,
        now_ms: i64,
    ) -> Result<Touched, StoreError> {
        let row = sqlx::query(
            "UPDATE products SET version = version + 1, updated_at = ?, \
             price_amount = COALESCE((SELECT MIN(price_amount) FROM variants WHERE product_id = ?), price_amount) \
             WHERE id = ? RETURNING version, price_amount, currency",
        )
        .bind(now_ms)
        .bind(sql_id(id.get()))
        .bind(sql_id(id.get()))
        .fetch_one(&mut *conn)
        .await?;
        Ok(Touched {
            version: row.try_get(0)?,
            price: Money {
                amount: row.try_get(1)?,
                currency: self.currency_from(&row.try_get::<String, _>(2)?)?,
            },
        })
    }

    async fn commit_and_read(
        &self,
        tx: WriteTx,
        id: ProductId,
    ) -> Result<WriteOutcome, StoreError> {
        tx.commit().await?;
        Ok(WriteOutcome::Done(self.product_with_variants(id).await?))
    }
}
