//! The consumers: what happens because of an event, each applied once per event by effect.
//!
//! The queue delivers at least once; exactly-once *effect* is each consumer's own doing:
//!
//! - `tally` counts events by type on the directory shard, recording the event id in the
//!   same transaction as the count (`apply_tally`): a redelivery finds the id and changes
//!   nothing. It is the consumer the crash test counts.
//! - `log` records the event id, then writes one structured line per event (target
//!   `bazaar::events`); a redelivery finds the record and writes nothing. (A crash between
//!   the record and the line loses the line: an effect outside the store cannot share its
//!   transaction, and a log line twice would be the worse lie.)
//! - `cache` drops the product an event is about from this process's product cache. Dropping
//!   a key twice is dropping it once, so it records nothing: idempotent by nature.
//!
//! [`ConsumerHandler`] adapts a consumer to the queue's retry runner, injects faults when
//! told to (a [`FaultSwitch`], set from `fail_rate` and switchable while it runs, for the
//! trade-off lab), and reports metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bazaar_queue::Delivery;
use bazaar_queue::run::{Handler, HandlerError};
use bazaar_store::{ProductId, Store};
use bazaar_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::events::{Envelope, envelope};
use crate::{Catalog, ShopError, now_ms};

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The effect happened now.
    Done,
    /// It had happened before (a redelivery): nothing was done.
    Duplicate,
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// It may work later (the store was busy); the runner retries with backoff.
    #[error("{0}")]
    Retry(String),
    /// It never will (the event is malformed); it goes to the dead-letter queue at once.
    #[error("{0}")]
    Permanent(String),
}

impl From<ShopError> for ConsumerError {
    fn from(error: ShopError) -> Self {
        Self::Retry(error.to_string())
    }
}

impl From<bazaar_store::StoreError> for ConsumerError {
    fn from(error: bazaar_store::StoreError) -> Self {
        Self::Retry(error.to_string())
    }
}

/// One consumer of events.
#[async_trait]
pub trait Consumer: Send + Sync + std::fmt::Debug {
    /// Its name: the consumer group, the metrics label, `events.consumers.<name>`.
    fn name(&self) -> &'static str;

    /// Whether it acts on events of this type; others are acknowledged untouched.
    fn wants(&self, event_type: &str) -> bool;

    /// Applies the event's effect once: a redelivery must be recognised and skipped.
    async fn apply(&self, event: &Envelope) -> Result<Applied, ConsumerError>;
}

/// Drops products whose catalog entry or stock changed from this process's product cache.
#[derive(Debug, Clone)]
pub struct CacheInvalidation {
    pub catalog: Catalog,
}

#[async_trait]
impl Consumer for CacheInvalidation {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn wants(&self, event_type: &str) -> bool {
        ["product.", "variant.", "stock."]
            .iter()
            .any(|prefix| event_type.starts_with(prefix))
    }

    async fn apply(&self, event: &Envelope) -> Result<Applied, ConsumerError> {
        let id: ProductId = event
            .data_str("product_id")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| {
                ConsumerError::Permanent(format!(
                    "a {} event without a valid `product_id`",
                    event.event_type
                ))
            })?;
        self.catalog.forget(id);
        Ok(Applied::Done)
    }
}

/// Counts events by type, exactly once each, on the directory shard.
#[derive(Debug, Clone)]
pub struct Tally {
    pub store: Arc<Store>,
}

#[async_trait]
impl Consumer for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    fn wants(&self, _event_type: &str) -> bool {
        true
    }

    async fn apply(&self, event: &Envelope) -> Result<Applied, ConsumerError> {
        let new = self
            .store
            .directory()
            .apply_tally(self.name(), &event.id, &event.event_type, now_ms())
            .await?;
        Ok(if new {
            Applied::Done
        } else {
            Applied::Duplicate
        })
    }
}

/// Writes one structured log line per event.
#[derive(Debug, Clone)]
pub struct EventLog {
    pub store: Arc<Store>,
}

