//! Rate limiting with the generic cell rate algorithm (GCRA), per key and per class.
//!
//! GCRA keeps one number per key — the *theoretical arrival time* (TAT) of the next request
//! if the client sent exactly at the permitted rate. A request costing `n` cells is admitted
//! when `TAT + n × interval - now <= burst × interval`, and then moves TAT `n` intervals
//! further. That admits `burst` cells at once and then `rate` per `period`, with no
//! background refill and O(1) state per key. A cost above one lets a single request that does
//! the work of many (a GraphQL document with 500 mutations) be charged for all of it, and
//! refused whole when it does not fit.
//!
//! Two backends implement [`RateLimiter`]: [`MemoryLimiter`] (one process) and
//! [`RedisLimiter`] (the same arithmetic in one Lua script, atomic in Redis, so every API
//! process sharing the Redis shares each key's budget). Both can also *peek* — say whether one
//! more cell would fit without spending it — which lets the gate refuse a client that has
//! spent its failed-credential budget before looking its next credential up in the store.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
/// A named budget: `burst` requests at once, refilled at `rate` per `period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitClass {
    /// Appears in the `RateLimit-Policy` header and in Redis keys.
    pub name: String,
    pub rate: u32,
    pub period: Duration,
    pub burst: u32,
}

impl LimitClass {
    /// The time between two admitted requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.period / self.rate.max(1)
    }

    /// Checks the numbers make a usable budget.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate == 0 || self.burst == 0 || self.period.is_zero() || self.interval().is_zero() {
            return Err(format!(
                "rate limit class `{}` needs rate, burst and period above zero",
                self.name
            ));
        }
        Ok(())
    }
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still admissible right now after this one.
    pub remaining: u32,
    /// When refused: how long until a request would be admitted.
    pub retry_after: Duration,
    /// How long until the full burst is available again.
    pub reset: Duration,
}

/// Why the limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("rate limiter backend failed: {0}")]
    Backend(String),
}

/// Decides whether a request under `key` fits `class`'s budget.
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Charges `cost` cells (at least one) if they all fit; otherwise charges nothing. A cost
    /// above the class's burst never fits.
    async fn check_n(
        &self,
        class: &LimitClass,
        key: &str,
        cost: u32,
    ) -> Result<Decision, LimiterError>;

    /// Whether one more cell would fit right now, spending nothing.
    async fn peek(&self, class: &LimitClass, key: &str) -> Result<Decision, LimiterError>;

    /// Charges one cell.
    async fn check(&self, class: &LimitClass, key: &str) -> Result<Decision, LimiterError> {
        self.check_n(class, key, 1).await
    }
}

/// The GCRA step both backends compute, in one unit of time (ns here, µs in Redis): `tat` is
/// the stored arrival time (or `None`), the result the decision and the TAT to store if
/// admitted.
fn gcra(now: u64, tat: Option<u64>, interval: u64, burst: u32, cost: u32) -> (Decision, u64) {
    let tat = tat.unwrap_or(now).max(now);
    let capacity = interval.saturating_mul(u64::from(burst));
    let new_tat = tat.saturating_add(interval.saturating_mul(u64::from(cost.max(1))));
    let ns = Duration::from_nanos;
    if new_tat - now > capacity {
        // Refused: admitted once TAT has drained to where these cells fit (never, if the cost
        // exceeds the burst; then report when the whole budget is back).
        let wait = (new_tat - now)
            .checked_sub(capacity)
            .filter(|_| cost <= burst)
            .unwrap_or(tat - now);
        return (
            Decision {
                allowed: false,
                remaining: 0,
                retry_after: ns(wait),
                reset: ns(tat - now),
            },
            tat,
        );
    }
    let remaining = (capacity - (new_tat - now)) / interval.max(1);
    (
        Decision {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            retry_after: Duration::ZERO,
            reset: ns(new_tat - now),
        },
        new_tat,
    )
}

/// Shards of one class's table: a key's TAT lives in one shard, chosen by hash, so requests
/// of different clients rarely wait on the same lock.
const SHARDS: usize = 32;

/// One class's TATs, in nanoseconds since the limiter started.
struct Table {
    shards: Vec<Mutex<HashMap<String, u64>>>,
}

