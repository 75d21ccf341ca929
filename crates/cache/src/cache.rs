//! The concurrent cache: [`Store`]s in lock-striped segments, expiry, metrics, and
//! single-flight loading.
//!
//! # Single flight
//!
//! When many requests miss the same key at once, exactly one of them (the *leader*) runs the
//! loader; the others wait for its result — value or error — instead of stampeding the source
//! of truth. If the leader is cancelled before finishing, a waiter takes over, so no waiter
//! can hang.
//!
//! # Refreshing before readers wait
//!
//! Two ways keep a popular entry's expiry from turning into a burst of misses:
//!
//! * **XFetch** (`xfetch_beta`): a hit shortly before expiry may, with a probability that grows
//!   as expiry nears, reload the entry itself — that caller waits, no one else does.
//! * **Stale-while-revalidate** (`stale_while_revalidate`): for that long past its expiry an
//!   entry is still served, stale, while one background load refreshes it; nobody waits, at
//!   the price of readers seeing the old value for up to one load time after expiry.

use std::collections::HashMap;
use std::error::Error;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics::{CacheCounters, CacheMetrics};
use crate::policy::PolicyKind;
use crate::store::{RemovalCause, Store};

/// A shared, type-erased load error: every waiter of a flight gets the same one.
pub type LoadError = Arc<dyn Error + Send + Sync>;

/// How long an entry lives, decided per value (e.g. short for "not found").
pub type Expiry<V> = Arc<dyn Fn(&V) -> Option<Duration> + Send + Sync>;

/// How much of the capacity a value takes (e.g. its size in bytes).
pub type Weigher<V> = Arc<dyn Fn(&V) -> u64 + Send + Sync>;

/// Settings of one cache.
#[derive(Clone)]
pub struct CacheConfig<V> {
    /// The `cache` label of its metrics.
    pub name: String,
    pub policy: PolicyKind,
    /// The most weight held: a number of entries, as each weighs 1 unless a weigher says
    /// otherwise (then in the weigher's unit, such as bytes). Split evenly between segments;
    /// a value heavier than one segment's share is not cached.
    pub capacity: u64,
    /// The weight of each value.
    pub weigher: Weigher<V>,
    /// How long an entry lives; `None` keeps it until evicted.
    pub expiry: Expiry<V>,
    /// Independently locked segments; more segments, less lock contention.
    pub segments: usize,
    /// XFetch's β: how eagerly a hit close to its expiry refreshes the entry ahead of time
    /// (1.0 is the paper's default; 0 disables early refresh).
    pub xfetch_beta: f64,
    /// How long past its expiry an entry may still be served while a background load
    /// refreshes it (zero: an expired entry is a miss).
    pub stale_while_revalidate: Duration,
}

impl<V> std::fmt::Debug for CacheConfig<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("capacity", &self.capacity)
            .field("segments", &self.segments)
            .field("xfetch_beta", &self.xfetch_beta)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .finish_non_exhaustive()
    }
}

impl<V> CacheConfig<V> {
    /// A cache named `name` of `capacity` entries under `policy`, entries living `ttl`.
    pub fn new(name: &str, policy: PolicyKind, capacity: u64, ttl: Option<Duration>) -> Self {
        Self {
            name: name.to_owned(),
            policy,
            capacity,
            expiry: Arc::new(move |_| ttl),
            weigher: Arc::new(|_| 1),
            segments: 16,
            xfetch_beta: 1.0,
            stale_while_revalidate: Duration::ZERO,
        }
    }

    /// Serves entries up to `window` past their expiry while a background load refreshes
    /// them (zero disables).
    pub fn with_stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Sets XFetch's β (0 disables early refresh).
    pub fn with_xfetch_beta(mut self, beta: f64) -> Self {
        self.xfetch_beta = beta;
        self
    }

