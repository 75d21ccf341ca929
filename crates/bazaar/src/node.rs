//! This process's place among the processes sharing a store: the id generator number it
//! stamps every id with.
//!
//! Ids are unique only per generator number (`bazaar_store::IdGenerator`), so two processes
//! on one store must never hold the same number. Each claims one as a lease on the directory
//! shard at start-up — the lowest free one, or exactly `node.id` when that is set — renews it
//! every [`RENEW_EVERY`] while it runs (the [`LeaseKeeper`] worker), and gives it back at
//! stop; the lease of a process that died lapses after [`LEASE_TTL`] and is claimed again.
//! A process that cannot get a number does not start.
//!
//! What is not covered: a process frozen for longer than the lease (a stopped VM) may find on
//! waking that another process took its number. Its next renewal notices and claims another
//! number, but ids it minted between waking and that renewal may repeat the other process's.
//! The lease lasts three renewal intervals, so only a freeze of over twenty seconds can.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use bazaar_store::{IdGenerator, Store, StoreError};
use bazaar_worker::{WorkError, Worker};

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How often a running process renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Generator numbers live processes lease; 0 stamps the deterministic demo catalog.
pub const LIVE_GENERATORS: RangeInclusive<u16> = 1..=1023;

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    i64::try_from(bazaar_store::id::wall_clock_ms()).unwrap_or(i64::MAX)
}

/// The lease this process holds on its generator number, and the generator stamping with it.
#[derive(Debug)]
pub struct NodeLease {
    store: Arc<Store>,
    /// Who holds the lease, as the table shows it: host, process id and a random part.
    holder: String,
    /// `node.id`, when the number is fixed by configuration.
    fixed: Option<u16>,
    ids: Arc<IdGenerator>,
}

impl NodeLease {
    /// Claims a generator number on `store`: exactly `fixed` when given, else the lowest free.
    pub async fn claim(store: Arc<Store>, fixed: Option<u16>) -> anyhow::Result<Self> {
        let holder = format!(
            "{}/{}/{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        let range = fixed.map_or(LIVE_GENERATORS, |n| n..=n);
        let claimed = store
            .directory()
            .claim_generator(&holder, range, now_ms(), ms(LEASE_TTL))
            .await?;
        let generator = match (claimed, fixed) {
            (Some(generator), _) => generator,
            (None, Some(n)) => bail!(
                "node.id {n} is leased by another process running on this store; set another \
                 `node.id` (1 to 1023) or leave it unset to take a free one (a lease of a \
                 process that died lapses {}s after it stopped renewing)",
                LEASE_TTL.as_secs()
            ),
            (None, None) => bail!(
                "every id generator number (1 to 1023) is leased by a process running on this \
                 store; stop one, or wait {}s for the lease of a process that died to lapse",
                LEASE_TTL.as_secs()
            ),
        };
        tracing::info!(generator, "leased an id generator number");
        Ok(Self {
            store,
            holder,
            fixed,
            ids: Arc::new(IdGenerator::new(generator)),
        })
    }

    /// The generator stamping this process's ids.
    pub fn ids(&self) -> Arc<IdGenerator> {
        self.ids.clone()
    }

    /// Extends the lease; if it was lost (this process was frozen past its expiry and another
    /// took the number), claims a new number and stamps ids with it from now on.
    pub async fn renew(&self) -> anyhow::Result<()> {
        let directory = self.store.directory();
        let generator = self.ids.generator();
        if directory
            .renew_generator(generator, &self.holder, now_ms(), ms(LEASE_TTL))
            .await?
        {
            return Ok(());
        }
        let range = self.fixed.map_or(LIVE_GENERATORS, |n| n..=n);
        let Some(next) = directory
            .claim_generator(&self.holder, range, now_ms(), ms(LEASE_TTL))
            .await?
        else {
            bail!("the lease on id generator number {generator} was lost and no other is free");
        };
        self.ids.renumber(next);
        tracing::error!(
            lost = generator,
            now = next,
            "the lease on this process's id generator number lapsed (was the process frozen?); claimed another"
        );
        Ok(())
    }

    /// Gives the number back (at stop), so the next process can take it at once.
    pub async fn release(&self) -> Result<(), StoreError> {
        self.store
            .directory()
            .release_generator(self.ids.generator(), &self.holder)
            .await
    }
}

/// Renews the lease while the process runs, and gives it back at stop.
#[derive(Debug)]
pub struct LeaseKeeper(pub Arc<NodeLease>);

#[async_trait]
impl Worker for LeaseKeeper {
    fn name(&self) -> &'static str {
        "node-lease"
    }

    fn interval(&self) -> Duration {
        RENEW_EVERY
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        self.0.renew().await.map_err(Into::into)
    }

    async fn drain(&self) -> Result<(), WorkError> {
        self.0.release().await.map_err(Into::into)
    }
}
