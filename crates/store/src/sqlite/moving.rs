//! [`MoveShard`] for SQLite: rows copied cell by cell, each value in its stored type. The
//! statements are built from the fixed table list of [`crate::moving`], never from input.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Column, QueryBuilder, Row, Sqlite, TypeInfo, ValueRef};

use super::{SqliteShard, id_array};
use crate::error::StoreError;
use crate::moving::{Cell, Entity, EntityRows, TableOf, TableRows};
use crate::shard::MoveShard;

/// The set expression `{ids}` stands for: a JSON array bound as one parameter.
const ID_SET: &str = "(SELECT value FROM json_each(?))";

fn rows_of(table: &TableOf) -> String {
    table.rows_of.replace("{ids}", ID_SET)
}

fn ids_param(ids: &[i64]) -> String {
    id_array(
        ids.iter()
            .map(|&id| u64::try_from(id).expect("ids are 63-bit")),
    )
}

fn cell(row: &SqliteRow, index: usize) -> Result<Cell, StoreError> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Cell::Int(None));
    }
    let kind = raw.type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INTEGER" => Cell::Int(Some(row.try_get(index)?)),
        "REAL" => Cell::Real(Some(row.try_get(index)?)),
        "BLOB" => Cell::Bytes(Some(row.try_get(index)?)),
        _ => Cell::Text(Some(row.try_get(index)?)),
    })
}

/// Inserts `table`'s rows, as many per statement as the bind limit allows.
async fn insert_rows(tx: &mut sqlx::SqliteConnection, table: &TableRows) -> Result<(), StoreError> {
    if table.rows.is_empty() {
        return Ok(());
    }
    let per_statement = (30000 / table.columns.len().max(1)).max(1);
    for chunk in table.rows.chunks(per_statement) {
        let mut insert = QueryBuilder::<Sqlite>::new(format!(
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

async fn delete_in(
    tx: &mut sqlx::SqliteConnection,
    kind: Entity,
    ids: &str,
) -> Result<u64, StoreError> {
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
impl MoveShard for SqliteShard {
    async fn entity_ids(
        &self,
        kind: Entity,
        after: i64,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let sql = format!(
            "SELECT id FROM {} WHERE id > ? ORDER BY id LIMIT ?",
            kind.root_table()
        );
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn export_entities(&self, kind: Entity, ids: &[i64]) -> Result<EntityRows, StoreError> {
        let ids = ids_param(ids);
        // One read transaction: every table read from the same snapshot.
        let mut tx = self.pool.begin().await?;
        let mut tables = Vec::new();
        for table in kind.tables() {
            let sql = format!("SELECT * FROM {} WHERE {}", table.table, rows_of(table));
            let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(&ids)
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
        let ids = ids_param(ids);
        let mut tx = self.write_tx().await?;
        delete_in(&mut tx, kind, &ids).await?;
        for table in &rows.tables {
            insert_rows(&mut tx, table).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_entities(&self, kind: Entity, ids: &[i64]) -> Result<u64, StoreError> {
        let ids = ids_param(ids);
        let mut tx = self.write_tx().await?;
        let deleted = delete_in(&mut tx, kind, &ids).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
