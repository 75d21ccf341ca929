//! Redis as a second tier (L2) shared by every process, with a lock against cross-process
//! stampedes.
//!
//! An L1 miss reads Redis before the source of truth. When Redis has nothing fresh, the
//! process that wins a short lock (`SET lock token NX PX ttl`) loads from the source and
//! writes the value back; the others poll Redis for that value — or, if Redis still holds a
//! stale copy, serve it at once — instead of each loading. Only the holder can release the
//! lock: the release compares the token in a script, so a holder whose lock expired cannot
//! delete a lock another process has taken since. A holder that dies leaves the lock to
//! expire after its TTL.
//!
//! Redis is an accelerator, never a dependency: any Redis error or timeout falls back to
//! loading from the source (and is logged), so a Redis outage costs speed, not availability.
//!
//! Values are stored as the wall-clock millisecond until which they are fresh (8 bytes,
//! big-endian) followed by their JSON; a key lives for its TTL plus `keep_stale`.

use std::error::Error;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::LoadError;
use crate::metrics::{CacheCounters, CacheMetrics};

/// How the tier behaves.
#[derive(Debug, Clone)]
pub struct TierSettings {
    /// Prefix of every key the tier writes (`{prefix}:{cache}:{key}`).
    pub prefix: String,
    /// The longest a load lock is held: a crashed holder blocks the others no longer than this.
    pub lock_ttl: Duration,
    /// How long past its freshness a value is kept, to be served while another process
    /// reloads it.
    pub keep_stale: Duration,
    /// How often a process that lost the lock looks for the holder's value.
    pub poll: Duration,
    /// The longest one Redis command may take before the tier is bypassed for that read.
    pub timeout: Duration,
}

impl Default for TierSettings {
    fn default() -> Self {
        Self {
            prefix: "bazaar:cache".into(),
            lock_ttl: Duration::from_secs(2),
            keep_stale: Duration::from_secs(30),
            poll: Duration::from_millis(20),
            timeout: Duration::from_millis(250),
        }
    }
}

/// Why a Redis command of the tier failed.
#[derive(Debug)]
pub struct TierError(String);

impl std::fmt::Display for TierError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis cache tier: {}", self.0)
    }
}

impl Error for TierError {}

/// A value read from the tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<V> {
    pub value: V,
    /// `false` once its TTL has passed (it is kept `keep_stale` longer).
    pub fresh: bool,
}

/// A load lock this process holds; give it back with [`RedisTier::unlock`].
#[derive(Debug)]
#[must_use = "a lock is released by RedisTier::unlock, or expires after lock_ttl"]
pub struct LoadLock {
    key: String,
    token: String,
}

/// Deletes the lock only if it still holds this holder's token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The shared Redis tier. Cheap to clone.
#[derive(Clone)]
pub struct RedisTier {
    connection: redis::aio::ConnectionManager,
    settings: TierSettings,
    release: redis::Script,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl RedisTier {
    /// Connects to the Redis at `url`.
    pub async fn connect(url: &str, settings: TierSettings) -> Result<Self, TierError> {
        let client = redis::Client::open(url).map_err(|e| TierError(e.to_string()))?;
        let connection = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| TierError(e.to_string()))?;
        Ok(Self {
            connection,
            settings,
            release: redis::Script::new(RELEASE),
        })
    }

    pub fn settings(&self) -> &TierSettings {
        &self.settings
    }

    fn value_key(&self, cache: &str, key: &str) -> String {
        format!("{}:{cache}:{key}", self.settings.prefix)
    }

    fn lock_key(&self, cache: &str, key: &str) -> String {
        format!("{}:lock:{cache}:{key}", self.settings.prefix)
    }

    /// Runs one Redis command with the configured timeout.
    async fn command<T>(
        &self,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        match tokio::time::timeout(self.settings.timeout, command).await {
            Ok(result) => result.map_err(|e| TierError(e.to_string())),
            Err(_) => Err(TierError(format!(
                "no answer within {:?}",
                self.settings.timeout
            ))),
        }
    }

    /// The value stored for `key` of `cache`, fresh or stale.
    pub async fn read<V: DeserializeOwned>(
        &self,
        cache: &str,
        key: &str,
    ) -> Result<Option<Stored<V>>, TierError> {
        let mut connection = self.connection.clone();
        let key = self.value_key(cache, key);
        let bytes: Option<Vec<u8>> = self.command(connection.get(&key)).await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let Some((fresh_until, json)) = bytes.split_first_chunk::<8>() else {
            return Err(TierError(format!("`{key}` holds no tier value")));
        };
        let value = serde_json::from_slice(json)
            .map_err(|e| TierError(format!("`{key}` does not decode: {e}")))?;
        let fresh = unix_ms(SystemTime::now()) < u64::from_be_bytes(*fresh_until);
        Ok(Some(Stored { value, fresh }))
    }