#[async_trait]
impl Consumer for EventLog {
    fn name(&self) -> &'static str {
        "log"
    }

    fn wants(&self, _event_type: &str) -> bool {
        true
    }

    async fn apply(&self, event: &Envelope) -> Result<Applied, ConsumerError> {
        // The record comes first: of two deliveries racing (the request path of `sync`
        // side effects and the consumer group), exactly one writes the line. A crash
        // between the record and the line loses that line; the log is an operator's aid.
        let new = self
            .store
            .directory()
            .record_processed(self.name(), &event.id, now_ms())
            .await?;
        if !new {
            return Ok(Applied::Duplicate);
        }
        // The payload stays out of the line: it may name a buyer. Operators follow the
        // subject to the order or product.
        tracing::info!(
            target: "bazaar::events",
            id = %event.id,
            r#type = %event.event_type,
            subject = %event.subject,
            source = %event.source,
            time = %event.time,
            "event"
        );
        Ok(Applied::Done)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConsumerLabel {
    consumer: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    consumer: &'static str,
    outcome: &'static str,
}

/// The consumers' metrics.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    duplicates: Family<ConsumerLabel, Counter>,
    redeliveries: Family<ConsumerLabel, Counter>,
    outcomes: Family<OutcomeLabel, Counter>,
    effect_lag: Family<ConsumerLabel, Histogram>,
}

impl EventMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            duplicates: Family::default(),
            redeliveries: Family::default(),
            outcomes: Family::default(),
            effect_lag: Family::new_with_constructor(|| {
                Histogram::new(bazaar_telemetry::LATENCY_BUCKETS.iter().copied())
            }),
        };
        let mut registry = metrics.registry();
        registry.register(
            "consumer_duplicates_skipped",
            "Deliveries of events a consumer had applied already, skipped",
            this.duplicates.clone(),
        );
        registry.register(
            "queue_redeliveries",
            "Deliveries after the first of one event to one consumer",
            this.redeliveries.clone(),
        );
        registry.register(
            "consumer_events",
            "Events handled by a consumer, by outcome (applied, duplicate, ignored, failed)",
            this.outcomes.clone(),
        );
        registry.register(
            "event_effect_lag_seconds",
            "From an event's commit to its effect: the staleness window",
            this.effect_lag.clone(),
        );
        this
    }

    fn outcome(&self, consumer: &'static str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabel { consumer, outcome })
            .inc();
    }
}

/// The share of a consumer's deliveries that fail on purpose, shared by every clone and
/// switchable while the consumer runs: the trade-off lab takes a consumer down (1) for the
/// length of a load and brings it back (0) after, without restarting anything.
///
/// An `f64` kept as its bits in an atomic: a handler reads it once per delivery, lock-free.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicU64>);

impl FaultSwitch {
    /// A switch failing `fail_rate` of deliveries (see [`set`](Self::set)).
    pub fn new(fail_rate: f64) -> Self {
        let switch = Self::default();
        switch.set(fail_rate);
        switch
    }

