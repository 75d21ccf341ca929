//! The server's background jobs as [`Worker`]s (see `bazaar_worker`): each pass runs to its
//! end even when a stop arrives, and each drains before the process exits.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bazaar_gateway::ratelimit::MemoryLimiter;
use bazaar_shop::{Catalog, Orders};
use bazaar_worker::{WorkError, Worker};

/// Stores buffered view counts every interval (write-back), and a last time at stop: views
/// are acknowledged from memory, so a graceful stop must store every one of them.
#[derive(Debug)]
pub struct Flusher {
    pub catalog: Catalog,
    pub interval: Duration,
}

#[async_trait]
impl Worker for Flusher {
    fn name(&self) -> &'static str {
        "view-flusher"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        self.catalog.flush_views().await?;
        Ok(())
    }

    async fn drain(&self) -> Result<(), WorkError> {
        let products = self.catalog.flush_views().await?;
        tracing::info!(products, "flushed buffered view counts");
        Ok(())
    }
}

/// Expires unpaid reservations and finishes checkouts a crash interrupted.
#[derive(Debug)]
pub struct Sweeper {
    pub orders: Orders,
    pub interval: Duration,
}

#[async_trait]
impl Worker for Sweeper {
    fn name(&self) -> &'static str {
        "order-sweeper"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        let orders = self.orders.sweep().await?;
        if orders > 0 {
            tracing::info!(orders, "the sweeper settled orders");
        }
        Ok(())
    }
}

/// Forgets clients whose rate-limit budget has refilled, so the in-memory limiter's memory
/// follows the active clients.
#[derive(Debug)]
pub struct Pruner(pub Arc<MemoryLimiter>);

#[async_trait]
impl Worker for Pruner {
    fn name(&self) -> &'static str {
        "rate-limit-pruner"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        self.0.prune();
        Ok(())
    }
}
