//! The events layer, wired: the queue the configuration names, and the relay, consumer and
//! statistics workers over it.
//!
//! Who runs what: `bazaar serve` runs the relay and the shared consumers (`tally`, `log`)
//! unless `events.run_workers = false`; `bazaar worker` runs only those, without a listener.
//! The `cache` consumer keeps one process's product cache fresh, so every serving process
//! runs its own, in a consumer group of its own (`cache-node-{generator}`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use bazaar_queue::run::{RetryPolicy, process};
use bazaar_queue::{GroupSpec, Queue, Subscription};
use bazaar_shop::Catalog;
use bazaar_shop::events::consumers::{CacheInvalidation, EventLog, Tally};
use bazaar_shop::events::{
    Consumer, ConsumerHandler, EventMetrics, FaultSwitch, Relay, SyncEffects,
};
use bazaar_store::Store;
use bazaar_telemetry::Metrics;
use bazaar_worker::{WorkError, Worker};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{self, Config, ConsumerConfig, QueueBackend, SideEffects};

/// The cache group of node `n` is `cache-node-{n}`: the prefix and the node's generator
/// number, which is how the relay worker tells a dead node's group.
const CACHE_GROUP_PREFIX: &str = "cache-node-";

/// Opens the queue `queue.backend` names.
pub async fn open_queue(config: &Config) -> anyhow::Result<Arc<dyn Queue>> {
    let queue = &config.queue;
    Ok(match queue.backend {
        QueueBackend::Embedded => {
            let dir = &config.store.data_dir;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
            let path = dir.join("queue.sqlite");
            let embedded = bazaar_queue::sqlite::EmbeddedConfig {
                durability: match queue.durability {
                    config::Durability::Full => bazaar_queue::sqlite::Durability::Full,
                    config::Durability::Normal => bazaar_queue::sqlite::Durability::Normal,
                },
                dedupe_window: queue.dedupe_window,
                ..bazaar_queue::sqlite::EmbeddedConfig::default()
            };
            Arc::new(
                bazaar_queue::sqlite::EmbeddedQueue::open(&path, embedded)
                    .await
                    .with_context(|| format!("cannot open the queue {}", path.display()))?,
            )
        }
        QueueBackend::Nats => {
            let nats = bazaar_queue::nats::NatsConfig {
                url: queue.nats.url.clone(),
                stream: queue.nats.stream.clone(),
                // Named after the stream, so that deployments (and tests) sharing a server
                // never share subjects.
                dead_letter_stream: format!("{}_DLQ", queue.nats.stream),
                subject_prefix: queue.nats.stream.to_ascii_lowercase(),
                partitions: queue.nats.partitions,
                duplicate_window: queue.dedupe_window,
                ..bazaar_queue::nats::NatsConfig::default()
            };
            Arc::new(
                bazaar_queue::nats::NatsQueue::connect(nats)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot reach NATS JetStream at {}",
                            config::without_credentials(&queue.nats.url)
                        )
                    })?,
            )
        }
    })
}

/// What a process runs of the events layer.
#[derive(Debug, Default)]
pub struct EventJobs {
    pub workers: Vec<Arc<dyn Worker>>,
    /// Set with `events.side_effects = "sync"`: what the request path runs.
    pub sync: Option<SyncEffects>,
    /// Each consumer's fault switch, by consumer name (`tally`, `cache`, `log`), shared by
    /// its consumer group's worker and the request path: set from `fail_rate`, switchable
    /// while the process runs (the trade-off lab's consumer outage).
    pub faults: BTreeMap<&'static str, FaultSwitch>,
}

/// Which parts of the events layer a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    /// The relay and the shared consumers.
    pub shared: bool,
    /// This process's cache invalidation (only a serving process has a cache).
    pub cache: bool,
}

