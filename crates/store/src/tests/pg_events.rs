//! The outbox, leases and consumer records ([`EventShard`]) against PostgreSQL, and the same
//! cases against SQLite so both backends are held to one set of assertions.
//!
//! The PostgreSQL tests run when `BAZAAR_TEST_POSTGRES_URL` names a server
//! (`postgres://postgres@127.0.0.1:5432/postgres`); each creates its own databases there and
//! drops them afterwards. Without it they print that they were skipped.
//!
//! Outbox rows are written with plain SQL (or the backend's `write_event` inside a transaction
//! this file holds open), so these cases need nothing of the catalog, identity or order halves.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

use futures::FutureExt;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::Barrier;

use super::*;
use crate::events::{NewEvent, new_event_id};
use postgres::{PostgresConfig, PostgresShard};

const URL_VAR: &str = "BAZAAR_TEST_POSTGRES_URL";

/// Connections per PostgreSQL shard: enough for the widest race below to run at once.
const PG_CONNECTIONS: u32 = 20;

/// The topic of rows these tests write themselves.
const TOPIC: &str = "test.written";

// ---------------------------------------------------------------------------------------
// Scratch databases

/// `base` (a server URL naming any database) with its database replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (base, None),
    };
    let authority = head.find("://").map_or(0, |at| at + 3);
    let server = match head[authority..].find('/') {
        Some(slash) => &head[..authority + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// Runs `body` with the URLs of `count` new, empty databases, and drops them afterwards, also
/// when `body` panics. Prints a notice and does nothing when no server is configured.
async fn on_postgres<F, Fut>(test: &str, count: usize, body: F)
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(server) = std::env::var(URL_VAR).ok().filter(|url| !url.is_empty()) else {
        eprintln!("skipped {test}: set {URL_VAR} to run it against PostgreSQL");
        return;
    };
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .unwrap();
    let prefix = format!(
        "h_pgev_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, AtomicOrdering::Relaxed),
        rand::random::<u32>()
    );
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}_{i}")).collect();
    for name in &names {
        // Names are made here of [a-z0-9_] only, so quoting them is enough.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .unwrap();
    }
    let urls = names.iter().map(|n| with_database(&server, n)).collect();
    let outcome = AssertUnwindSafe(body(urls)).catch_unwind().await;
    for name in &names {
        let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
        if let Err(e) = dropped {
            eprintln!("could not drop scratch database {name}: {e}");
        }
    }
    admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn pg_config(urls: Vec<String>) -> PostgresConfig {
    PostgresConfig {
        shards: urls,
        max_connections: PG_CONNECTIONS,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(30),
        write_events: true,
    }
}

// ---------------------------------------------------------------------------------------
// A store under test, on either backend

/// A direct connection to the directory shard's database, beside the store, for writing
/// outbox rows the way a backend's own write would.
enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A store under test and a raw way into its directory shard (`shard-0`).
struct Subject {
    store: Arc<Store>,
    raw: Raw,
    /// Keeps the SQLite files alive.
    _dir: Option<tempfile::TempDir>,
}

impl Subject {
    async fn sqlite(shards: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open_sqlite(&config(dir.path()), shards, 64, &Metrics::new())
                .await
                .unwrap(),
        );
        let raw = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(dir.path().join("shard-0.sqlite"))
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        Self {
            store,
            raw: Raw::Sqlite(raw),
            _dir: Some(dir),
        }
    }

    async fn postgres(urls: Vec<String>) -> Self {
        let raw = PgPoolOptions::new()
            .max_connections(2)
            .connect(&urls[0])
            .await
            .unwrap();
        let store = Store::open_postgres(&pg_config(urls), 64, &Metrics::new())
            .await
            .unwrap();
        Self {
            store: Arc::new(store),
            raw: Raw::Postgres(raw),
            _dir: None,
        }
    }

    fn directory(&self) -> &dyn Shard {
        self.store.directory()
    }

    /// Writes `count` outbox rows created at `created_at` to the directory shard, one
    /// committed transaction each, keyed `0..count`.
    async fn write_rows(&self, count: usize, created_at: i64) {
        for i in 0..count {
            let (event_id, key) = (new_event_id(), i.to_string());
            match &self.raw {
                Raw::Sqlite(pool) => sqlx::query(
                    "INSERT INTO outbox (event_id, topic, key, payload, created_at) \
                     VALUES (?, ?, ?, '{}', ?)",
                )
                .bind(event_id)
                .bind(TOPIC)
                .bind(key)
                .bind(created_at)
                .execute(pool)
                .await
                .map(drop),
                Raw::Postgres(pool) => sqlx::query(
                    "INSERT INTO outbox (event_id, topic, key, payload, created_at) \
                     VALUES ($1, $2, $3, '{}', $4)",
                )
                .bind(event_id)
                .bind(TOPIC)
                .bind(key)
                .bind(created_at)
                .execute(pool)
                .await
                .map(drop),
            }
            .unwrap();
        }
    }

    async fn close(self) {
        for shard in self.store.shards() {
            shard.close().await;
        }
        match self.raw {
            Raw::Sqlite(pool) => pool.close().await,
            Raw::Postgres(pool) => pool.close().await,
        }
    }
}

