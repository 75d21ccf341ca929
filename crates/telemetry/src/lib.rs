//! Logging, metrics and their plumbing, shared by every Bazaar layer.
//!
//! # Layout
//!
//! * [`logging`] installs the global `tracing` subscriber (pretty or JSON lines).
//! * [`Metrics`] owns the Prometheus registry. Each layer defines its own metric families
//!   (the store its per-shard latencies, the API its request counters) and registers them at
//!   start-up; `/metrics` renders the registry with [`Metrics::render`].
//!
//! The registry is an explicit value rather than a process-global recorder so that several
//! servers can run in one test process without sharing counters.

pub mod logging;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use prometheus_client;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds, from 50 µs (a cached read) to 10 s (a request timing out).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// The Prometheus content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A shared, cheaply cloned handle to the metrics registry.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// A `std` mutex: registration happens at start-up and rendering copies out text, so no
    /// `.await` ever happens while it is held.
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// An empty registry whose metric names all start with `bazaar_`.
    pub fn new() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix("bazaar"))),
        }
    }

    /// Gives a layer the registry to register its families in.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while registering leaves the registry usable: registration is append-only.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The registry in the OpenMetrics text format that Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        encode(&mut out, &self.registry()).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn registered_metrics_are_rendered_with_the_bazaar_prefix() {
        let metrics = Metrics::new();
        let counter = Counter::<u64>::default();
        metrics
            .registry()
            .register("widgets", "Widgets made", counter.clone());
        counter.inc_by(3);
        let text = metrics.render();
        assert!(text.contains("# TYPE bazaar_widgets counter"), "{text}");
        assert!(text.contains("bazaar_widgets_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
