//! Scratch PostgreSQL databases for tests (the `testing` feature; the crate's own tests always
//! have it).
//!
//! Tests that run against PostgreSQL read the server to use from
//! [`BAZAAR_TEST_POSTGRES_URL`](POSTGRES_URL_VAR), e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
//! Each test creates fresh databases of its own with [`PostgresScratch`], so tests never see
//! one another's rows and can run in parallel, and the databases are dropped when the scratch
//! value is. Without the variable, [`postgres_server`] prints a notice and the test skips:
//!
//! ```no_run
//! # async fn demo() {
//! use bazaar_store::testing::PostgresScratch;
//!
//! let Some(scratch) = PostgresScratch::from_env(2).await else {
//!     return; // skipped: BAZAAR_TEST_POSTGRES_URL is not set
//! };
//! let metrics = bazaar_telemetry::Metrics::new();
//! let store = bazaar_store::Store::open_postgres(&scratch.config(), 64, &metrics)
//!     .await
//!     .unwrap();
//! // … use the store …
//! store.close().await;
//! scratch.drop_databases().await.unwrap(); // or just let `scratch` go out of scope
//! # }
//! ```

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::error::StoreError;
use crate::postgres::PostgresConfig;

/// The environment variable naming the PostgreSQL server tests may create databases on: a
/// URL whose user may `CREATE DATABASE`, pointing at any existing database (the one connected
/// to while creating and dropping the scratch ones).
pub const POSTGRES_URL_VAR: &str = "BAZAAR_TEST_POSTGRES_URL";

/// The prefix of every scratch database's name, so leftovers of a killed run are easy to find
/// (`SELECT datname FROM pg_database WHERE datname LIKE 'bazaar_t_%'`).
pub const SCRATCH_PREFIX: &str = "bazaar_t_";

/// The server URL from [`POSTGRES_URL_VAR`], or `None` after printing one line to stderr
/// saying the test is skipped.
pub fn postgres_server() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            eprintln!("skipped: {POSTGRES_URL_VAR} is not set");
            None
        }
    }
}

/// Fresh databases on one PostgreSQL server, dropped (`WITH (FORCE)`, so open connections do
/// not keep them alive) by [`drop_databases`](Self::drop_databases) or, failing that, when
/// the value is dropped.
#[derive(Debug)]
pub struct PostgresScratch {
    /// The URL connected to for `CREATE` and `DROP DATABASE`.
    server: String,
    /// The databases created and not dropped yet, in shard order.
    names: Vec<String>,
    urls: Vec<String>,
}

impl PostgresScratch {
    /// `count` fresh databases on the server named by [`POSTGRES_URL_VAR`], or `None` (with
    /// the notice of [`postgres_server`]) when it is not set.
    ///
    /// # Panics
    /// If the variable is set but the databases cannot be created: a test asked to run on
    /// PostgreSQL must fail, not skip, when the server is unusable.
    pub async fn from_env(count: usize) -> Option<Self> {
        let server = postgres_server()?;
        match Self::create(&server, count).await {
            Ok(scratch) => Some(scratch),
            Err(e) => panic!("cannot create scratch databases on {POSTGRES_URL_VAR}: {e:?}"),
        }
    }

    /// Creates `count` empty databases named `bazaar_t_<random>_<i>` on the server at
    /// `server`, all at once (each over its own connection: a copy of the template takes a
    /// good part of a second). If one fails, those that were created are dropped again.
    pub async fn create(server: &str, count: usize) -> Result<Self, StoreError> {
        let run = format!("{SCRATCH_PREFIX}{:012x}", rand::random::<u64>() >> 16);
        let names: Vec<String> = (0..count).map(|index| format!("{run}_{index}")).collect();
        let created = futures::future::join_all(names.iter().map(|name| async move {
            let mut conn = PgConnection::connect(server).await?;
            create_database(&mut conn, name).await?;
            conn.close().await?;
            Ok::<_, StoreError>(())
        }))
        .await;
        let mut scratch = Self {
            server: server.to_owned(),
            names: Vec::with_capacity(count),
            urls: Vec::with_capacity(count),
        };
        let mut failure = None;
        for (name, done) in names.into_iter().zip(created) {
            match done {
                // Recorded only if it exists, so the cleanup drops exactly what was created.
                Ok(()) => {
                    scratch.urls.push(database_url(server, &name));
                    scratch.names.push(name);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) => Err(e), // dropping `scratch` drops what was created
            None => Ok(scratch),
        }
    }

    /// One URL per database, in the order they were created (`urls()[i]` is for `shard-i`).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The databases' names, in the order of [`urls`](Self::urls).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A configuration with every database as a shard, in order, and settings fit for tests:
    /// a few connections per shard (many tests run at once against one server), timeouts long
    /// enough for a loaded machine.
    pub fn config(&self) -> PostgresConfig {
        PostgresConfig {
            shards: self.urls.clone(),
            max_connections: 6,
            connect_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(30),
            write_events: true,
        }
    }

    /// Drops the databases now, terminating any connection still open to them.
    pub async fn drop_databases(mut self) -> Result<(), StoreError> {
        let names = std::mem::take(&mut self.names);
        drop_all(&self.server, &names).await
    }
}

impl Drop for PostgresScratch {
    /// Drops what [`drop_databases`](Self::drop_databases) did not. `Drop` cannot await, and
    /// blocking on the caller's runtime would deadlock a current-thread one, so the work runs
    /// on a thread of its own with its own runtime, and this waits for it.
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let (server, names) = (self.server.clone(), std::mem::take(&mut self.names));
        let dropping = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(drop_all(&server, &names))
                .map_err(|e| format!("{e:?}"))
                .map_err(|e| format!("{names:?}: {e}"))
        });
        match dropping.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: scratch databases were not dropped: {e}"),
            Err(_) => eprintln!("warning: dropping scratch databases panicked"),
        }
    }
}