/// Declares the consumer groups and builds the workers `role` asks for. Groups are declared
/// before the relay starts, so no event published from now on is missed by them.
pub async fn jobs(
    config: &Config,
    store: &Arc<Store>,
    queue: &Arc<dyn Queue>,
    catalog: Option<&Catalog>,
    node: &str,
    metrics: &Metrics,
    role: Role,
) -> anyhow::Result<EventJobs> {
    let events = &config.events;
    let consumer_metrics = EventMetrics::register(metrics);
    let mut jobs = EventJobs::default();
    let mut shared: Vec<ConsumerHandler> = Vec::new();
    let mut candidates: Vec<(Arc<dyn Consumer>, &ConsumerConfig, String)> = Vec::new();
    if role.cache
        && let Some(catalog) = catalog
        && events.consumers.cache.enabled
    {
        candidates.push((
            Arc::new(CacheInvalidation {
                catalog: catalog.clone(),
            }),
            &events.consumers.cache,
            // `node` is `node-{n}` (`app::node_name`), so this is `{CACHE_GROUP_PREFIX}{n}`.
            format!("cache-{node}"),
        ));
    }
    if role.shared {
        if events.consumers.tally.enabled {
            candidates.push((
                Arc::new(Tally {
                    store: store.clone(),
                }),
                &events.consumers.tally,
                "tally".into(),
            ));
        }
        if events.consumers.log.enabled {
            candidates.push((
                Arc::new(EventLog {
                    store: store.clone(),
                }),
                &events.consumers.log,
                "log".into(),
            ));
        }
    }
    for (consumer, settings, group) in candidates {
        let faults = FaultSwitch::new(settings.fail_rate);
        jobs.faults.insert(consumer.name(), faults.clone());
        let handler = ConsumerHandler::new(consumer.clone(), consumer_metrics.clone(), faults);
        let spec = GroupSpec {
            name: group,
            lease: settings.lease,
            max_attempts: settings.max_attempts,
        };
        // This process's own group starts afresh: its cache is empty, so the invalidations
        // a previous process of the same node number left unread are of no use to it.
        let own = consumer.name() == "cache";
        if own {
            queue.remove_group(&spec.name).await?;
        } else {
            shared.push(handler.clone());
        }
        let subscription = queue
            .declare(&spec)
            .await
            .with_context(|| format!("cannot declare the consumer group `{}`", spec.name))?;
        jobs.workers.push(Arc::new(ConsumerWorker {
            name: worker_name(consumer.name()),
            subscription,
            handler,
            policy: RetryPolicy {
                max_attempts: settings.max_attempts,
                base_delay: settings.base_delay,
                max_delay: settings.max_delay,
            },
            batch: settings.batch,
            remove_at_stop: own.then(|| (queue.clone(), spec.name.clone())),
        }));
    }
    if role.shared {
        let relay = Relay::new(
            store.clone(),
            queue.clone(),
            node.to_owned(),
            events.relay_batch,
            (events.relay_interval * 40).max(Duration::from_secs(5)),
        );
        jobs.workers.push(Arc::new(RelayWorker {
            relay,
            store: store.clone(),
            queue: queue.clone(),
            interval: events.relay_interval,
            outbox_retention: events.outbox_retention,
            processed_retention: events.processed_retention,
            last_prune: Mutex::new(None),
        }));
        if events.side_effects == SideEffects::Sync {
            jobs.sync = Some(SyncEffects::new(store.clone(), shared));
        }
    }
    if role.shared {
        jobs.workers.push(Arc::new(EventStats::register(
            queue.clone(),
            store.clone(),
            metrics,
        )));
    }
    Ok(jobs)
}

fn worker_name(consumer: &str) -> &'static str {
    match consumer {
        "cache" => "consumer-cache",
        "tally" => "consumer-tally",
        "log" => "consumer-log",
        _ => "consumer",
    }
}