    /// Weighs each value (capacity then counts the weigher's unit, not entries).
    pub fn with_weigher(mut self, weigher: impl Fn(&V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Arc::new(weigher);
        self
    }

    /// Decides each entry's lifetime from its value.
    pub fn with_expiry(
        mut self,
        expiry: impl Fn(&V) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.expiry = Arc::new(expiry);
        self
    }
}

type Flight<V> = watch::Receiver<Option<Result<V, LoadError>>>;

/// One lock-striped part of the cache.
type Segment<K, V> = Mutex<Store<K, Slot<V>>>;

/// A value as a segment stores it: with what XFetch needs to decide on an early refresh.
#[derive(Clone)]
struct Slot<V> {
    value: V,
    /// How long the load that produced it took.
    delta: Duration,
    /// When the value stops being fresh. The segment keeps it until then plus the
    /// stale-while-revalidate window.
    expires_at: Option<Instant>,
}

impl<V> Slot<V> {
    fn is_fresh(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// A concurrent bounded cache. Cheap to clone; clones share entries.
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    name: String,
    segments: Box<[Segment<K, V>]>,
    hasher: RandomState,
    expiry: Expiry<V>,
    weigher: Weigher<V>,
    xfetch_beta: f64,
    stale_while_revalidate: Duration,
    /// Loads in progress, by key. A `std` mutex: held only to look up or insert a flight.
    flights: Mutex<HashMap<K, Flight<V>>>,
    metrics: CacheCounters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a segment leaves a consistent store (every method completes its
    // bookkeeping before returning), so keep serving rather than poisoning the cache.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache reporting into `metrics` under `config.name`.
    pub fn new(config: CacheConfig<V>, metrics: &CacheMetrics) -> Self {
        let segments = config.segments.clamp(1, 256);
        let per_segment = config.capacity.div_ceil(segments as u64).max(1);
        Self {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                segments: (0..segments)
                    .map(|_| Mutex::new(Store::new(config.policy, per_segment)))
                    .collect(),
                hasher: RandomState::new(),
                expiry: config.expiry,
                weigher: config.weigher,
                xfetch_beta: config.xfetch_beta,
                stale_while_revalidate: config.stale_while_revalidate,
                flights: Mutex::default(),
                metrics: metrics.for_cache(&config.name),
            }),
        }
    }

    /// The metric label of this cache.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How long `value` stays fresh once stored, by the configured expiry.
    pub fn ttl_of(&self, value: &V) -> Option<Duration> {
        (self.inner.expiry)(value)
    }

    /// The configured expiry.
    pub fn expiry(&self) -> Expiry<V> {
        self.inner.expiry.clone()
    }

    fn segment(&self, key: &K) -> &Segment<K, V> {
        let index = self.inner.hasher.hash_one(key) as usize % self.inner.segments.len();
        &self.inner.segments[index]
    }

    fn report(&self, removed: &[(K, Slot<V>, RemovalCause)]) {
        for (_, _, cause) in removed {
            self.inner.metrics.removed(*cause);
        }
    }

    /// The cached value of `key`, if present and fresh. Counts a hit or a miss.
    pub fn get(&self, key: &K) -> Option<V> {
        let slot = self
            .lookup(key)
            .filter(|slot| slot.is_fresh(Instant::now()));
        self.inner.metrics.request(slot.is_some());
        slot.map(|slot| slot.value)
    }

    fn lookup(&self, key: &K) -> Option<Slot<V>> {
        let mut removed = Vec::new();
        let value = lock(self.segment(key))
            .get(key, Instant::now(), &mut removed)
            .cloned();
        self.report(&removed);
        value
    }

    /// Stores `value` under `key`, with the lifetime the configured expiry gives it.
    ///
    /// A load of `key` already in flight is superseded: its callers still get what it loads,
    /// but it no longer lands in the cache over this newer value.
    pub fn insert(&self, key: K, value: V) {
        self.supersede_flight(&key);
        self.insert_loaded(key, value, Duration::ZERO);
    }

    /// Detaches a load in flight for `key` from the cache (see [`Cache::insert`]).
    fn supersede_flight(&self, key: &K) {
        lock(&self.inner.flights).remove(key);
    }

    fn insert_loaded(&self, key: K, value: V, delta: Duration) {
        let expires_at = (self.inner.expiry)(&value).map(|ttl| Instant::now() + ttl);
        let kept_until = expires_at.map(|at| at + self.inner.stale_while_revalidate);
        let weight = (self.inner.weigher)(&value);
        let value = Slot {
            value,
            delta,
            expires_at,
        };
        let mut removed = Vec::new();
        {
            let mut store = lock(self.segment(&key));
            store.insert(key, value, weight, kept_until, &mut removed);
        }
        self.inner.metrics.inserted();
        self.report(&removed);
    }

    /// Drops `key`, so the next read goes to the source of truth. A load already in flight
    /// may have read the source before the change that prompted this; it is superseded, so
    /// its value is not cached.
    pub fn invalidate(&self, key: &K) {
        // Flight first, then entry: a leader either finds its flight gone and does not
        // store, or stored before this point and its value is removed next.
        self.supersede_flight(key);
        if lock(self.segment(key)).remove(key).is_some() {
            self.inner.metrics.removed(RemovalCause::Explicit);
        }
    }

