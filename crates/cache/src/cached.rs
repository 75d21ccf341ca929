//! A source of truth behind caches, under one [`Strategy`]: the in-process [`Cache`] (L1),
//! optionally the shared [`RedisTier`] (L2) under it, and optionally an [`Invalidator`]
//! telling other processes what changed.
//!
//! Reads go L1 → L2 → source. What a read miss and a write do depends on the strategy (see
//! [`crate::strategy`]); write-back, which needs a buffer of pending writes rather than a
//! read path, is [`crate::WriteBack`].

use std::error::Error;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{Cache, Expiry, LoadError};
use crate::invalidation::Invalidator;
use crate::metrics::CacheMetrics;
use crate::redis_tier::{RedisTier, TierCounters, TierError};
use crate::strategy::Strategy;

/// A load from the source of truth, type-erased for [`Tier`].
type SourceLoad<V> = Box<dyn FnOnce() -> BoxFuture<'static, Result<V, LoadError>> + Send>;

/// A second tier for values of type `V`. Only values that can be encoded get one (see
/// [`Cached::with_l2`]), so the rest of [`Cached`] does not require an encoding.
trait Tier<V>: Send + Sync {
    fn load(
        &self,
        cache: String,
        key: String,
        expiry: Expiry<V>,
        load: SourceLoad<V>,
    ) -> BoxFuture<'static, Result<V, LoadError>>;
    fn write(
        &self,
        cache: String,
        key: String,
        value: V,
        ttl: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TierError>>;
    fn remove(&self, cache: String, key: String) -> BoxFuture<'static, Result<(), TierError>>;
}

/// Redis as the second tier, values encoded as JSON.
struct JsonTier {
    redis: RedisTier,
    counters: TierCounters,
}

impl<V> Tier<V> for JsonTier
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn load(
        &self,
        cache: String,
        key: String,
        expiry: Expiry<V>,
        load: SourceLoad<V>,
    ) -> BoxFuture<'static, Result<V, LoadError>> {
        let (redis, counters) = (self.redis.clone(), self.counters.clone());
        Box::pin(async move {
            redis
                .load(&cache, &key, &counters, |v| expiry(v), load)
                .await
        })
    }

    fn write(
        &self,
        cache: String,
        key: String,
        value: V,
        ttl: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TierError>> {
        let redis = self.redis.clone();
        Box::pin(async move { redis.write(&cache, &key, &value, ttl).await })
    }

    fn remove(&self, cache: String, key: String) -> BoxFuture<'static, Result<(), TierError>> {
        let redis = self.redis.clone();
        Box::pin(async move { redis.remove(&cache, &key).await })
    }
}

/// A cached source of truth. Cheap to clone; clones share everything.
pub struct Cached<K, V> {
    l1: Cache<K, V>,
    strategy: Strategy,
    l2: Option<Arc<dyn Tier<V>>>,
    invalidator: Option<Arc<dyn Invalidator>>,
}

impl<K, V> Clone for Cached<K, V> {
    fn clone(&self) -> Self {
        Self {
            l1: self.l1.clone(),
            strategy: self.strategy,
            l2: self.l2.clone(),
            invalidator: self.invalidator.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Cached<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("l1", &self.l1)
            .field("strategy", &self.strategy)
            .field("l2", &self.l2.is_some())
            .field("invalidator", &self.invalidator)
            .finish()
    }
}

impl<K, V> Cached<K, V>
where
    K: Hash + Eq + Clone + Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// `l1` in front of the source, under `strategy`. Write-back has no read path of its
    /// own and reads as read-through.
    pub fn new(l1: Cache<K, V>, strategy: Strategy) -> Self {
        Self {
            l1,
            strategy,
            l2: None,
            invalidator: None,
        }
    }

    /// Puts `redis` under the in-process cache, its metrics labelled `{name}_l2`. Values
    /// are stored there as JSON.
    pub fn with_l2(mut self, redis: RedisTier, metrics: &CacheMetrics) -> Self
    where
        V: Serialize + DeserializeOwned,
    {
        let counters = RedisTier::counters(metrics, self.l1.name());
        self.l2 = Some(Arc::new(JsonTier { redis, counters }));
        self
    }

