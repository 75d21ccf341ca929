//! The cache metrics on `/metrics`, one family each, labelled by cache name.

use std::time::Duration;

use bazaar_telemetry::{LATENCY_BUCKETS, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
            load_duration: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
        }
    }

    pub(crate) fn request(&self, cache: &str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.requests
            .get_or_create(&ResultLabels {
                cache: cache.to_owned(),
                result,
            })
            .inc();
    }

    pub(crate) fn loaded(&self, cache: &str, took: Duration) {
        let label = CacheLabel {
            cache: cache.to_owned(),
        };
        self.loads.get_or_create(&label).inc();
        self.load_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn record_coalesced(&self, cache: &str) {
        self.coalesced
            .get_or_create(&CacheLabel {
                cache: cache.to_owned(),
            })
            .inc();
    }

    pub(crate) fn evicted(&self, cache: &str, cause: RemovalCause) {
        self.evictions
            .get_or_create(&ReasonLabels {
                cache: cache.to_owned(),
                reason: cause.label(),
            })
            .inc();
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