    /// From now on, fails `fail_rate` of deliveries: 0 none, 1 every one. Values outside
    /// 0..=1 are clamped to it, and NaN counts as 0.
    pub fn set(&self, fail_rate: f64) {
        let rate = if fail_rate.is_nan() {
            0.0
        } else {
            fail_rate.clamp(0.0, 1.0)
        };
        self.0.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// The share of deliveries failing now.
    pub fn fail_rate(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Whether this delivery is to fail; `Some(rate)` says at which rate it was drawn.
    fn trips(&self) -> Option<f64> {
        let rate = self.fail_rate();
        (rate > 0.0 && rand::random::<f64>() < rate).then_some(rate)
    }
}

/// A consumer under the queue's runner: decoding, fault injection, metrics.
#[derive(Debug, Clone)]
pub struct ConsumerHandler {
    consumer: Arc<dyn Consumer>,
    metrics: EventMetrics,
    /// The share of events whose handling fails on purpose (the lab's faulty consumer).
    faults: FaultSwitch,
}

impl ConsumerHandler {
    /// `faults` is shared: the same switch given to several handlers (the consumer group's
    /// and the request path's) fails them all.
    pub fn new(consumer: Arc<dyn Consumer>, metrics: EventMetrics, faults: FaultSwitch) -> Self {
        // Every consumer's counters exist from the start, at 0, so a dashboard (and a rate())
        // sees them before their first increment.
        let label = ConsumerLabel {
            consumer: consumer.name(),
        };
        drop(metrics.duplicates.get_or_create(&label));
        drop(metrics.redeliveries.get_or_create(&label));
        Self {
            consumer,
            metrics,
            faults,
        }
    }

    pub fn name(&self) -> &'static str {
        self.consumer.name()
    }

    /// The switch injecting this handler's failures.
    pub fn faults(&self) -> &FaultSwitch {
        &self.faults
    }

    /// Applies one event now, as the request path of `sync` side effects does.
    pub async fn apply_now(&self, event: &Envelope) -> Result<(), ShopError> {
        self.apply(event)
            .await
            .map_err(|error| ShopError::SideEffect {
                consumer: self.name(),
                reason: error.to_string(),
            })
    }

    async fn apply(&self, event: &Envelope) -> Result<(), ConsumerError> {
        let name = self.consumer.name();
        if !self.consumer.wants(&event.event_type) {
            self.metrics.outcome(name, "ignored");
            return Ok(());
        }
        if let Some(rate) = self.faults.trips() {
            self.metrics.outcome(name, "failed");
            return Err(ConsumerError::Retry(format!(
                "injected failure (events.consumers.{name}.fail_rate = {rate})"
            )));
        }
        match self.consumer.apply(event).await {
            Ok(Applied::Done) => {
                self.metrics.outcome(name, "applied");
                if let Some(lag) = event
                    .committed_at()
                    .and_then(|at| SystemTime::now().duration_since(at).ok())
                {
                    self.metrics
                        .effect_lag
                        .get_or_create(&ConsumerLabel { consumer: name })
                        .observe(lag.as_secs_f64());
                }
                Ok(())
            }
            Ok(Applied::Duplicate) => {
                self.metrics.outcome(name, "duplicate");
                self.metrics
                    .duplicates
                    .get_or_create(&ConsumerLabel { consumer: name })
                    .inc();
                Ok(())
            }
            Err(error) => {
                self.metrics.outcome(name, "failed");
                Err(error)
            }
        }
    }
}

#[async_trait]
impl Handler for ConsumerHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        if delivery.attempt > 1 {
            self.metrics
                .redeliveries
                .get_or_create(&ConsumerLabel {
                    consumer: self.name(),
                })
                .inc();
        }
        let event = Envelope::from_json(&delivery.message.payload)
            .map_err(|error| HandlerError::Permanent(format!("not an event envelope: {error}")))?;
        self.apply(&event).await.map_err(|error| match error {
            ConsumerError::Retry(reason) => HandlerError::Retry(reason),
            ConsumerError::Permanent(reason) => HandlerError::Permanent(reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bazaar_store::OutboxEvent;

    use super::*;

    /// Counts what it applies.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl Consumer for Counting {
        fn name(&self) -> &'static str {
            "tally"
        }

        fn wants(&self, _event_type: &str) -> bool {
            true
        }

        async fn apply(&self, _event: &Envelope) -> Result<Applied, ConsumerError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Applied::Done)
        }
    }

    fn event(id: i64) -> Envelope {
        envelope::from_outbox(
            "shard-0",
            &OutboxEvent {
                id,
                event_id: format!("e-{id}"),
                topic: "order.paid".into(),
                key: "1".into(),
                payload: "{}".into(),
                created_at_ms: 1_000,
            },
        )
    }

    #[test]
    fn a_fault_switch_keeps_a_share_and_clamps_what_is_not_one() {
        let switch = FaultSwitch::default();
        assert_eq!(switch.fail_rate(), 0.0);
        let shared = switch.clone();
        shared.set(0.25);
        assert_eq!(switch.fail_rate(), 0.25, "clones share the rate");
        for (set, kept) in [(1.5, 1.0), (-0.5, 0.0), (f64::NAN, 0.0), (1.0, 1.0)] {
            switch.set(set);
            assert_eq!(switch.fail_rate(), kept, "set({set})");
        }
        assert_eq!(FaultSwitch::new(0.5).fail_rate(), 0.5);
    }

    #[tokio::test]
    async fn a_handler_fails_while_its_switch_is_on_and_applies_once_it_is_off() {
        let consumer = Arc::new(Counting::default());
        let switch = FaultSwitch::new(1.0);
        let handler = ConsumerHandler::new(
            consumer.clone(),
            EventMetrics::register(&Metrics::new()),
            switch.clone(),
        );
        for id in 0..20 {
            let failed = handler.apply_now(&event(id)).await.unwrap_err();
            assert!(failed.to_string().contains("injected failure"), "{failed}");
        }
        assert_eq!(consumer.0.load(Ordering::SeqCst), 0, "nothing was applied");
        // Switched off from outside, through the other handle: the same handler now applies.
        switch.set(0.0);
        assert_eq!(handler.faults().fail_rate(), 0.0);
        for id in 0..20 {
            handler.apply_now(&event(id)).await.unwrap();
        }
        assert_eq!(consumer.0.load(Ordering::SeqCst), 20);
        // Half on: some fail and some pass (2^-200 odds of either never happening).
        switch.set(0.5);
        let mut failed = 0;
        for id in 0..200 {
            failed += usize::from(handler.apply_now(&event(id)).await.is_err());
        }
        assert!((1..200).contains(&failed), "{failed} of 200 failed");
        assert_eq!(consumer.0.load(Ordering::SeqCst), 20 + 200 - failed);
    }
}