    /// Tells other processes, through `invalidator`, about every write.
    pub fn with_invalidator(mut self, invalidator: Arc<dyn Invalidator>) -> Self {
        self.invalidator = Some(invalidator);
        self
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The in-process cache.
    pub fn l1(&self) -> &Cache<K, V> {
        &self.l1
    }

    /// The value of `key`: from L1, else L2, else `load` from the source of truth.
    ///
    /// Cache-aside leaves coalescing to the caller, so concurrent misses each reach L2 or
    /// the source; the other strategies load once per key in this process (single flight)
    /// and, with L2, once per key across processes (the Redis lock).
    pub async fn get<F, Fut, E>(&self, key: K, load: F) -> Result<V, LoadError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Error + Send + Sync + 'static,
    {
        match self.strategy {
            Strategy::CacheAside => {
                if let Some(value) = self.l1.get(&key) {
                    return Ok(value);
                }
                let value = below_l1(self.l1.clone(), self.l2.clone(), key.clone(), load).await?;
                self.l1.insert(key, value.clone());
                Ok(value)
            }
            Strategy::ReadThrough | Strategy::WriteThrough | Strategy::WriteBack => {
                let (l1, l2, k) = (self.l1.clone(), self.l2.clone(), key.clone());
                self.l1
                    .get_or_try_load(key, move || below_l1(l1, l2, k, load))
                    .await
            }
        }
    }

    /// Records that the source of truth changed for `key`, now holding `value` (`None` when
    /// it is gone or unknown). Write-through stores a known value in L1 and L2; the other
    /// strategies drop the key from both. Either way other processes are told to drop their
    /// L1 copy, after L2 is up to date, so their next read finds the new value.
    pub async fn written(&self, key: K, value: Option<V>) {
        let name = self.l1.name().to_owned();
        let key_text = key.to_string();
        match (self.strategy, value) {
            (Strategy::WriteThrough, Some(value)) => {
                if let Some(tier) = &self.l2 {
                    let ttl = self.l1.ttl_of(&value);
                    let written = tier
                        .write(name.clone(), key_text.clone(), value.clone(), ttl)
                        .await;
                    if let Err(error) = written {
                        tracing::warn!(%error, cache = %name, "write-through to the Redis tier failed; dropping the key there");
                        self.remove_from_l2(tier, &name, &key_text).await;
                    }
                }
                self.l1.insert(key, value);
            }
            _ => {
                self.l1.invalidate(&key);
                if let Some(tier) = &self.l2 {
                    self.remove_from_l2(tier, &name, &key_text).await;
                }
            }
        }
        if let Some(invalidator) = &self.invalidator {
            invalidator.publish(&name, &key_text);
        }
    }

    async fn remove_from_l2(&self, tier: &Arc<dyn Tier<V>>, name: &str, key: &str) {
        if let Err(error) = tier.remove(name.to_owned(), key.to_owned()).await {
            tracing::warn!(%error, cache = %name, "could not drop a key from the Redis tier; it expires with its TTL");
        }
    }

    /// Drops `key` from this process's L1 only: what another process's invalidation asks.
    pub fn forget(&self, key: &K) {
        self.l1.invalidate(key);
    }
}

/// A miss in L1: ask L2 (under its lock) when there is one, else the source.
async fn below_l1<K, V, F, Fut, E>(
    l1: Cache<K, V>,
    l2: Option<Arc<dyn Tier<V>>>,
    key: K,
    load: F,
) -> Result<V, LoadError>
where
    K: Hash + Eq + Clone + Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Error + Send + Sync + 'static,
{
    let load = move || async move { load().await.map_err(|e| Arc::new(e) as LoadError) };
    match l2 {
        Some(tier) => {
            let load: SourceLoad<V> = Box::new(move || Box::pin(load()));
            tier.load(l1.name().to_owned(), key.to_string(), l1.expiry(), load)
                .await
        }
        None => load().await,
    }
}