/// Publishes outbox rows every interval; prunes published rows, remembered event ids and
/// the queue's settled messages once a minute; gives the relay leases back at stop.
#[derive(Debug)]
struct RelayWorker {
    relay: Relay,
    store: Arc<Store>,
    queue: Arc<dyn Queue>,
    interval: Duration,
    outbox_retention: Duration,
    processed_retention: Duration,
    last_prune: Mutex<Option<Instant>>,
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[async_trait]
impl Worker for RelayWorker {
    fn name(&self) -> &'static str {
        "outbox-relay"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn runs_at_start(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        let pass = self.relay.pass().await?;
        if pass.duplicates > 0 {
            tracing::info!(
                duplicates = pass.duplicates,
                "republished outbox rows the queue already had"
            );
        }
        let due = {
            let mut last = self
                .last_prune
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = last.is_none_or(|at| at.elapsed() >= PRUNE_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let rows = self.relay.prune(self.outbox_retention).await?;
            let before = bazaar_shop::now_ms()
                - i64::try_from(self.processed_retention.as_millis()).unwrap_or(i64::MAX);
            let ids = self.store.directory().prune_processed(before).await?;
            let groups = self.forget_dead_nodes().await?;
            let messages = self.queue.prune().await?;
            if rows + ids + messages + groups > 0 {
                tracing::info!(
                    rows,
                    ids,
                    messages,
                    groups,
                    "pruned published outbox rows, old event ids and settled queue messages"
                );
            }
        }
        Ok(())
    }

    async fn drain(&self) -> Result<(), WorkError> {
        self.relay.pass().await?;
        self.relay.release().await?;
        Ok(())
    }
}

impl RelayWorker {
    /// Removes the cache groups (`cache-node-{n}`) of node numbers no live process holds, and
    /// their search groups (`search-node-{n}`) once they hold an event older than
    /// [`crate::search::ORPHAN_GROUP_AFTER`]:
    /// a server killed before it could give its group up would otherwise leave it collecting
    /// every event for ever. A process that takes the number later starts its group afresh.
    async fn forget_dead_nodes(&self) -> Result<u64, WorkError> {
        let held = self
            .store
            .directory()
            .held_generators(bazaar_shop::now_ms())
            .await?;
        let mut removed = 0;
        for group in self.queue.stats().await? {
            // A search group is kept a while for its node to come back (a restart catches up
            // from it instead of rebuilding); a cache group is of no use once its node is gone.
            let (node, keep_for) = match group.group.strip_prefix(CACHE_GROUP_PREFIX) {
                Some(n) => (n.parse::<u16>().ok(), Duration::ZERO),
                None => (
                    group
                        .group
                        .strip_prefix(crate::search::GROUP_PREFIX)
                        .and_then(|n| n.parse::<u16>().ok()),
                    crate::search::ORPHAN_GROUP_AFTER,
                ),
            };
            if let Some(node) = node
                && !held.contains(&node)
                && group.oldest_age.unwrap_or_default() >= keep_for
                && self.queue.remove_group(&group.group).await?
            {
                tracing::info!(group = %group.group, "removed the cache group of a node that is gone");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Receives one consumer group's events and applies them, with retries and dead letters.
#[derive(Debug)]
struct ConsumerWorker {
    name: &'static str,
    subscription: Box<dyn Subscription>,
    handler: ConsumerHandler,
    policy: RetryPolicy,
    batch: usize,
    /// A group of this process's own, removed when it stops.
    remove_at_stop: Option<(Arc<dyn Queue>, String)>,
}

/// A pass drains what is waiting, within this long, then yields to the stop check.
const CONSUMER_PASS: Duration = Duration::from_secs(1);

#[async_trait]
impl Worker for ConsumerWorker {
    fn name(&self) -> &'static str {
        self.name
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(20)
    }

    fn runs_at_start(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        let started = Instant::now();
        loop {
            let report = process(
                self.subscription.as_ref(),
                &self.handler,
                &self.policy,
                self.batch,
                Duration::from_millis(100),
            )
            .await?;
            if report.received == 0 || started.elapsed() >= CONSUMER_PASS {
                return Ok(());
            }
        }
    }

    async fn drain(&self) -> Result<(), WorkError> {
        if let Some((queue, group)) = &self.remove_at_stop {
            queue.remove_group(group).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Samples the queue's and the outbox's backlog into gauges every second.
#[derive(Debug)]
struct EventStats {
    queue: Arc<dyn Queue>,
    store: Arc<Store>,
    depth: Family<QueueLabel, Gauge>,
    oldest: Family<QueueLabel, FloatGauge>,
    in_flight: Family<QueueLabel, Gauge>,
    dlq: Gauge,
    unpublished: Family<ShardLabel, Gauge>,
    outbox_lag: Family<ShardLabel, FloatGauge>,
}

impl EventStats {
    fn register(queue: Arc<dyn Queue>, store: Arc<Store>, metrics: &Metrics) -> Self {
        let this = Self {
            queue,
            store,
            depth: Family::default(),
            oldest: Family::default(),
            in_flight: Family::default(),
            dlq: Gauge::default(),
            unpublished: Family::default(),
            outbox_lag: Family::default(),
        };
        let mut registry = metrics.registry();
        registry.register(
            "queue_depth",
            "Messages a consumer group has not settled yet, in flight included",
            this.depth.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest message a consumer group has not settled",
            this.oldest.clone(),
        );
        registry.register(
            "queue_in_flight",
            "Messages leased to a receiver of a consumer group now",
            this.in_flight.clone(),
        );
        registry.register(
            "dlq_size",
            "Messages in the dead-letter queue",
            this.dlq.clone(),
        );
        registry.register(
            "outbox_unpublished",
            "Outbox rows not yet published to the queue",
            this.unpublished.clone(),
        );
        registry.register(
            "outbox_lag_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            this.outbox_lag.clone(),
        );
        this
    }
}

#[async_trait]
impl Worker for EventStats {
    fn name(&self) -> &'static str {
        "event-stats"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn runs_at_start(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        let groups = self.queue.stats().await?;
        // A removed group's series go with it rather than stay at their last value.
        self.depth.clear();
        self.in_flight.clear();
        self.oldest.clear();
        for group in groups {
            let label = QueueLabel {
                queue: group.group.clone(),
            };
            self.depth
                .get_or_create(&label)
                .set(i64::try_from(group.depth).unwrap_or(i64::MAX));
            self.in_flight
                .get_or_create(&label)
                .set(i64::try_from(group.in_flight).unwrap_or(i64::MAX));
            self.oldest
                .get_or_create(&label)
                .set(group.oldest_age.map_or(0.0, |age| age.as_secs_f64()));
        }
        let dead = self.queue.dead_letters().len().await?;
        self.dlq.set(i64::try_from(dead).unwrap_or(i64::MAX));
        let now = bazaar_shop::now_ms();
        for shard in self.store.shards() {
            let backlog = shard.outbox_backlog().await?;
            let label = ShardLabel {
                shard: shard.name().to_owned(),
            };
            self.unpublished
                .get_or_create(&label)
                .set(i64::try_from(backlog.unpublished).unwrap_or(i64::MAX));
            let lag = backlog
                .oldest_created_at_ms
                .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
            self.outbox_lag.get_or_create(&label).set(lag);
        }
        Ok(())
    }
}