/// Every event on `shard`, oldest first.
async fn events(shard: &dyn Shard) -> Vec<OutboxEvent> {
    shard.outbox(0, 100_000).await.unwrap()
}

fn ids(events: &[OutboxEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

/// One `#[tokio::test]` per backend for a case `async fn(Subject)` on a store of `$shards`
/// shards.
macro_rules! on_both {
    ($case:ident, $shards:expr, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            let subject = Subject::sqlite($shards).await;
            $case(&subject).await;
            subject.close().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $postgres() {
            on_postgres(stringify!($postgres), $shards, |urls| async move {
                let subject = Subject::postgres(urls).await;
                $case(&subject).await;
                subject.close().await;
            })
            .await;
        }
    };
}

// ---------------------------------------------------------------------------------------
// Cases run on both backends (ported from `tests::events` where one exists)

on_both!(
    unpublished_rows_come_back_after_later_rows_were_published,
    1,
    unpublished_rows_come_back_after_later_rows_were_published_on_sqlite,
    unpublished_rows_come_back_after_later_rows_were_published_on_postgres
);

async fn unpublished_rows_come_back_after_later_rows_were_published(subject: &Subject) {
    let shard = subject.directory();
    assert_eq!(
        shard.outbox_backlog().await.unwrap(),
        OutboxBacklog::default()
    );
    subject.write_rows(5, 100).await;
    let rows = ids(&events(shard).await);
    assert_eq!(rows.len(), 5);
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
    assert_eq!(
        shard.outbox_backlog().await.unwrap(),
        OutboxBacklog {
            unpublished: 5,
            oldest_created_at_ms: Some(100)
        }
    );

    // Rows 2..5 were published first: the way a lower id that committed late looks.
    assert_eq!(shard.mark_published(&rows[2..], 1_000).await.unwrap(), 3);
    let unpublished = shard.unpublished_events(100).await.unwrap();
    assert_eq!(ids(&unpublished), rows[..2]);
    assert_eq!(
        shard.unpublished_events(1).await.unwrap()[0].id,
        rows[0],
        "oldest first"
    );
    assert_eq!(shard.outbox_backlog().await.unwrap().unpublished, 2);
    assert_eq!(ids(&shard.outbox(rows[1], 2).await.unwrap()), rows[2..4]);

    // A published id is not marked again; an unknown one is skipped.
    assert_eq!(
        shard
            .mark_published(&[rows[1], rows[4], 9_999], 2_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(shard.mark_published(&[], 2_000).await.unwrap(), 0);
    subject.write_rows(1, 3_000).await;
    let unpublished = shard.unpublished_events(100).await.unwrap();
    assert_eq!(unpublished.len(), 2);
    assert_eq!(unpublished[0].id, rows[0]);
    assert!(unpublished[1].id > rows[4]);
    assert_eq!(unpublished[1].created_at_ms, 3_000);

    // Events by event id come back in id order whatever order they are asked in.
    let all = events(shard).await;
    let asked = vec![
        all[3].event_id.clone(),
        "no-such-event".to_owned(),
        all[0].event_id.clone(),
        all[5].event_id.clone(),
    ];
    assert_eq!(
        shard.events_with_ids(&asked).await.unwrap(),
        [all[0].clone(), all[3].clone(), all[5].clone()]
    );
    assert!(shard.events_with_ids(&[]).await.unwrap().is_empty());

    assert_eq!(
        subject.store.outbox_backlog().await.unwrap(),
        [(
            "shard-0".to_owned(),
            OutboxBacklog {
                unpublished: 2,
                oldest_created_at_ms: Some(100)
            }
        )]
    );
    assert_eq!(
        shard
            .mark_published(&ids(&unpublished), 4_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        shard.outbox_backlog().await.unwrap(),
        OutboxBacklog::default()
    );
    assert!(shard.unpublished_events(100).await.unwrap().is_empty());
}

on_both!(
    pruning_removes_only_published_rows_older_than_the_bound,
    1,
    pruning_removes_only_published_rows_older_than_the_bound_on_sqlite,
    pruning_removes_only_published_rows_older_than_the_bound_on_postgres
);

async fn pruning_removes_only_published_rows_older_than_the_bound(subject: &Subject) {
    let shard = subject.directory();
    subject.write_rows(4, 1).await;
    let rows = ids(&events(shard).await);
    shard.mark_published(&rows[..1], 100).await.unwrap();
    shard.mark_published(&rows[1..2], 200).await.unwrap();
    shard.mark_published(&rows[2..3], 300).await.unwrap();
    // Marking again does not move a row's first publication time: row 0 stays at 100.
    assert_eq!(shard.mark_published(&rows[..1], 900).await.unwrap(), 0);

    // The bound is exclusive: a row published at 200 stays.
    assert_eq!(shard.prune_published(200).await.unwrap(), 1);
    assert_eq!(ids(&events(shard).await), rows[1..]);
    assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 2);
    let left = events(shard).await;
    assert_eq!(ids(&left), rows[3..], "the unpublished row is never pruned");
    assert_eq!(shard.unpublished_events(10).await.unwrap(), left);

    // Pruning the newest row does not let its id be handed out again.
    shard.mark_published(&rows[3..], 400).await.unwrap();
    assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 1);
    assert!(events(shard).await.is_empty());
    subject.write_rows(1, 500).await;
    let next = events(shard).await;
    assert_eq!(next.len(), 1);
    assert!(next[0].id > rows[3], "{} reused", next[0].id);
}

on_both!(
    leases_are_exclusive_renewable_and_reclaimed_after_expiry,
    2,
    leases_are_exclusive_renewable_and_reclaimed_after_expiry_on_sqlite,
    leases_are_exclusive_renewable_and_reclaimed_after_expiry_on_postgres
);

async fn leases_are_exclusive_renewable_and_reclaimed_after_expiry(subject: &Subject) {
    let store = &subject.store;
    let shard = store.shard_at(0).unwrap();
    let (name, ttl, t0) = ("outbox-relay", 10_000, 1_000_000);
    assert!(shard.claim_lease(name, "a", t0, ttl).await.unwrap());
    assert!(!shard.claim_lease(name, "b", t0 + 1, ttl).await.unwrap());
    // The holder renews: its expiry moves on, so b still cannot take it at the old expiry.
    assert!(shard.claim_lease(name, "a", t0 + 5_000, ttl).await.unwrap());
    assert!(!shard.claim_lease(name, "b", t0 + ttl, ttl).await.unwrap());
    // The lease is free again at exactly its expiry (`expires_at <= now`).
    let later = t0 + 5_000 + ttl;
    assert!(!shard.claim_lease(name, "b", later - 1, ttl).await.unwrap());
    assert!(shard.claim_lease(name, "b", later, ttl).await.unwrap());
    assert!(!shard.claim_lease(name, "a", later, ttl).await.unwrap());
    // Only the holder releases; then anyone may take it at once.
    assert!(!shard.release_lease(name, "a").await.unwrap());
    assert!(!shard.claim_lease(name, "c", later + 1, ttl).await.unwrap());
    assert!(shard.release_lease(name, "b").await.unwrap());
    assert!(!shard.release_lease(name, "b").await.unwrap());
    assert!(shard.claim_lease(name, "c", later + 1, ttl).await.unwrap());
    // Leases are per name and per shard.
    assert!(
        shard
            .claim_lease("other", "a", later + 1, ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .shard_at(1)
            .unwrap()
            .claim_lease(name, "a", later + 1, ttl)
            .await
            .unwrap()
    );
    assert!(store.shard_at(2).is_none());
}

on_both!(
    of_twenty_claimants_released_together_exactly_one_holds_the_lease,
    1,
    of_twenty_claimants_released_together_exactly_one_holds_the_lease_on_sqlite,
    of_twenty_claimants_released_together_exactly_one_holds_the_lease_on_postgres
);

async fn of_twenty_claimants_released_together_exactly_one_holds_the_lease(subject: &Subject) {
    const CLAIMANTS: usize = 20;
    let (ttl, t0) = (10_000, 1_000_000);
    let now = t0 + 100_000;
    // Even rounds race for a lease that never existed, odd rounds for one that expired.
    for round in 0..10 {
        let race = format!("race-{round}");
        if round % 2 == 1 {
            assert!(
                subject
                    .directory()
                    .claim_lease(&race, "gone", t0, ttl)
                    .await
                    .unwrap()
            );
        }
        let barrier = Arc::new(Barrier::new(CLAIMANTS));
        let claims = (0..CLAIMANTS).map(|i| {
            let (store, barrier, race) = (subject.store.clone(), barrier.clone(), race.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .directory()
                    .claim_lease(&race, &format!("claimant-{i}"), now, ttl)
                    .await
                    .unwrap()
            })
        });
        let won: Vec<bool> = futures::future::join_all(claims)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let winners: Vec<usize> = (0..CLAIMANTS).filter(|i| won[*i]).collect();
        assert_eq!(winners.len(), 1, "round {round}: {won:?}");
        // The winner is the one the lease names: it renews, nobody else gets it, and once it
        // releases it the lease is free for anyone.
        let shard = subject.directory();
        let winner = format!("claimant-{}", winners[0]);
        let loser = format!("claimant-{}", (winners[0] + 1) % CLAIMANTS);
        assert!(
            shard
                .claim_lease(&race, &winner, now + 1, ttl)
                .await
                .unwrap()
        );
        assert!(
            !shard
                .claim_lease(&race, &loser, now + 1, ttl)
                .await
                .unwrap()
        );
        assert!(!shard.release_lease(&race, &loser).await.unwrap());
        assert!(shard.release_lease(&race, &winner).await.unwrap());
        assert!(
            shard
                .claim_lease(&race, &loser, now + 2, ttl)
                .await
                .unwrap()
        );
    }
}

/// Runs `apply_tally` once per entry of `event_ids`, all released together by a barrier;
/// returns whether each applied.
async fn apply_all(store: &Arc<Store>, event_ids: Vec<String>, topic: &'static str) -> Vec<bool> {
    let barrier = Arc::new(Barrier::new(event_ids.len()));
    let calls = event_ids.into_iter().map(|event_id| {
        let (store, barrier) = (store.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            store
                .directory()
                .apply_tally("tally", &event_id, topic, 7)
                .await
                .unwrap()
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

on_both!(
    a_tally_applies_each_event_once_however_many_deliveries_race,
    1,
    a_tally_applies_each_event_once_however_many_deliveries_race_on_sqlite,
    a_tally_applies_each_event_once_however_many_deliveries_race_on_postgres
);

async fn a_tally_applies_each_event_once_however_many_deliveries_race(subject: &Subject) {
    let (store, directory) = (&subject.store, subject.directory());

    // Ten events, each delivered twenty times at once: each is counted once.
    for round in 0..10 {
        let applied = apply_all(store, vec![format!("ev-{round}"); 20], "order.paid").await;
        assert_eq!(
            applied.iter().filter(|a| **a).count(),
            1,
            "round {round}: {applied:?}"
        );
    }
    assert_eq!(
        directory.tally().await.unwrap(),
        [("order.paid".to_owned(), 10)]
    );
    assert!(directory.is_processed("tally", "ev-1").await.unwrap());
    assert!(
        !directory.is_processed("other", "ev-1").await.unwrap(),
        "records are per consumer"
    );

    // Fifty distinct events at once all count, on one tally row created by the race.
    let event_ids: Vec<String> = (0..50).map(|i| format!("ev-{}", i + 100)).collect();
    let applied = apply_all(store, event_ids.clone(), "product.created").await;
    assert!(applied.iter().all(|a| *a), "{applied:?}");
    // Redelivering all of them counts nothing.
    let again = apply_all(store, event_ids, "product.created").await;
    assert!(again.iter().all(|a| !*a), "{again:?}");
    assert_eq!(
        directory.tally().await.unwrap(),
        [
            ("order.paid".to_owned(), 10),
            ("product.created".to_owned(), 50)
        ]
    );
    assert_eq!(
        directory.processed("tally", "", 1_000).await.unwrap().len(),
        60
    );
}

on_both!(
    processed_records_are_kept_once_and_pruned_by_age,
    1,
    processed_records_are_kept_once_and_pruned_by_age_on_sqlite,
    processed_records_are_kept_once_and_pruned_by_age_on_postgres
);

async fn processed_records_are_kept_once_and_pruned_by_age(subject: &Subject) {
    let directory = subject.directory();
    assert!(
        directory
            .record_processed("cache", "e1", 100)
            .await
            .unwrap()
    );
    assert!(
        !directory
            .record_processed("cache", "e1", 150)
            .await
            .unwrap()
    );
    assert!(
        directory
            .record_processed("search", "e1", 150)
            .await
            .unwrap()
    );
    assert!(
        directory
            .record_processed("cache", "e2", 300)
            .await
            .unwrap()
    );
    assert!(directory.is_processed("cache", "e1").await.unwrap());
    assert!(!directory.is_processed("cache", "e3").await.unwrap());
    // An event recorded by record_processed counts as applied for apply_tally, too.
    assert!(
        !directory
            .apply_tally("cache", "e2", "x", 310)
            .await
            .unwrap()
    );
    assert!(directory.tally().await.unwrap().is_empty());
    // Each consumer's records, with when they were applied, paged in event id order.
    assert_eq!(
        directory.processed("cache", "", 10).await.unwrap(),
        [("e1".to_owned(), 100), ("e2".to_owned(), 300)]
    );
    assert_eq!(
        directory.processed("cache", "", 1).await.unwrap(),
        [("e1".to_owned(), 100)]
    );
    assert_eq!(
        directory.processed("cache", "e1", 10).await.unwrap(),
        [("e2".to_owned(), 300)]
    );
    assert_eq!(
        directory.processed("search", "", 10).await.unwrap(),
        [("e1".to_owned(), 150)]
    );
    assert!(
        directory
            .processed("tally", "", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Twenty racing records of one event: exactly one is new.
    let barrier = Arc::new(Barrier::new(20));
    let records = (0..20).map(|_| {
        let (store, barrier) = (subject.store.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            store
                .directory()
                .record_processed("race", "e9", 400)
                .await
                .unwrap()
        })
    });
    let new = futures::future::join_all(records)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(new, 1);

    assert_eq!(directory.prune_processed(150).await.unwrap(), 1);
    assert!(!directory.is_processed("cache", "e1").await.unwrap());
    assert!(directory.is_processed("search", "e1").await.unwrap());
    assert!(directory.is_processed("cache", "e2").await.unwrap());
    assert_eq!(directory.prune_processed(i64::MAX).await.unwrap(), 3);
}

on_both!(
    relays_marking_overlapping_batches_at_once_mark_each_row_once,
    1,
    relays_marking_overlapping_batches_at_once_mark_each_row_once_on_sqlite,
    relays_marking_overlapping_batches_at_once_mark_each_row_once_on_postgres
);

async fn relays_marking_overlapping_batches_at_once_mark_each_row_once(subject: &Subject) {
    subject.write_rows(200, 1).await;
    let rows = ids(&events(subject.directory()).await);
    let barrier = Arc::new(Barrier::new(8));
    // Eight relays mark all rows at once, half of them in reverse order.
    let marks = (0..8).map(|relay: i64| {
        let (store, barrier) = (subject.store.clone(), barrier.clone());
        let mut batch = rows.clone();
        if relay % 2 == 1 {
            batch.reverse();
        }
        tokio::spawn(async move {
            barrier.wait().await;
            store
                .directory()
                .mark_published(&batch, 1_000 + relay)
                .await
                .unwrap()
        })
    });
    let marked: u64 = futures::future::join_all(marks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert_eq!(marked, 200, "every row is newly marked exactly once");
    assert_eq!(
        subject.directory().outbox_backlog().await.unwrap(),
        OutboxBacklog::default()
    );
    // Everything was published at or after 1_000, so a bound below that prunes nothing.
    assert_eq!(subject.directory().prune_published(1_000).await.unwrap(), 0);
    assert_eq!(
        subject.directory().prune_published(i64::MAX).await.unwrap(),
        200
    );
}

// ---------------------------------------------------------------------------------------
// PostgreSQL only: ids drawn before commit

fn new_event(key: &str) -> NewEvent {
    NewEvent {
        topic: TOPIC,
        key: key.to_owned(),
        payload: format!("{{\"key\":\"{key}\"}}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lower_id_committed_after_a_higher_one_was_published_is_still_relayed() {
    on_postgres(
        "a_lower_id_committed_after_a_higher_one_was_published_is_still_relayed",
        1,
        |urls| async move {
            let config = pg_config(urls.clone());
            let subject = Subject::postgres(urls.clone()).await;
            let writer = PostgresShard::open("shard-0", &urls[0], &config)
                .await
                .unwrap();
            let Raw::Postgres(pool) = &subject.raw else {
                unreachable!("a PostgreSQL subject")
            };
            let shard = subject.directory();

            // A batch through `write_events` keeps its order.
            let mut tx = pool.begin().await.unwrap();
            writer
                .write_events(
                    &mut tx,
                    vec![new_event("b0"), new_event("b1"), new_event("b2")],
                    5,
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let batch = events(shard).await;
            assert_eq!(
                batch.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
                ["b0", "b1", "b2"]
            );
            assert!(
                batch
                    .iter()
                    .all(|e| e.created_at_ms == 5 && e.topic == TOPIC)
            );
            shard.mark_published(&ids(&batch), 6).await.unwrap();

            // `slow` draws its id first and holds its transaction open; `fast` draws a
            // higher id, commits, and is published while `slow` is still in flight.
            let mut slow = pool.begin().await.unwrap();
            writer
                .write_event(&mut slow, new_event("slow"), 10)
                .await
                .unwrap();
            let mut fast = pool.begin().await.unwrap();
            writer
                .write_event(&mut fast, new_event("fast"), 20)
                .await
                .unwrap();
            fast.commit().await.unwrap();

            let visible = shard.unpublished_events(100).await.unwrap();
            assert_eq!(
                visible.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
                ["fast"],
                "an uncommitted row is not read"
            );
            assert_eq!(
                shard.outbox_backlog().await.unwrap(),
                OutboxBacklog {
                    unpublished: 1,
                    oldest_created_at_ms: Some(20)
                }
            );
            let fast_id = visible[0].id;
            assert_eq!(shard.mark_published(&[fast_id], 30).await.unwrap(), 1);
            // Pruning meanwhile removes published rows only.
            assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 4);
            slow.commit().await.unwrap();

            // The late row has the lower id, and the relay's next read returns it.
            let late = shard.unpublished_events(100).await.unwrap();
            assert_eq!(late.len(), 1, "{late:?}");
            assert_eq!(late[0].key, "slow");
            assert!(late[0].id < fast_id, "{} vs {fast_id}", late[0].id);
            assert_eq!(
                shard.outbox_backlog().await.unwrap(),
                OutboxBacklog {
                    unpublished: 1,
                    oldest_created_at_ms: Some(10)
                }
            );
            assert_eq!(
                shard.prune_published(i64::MAX).await.unwrap(),
                0,
                "the late row is not pruned"
            );
            assert_eq!(shard.mark_published(&[late[0].id], 40).await.unwrap(), 1);
            assert!(shard.unpublished_events(100).await.unwrap().is_empty());
            assert_eq!(shard.prune_published(i64::MAX).await.unwrap(), 1);

            // With events switched off nothing is written.
            let quiet = PostgresShard::open(
                "shard-0",
                &urls[0],
                &PostgresConfig {
                    write_events: false,
                    ..config
                },
            )
            .await
            .unwrap();
            let mut tx = pool.begin().await.unwrap();
            quiet
                .write_event(&mut tx, new_event("q"), 50)
                .await
                .unwrap();
            quiet
                .write_events(&mut tx, vec![new_event("q1")], 50)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            assert!(events(shard).await.is_empty());

            quiet.close().await;
            writer.close().await;
            subject.close().await;
        },
    )
    .await;
}

#[test]
fn a_scratch_url_names_the_scratch_database() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x_1"),
        "postgres://postgres@127.0.0.1:5432/x_1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=require", "x"),
        "postgres://u:p@h/x?sslmode=require"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}