    /// Stores `value` for `key` of `cache`, fresh for `ttl` (`None`: until replaced).
    pub async fn write<V: Serialize>(
        &self,
        cache: &str,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<(), TierError> {
        let fresh_until = ttl.map_or(u64::MAX, |ttl| {
            unix_ms(SystemTime::now()).saturating_add(millis(ttl))
        });
        let mut bytes = fresh_until.to_be_bytes().to_vec();
        serde_json::to_writer(&mut bytes, value).map_err(|e| TierError(e.to_string()))?;
        let mut connection = self.connection.clone();
        let key = self.value_key(cache, key);
        match ttl {
            Some(ttl) => {
                let keep = millis(ttl.saturating_add(self.settings.keep_stale));
                self.command(connection.pset_ex::<_, _, ()>(&key, bytes, keep))
                    .await
            }
            None => self.command(connection.set::<_, _, ()>(&key, bytes)).await,
        }
    }

    /// Deletes `key` of `cache`.
    pub async fn remove(&self, cache: &str, key: &str) -> Result<(), TierError> {
        let mut connection = self.connection.clone();
        let key = self.value_key(cache, key);
        self.command(connection.del::<_, ()>(&key)).await
    }

    /// Takes the load lock of `key` of `cache` if nobody holds it.
    pub async fn try_lock(&self, cache: &str, key: &str) -> Result<Option<LoadLock>, TierError> {
        let mut connection = self.connection.clone();
        let lock = LoadLock {
            key: self.lock_key(cache, key),
            token: format!("{:032x}", rand::random::<u128>()),
        };
        let taken: Option<String> = self
            .command(
                redis::cmd("SET")
                    .arg(&lock.key)
                    .arg(&lock.token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.settings.lock_ttl))
                    .query_async(&mut connection),
            )
            .await?;
        Ok(taken.map(|_| lock))
    }

    /// Releases `lock`. Returns `false` if it had expired and was no longer this holder's
    /// (it is then left alone).
    pub async fn unlock(&self, lock: LoadLock) -> Result<bool, TierError> {
        let mut connection = self.connection.clone();
        let deleted: i64 = self
            .command(
                self.release
                    .key(&lock.key)
                    .arg(&lock.token)
                    .invoke_async(&mut connection),
            )
            .await?;
        Ok(deleted == 1)
    }

    /// Counters for this tier under a cache's metrics, labelled `{cache}_l2`.
    pub fn counters(metrics: &CacheMetrics, cache: &str) -> TierCounters {
        TierCounters(metrics.for_cache(&format!("{cache}_l2")))
    }

    /// The value of `key` of `cache`: fresh from Redis, or loaded by `load` under the lock
    /// and written back, or — while another process holds the lock — that process's value
    /// once it lands, or a stale copy at once if Redis still has one. `ttl` gives the
    /// lifetime of a loaded value.
    pub async fn load<V, F, Fut, E>(
        &self,
        cache: &str,
        key: &str,
        counters: &TierCounters,
        ttl: impl Fn(&V) -> Option<Duration>,
        load: F,
    ) -> Result<V, LoadError>
    where
        V: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Error + Send + Sync + 'static,
    {
        let counters = &counters.0;
        // Waiting for a holder is bounded: past twice the lock's TTL, load regardless.
        let give_up = Instant::now() + self.settings.lock_ttl * 2;
        let mut waited = false;
        loop {
            let stale = match self.read::<V>(cache, key).await {
                Ok(Some(Stored { value, fresh: true })) => {
                    counters.request(true);
                    if waited {
                        counters.coalesced();
                    }
                    return Ok(value);
                }
                Ok(Some(Stored { value, .. })) => Some(value),
                Ok(None) => None,
                Err(error) => {
                    tracing::warn!(%error, cache, "reading the Redis tier failed; loading from the source");
                    return load()
                        .await
                        .map_err(|e| std::sync::Arc::new(e) as LoadError);
                }
            };
            if !waited {
                counters.request(false);
            }
            let lock = match self.try_lock(cache, key).await {
                Ok(lock) => lock,
                Err(error) => {
                    tracing::warn!(%error, cache, "taking a Redis load lock failed; loading from the source");
                    return load()
                        .await
                        .map_err(|e| std::sync::Arc::new(e) as LoadError);
                }
            };
            if let Some(lock) = lock {
                return self
                    .load_locked(cache, key, counters, ttl, load, lock)
                    .await;
            }
            if let Some(stale) = stale {
                // Another process is reloading it; a stale copy now beats a wait.
                return Ok(stale);
            }
            if Instant::now() >= give_up {
                tracing::warn!(
                    cache,
                    key,
                    "waited too long for another process's load; loading here"
                );
                return load()
                    .await
                    .map_err(|e| std::sync::Arc::new(e) as LoadError);
            }
            waited = true;
            tokio::time::sleep(self.settings.poll).await;
        }
    }

    async fn load_locked<V, F, Fut, E>(
        &self,
        cache: &str,
        key: &str,
        counters: &CacheCounters,
        ttl: impl Fn(&V) -> Option<Duration>,
        load: F,
        lock: LoadLock,
    ) -> Result<V, LoadError>
    where
        V: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Error + Send + Sync + 'static,
    {
        // The previous holder may have written its value and released the lock between this
        // process's read and its lock: look once more before loading again.
        if let Ok(Some(Stored { value, fresh: true })) = self.read::<V>(cache, key).await {
            if let Err(error) = self.unlock(lock).await {
                tracing::warn!(%error, cache, "releasing a Redis load lock failed; it expires on its own");
            }
            counters.coalesced();
            return Ok(value);
        }
        let started = Instant::now();
        let result = load()
            .await
            .map_err(|e| std::sync::Arc::new(e) as LoadError);
        counters.loaded(started.elapsed());
        if let Ok(value) = &result
            && let Err(error) = self.write(cache, key, value, ttl(value)).await
        {
            tracing::warn!(%error, cache, "writing to the Redis tier failed");
        }
        if let Err(error) = self.unlock(lock).await {
            tracing::warn!(%error, cache, "releasing a Redis load lock failed; it expires on its own");
        }
        result
    }
}

/// The metrics of one cache's Redis tier (`cache="{name}_l2"`): hits and misses of Redis,
/// loads made under the lock, and reads that waited for another process's load
/// (`coalesced`).
#[derive(Debug, Clone)]
pub struct TierCounters(CacheCounters);
