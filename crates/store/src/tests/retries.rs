//! The per-shard wrapper's retries (`instrumented.rs`): a call that fails in a way that
//! rolled it back is run again, at most four attempts in all; a write whose connection broke,
//! a permanent error or a conflict is returned at once.
//!
//! The wrapper is the same for every backend, so these tests drive it through [`Flaky`], a
//! real SQLite shard behind a switch that makes chosen calls fail first; one more test makes
//! SQLite itself report a lock that did not come free.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sqlx::Connection;

use super::*;
use crate::sqlite::SqliteShard;

/// How a planned failure fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Backend(BackendKind),
    Conflict,
}

/// A real shard behind a [`Switch`].
#[derive(Debug)]
struct Flaky {
    inner: SqliteShard,
    switch: Arc<Switch>,
}

/// Fails the next `failures` calls of the method named `op` before letting calls through,
/// and counts every call a [`Flaky`] shard receives, by method. The test keeps a handle to
/// it while the store owns the shard.
#[derive(Debug, Default)]
struct Switch {
    plan: Mutex<Option<(&'static str, u32, Failure)>>,
    calls: Mutex<HashMap<&'static str, u32>>,
}

impl Switch {
    /// Calls of `op` received so far, failed or not.
    fn calls(&self, op: &str) -> u32 {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// Makes the next `failures` calls of `op` fail as `failure`.
    fn fail(&self, op: &'static str, failures: u32, failure: Failure) {
        *self.plan.lock().unwrap() = Some((op, failures, failure));
    }

    /// Counts a call of `op` and fails it if the plan says so.
    fn enter(&self, op: &'static str) -> Result<(), StoreError> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        let mut plan = self.plan.lock().unwrap();
        let Some((planned, left, failure)) = plan.as_mut() else {
            return Ok(());
        };
        if *planned != op || *left == 0 {
            return Ok(());
        }
        *left -= 1;
        // Empty shard names, as the `From<sqlx::Error>` conversion leaves them: the wrapper
        // stamps its own.
        Err(match *failure {
            Failure::Backend(kind) => StoreError::Backend {
                shard: String::new(),
                kind,
                source: format!("planned {kind} failure of {op}").into(),
            },
            Failure::Conflict => StoreError::Conflict {
                shard: String::new(),
                detail: format!("planned conflict in {op}"),
            },
        })
    }
}

/// Forwards every method of a shard trait to the real shard after [`Switch::enter`].
macro_rules! flaky {
    ($trait:ident { $( $kind:ident fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )* }) => {
        #[async_trait]
        impl $trait for Flaky {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    self.switch.enter(stringify!($name))?;
                    self.inner.$name($($arg),*).await
                }
            )*
        }
    };
}

#[async_trait]
impl Shard for Flaky {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.switch.enter("meta")?;
        self.inner.meta(key).await
    }

    async fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.switch.enter("claim_meta")?;
        self.inner.claim_meta(key, value).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.switch.enter("set_meta")?;
        self.inner.set_meta(key, value).await
    }

    async fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.switch.enter("delete_meta")?;
        self.inner.delete_meta(key).await
    }

    async fn metas(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.switch.enter("metas")?;
        self.inner.metas(prefix).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.switch.enter("ping")?;
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

crate::instrumented::shard_methods!(flaky);

/// A one-shard store over a [`Flaky`] shard, with its switch, the metrics the store reports
/// to and the directory it lives in.
struct Rig {
    store: Store,
    switch: Arc<Switch>,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let switch = Arc::new(Switch::default());
        let flaky = Flaky {
            inner: SqliteShard::open("shard-0", &config(dir.path()))
                .await
                .unwrap(),
            switch: switch.clone(),
        };
        let metrics = Metrics::new();
        let store = Store::from_shards(vec![Box::new(flaky)], 64, &metrics)
            .await
            .unwrap();
        Self {
            store,
            switch,
            metrics,
            _dir: dir,
        }
    }

    /// `bazaar_store_retries_total`: attempts the wrapper repeated.
    fn retries(&self) -> u64 {
        retries_reported(&self.metrics)
    }
}

