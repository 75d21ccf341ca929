//! [`MoveShard`] for PostgreSQL: rows copied cell by cell, each in its column's type. The
//! statements are built from the fixed table list of [`crate::moving`], never from input.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Column, PgConnection, Postgres, QueryBuilder, Row, TypeInfo};

use super::PostgresShard;
use crate::error::StoreError;
use crate::moving::{Cell, Entity, EntityRows, TableOf, TableRows};
use crate::shard::MoveShard;

/// The set expression `{ids}` stands for: a BIGINT array bound as one parameter.
const ID_SET: &str = "(SELECT unnest($1::BIGINT[]))";

fn rows_of(table: &TableOf) -> String {
    table.rows_of.replace("{ids}", ID_SET)
}

fn cell(row: &PgRow, index: usize) -> Result<Cell, StoreError> {
    let kind = row.columns()[index].type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INT8" => Cell::Int(row.try_get(index)?),
        "INT4" => Cell::Int(row.try_get::<Option<i32>, _>(index)?.map(i64::from)),
        "INT2" => Cell::Int(row.try_get::<Option<i16>, _>(index)?.map(i64::from)),
        "FLOAT8" => Cell::Real(row.try_get(index)?),
        "BYTEA" => Cell::Bytes(row.try_get(index)?),
        "BOOL" => Cell::Bool(row.try_get(index)?),
        "TEXT" | "VARCHAR" => Cell::Text(row.try_get(index)?),
        other => {
            return Err(StoreError::Layout(format!(
                "column {} has type {other}, which a shard move does not copy",
                row.columns()[index].name()
            )));
        }
    })
}

/// Inserts `table`'s rows, as many per statement as the bind limit allows.
async fn insert_rows(tx: &mut PgConnection, table: &TableRows) -> Result<(), StoreError> {
    if table.rows.is_empty() {
        return Ok(());
    }
    let per_statement = (60000 / table.columns.len().max(1)).max(1);
    for chunk in table.rows.chunks(per_statement) {
        let mut insert = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO {} ({}) ",
            table.table,
            table.columns.join(", ")
        ));
        insert.push_values(chunk, |mut row, cells| {
            for cell in cells {
                match cell {
                    Cell::Int(v) => row.push_bind(*v),
                    Cell::Real(v) => row.push_bind(*v),
                    Cell::Text(v) => row.push_bind(v.clone()),
                    Cell::Bytes(v) => row.push_bind(v.clone()),
                    Cell::Bool(v) => row.push_bind(*v),
                };
            }
        });
        insert.build().execute(&mut *tx).await?;
    }
    Ok(())
}

async fn delete_in(tx: &mut PgConnection, kind: Entity, ids: &[i64]) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for table in kind.tables().iter().rev() {
        let sql = format!("DELETE FROM {} WHERE {}", table.table, rows_of(table));
        deleted += sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    Ok(deleted)
}

#[async_trait]
impl MoveShard for PostgresShard {
    async fn entity_ids(
        &self,
        kind: Entity,
        after: i64,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let sql = format!(
            "SELECT id FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
            kind.root_table()
        );
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn export_entities(&self, kind: Entity, ids: &[i64]) -> Result<EntityRows, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let mut tables = Vec::new();
        for table in kind.tables() {
            let sql = format!("SELECT * FROM {} WHERE {}", table.table, rows_of(table));
            let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
            let columns = rows.first().map_or_else(Vec::new, |row| {
                row.columns().iter().map(|c| c.name().to_owned()).collect()
            });
            let rows = rows
                .iter()
                .map(|row| (0..columns.len()).map(|i| cell(row, i)).collect())
                .collect::<Result<Vec<Vec<Cell>>, StoreError>>()?;
            tables.push(TableRows {
                table: table.table.to_owned(),
                columns,
                rows,
            });
        }
        tx.commit().await?;
        Ok(EntityRows { tables })
    }

    async fn import_entities(
        &self,
        kind: Entity,
        ids: &[i64],
        rows: &EntityRows,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        delete_in(&mut tx, kind, ids).await?;
        for table in &rows.tables {
            insert_rows(&mut tx, table).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_entities(&self, kind: Entity, ids: &[i64]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = delete_in(&mut tx, kind, ids).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