    /// Entries held now, across segments.
    pub fn len(&self) -> usize {
        self.inner.segments.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached value, or the value `load` produces — run once however many callers miss
    /// the same key concurrently; all of them get its value, or its error (not cached).
    ///
    /// Within the stale-while-revalidate window after expiry, the stale value is returned at
    /// once and `load` runs in a background task (hence `'static`).
    pub async fn get_or_try_load<F, Fut, E>(&self, key: K, load: F) -> Result<V, LoadError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Error + Send + Sync + 'static,
    {
        if let Some(slot) = self.lookup(&key) {
            self.inner.metrics.request(true);
            let fresh = slot.is_fresh(Instant::now());
            if fresh && !self.refresh_early(&slot) {
                return Ok(slot.value);
            }
            // Stale (within the stale-while-revalidate window), or XFetch picked this caller
            // to reload ahead of expiry. If a load is already running, leave it to that one.
            let sender = {
                let mut flights = lock(&self.inner.flights);
                if flights.contains_key(&key) {
                    None
                } else {
                    let (sender, receiver) = watch::channel(None);
                    flights.insert(key.clone(), receiver);
                    Some(sender)
                }
            };
            let Some(sender) = sender else {
                return Ok(slot.value);
            };
            if !fresh {
                let cache = self.clone();
                tokio::spawn(async move {
                    // A failed refresh leaves the stale value until the window closes.
                    let _ = cache.lead(key, load, sender, true).await;
                });
                return Ok(slot.value);
            }
            // A failed early refresh still has a valid value to serve.
            return Ok(self
                .lead(key, load, sender, true)
                .await
                .unwrap_or(slot.value));
        }
        self.inner.metrics.request(false);
        loop {
            // Join a flight in progress, or register a new one to lead. The lock is released
            // at the end of this block, before anything awaits.
            let joined = {
                let mut flights = lock(&self.inner.flights);
                match flights.get(&key) {
                    Some(flight) => Ok(flight.clone()),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        flights.insert(key.clone(), receiver);
                        Err(sender)
                    }
                }
            };
            let mut flight = match joined {
                Ok(flight) => flight,
                Err(sender) => return self.lead(key, load, sender, false).await,
            };
            self.inner.metrics.coalesced();
            if let Ok(result) = flight.wait_for(Option::is_some).await {
                return result.clone().expect("waited for Some");
            }
            // The leader was cancelled before it finished (its guard has already removed the
            // flight): go round again and lead a new one with this caller's own loader.
        }
    }

    async fn lead<F, Fut, E>(
        &self,
        key: K,
        load: F,
        sender: watch::Sender<Option<Result<V, LoadError>>>,
        early: bool,
    ) -> Result<V, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Error + Send + Sync + 'static,
    {
        // Whatever happens — success, error, or this future being dropped — the flight must
        // leave the map, or later callers would wait on it for ever.
        let guard = FlightGuard {
            cache: self,
            key: Some(key.clone()),
            flight: sender.subscribe(),
        };
        // A caller that missed just before the previous flight stored its value may lead a
        // new flight; the value is there now, so serve it rather than load again.
        if !early
            && let Some(slot) = self.lookup(&key)
            && slot.is_fresh(Instant::now())
        {
            drop(guard);
            let _ = sender.send(Some(Ok(slot.value.clone())));
            return Ok(slot.value);
        }
        let started = Instant::now();
        let result = load().await.map_err(|e| Arc::new(e) as LoadError);
        let delta = started.elapsed();
        self.inner.metrics.loaded(delta);
        if let Ok(value) = &result {
            // Store the value only while this flight is still the key's current one (an
            // invalidation or write-through since it started supersedes it). The flights lock
            // is held across the store so an invalidation cannot slip in between.
            let flights = lock(&self.inner.flights);
            if flights
                .get(&key)
                .is_some_and(|f| f.same_channel(&guard.flight))
            {
                self.insert_loaded(key, value.clone(), delta);
            }
        }
        drop(guard);
        let _ = sender.send(Some(result.clone()));
        result
    }
}

impl<K, V> Cache<K, V> {
    /// XFetch (Vattani, Chierichetti & Lowenstein, 2015): refresh a hit early with a
    /// probability that grows as expiry nears, scaled by how long the value took to load
    /// (`delta`) and β. Draws are independent per request, so about one caller refreshes
    /// shortly before expiry instead of every caller missing at once just after it.
    fn refresh_early(&self, slot: &Slot<V>) -> bool {
        let Some(expires_at) = slot.expires_at else {
            return false;
        };
        let beta = self.inner.xfetch_beta;
        if beta <= 0.0 || slot.delta.is_zero() {
            return false;
        }
        let draw: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
        let gap = (slot.delta.as_secs_f64() * beta * -draw.ln()).min(1e9);
        Instant::now() + Duration::from_secs_f64(gap) >= expires_at
    }
}

/// Removes a flight from the map when its leader finishes or is dropped — unless it was
/// superseded and another flight now holds the key.
struct FlightGuard<'a, K: Hash + Eq, V> {
    cache: &'a Cache<K, V>,
    key: Option<K>,
    flight: Flight<V>,
}

impl<K: Hash + Eq, V> Drop for FlightGuard<'_, K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut flights = lock(&self.cache.inner.flights);
            if flights
                .get(&key)
                .is_some_and(|f| f.same_channel(&self.flight))
            {
                flights.remove(&key);
            }
        }
    }
}
