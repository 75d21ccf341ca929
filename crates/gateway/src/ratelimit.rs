//! Rate limiting with the generic cell rate algorithm (GCRA), per key and per class.
//!
//! GCRA keeps one number per key — the *theoretical arrival time* (TAT) of the next request
//! if the client sent exactly at the permitted rate. A request is admitted when
//! `TAT - now <= (burst - 1) × interval`, and then moves TAT one interval further. That
//! admits `burst` requests at once and then `rate` per `period`, with no background refill
//! and O(1) state per key.
//!
//! Two backends implement [`RateLimiter`]: [`MemoryLimiter`] (the `governor` crate, one
//! process) and [`RedisLimiter`] (the same arithmetic in one Lua script, atomic in Redis, so
//! every API process sharing the Redis shares each key's budget).

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Governor};

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

/// Decides whether one more request under `key` fits `class`'s budget.
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug {
    async fn check(&self, class: &LimitClass, key: &str) -> Result<Decision, LimiterError>;
}

type Keyed =
    Governor<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// In-process GCRA: one governor keyed limiter per class.
#[derive(Default)]
pub struct MemoryLimiter {
    /// A `std` mutex around the map of classes: looked up once per request, never held across
    /// an await; each governor limiter is itself lock-free per key.
    limiters: std::sync::Mutex<HashMap<String, Arc<Keyed>>>,
    clock: DefaultClock,
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter").finish_non_exhaustive()
    }
}

impl MemoryLimiter {
    fn limiter(&self, class: &LimitClass) -> Arc<Keyed> {
        let mut limiters = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        limiters
            .entry(class.name.clone())
            .or_insert_with(|| {
                let burst = NonZeroU32::new(class.burst).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(class.interval())
                    .expect("validated: interval > 0")
                    .allow_burst(burst);
                Arc::new(Governor::keyed(quota).with_middleware::<StateInformationMiddleware>())
            })
            .clone()
    }

    /// Forgets keys whose budget is full again, so memory tracks active clients only.
    pub fn prune(&self) {
        let limiters: Vec<Arc<Keyed>> = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for limiter in limiters {
            limiter.retain_recent();
        }
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn check(&self, class: &LimitClass, key: &str) -> Result<Decision, LimiterError> {
        let limiter = self.limiter(class);
        let interval = class.interval();
        Ok(match limiter.check_key(&key.to_owned()) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    remaining,
                    retry_after: Duration::ZERO,
                    reset: interval * (class.burst - remaining.min(class.burst)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after: wait,
                    reset: wait + interval * (class.burst - 1),
                }
            }
        })
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

/// KEYS[1]: the key's TAT. ARGV: interval (µs), burst. Returns {allowed, remaining,
/// retry_after_us, reset_us}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  local retry = tat - now - tolerance
  return {0, 0, retry, tat - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((tolerance + interval - (new_tat - now)) / interval)
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
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, class: &LimitClass, key: &str) -> Result<Decision, LimiterError> {
        let interval_us = u64::try_from(class.interval().as_micros()).unwrap_or(u64::MAX);
        let mut connection = self.connection.clone();
        let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) = self
            .script
            .key(format!("{}:{}:{key}", self.prefix, class.name))
            .arg(interval_us)
            .arg(class.burst)
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
    }
}