/// In-process GCRA: a sharded table of TATs per class.
pub struct MemoryLimiter {
    /// A `std` mutex around the map of classes: looked up once per request, never held across
    /// an await. Each shard's mutex is held only for one hash-map lookup and write.
    classes: Mutex<HashMap<String, Arc<Table>>>,
    hasher: RandomState,
    started: Instant,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self {
            classes: Mutex::default(),
            hasher: RandomState::new(),
            started: Instant::now(),
        }
    }
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter").finish_non_exhaustive()
    }
}

impl MemoryLimiter {
    fn table(&self, class: &LimitClass) -> Arc<Table> {
        self.classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(class.name.clone())
            .or_insert_with(|| {
                Arc::new(Table {
                    shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                })
            })
            .clone()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn decide(&self, class: &LimitClass, key: &str, cost: u32, spend: bool) -> Decision {
        let table = self.table(class);
        let shard = &table.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let interval = u64::try_from(class.interval().as_nanos()).unwrap_or(u64::MAX);
        let mut tats = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.now();
        let (decision, new_tat) = gcra(now, tats.get(key).copied(), interval, class.burst, cost);
        if spend && decision.allowed {
            match tats.get_mut(key) {
                Some(tat) => *tat = new_tat,
                None => {
                    tats.insert(key.to_owned(), new_tat);
                }
            }
        }
        decision
    }

    /// Forgets keys whose budget is full again, so memory tracks active clients only.
    pub fn prune(&self) {
        let tables: Vec<Arc<Table>> = self
            .classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for table in tables {
            for shard in &table.shards {
                let now = self.now();
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|_, tat| *tat > now);
            }
        }
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn check_n(
        &self,
        class: &LimitClass,
        key: &str,
        cost: u32,
    ) -> Result<Decision, LimiterError> {
        Ok(self.decide(class, key, cost, true))
    }

    async fn peek(&self, class: &LimitClass, key: &str) -> Result<Decision, LimiterError> {
        Ok(self.decide(class, key, 1, false))
    }
}

/// GCRA in Redis. Times come from Redis's own clock (`TIME`), so API processes with skewed
/// clocks still share one consistent budget.
pub struct RedisLimiter {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// KEYS[1]: the key's TAT. ARGV: interval (µs), burst, cost (cells), spend (1, or 0 to only
/// look). Returns {allowed, remaining, retry_after_us, reset_us}; the arithmetic of [`gcra`].
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local spend = tonumber(ARGV[4])
local capacity = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - now > capacity then
  local retry = new_tat - now - capacity
  if cost > burst then retry = tat - now end
  return {0, 0, retry, tat - now}
end
if spend == 1 then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
local remaining = math.floor((capacity - (new_tat - now)) / interval)
return {1, remaining, 0, new_tat - now}
";

impl RedisLimiter {
    /// Connects to `url`; keys are written under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LimiterError> {
        let client = redis::Client::open(url).map_err(|e| LimiterError::Backend(e.to_string()))?;
        let connection = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| LimiterError::Backend(e.to_string()))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA),
        })
    }

    async fn run(
        &self,
        class: &LimitClass,
        key: &str,
        cost: u32,
        spend: bool,
    ) -> Result<Decision, LimiterError> {
        let interval_us = u64::try_from(class.interval().as_micros()).unwrap_or(u64::MAX);
        let mut connection = self.connection.clone();
        let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) = self
            .script
            .key(format!("{}:{}:{key}", self.prefix, class.name))
            .arg(interval_us)
            .arg(class.burst)
            .arg(cost.max(1))
            .arg(u8::from(spend))
            .invoke_async(&mut connection)
            .await
            .map_err(|e| LimiterError::Backend(e.to_string()))?;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: micros(retry_us),
            reset: micros(reset_us),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check_n(
        &self,
        class: &LimitClass,
        key: &str,
        cost: u32,
    ) -> Result<Decision, LimiterError> {
        self.run(class, key, cost, true).await
    }

    async fn peek(&self, class: &LimitClass, key: &str) -> Result<Decision, LimiterError> {
        self.run(class, key, 1, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(rate: u32, period: Duration, burst: u32) -> LimitClass {
        LimitClass {
            name: "test".into(),
            rate,
            period,
            burst,
        }
    }

    async fn admitted(limiter: &dyn RateLimiter, class: &LimitClass, key: &str, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if limiter.check(class, key).await.unwrap().allowed {
                ok += 1;
            }
        }
        ok
    }

    #[tokio::test]
    async fn memory_admits_the_burst_then_refuses_with_a_retry_time() {
        let limiter = MemoryLimiter::default();
        let class = class(1, Duration::from_secs(3600), 5);
        assert_eq!(admitted(&limiter, &class, "a", 20).await, 5);
        let refused = limiter.check(&class, "a").await.unwrap();
        assert!(!refused.allowed);
        assert!(
            refused.retry_after > Duration::from_secs(3500),
            "{refused:?}"
        );
        // Another key has its own budget.
        assert_eq!(admitted(&limiter, &class, "b", 20).await, 5);
    }

    #[tokio::test]
    async fn remaining_counts_down() {
        let limiter = MemoryLimiter::default();
        let class = class(1, Duration::from_secs(3600), 3);
        let remaining: Vec<u32> = decisions(&limiter, &class, "k", 3)
            .await
            .into_iter()
            .map(|d| d.remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
    }

    async fn decisions(
        limiter: &dyn RateLimiter,
        class: &LimitClass,
        key: &str,
        n: usize,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(limiter.check(class, key).await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_cost_is_charged_whole_or_not_at_all() {
        let limiter = MemoryLimiter::default();
        let class = class(1, Duration::from_secs(3600), 10);
        let first = limiter.check_n(&class, "k", 7).await.unwrap();
        assert!(first.allowed && first.remaining == 3, "{first:?}");
        // Four cells do not fit in the three left: refused, and nothing is spent.
        let refused = limiter.check_n(&class, "k", 4).await.unwrap();
        assert!(!refused.allowed, "{refused:?}");
        assert_eq!(admitted(&limiter, &class, "k", 10).await, 3);
        // More than the whole burst never fits.
        assert!(!limiter.check_n(&class, "fresh", 11).await.unwrap().allowed);
        assert!(limiter.check_n(&class, "fresh", 10).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn peeking_spends_nothing() {
        let limiter = MemoryLimiter::default();
        let class = class(1, Duration::from_secs(3600), 2);
        for _ in 0..5 {
            assert!(limiter.peek(&class, "k").await.unwrap().allowed);
        }
        assert_eq!(admitted(&limiter, &class, "k", 5).await, 2);
        let peeked = limiter.peek(&class, "k").await.unwrap();
        assert!(!peeked.allowed && peeked.retry_after > Duration::from_secs(3500));
    }

    #[tokio::test]
    async fn pruning_keeps_keys_that_are_still_spent() {
        let limiter = MemoryLimiter::default();
        let class = class(1, Duration::from_secs(3600), 2);
        assert_eq!(admitted(&limiter, &class, "k", 5).await, 2);
        limiter.prune();
        assert_eq!(admitted(&limiter, &class, "k", 5).await, 0);
    }

    #[tokio::test]
    async fn redis_admits_the_burst_and_shares_it_between_limiters() {
        let Ok(url) = std::env::var("BAZAAR_TEST_REDIS_URL") else {
            eprintln!(
                "SKIPPED redis_admits_the_burst_and_shares_it_between_limiters: BAZAAR_TEST_REDIS_URL is not set"
            );
            return;
        };
        let prefix = format!("bazaar-test:{}", std::process::id());
        let a = RedisLimiter::connect(&url, &prefix).await.unwrap();
        let b = RedisLimiter::connect(&url, &prefix).await.unwrap();
        let class = class(1, Duration::from_secs(3600), 6);
        let key = format!("shared-{}", bazaar_store::id::wall_clock_ms());
        let first = admitted(&a, &class, &key, 4).await;
        let second = admitted(&b, &class, &key, 10).await;
        assert_eq!(
            first + second,
            6,
            "two limiters on one Redis share one budget"
        );
        let refused = a.check(&class, &key).await.unwrap();
        assert!(
            !refused.allowed && refused.retry_after > Duration::from_secs(3500),
            "{refused:?}"
        );
        let fresh = LimitClass {
            name: "fresh".into(),
            ..class.clone()
        };
        let remaining: Vec<u32> = decisions(&a, &fresh, &key, 3)
            .await
            .into_iter()
            .map(|d| d.remaining)
            .collect();
        assert_eq!(remaining, [5, 4, 3]);
        assert!(a.peek(&fresh, &key).await.unwrap().allowed);
        assert!(!b.check_n(&fresh, &key, 4).await.unwrap().allowed);
        let three = b.check_n(&fresh, &key, 3).await.unwrap();
        assert!(three.allowed && three.remaining == 0, "{three:?}");
        assert!(!a.peek(&fresh, &key).await.unwrap().allowed);
    }
}
