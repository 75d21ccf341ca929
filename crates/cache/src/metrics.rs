//! The cache metrics on `/metrics`, one family each, labelled by cache name.

use std::time::Duration;

use bazaar_telemetry::{LATENCY_BUCKETS, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::store::RemovalCause;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    cache: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    cache: String,
    reason: &'static str,
}

/// Every cache's counters. Register once per registry and hand clones to each cache.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    requests: Family<ResultLabels, Counter>,
    loads: Family<CacheLabel, Counter>,
    coalesced: Family<CacheLabel, Counter>,
    evictions: Family<ReasonLabels, Counter>,
    entries: Family<CacheLabel, Gauge>,
    load_duration: Family<CacheLabel, Histogram>,
}

impl CacheMetrics {
    /// Registers the cache families in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::unregistered();
        let mut registry = metrics.registry();
        registry.register(
            "cache_requests",
            "Cache lookups by cache and result (hit, miss)",
            this.requests.clone(),
        );
        registry.register(
            "cache_loads",
            "Loads from the source of truth after a miss",
            this.loads.clone(),
        );
        registry.register(
            "cache_coalesced",
            "Misses that waited for another request's load instead of loading",
            this.coalesced.clone(),
        );
        registry.register(
            "cache_evictions",
            "Entries that left a cache, by reason",
            this.evictions.clone(),
        );
        registry.register(
            "cache_load_duration_seconds",
            "Time a load from the source of truth took",
            this.load_duration.clone(),
        );
        this
    }

    /// Counters that are not exported anywhere (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            loads: Family::default(),
            coalesced: Family::default(),
            evictions: Family::default(),
            entries: Family::default(),
            load_duration: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
        }
    }

    /// The counters of one cache, looked up once so that the hot path neither allocates a
    /// label nor searches a family.
    pub(crate) fn for_cache(&self, cache: &str) -> CacheCounters {
        let label = CacheLabel {
            cache: cache.to_owned(),
        };
        let result = |result| {
            self.requests
                .get_or_create(&ResultLabels {
                    cache: cache.to_owned(),
                    result,
                })
                .clone()
        };
        let reason = |cause: RemovalCause| {
            self.evictions
                .get_or_create(&ReasonLabels {
                    cache: cache.to_owned(),
                    reason: cause.label(),
                })
                .clone()
        };
        CacheCounters {
            hits: result("hit"),
            misses: result("miss"),
            loads: self.loads.get_or_create(&label).clone(),
            coalesced: self.coalesced.get_or_create(&label).clone(),
            evicted: [
                reason(RemovalCause::Size),
                reason(RemovalCause::Expired),
                reason(RemovalCause::Replaced),
                reason(RemovalCause::Explicit),
            ],
            entries: self.entries.get_or_create(&label).clone(),
            load_duration: self.load_duration.get_or_create(&label).clone(),
        }
    }

    /// Loads so far by `cache` (tests read it to prove single flight).
    pub fn loads(&self, cache: &str) -> u64 {
        self.loads
            .get_or_create(&CacheLabel {
                cache: cache.to_owned(),
            })
            .get()
    }

    /// Misses so far by `cache` that waited for another caller's load.
    pub fn coalesced(&self, cache: &str) -> u64 {
        self.coalesced
            .get_or_create(&CacheLabel {
                cache: cache.to_owned(),
            })
            .get()
    }

    /// Lookups so far by `cache` with `result` (`hit` or `miss`).
    pub fn requests(&self, cache: &str, result: &'static str) -> u64 {
        self.requests
            .get_or_create(&ResultLabels {
                cache: cache.to_owned(),
                result,
            })
            .get()
    }
}

/// One cache's handles into the families.
#[derive(Debug, Clone)]
pub(crate) struct CacheCounters {
    hits: Counter,
    misses: Counter,
    loads: Counter,
    coalesced: Counter,
    /// Indexed by [`RemovalCause`] in declaration order.
    evicted: [Counter; 4],
    entries: Gauge,
    load_duration: Histogram,
}

impl CacheCounters {
    pub(crate) fn request(&self, hit: bool) {
        if hit {
            self.hits.inc()
        } else {
            self.misses.inc()
        };
    }

    pub(crate) fn loaded(&self, took: Duration) {
        self.loads.inc();
        self.load_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn coalesced(&self) {
        self.coalesced.inc();
    }

    pub(crate) fn inserted(&self) {
        self.entries.inc();
    }

    pub(crate) fn removed(&self, cause: RemovalCause) {
        let index = match cause {
            RemovalCause::Size => 0,
            RemovalCause::Expired => 1,
            RemovalCause::Replaced => 2,
            RemovalCause::Explicit => 3,
        };
        self.evicted[index].inc();
        self.entries.dec();
    }
}