/// `CREATE DATABASE`, retried while the template database is busy (PostgreSQL refuses to copy
/// `template1` while another session is connected to it, which parallel tests can be briefly).
async fn create_database(conn: &mut PgConnection, name: &str) -> Result<(), StoreError> {
    let sql = format!("CREATE DATABASE \"{name}\"");
    let mut attempt = 0;
    loop {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut *conn)
            .await
        {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006") && attempt < 50 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => return done.map(drop).map_err(StoreError::from),
        }
    }
}

/// Drops every database in `names`, all at once.
async fn drop_all(server: &str, names: &[String]) -> Result<(), StoreError> {
    let dropped = futures::future::join_all(names.iter().map(|name| async move {
        let mut conn = PgConnection::connect(server).await?;
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok::<_, StoreError>(())
    }))
    .await;
    dropped.into_iter().collect()
}

/// `server` with its database replaced by `database`, keeping user, host, port and query
/// parameters (`postgres://u@h:5432/postgres?sslmode=require` →
/// `postgres://u@h:5432/{database}?sslmode=require`).
pub fn database_url(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut url = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Every table of the database at `url`, each as one text blob of its rows in PostgreSQL's
/// text form (BYTEA as hex): what a dump of the database would show, for tests asserting that
/// personal data is not stored in clear.
pub async fn dump_tables(url: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut conn = PgConnection::connect(url).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut dumps = Vec::with_capacity(tables.len());
    for table in tables {
        // The names come from the catalog just read, quoted as identifiers.
        let sql = format!(
            "SELECT COALESCE(string_agg(t::text, E'\\n'), '') FROM \"{}\" t",
            table.replace('"', "\"\"")
        );
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await?;
        dumps.push(text.into_bytes());
    }
    conn.close().await?;
    Ok(dumps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_keeps_everything_but_the_database() {
        for (server, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://u:p@db.example:6543/main?sslmode=require&application_name=t",
                "postgres://u:p@db.example:6543/x?sslmode=require&application_name=t",
            ),
            ("postgres://localhost", "postgres://localhost/x"),
            (
                "postgresql://h/?sslmode=disable",
                "postgresql://h/x?sslmode=disable",
            ),
        ] {
            assert_eq!(database_url(server, "x"), expected, "{server}");
        }
    }

    /// The scratch databases exist while the value lives, and are gone after either way of
    /// dropping them, even with a connection still open to one of them.
    #[tokio::test]
    async fn scratch_databases_are_created_and_dropped() {
        let Some(server) = postgres_server() else {
            return;
        };
        let exists = |name: String| {
            let server = server.clone();
            async move {
                let mut conn = PgConnection::connect(&server).await.unwrap();
                let found: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
                        .bind(name)
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                found == 1
            }
        };

        let scratch = PostgresScratch::create(&server, 2).await.unwrap();
        let names = scratch.names().to_vec();
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1]);
        assert!(names[0].starts_with(SCRATCH_PREFIX), "{names:?}");
        for name in &names {
            assert!(exists(name.clone()).await, "{name} was not created");
        }
        let mut open = PgConnection::connect(&scratch.urls()[0]).await.unwrap();
        let connected: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut open)
            .await
            .unwrap();
        assert_eq!(connected, names[0]);
        drop(scratch);
        for name in &names {
            assert!(!exists(name.clone()).await, "{name} outlived its scratch");
        }
        drop(open);

        let scratch = PostgresScratch::create(&server, 1).await.unwrap();
        let name = scratch.names()[0].clone();
        assert!(exists(name.clone()).await);
        scratch.drop_databases().await.unwrap();
        assert!(!exists(name).await);
    }
}
