//! The baseline: SQLite FTS5 ranked by its `bm25()`, the search a shop gets from the database
//! it already has. It reads the same documents and answers the same requests as the tantivy
//! index, with the same field weights, so the two can be compared on the same data — but,
//! like FTS5 itself, it has no typo tolerance and no stock or popularity boosts. Every word
//! must match; the last one may be a prefix. Facets are `GROUP BY`s over the matches.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bazaar_domain::ProductId;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, SqlitePool};

use crate::{
    CommitStats, FACET_VALUES, FacetCount, Facets, Hit, MAX_QUERY_WORDS, MAX_SUGGESTIONS,
    MAX_WORD_CHARS, PRICE_BUCKETS, PriceBucket, ProductDoc, Ranking, SearchError, SearchIndex,
    SearchPage, SearchRequest, SearchSort, Suggestion, SuggestionKind, words,
};

const SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(
    name, brand, category, variants, description, tokenize = 'unicode61'
);
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, name_key TEXT NOT NULL, brand TEXT NOT NULL,
    category TEXT NOT NULL, price_min INTEGER NOT NULL, price_max INTEGER NOT NULL,
    currency TEXT NOT NULL, in_stock INTEGER NOT NULL, views INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS meta_name_key ON meta (name_key);
CREATE TABLE IF NOT EXISTS colors (id INTEGER NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS colors_id ON colors (id);
CREATE TABLE IF NOT EXISTS sizes (id INTEGER NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sizes_id ON sizes (id);
";

/// An FTS5 index in one SQLite file.
#[derive(Debug, Clone)]
pub struct Fts5Index {
    pool: SqlitePool,
    path: std::path::PathBuf,
    ranking: Ranking,
    pending: Arc<Mutex<Vec<Pending>>>,
}

#[derive(Debug)]
enum Pending {
    Upsert(Box<ProductDoc>),
    Delete(ProductId),
}

/// A value bound to a `?`.
enum Bind {
    Text(String),
    Int(i64),
}

impl Fts5Index {
    /// Opens (creating) the index file at `path`.
    pub async fn open(path: &std::path::Path, ranking: Ranking) -> Result<Self, SearchError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self {
            pool,
            path: path.to_owned(),
            ranking,
            pending: Arc::default(),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `MATCH` expression: every word quoted (so none is read as an operator), the last
    /// one as a prefix.
    fn match_expression(text: &str) -> Option<String> {
        let typed: Vec<String> = words(text)
            .into_iter()
            .take(MAX_QUERY_WORDS)
            .map(|w| w.chars().take(MAX_WORD_CHARS).collect())
            .collect();
        let last = typed.len().checked_sub(1)?;
        Some(
            typed
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == last && w.chars().count() >= 2 {
                        format!("\"{w}\"*")
                    } else {
                        format!("\"{w}\"")
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        )
    }

    /// `FROM … WHERE …` selecting the matching products as `m` (and `h.rank` with text).
    fn matching(&self, request: &SearchRequest) -> (String, Vec<Bind>) {
        let r = &self.ranking;
        let mut binds = Vec::new();
        let mut sql = match Self::match_expression(&request.text) {
            Some(expression) => {
                binds.push(Bind::Text(expression));
                format!(
                    "FROM (SELECT rowid AS id, bm25(docs, {}, {}, {}, {}, {}) AS rank \
                     FROM docs WHERE docs MATCH ?) h JOIN meta m ON m.id = h.id WHERE 1",
                    r.name_boost,
                    r.brand_boost,
                    r.category_boost,
                    r.variant_boost,
                    r.description_boost
                )
            }
            None => "FROM meta m WHERE 1".to_owned(),
        };
        let filter = &request.filter;
        if let Some(v) = &filter.category {
            sql.push_str(" AND m.category = ?");
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = &filter.brand {
            sql.push_str(" AND m.brand = ?");
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = &filter.color {
            sql.push_str(" AND EXISTS (SELECT 1 FROM colors c WHERE c.id = m.id AND c.value = ?)");
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = &filter.size {
            sql.push_str(" AND EXISTS (SELECT 1 FROM sizes s WHERE s.id = m.id AND s.value = ?)");
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = filter.min_price {
            sql.push_str(" AND m.price_min >= ?");
            binds.push(Bind::Int(v));
        }
        if let Some(v) = filter.max_price {
            sql.push_str(" AND m.price_min <= ?");
            binds.push(Bind::Int(v));
        }
        if let Some(v) = filter.in_stock {
            sql.push_str(" AND m.in_stock = ?");
            binds.push(Bind::Int(i64::from(v)));
        }
        (sql, binds)
    }

    async fn fetch(
        &self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>, SearchError> {
        // Every caller builds `sql` from this module's own fragments; values are bound.
        let mut query = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for bind in binds {
            query = match bind {
                Bind::Text(v) => query.bind(v.clone()),
                Bind::Int(v) => query.bind(*v),
            };
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    async fn facet(
        &self,
        from: &str,
        binds: &[Bind],
        table: &str,
    ) -> Result<Vec<FacetCount>, SearchError> {
        let sql = match table {
            "category" | "brand" => format!(
                "SELECT m.{table} AS value, count(*) AS n {from} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {FACET_VALUES}"
            ),
            _ => format!(
                "SELECT x.value AS value, count(*) AS n {} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {FACET_VALUES}",
                from.replacen(
                    " WHERE 1",
                    &format!(" JOIN {table} x ON x.id = m.id WHERE 1"),
                    1
                )
            ),
        };
        Ok(self
            .fetch(&sql, binds)
            .await?
            .iter()
            .map(|row| FacetCount {
                value: row.get("value"),
                count: u64::try_from(row.get::<i64, _>("n")).unwrap_or(0),
            })
            .collect())
    }
}

#[async_trait]
impl SearchIndex for Fts5Index {
    fn engine(&self) -> &'static str {
        "fts5"
    }

    async fn upsert(&self, docs: Vec<ProductDoc>) -> Result<(), SearchError> {
        self.pending()
            .extend(docs.into_iter().map(|doc| Pending::Upsert(Box::new(doc))));
        Ok(())
    }

    async fn delete(&self, ids: Vec<ProductId>) -> Result<(), SearchError> {
        self.pending().extend(ids.into_iter().map(Pending::Delete));
        Ok(())
    }

    async fn commit(&self) -> Result<CommitStats, SearchError> {
        let pending = std::mem::take(&mut *self.pending());
        let mut stats = CommitStats::default();
        let mut tx = self.pool.begin().await?;
        for change in pending {
            let id = match &change {
                Pending::Upsert(doc) => doc.id,
                Pending::Delete(id) => *id,
            };
            let rowid = i64::try_from(id.get()).unwrap_or(i64::MAX);
            for table in ["docs", "meta"] {
                let key = if table == "docs" { "rowid" } else { "id" };
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE {key} = ?"
                )))
                .bind(rowid)
                .execute(&mut *tx)
                .await?;
            }
            for table in ["colors", "sizes"] {
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE id = ?")))
                    .bind(rowid)
                    .execute(&mut *tx)
                    .await?;
            }
            let Pending::Upsert(doc) = change else {
                stats.deleted += 1;
                continue;
            };
            stats.upserted += 1;
            let variants: Vec<&str> = doc
                .colors
                .iter()
                .chain(&doc.sizes)
                .map(String::as_str)
                .collect();
            sqlx::query(
                "INSERT INTO docs (rowid, name, brand, category, variants, description) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(rowid)
            .bind(&doc.name)
            .bind(&doc.brand)
            .bind(&doc.category)
            .bind(variants.join(" "))
            .bind(&doc.description)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO meta (id, name, name_key, brand, category, price_min, price_max, \
                 currency, in_stock, views, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(rowid)
            .bind(&doc.name)
            .bind(doc.name.to_lowercase())
            .bind(&doc.brand)
            .bind(&doc.category)
            .bind(doc.price_min)
            .bind(doc.price_max)
            .bind(&doc.currency)
            .bind(i64::from(doc.in_stock))
            .bind(i64::try_from(doc.views).unwrap_or(i64::MAX))
            .bind(doc.created_at_ms)
            .execute(&mut *tx)
            .await?;
            for (table, values) in [("colors", &doc.colors), ("sizes", &doc.sizes)] {
                for value in values {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (id, value) VALUES (?, ?)"
                    )))
                    .bind(rowid)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        stats.documents = self.documents().await?;
        Ok(stats)
    }

    async fn search(&self, request: SearchRequest) -> Result<SearchPage, SearchError> {
        let (from, binds) = self.matching(&request);
        let ranked =
            !request.text.trim().is_empty() && Self::match_expression(&request.text).is_some();
        let order = match request.sort {
            // bm25() is lower for better matches.
            SearchSort::Relevance if ranked => "h.rank, m.id",
            SearchSort::Relevance | SearchSort::Newest => "m.created DESC, m.id DESC",
            SearchSort::PriceAsc => "m.price_min, m.id",
            SearchSort::PriceDesc => "m.price_min DESC, m.id DESC",
        };
        let rank = if ranked { "-h.rank" } else { "NULL" };
        let sql = format!(
            "SELECT m.id, m.name, m.brand, m.category, m.price_min, m.price_max, m.currency, \
             m.in_stock, {rank} AS score {from} ORDER BY {order} LIMIT {} OFFSET {}",
            request.limit.max(1),
            request.offset
        );
        let hits = self
            .fetch(&sql, &binds)
            .await?
            .iter()
            .filter_map(|row| {
                Some(Hit {
                    id: ProductId::new(u64::try_from(row.get::<i64, _>("id")).ok()?),
                    name: row.get("name"),
                    brand: row.get("brand"),
                    category: row.get("category"),
                    price_min: row.get("price_min"),
                    price_max: row.get("price_max"),
                    currency: row.get("currency"),
                    in_stock: row.get::<i64, _>("in_stock") != 0,
                    score: row.get::<Option<f64>, _>("score").map(|s| s as f32),
                })
            })
            .collect();
        let total = self
            .fetch(&format!("SELECT count(*) AS n {from}"), &binds)
            .await?;
        let total = total.first().map_or(0, |row| row.get::<i64, _>("n"));
        let mut cases = Vec::new();
        let mut lower: Option<i64> = None;
        for upper in PRICE_BUCKETS.iter().copied().map(Some).chain([None]) {
            let condition = match (lower, upper) {
                (None, Some(to)) => format!("m.price_min < {to}"),
                (Some(from), Some(to)) => format!("m.price_min >= {from} AND m.price_min < {to}"),
                (Some(from), None) => format!("m.price_min >= {from}"),
                (None, None) => "1".to_owned(),
            };
            cases.push((
                lower,
                upper,
                format!("sum(CASE WHEN {condition} THEN 1 ELSE 0 END)"),
            ));
            lower = upper;
        }
        let sums: Vec<&str> = cases.iter().map(|(_, _, sql)| sql.as_str()).collect();
        let buckets = self
            .fetch(&format!("SELECT {} {from}", sums.join(", ")), &binds)
            .await?;
        let price_ranges = cases
            .iter()
            .enumerate()
            .map(|(i, (from, to, _))| PriceBucket {
                from: *from,
                to: *to,
                count: buckets
                    .first()
                    .and_then(|row| row.get::<Option<i64>, _>(i))
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            })
            .collect();
        let facets = Facets {
            category: self.facet(&from, &binds, "category").await?,
            brand: self.facet(&from, &binds, "brand").await?,
            color: self.facet(&from, &binds, "colors").await?,
            size: self.facet(&from, &binds, "sizes").await?,
            price_ranges,
        };
        Ok(SearchPage {
            hits,
            total: u64::try_from(total).unwrap_or(0),
            facets,
        })
    }

    async fn suggest(&self, prefix: String, limit: usize) -> Result<Vec<Suggestion>, SearchError> {
        let key = prefix
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        if key.is_empty() {
            return Ok(Vec::new());
        }
        let limit = limit.clamp(1, MAX_SUGGESTIONS);
        let upper = format!("{key}\u{10ffff}");
        let mut out: Vec<Suggestion> = Vec::new();
        for (sql, kind) in [
            (
                "SELECT name AS text, count(*) AS n FROM meta WHERE name_key >= ? AND name_key < ? \
                 GROUP BY name ORDER BY 2 DESC, 1 LIMIT ?",
                SuggestionKind::Product,
            ),
            (
                "SELECT brand AS text, count(*) AS n FROM meta WHERE lower(brand) >= ? AND lower(brand) < ? \
                 GROUP BY brand ORDER BY 2 DESC, 1 LIMIT ?",
                SuggestionKind::Brand,
            ),
        ] {
            let rows = sqlx::query(sql)
                .bind(&key)
                .bind(&upper)
                .bind(i64::try_from(limit).unwrap_or(10))
                .fetch_all(&self.pool)
                .await?;
            out.extend(rows.iter().map(|row| Suggestion {
                text: row.get("text"),
                kind,
                count: u64::try_from(row.get::<i64, _>("n")).unwrap_or(0),
            }));
        }
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.text.cmp(&b.text)));
        out.truncate(limit);
        Ok(out)
    }

    async fn documents(&self) -> Result<u64, SearchError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM meta")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn fresh(&self) -> Result<Arc<dyn SearchIndex>, SearchError> {
        let path = self
            .path
            .with_extension(format!("next-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Ok(Arc::new(Self::open(&path, self.ranking).await?))
    }

    async fn promote(&self) -> Result<(), SearchError> {
        // The baseline serves from the file it was opened at; a rebuilt one is used in place
        // for the life of the process (the lab builds it once per run).
        Ok(())
    }

    fn size_on_disk(&self) -> Option<u64> {
        let size = |suffix: &str| {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            std::fs::metadata(path).map_or(0, |m| m.len())
        };
        Some(size("") + size("-wal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SearchFilter;

    #[tokio::test]
    async fn the_baseline_answers_the_same_requests_without_typo_tolerance() {
        let dir = tempfile::tempdir().unwrap();
        let index = Fts5Index::open(&dir.path().join("fts.sqlite"), Ranking::default())
            .await
            .unwrap();
        let doc = |id: u64, name: &str, brand: &str, color: &str| ProductDoc {
            id: ProductId::new(id),
            name: name.into(),
            description: String::new(),
            brand: brand.into(),
            category: "home".into(),
            colors: vec![color.into()],
            sizes: vec!["M".into()],
            price_min: 1_000 * i64::try_from(id).unwrap(),
            price_max: 1_000 * i64::try_from(id).unwrap(),
            currency: "USD".into(),
            in_stock: true,
            views: 0,
            created_at_ms: 0,
        };
        index
            .upsert(vec![
                doc(1, "Atlas Curtains", "Atlas", "navy"),
                doc(2, "Acme Curtains", "Acme", "red"),
                doc(3, "Acme Kettle", "Acme", "red"),
            ])
            .await
            .unwrap();
        index.commit().await.unwrap();
        let ask = |text: &str| SearchRequest {
            text: text.into(),
            limit: 10,
            ..SearchRequest::default()
        };
        assert_eq!(index.search(ask("curtains")).await.unwrap().total, 2);
        assert_eq!(
            index.search(ask("curtians")).await.unwrap().total,
            0,
            "no typo tolerance"
        );
        assert_eq!(
            index.search(ask("acme ket")).await.unwrap().hits[0]
                .id
                .get(),
            3
        );
        let mut filtered = ask("");
        filtered.filter = SearchFilter {
            color: Some("red".into()),
            ..SearchFilter::default()
        };
        let page = index.search(filtered).await.unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(
            page.facets.brand,
            [FacetCount {
                value: "Acme".into(),
                count: 2
            }]
        );
        // 20.00 is under 25, 30.00 in 25–50.
        assert_eq!(
            page.facets
                .price_ranges
                .iter()
                .map(|b| b.count)
                .collect::<Vec<_>>(),
            [1, 1, 0, 0, 0]
        );
        index.delete(vec![ProductId::new(3)]).await.unwrap();
        index.commit().await.unwrap();
        assert_eq!(index.documents().await.unwrap(), 2);
        let suggestions = index.suggest("ac".into(), 10).await.unwrap();
        assert_eq!(suggestions[0].text, "Acme");
    }
}