fn retries_reported(metrics: &Metrics) -> u64 {
    let text = metrics.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("bazaar_store_retries_total "))
        .unwrap_or_else(|| panic!("no retry counter in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Asserts that `error` is a backend failure of `kind`, named after the shard.
fn assert_backend(error: &StoreError, expected: BackendKind) {
    match error {
        StoreError::Backend { shard, kind, .. } => {
            assert_eq!(*kind, expected, "{error:?}");
            assert_eq!(shard, "shard-0", "the wrapper names the shard");
        }
        other => panic!("expected a {expected} backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_the_call_succeeds() {
    let rig = Rig::new().await;
    let products = catalog(3);
    let round_trips = rig.store.round_trips();
    rig.switch.fail(
        "insert_products",
        3,
        Failure::Backend(BackendKind::Transient),
    );
    rig.store
        .insert_products(products.clone(), 5)
        .await
        .unwrap();
    assert_eq!(
        rig.switch.calls("insert_products"),
        4,
        "three failures, then the real call"
    );
    assert_eq!(
        rig.store.round_trips() - round_trips,
        4,
        "every attempt is a round trip"
    );
    assert_eq!(rig.retries(), 3);
    // The one attempt that reached the shard wrote everything once.
    assert_eq!(rig.store.count_products().await.unwrap(), 3);
    assert_eq!(rig.store.directory().outbox(0, 100).await.unwrap().len(), 3);

    // A read is retried the same way.
    rig.switch.fail(
        "product_with_variants",
        2,
        Failure::Backend(BackendKind::Transient),
    );
    let id = products[0].product.id;
    let found = rig.store.product_with_variants(id).await.unwrap();
    assert_eq!(found.as_ref(), Some(&products[0]));
    assert_eq!(rig.switch.calls("product_with_variants"), 3);
    assert_eq!(rig.retries(), 5);
}

#[tokio::test]
async fn a_transient_failure_is_given_up_after_four_attempts() {
    let rig = Rig::new().await;
    let products = catalog(1);
    rig.store
        .insert_products(products.clone(), 5)
        .await
        .unwrap();
    let id = products[0].product.id;
    let patch = ProductPatch {
        name: Some("Never".into()),
        ..ProductPatch::default()
    };

    rig.switch.fail(
        "update_product",
        10,
        Failure::Backend(BackendKind::Transient),
    );
    let err = rig
        .store
        .for_product(id)
        .update_product(id, 1, &patch, 6)
        .await
        .unwrap_err();
    assert_backend(&err, BackendKind::Transient);
    assert!(err.is_retryable(), "the caller may still try again later");
    assert_eq!(rig.switch.calls("update_product"), 4);
    assert_eq!(rig.retries(), 3);
    let stored = rig.store.product_with_variants(id).await.unwrap().unwrap();
    assert_eq!(stored.product.version, 1, "no attempt reached the shard");

    // The next call is a fresh one with four attempts of its own: six failures left, so it
    // fails too, and the one after that gets through on its third attempt.
    let err = rig
        .store
        .for_product(id)
        .update_product(id, 1, &patch, 7)
        .await
        .unwrap_err();
    assert_backend(&err, BackendKind::Transient);
    assert_eq!(rig.switch.calls("update_product"), 8);
    let done = rig
        .store
        .for_product(id)
        .update_product(id, 1, &patch, 8)
        .await
        .unwrap();
    assert!(matches!(done, WriteOutcome::Done(Some(_))), "{done:?}");
    assert_eq!(rig.switch.calls("update_product"), 11);
    assert_eq!(rig.retries(), 3 + 3 + 2);
}

#[tokio::test]
async fn a_lost_connection_is_retried_for_reads_only() {
    let rig = Rig::new().await;
    let products = catalog(2);
    rig.store
        .insert_products(products.clone(), 5)
        .await
        .unwrap();
    let lost = Failure::Backend(BackendKind::ConnectionLost);

    // A read changes nothing, so running it again is always safe.
    rig.switch.fail("count_products", 2, lost);
    assert_eq!(rig.store.count_products().await.unwrap(), 2);
    assert_eq!(rig.switch.calls("count_products"), 3);

    // A write may have committed before the connection broke: only its caller can tell.
    rig.switch.fail("add_views", 1, lost);
    let err = rig
        .store
        .add_views(&[(products[0].product.id, 3)])
        .await
        .unwrap_err();
    assert_backend(&err, BackendKind::ConnectionLost);
    assert!(!err.is_retryable());
    assert_eq!(rig.switch.calls("add_views"), 1);
    assert_eq!(rig.retries(), 2);
}

#[tokio::test]
async fn permanent_errors_and_conflicts_are_returned_at_once() {
    let rig = Rig::new().await;
    rig.switch
        .fail("ping", 1, Failure::Backend(BackendKind::Permanent));
    assert_backend(&rig.store.ping().await.unwrap_err(), BackendKind::Permanent);
    assert_eq!(rig.switch.calls("ping"), 1);

    rig.switch.fail("insert_products", 1, Failure::Conflict);
    let err = rig.store.insert_products(catalog(1), 5).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { shard, .. } if shard == "shard-0"),
        "{err:?}"
    );
    assert_eq!(rig.switch.calls("insert_products"), 1);
    assert_eq!(rig.store.count_products().await.unwrap(), 0);
    assert_eq!(rig.retries(), 0);
}

/// SQLite only: a writer holding the file's write lock makes every attempt wait out the busy
/// timeout and fail with `SQLITE_BUSY`, which the one conversion must call transient. (The
/// PostgreSQL codes are classified in `error.rs`; provoking a deadlock on purpose is left to
/// the concurrency cases.)
#[tokio::test]
async fn a_locked_sqlite_shard_is_retried_and_then_reported_as_transient() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig {
        busy_timeout: Duration::from_millis(20),
        ..config(dir.path())
    };
    let metrics = Metrics::new();
    let store = Store::open_sqlite(&config, 1, 64, &metrics).await.unwrap();
    let products = catalog(1);
    store.insert_products(products.clone(), 5).await.unwrap();
    let id = products[0].product.id;

    let mut writer = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("shard-0.sqlite")),
    )
    .await
    .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    let round_trips = store.round_trips();
    let err = store.add_views(&[(id, 1)]).await.unwrap_err();
    assert_backend(&err, BackendKind::Transient);
    assert_eq!(store.round_trips() - round_trips, 4);
    assert_eq!(retries_reported(&metrics), 3);

    sqlx::raw_sql("COMMIT").execute(&mut writer).await.unwrap();
    let round_trips = store.round_trips();
    store.add_views(&[(id, 1)]).await.unwrap();
    assert_eq!(store.round_trips() - round_trips, 1);
    let stored = store.product_with_variants(id).await.unwrap().unwrap();
    assert_eq!(
        stored.product.view_count, 1,
        "only the call that got the lock counted"
    );
    writer.close().await.unwrap();
}
