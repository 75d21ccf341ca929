//! Configuration: built-in defaults, then an optional TOML file, then `BAZAAR_*` environment
//! variables (`__` separates sections: `BAZAAR_HTTP__LISTEN`), then command-line flags.
//!
//! Unknown keys are errors, not silently ignored: a misspelt setting should stop start-up,
//! not run the system with the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bazaar_store::placement::PlacementKind;
use bazaar_telemetry::logging::LogFormat;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything Bazaar can be configured with. `bazaar config print` shows the effective values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub catalog: CatalogConfig,
    pub shop: ShopConfig,
    pub graphql: GraphqlConfig,
    pub cache: CacheConfig,
    pub orders: OrdersConfig,
    pub payments: PaymentsConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub log: LogConfig,
    pub node: NodeConfig,
    pub queue: QueueConfig,
    pub events: EventsConfig,
    pub search: SearchConfig,
}

/// This process among the processes sharing a store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The id generator number (1 to 1023) this process stamps ids with. Unset (the
    /// default): the lowest free one is leased from the store at start-up. Set: exactly this
    /// one is leased, and start-up fails if another running process holds it.
    pub id: Option<NodeId>,
}

/// An id generator number a process may be given: 1 to 1023 (0 stamps the demo catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u16")]
pub struct NodeId(u16);

impl NodeId {
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<i64> for NodeId {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, String> {
        u16::try_from(n)
            .ok()
            .filter(|n| crate::node::LIVE_GENERATORS.contains(n))
            .map(Self)
            .ok_or_else(|| format!("expected a whole number from 1 to 1023, found {n}"))
    }
}

impl From<NodeId> for u16 {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// How long stock stays held for an unpaid order before the sweeper returns it.
    #[serde(with = "humantime_serde")]
    pub reservation_ttl: Duration,
    /// How long an `Idempotency-Key` and its response are kept.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// An order left unsettled this long belongs to a checkout that died; the sweeper
    /// finishes it. Must exceed the slowest payment call.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// How often the sweeper runs.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Units of one variant a cart line may hold.
    pub max_quantity: i64,
    /// Lines a cart may hold.
    pub max_lines: i64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        let shop = bazaar_shop::orders::OrdersConfig::default();
        Self {
            reservation_ttl: shop.reservation_ttl,
            idempotency_ttl: shop.idempotency_ttl,
            stale_after: shop.stale_after,
            sweep_interval: Duration::from_secs(1),
            max_quantity: shop.max_quantity,
            max_lines: shop.max_lines,
        }
    }
}

impl OrdersConfig {
    /// The shop's settings.
    pub fn shop(&self) -> bazaar_shop::orders::OrdersConfig {
        bazaar_shop::orders::OrdersConfig {
            reservation_ttl: self.reservation_ttl,
            idempotency_ttl: self.idempotency_ttl,
            stale_after: self.stale_after,
            max_quantity: self.max_quantity,
            max_lines: self.max_lines,
            ..bazaar_shop::orders::OrdersConfig::default()
        }
    }
}

/// The simulated payment provider (the only one so far).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// Added to every payment call.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Share of payments declined, 0 to 1.
    pub decline_rate: f64,
    /// Share of payment calls that time out (half of them having taken effect), 0 to 1.
    pub timeout_rate: f64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            decline_rate: 0.0,
            timeout_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// A request still running after this is answered with 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Origins browsers may call the API from (CORS), e.g. `["https://shop.example"]`.
    pub cors_origins: Vec<String>,
    /// Proxies (CIDR blocks, e.g. `["10.0.0.0/8"]`) whose `Forwarded` / `X-Forwarded-For`
    /// name the client, for rate limits and logs. Empty (the default) believes no one: every
    /// client is its peer address.
    pub trusted_proxies: Vec<Cidr>,
}

/// A CIDR block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is its own block.
/// Refused while the configuration is read, so a bad one stops start-up naming its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        raw.parse::<ipnet::IpNet>()
            .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(|net| Self(net.trunc()))
            .map_err(|_| {
                format!("expected a CIDR block such as 10.0.0.0/8 or 2001:db8::/32, found `{raw}`")
            })
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: Duration::from_secs(30),
            body_limit: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (embedded files under `data_dir`, the default) or `postgres` (one database
    /// per shard, listed in `store.postgres.shards`).
    pub backend: StoreBackend,
    /// Where the shard files live (SQLite), and the key file and queue in every case.
    pub data_dir: PathBuf,
    /// How many shards (SQLite files) the ring spreads the catalog over. Fixed once a data
    /// directory has been created. With PostgreSQL the count is the number of URLs in
    /// `store.postgres.shards`.
    pub shards: usize,
    /// Virtual nodes per shard on the hash ring. Fixed once a data directory has been created.
    pub vnodes: u32,
    /// How keys are placed on shards: `ring` (consistent hashing, the default: adding a shard
    /// moves about 1/(N+1) of the keys) or `modulo` (`hash mod N`, which moves about
    /// N/(N+1); kept to measure the difference). Fixed once a store has been created.
    pub placement: PlacementKind,
    /// `full` (every commit is fsynced before it is acknowledged) or `normal` (WAL commits may
    /// be lost on power failure, never corrupted).
    pub durability: Durability,
    /// How long a query waits for a locked database before failing.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Connections per shard.
    pub max_connections: u32,
    /// `false` writes no outbox events. Only for measuring what the outbox costs a write:
    /// with it off, nothing downstream (other processes' caches, consumers) learns of a
    /// change.
    pub outbox: bool,
    /// The PostgreSQL backend's settings, read when `backend = "postgres"`.
    pub postgres: PostgresStoreConfig,
}

/// Which engine holds the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Sqlite,
    Postgres,
}

/// `[store.postgres]`: one database per shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresStoreConfig {
    /// One URL per shard, in ring order (`shards[0]` is `shard-0`, the directory shard), on
    /// one server or many: `postgres://user:password@host:5432/bazaar_0`. Fixed once the
    /// databases hold data; opening them with another count is refused.
    pub shards: Vec<String>,
    /// Connections per shard.
    pub max_connections: u32,
    /// How long connecting (or waiting for a pooled connection) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for PostgresStoreConfig {
    fn default() -> Self {
        Self {
            shards: Vec::new(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl StoreConfig {
    /// Where the shards are, for messages: `4 shards in ./bazaar-data` or `2 PostgreSQL
    /// shards`.
    pub fn describe(&self) -> String {
        match self.backend {
            StoreBackend::Sqlite => {
                format!("{} shards in {}", self.shards, self.data_dir.display())
            }
            StoreBackend::Postgres => format!("{} PostgreSQL shards", self.postgres.shards.len()),
        }
    }

    /// How many shards the ring has, on either backend.
    pub fn shard_count(&self) -> usize {
        match self.backend {
            StoreBackend::Sqlite => self.shards,
            StoreBackend::Postgres => self.postgres.shards.len(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sqlite,
            data_dir: PathBuf::from("./bazaar-data"),
            shards: 4,
            vnodes: bazaar_ring::DEFAULT_VNODES,
            placement: PlacementKind::Ring,
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
            outbox: true,
            postgres: PostgresStoreConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Full,
    Normal,
}

/// The message queue the outbox relay publishes to and consumers receive from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `embedded` (a SQLite file, `queue.sqlite`, in the data directory; processes sharing
    /// the directory share the queue) or `nats` (NATS JetStream at `queue.nats.url`).
    pub backend: QueueBackend,
    /// The embedded queue's commits: `full` (fsynced before a publish returns) or `normal`.
    pub durability: Durability,
    /// A message id published again within this window is absorbed, not delivered twice.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    pub nats: NatsConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Embedded,
            durability: Durability::Full,
            dedupe_window: Duration::from_secs(3600),
            nats: NatsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    Embedded,
    Nats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The NATS server (JetStream enabled), e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream holding the events.
    pub stream: String,
    /// Partitions the ordering keys are hashed onto; the order per key holds per partition.
    /// Fixed for the life of the stream.
    pub partitions: u16,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            stream: "BAZAAR_EVENTS".into(),
            partitions: 16,
        }
    }
}

/// Search: the engine, how fresh it is kept, typo tolerance and ranking (`docs/search.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// `tantivy` (the embedded engine) or `fts5` (SQLite FTS5 ranked by bm25: the baseline
    /// it is measured against; no typo tolerance, no boosts).
    pub engine: SearchEngine,
    /// How often applied catalog and stock changes are committed to the index (made
    /// searchable): the freshness bound, and the cost of one commit per interval.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// The indexing buffer, MiB (tantivy's writer heap; at least 15).
    pub writer_memory_mb: usize,
    /// Words this long match within one (two) edits; `one_edit_from = 0` turns it off.
    pub typo_tolerance: bazaar_search::Fuzziness,
    /// Field boosts on BM25, the share an inexact match scores, the words a product may
    /// miss, and the stock and popularity multipliers.
    pub ranking: bazaar_search::Ranking,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            engine: SearchEngine::Tantivy,
            commit_interval: Duration::from_secs(1),
            writer_memory_mb: 64,
            typo_tolerance: bazaar_search::Fuzziness::default(),
            ranking: bazaar_search::Ranking::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchEngine {
    Tantivy,
    Fts5,
}

/// The most words `search.ranking.may_miss` may let a product miss (a query has at most 16).
pub const MAX_MAY_MISS: usize = 8;

impl SearchConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.commit_interval < Duration::from_millis(10)
            || self.commit_interval > Duration::from_secs(300)
        {
            return Err(ConfigError(format!(
                "`search.commit_interval` is {:?}; expected 10ms to 5m, such as `1s`",
                self.commit_interval
            )));
        }
        if !(15..=4096).contains(&self.writer_memory_mb) {
            return Err(ConfigError(format!(
                "`search.writer_memory_mb` is {}; expected an integer from 15 to 4096",
                self.writer_memory_mb
            )));
        }
        let typo = &self.typo_tolerance;
        if typo.one_edit_from > 0 && typo.two_edits_from < typo.one_edit_from {
            return Err(ConfigError(format!(
                "`search.typo_tolerance.two_edits_from` is {}; expected at least `one_edit_from` ({})",
                typo.two_edits_from, typo.one_edit_from
            )));
        }
        let r = &self.ranking;
        if r.may_miss > crate::config::MAX_MAY_MISS {
            return Err(ConfigError(format!(
                "`search.ranking.may_miss` is {}; expected an integer from 0 to {MAX_MAY_MISS}",
                r.may_miss
            )));
        }
        for (name, value) in [
            ("name_boost", r.name_boost),
            ("brand_boost", r.brand_boost),
            ("category_boost", r.category_boost),
            ("variant_boost", r.variant_boost),
            ("description_boost", r.description_boost),
            ("inexact_factor", r.inexact_factor),
            ("in_stock_boost", r.in_stock_boost),
            ("popularity_boost", r.popularity_boost),
        ] {
            if !value.is_finite() || !(0.0..=100.0).contains(&value) {
                return Err(ConfigError(format!(
                    "`search.ranking.{name}` is {value}; expected a number from 0 to 100"
                )));
            }
        }
        Ok(())
    }
}

/// Events: the outbox relay, the consumers, and where side effects run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `bazaar serve` runs the relay and the consumers in-process; `false` leaves them to
    /// `bazaar worker` processes.
    pub run_workers: bool,
    /// `async`: a write request commits its events and answers; consumers apply them soon
    /// after. `sync`: the request also applies every consumer's effect before answering,
    /// and fails if one fails.
    pub side_effects: SideEffects,
    /// How often the relay looks for unpublished outbox rows.
    #[serde(with = "humantime_serde")]
    pub relay_interval: Duration,
    /// Outbox rows the relay publishes per shard per pass.
    pub relay_batch: usize,
    /// How long published outbox rows are kept before they are pruned.
    #[serde(with = "humantime_serde")]
    pub outbox_retention: Duration,
    /// How long consumers remember the event ids they applied (redeliveries older than this
    /// are not recognised).
    #[serde(with = "humantime_serde")]
    pub processed_retention: Duration,
    pub consumers: ConsumersConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            run_workers: true,
            side_effects: SideEffects::Async,
            relay_interval: Duration::from_millis(50),
            relay_batch: 500,
            outbox_retention: Duration::from_secs(24 * 3600),
            processed_retention: Duration::from_secs(7 * 24 * 3600),
            consumers: ConsumersConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SideEffects {
    Async,
    Sync,
}

/// Every consumer, by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumersConfig {
    /// Drops other processes' cached copies of products whose catalog or stock changed.
    pub cache: ConsumerConfig,
    /// Counts events by type on the directory shard, exactly once per event.
    pub tally: ConsumerConfig,
    /// Writes one structured log line per event (target `bazaar::events`). Off by default.
    pub log: ConsumerConfig,
}

impl Default for ConsumersConfig {
    fn default() -> Self {
        Self {
            cache: ConsumerConfig::default(),
            tally: ConsumerConfig::default(),
            log: ConsumerConfig {
                enabled: false,
                ..ConsumerConfig::default()
            },
        }
    }
}

/// One consumer's retries and lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    pub enabled: bool,
    /// Deliveries before a failing event goes to the dead-letter queue.
    pub max_attempts: u32,
    /// The first retry waits up to this (full jitter), doubling per attempt...
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// ...up to this.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// How long a received event is leased before it is delivered again.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Events handled per pass.
    pub batch: usize,
    /// Fault injection for experiments (`bazaar lab tradeoff sync-async`): the share of
    /// events whose handling fails, 0 to 1. Leave at 0.
    pub fail_rate: f64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(300),
            lease: Duration::from_secs(30),
            batch: 100,
            fail_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Demo products `serve` writes when the store is empty; 0 disables.
    pub demo_products: u64,
    /// Seed of the demo catalog's random stream.
    pub demo_seed: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            demo_products: 1000,
            demo_seed: bazaar_shop::demo::DEFAULT_SEED,
        }
    }
}

/// What the shop sells in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShopConfig {
    /// The ISO 4217 codes a price may be in; each is three upper-case letters, checked while
    /// the configuration is read. Prices already stored in another currency are kept.
    pub currencies: Vec<bazaar_store::Currency>,
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            currencies: bazaar_shop::catalog::DEFAULT_CURRENCIES.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlConfig {
    /// Deepest selection nesting a query may have.
    pub max_depth: usize,
    /// Largest cost a query may have (a list costs its page size times its children).
    pub max_complexity: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        let limits = bazaar_api::graphql::GraphqlLimits::default();
        Self {
            max_depth: limits.max_depth,
            max_complexity: limits.max_complexity,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Products with their variants, on `GET /products/{id}`, its variants and GraphQL's
    /// `product(id)`; read-through by default.
    pub products: ProductCacheConfig,
    /// User rows for profile reads (`GET /users/{id}`, `/users/me`); cache-aside by default.
    pub users: UserCacheConfig,
    /// Product view counts; written back by default.
    pub views: ViewsConfig,
    /// Redis shared by every process: invalidation over pub/sub, and the L2 tier.
    pub redis: CacheRedisConfig,
}

/// A caching strategy by its configuration name (see `bazaar_cache::strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheStrategy {
    CacheAside,
    ReadThrough,
    WriteThrough,
    WriteBack,
}

impl From<CacheStrategy> for bazaar_cache::Strategy {
    fn from(strategy: CacheStrategy) -> Self {
        match strategy {
            CacheStrategy::CacheAside => Self::CacheAside,
            CacheStrategy::ReadThrough => Self::ReadThrough,
            CacheStrategy::WriteThrough => Self::WriteThrough,
            CacheStrategy::WriteBack => Self::WriteBack,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheRedisConfig {
    /// The Redis every process of one deployment shares; empty (the default) keeps caching
    /// in-process, for a single server. When set, every cache write is published on
    /// `channel` so other processes drop their copies.
    pub url: String,
    /// The pub/sub channel for invalidations.
    pub channel: String,
    /// The prefix of every key the L2 tier writes.
    pub prefix: String,
    /// The longest one process holds the lock to load a key missing from L2; a crashed
    /// holder delays the others no longer than this.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// How long L2 keeps a value past its TTL, to serve it while another process reloads.
    #[serde(with = "humantime_serde")]
    pub keep_stale: Duration,
    /// The longest one L2 command may take before the read goes to the store instead.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CacheRedisConfig {
    fn default() -> Self {
        let tier = bazaar_cache::TierSettings::default();
        Self {
            url: String::new(),
            channel: "bazaar:cache:invalidate".into(),
            prefix: tier.prefix,
            lock_ttl: tier.lock_ttl,
            keep_stale: tier.keep_stale,
            timeout: tier.timeout,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewsConfig {
    /// `write-back` buffers views and stores them every `flush_interval`; `write-through`
    /// stores each view as it happens (and so drops the product from the product cache).
    pub strategy: CacheStrategy,
    /// How often buffered views are written to the store: the most a crash can lose.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for ViewsConfig {
    fn default() -> Self {
        Self {
            strategy: CacheStrategy::WriteBack,
            flush_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserCacheConfig {
    /// `false` sends every profile read to the store.
    pub enabled: bool,
    /// `cache-aside`, `read-through` or `write-through`.
    pub strategy: CacheStrategy,
    pub policy: Eviction,
    /// Users held, at most.
    pub capacity: u64,
    /// How long a cached profile may be served: the staleness bound for changes made through
    /// another process.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for UserCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            strategy: CacheStrategy::CacheAside,
            policy: Eviction::Lru,
            capacity: 10_000,
            ttl: Duration::from_secs(30),
        }
    }
}

/// An eviction policy by its configuration name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Eviction {
    Lru,
    Lfu,
    #[serde(rename = "w-tinylfu")]
    WTinyLfu,
}

impl From<Eviction> for bazaar_cache::PolicyKind {
    fn from(eviction: Eviction) -> Self {
        match eviction {
            Eviction::Lru => Self::Lru,
            Eviction::Lfu => Self::Lfu,
            Eviction::WTinyLfu => Self::WTinyLfu,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProductCacheConfig {
    /// `false` sends every read to the store.
    pub enabled: bool,
    /// `read-through`, `write-through` or `cache-aside`.
    pub strategy: CacheStrategy,
    pub policy: Eviction,
    /// Products held, at most.
    pub capacity: u64,
    /// How long a cached product may be served: the staleness bound for writes made through
    /// another process.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long "no such product" is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// How long past `ttl` a product may still be served while one background load
    /// refreshes it; 0 (the default) makes an expired product a miss.
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// Put the shared Redis tier (`cache.redis.url`) under the in-process cache.
    pub l2: bool,
}

impl Default for ProductCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            strategy: CacheStrategy::ReadThrough,
            policy: Eviction::WTinyLfu,
            capacity: 100_000,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            stale_while_revalidate: Duration::ZERO,
            l2: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The `iss` of access tokens.
    pub issuer: String,
    /// The `aud` of access tokens.
    pub audience: String,
    /// How long an access token lives.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// How long a refresh token may wait to be used.
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// Argon2id memory cost in KiB (at least 19456, OWASP's minimum).
    pub argon2_memory_kib: u32,
    /// Argon2id passes (at least 2).
    pub argon2_iterations: u32,
    /// Argon2id lanes (at least 1).
    pub argon2_parallelism: u32,
    /// Calls per UTC day each new API key may make.
    pub api_key_daily_quota: i64,
    /// The file holding signing and encryption keys; created with fresh keys if missing.
    /// Default: `secrets.toml` in the data directory.
    pub secrets_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let argon = bazaar_shop::crypto::ArgonParams::OWASP_MINIMUM;
        Self {
            issuer: "bazaar".into(),
            audience: "bazaar-api".into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            argon2_memory_kib: argon.memory_kib,
            argon2_iterations: argon.iterations,
            argon2_parallelism: argon.parallelism,
            api_key_daily_quota: 10_000,
            secrets_file: None,
        }
    }
}

impl AuthConfig {
    pub fn argon(&self) -> bazaar_shop::crypto::ArgonParams {
        bazaar_shop::crypto::ArgonParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterBackend {
    /// In this process: each API process has its own budgets.
    Memory,
    /// In Redis: every process using the same Redis shares each budget.
    Redis,
}

/// One budget: `burst` requests at once, refilled at `rate` per `period`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSetting {
    pub rate: u32,
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    pub burst: u32,
}

impl LimitSetting {
    const fn new(rate: u32, period_secs: u64, burst: u32) -> Self {
        Self {
            rate,
            period: Duration::from_secs(period_secs),
            burst,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `false` turns every limit off (for load tests).
    pub enabled: bool,
    pub backend: LimiterBackend,
    /// Used when `backend = "redis"`.
    pub redis_url: String,
    /// Prefix of the limiter's Redis keys.
    pub redis_prefix: String,
    /// Safe requests (GET) per client.
    pub read: LimitSetting,
    /// Unsafe requests (POST, PATCH, DELETE) per client.
    pub write: LimitSetting,
    /// `/auth/*` per client address.
    pub auth: LimitSetting,
    /// Sign-in attempts per account, from any address.
    pub login_account: LimitSetting,
    /// Requests whose credential fails to verify, per client address. Small: a client that
    /// keeps presenting bad tokens or keys is guessing, and each guess at a key costs a
    /// store read.
    pub failed_auth: LimitSetting,
    /// GraphQL complexity points per `read` unit a query is charged (rounded up). The
    /// default makes the largest query `graphql.max_complexity` admits cost one full default
    /// `read` burst.
    pub graphql_complexity_per_read: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: LimiterBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "bazaar:ratelimit".into(),
            read: LimitSetting::new(100, 1, 200),
            write: LimitSetting::new(20, 1, 40),
            auth: LimitSetting::new(10, 60, 10),
            login_account: LimitSetting::new(5, 60, 5),
            failed_auth: LimitSetting::new(10, 60, 10),
            graphql_complexity_per_read: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for a terminal, `json` for machines.
    pub format: LogFormat,
    /// `RUST_LOG` syntax; `bazaar_api=debug` logs every request.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info,sqlx::postgres::notice=warn".into(),
        }
    }
}

/// Settings given as command-line flags, which win over every other source.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub demo_products: Option<u64>,
}

/// Why the configuration cannot be used. Its message names the key and the expected form.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults ← `file` ← environment ← `overrides`, then checks value ranges.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only nested keys are settings (every setting lives in a section); this leaves
        // variables such as BAZAAR_TEST_POSTGRES_URL, meant for the test suite, alone.
        figment = figment.merge(
            Env::prefixed("BAZAAR_")
                .split("__")
                .filter(|key| key.as_str().contains('.')),
        );
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("http.listen", listen));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("store.data_dir", dir));
        }
        if let Some(n) = overrides.demo_products {
            figment = figment.merge(Serialized::default("catalog.demo_products", n));
        }
        let config: Config = figment.extract().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError(format!(
                    "`{key}` is {value}; expected an integer from {low} to {high}"
                )))
            }
        };
        range("store.shards", self.store.shards as u64, 1, 256)?;
        if self.store.backend == StoreBackend::Postgres {
            let postgres = &self.store.postgres;
            if postgres.shards.is_empty() {
                return Err(ConfigError(
                    "`store.backend` is \"postgres\" but `store.postgres.shards` is empty; \
                     expected one URL per shard, such as [\"postgres://127.0.0.1/bazaar_0\"]"
                        .into(),
                ));
            }
            range(
                "store.postgres.shards",
                postgres.shards.len() as u64,
                1,
                256,
            )?;
            for (index, url) in postgres.shards.iter().enumerate() {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(ConfigError(format!(
                        "`store.postgres.shards[{index}]` is `{}`; expected a URL starting \
                         with postgres:// or postgresql://",
                        without_credentials(url)
                    )));
                }
            }
            range(
                "store.postgres.max_connections",
                u64::from(postgres.max_connections),
                1,
                1024,
            )?;
        }
        range("store.vnodes", u64::from(self.store.vnodes), 1, 65_536)?;
        range(
            "store.max_connections",
            u64::from(self.store.max_connections),
            1,
            256,
        )?;
        range("http.body_limit", self.http.body_limit as u64, 1, 1 << 30)?;
        if self.shop.currencies.is_empty() {
            return Err(ConfigError(
                "`shop.currencies` is empty; expected ISO 4217 codes such as [\"USD\", \"EUR\"]"
                    .into(),
            ));
        }
        range("graphql.max_depth", self.graphql.max_depth as u64, 1, 1000)?;
        range(
            "graphql.max_complexity",
            self.graphql.max_complexity as u64,
            1,
            1_000_000,
        )?;
        if !self.auth.argon().meets_owasp_minimum() {
            return Err(ConfigError(format!(
                "`auth.argon2_*` is below OWASP's minimum for argon2id; expected memory_kib >= {}, iterations >= {}, parallelism >= 1",
                bazaar_shop::crypto::ArgonParams::OWASP_MINIMUM.memory_kib,
                bazaar_shop::crypto::ArgonParams::OWASP_MINIMUM.iterations
            )));
        }
        if self.auth.access_ttl.is_zero() || self.auth.refresh_ttl < self.auth.access_ttl {
            return Err(ConfigError(
                "`auth.access_ttl` must be above zero and `auth.refresh_ttl` at least as long"
                    .into(),
            ));
        }
        range(
            "auth.api_key_daily_quota",
            u64::try_from(self.auth.api_key_daily_quota).unwrap_or(0),
            1,
            1_000_000_000,
        )?;
        let limits = &self.rate_limits;
        for (key, setting) in [
            ("read", &limits.read),
            ("write", &limits.write),
            ("auth", &limits.auth),
            ("login_account", &limits.login_account),
            ("failed_auth", &limits.failed_auth),
        ] {
            if setting.rate == 0
                || setting.burst == 0
                || setting.period.is_zero()
                || (setting.period / setting.rate).is_zero()
            {
                return Err(ConfigError(format!(
                    "`rate_limits.{key}` needs rate, burst and period above zero, e.g. {{ rate = 100, period = \"1s\", burst = 200 }}"
                )));
            }
        }
        range(
            "rate_limits.graphql_complexity_per_read",
            limits.graphql_complexity_per_read as u64,
            1,
            1_000_000,
        )?;
        for origin in &self.http.cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(ConfigError(format!(
                    "`http.cors_origins` holds `{origin}`; expected origins such as https://shop.example"
                )));
            }
        }
        let read_paths = [
            CacheStrategy::CacheAside,
            CacheStrategy::ReadThrough,
            CacheStrategy::WriteThrough,
        ];
        for (key, strategy, offered) in [
            (
                "cache.products.strategy",
                self.cache.products.strategy,
                &read_paths[..],
            ),
            (
                "cache.users.strategy",
                self.cache.users.strategy,
                &read_paths[..],
            ),
            (
                "cache.views.strategy",
                self.cache.views.strategy,
                &[CacheStrategy::WriteBack, CacheStrategy::WriteThrough][..],
            ),
        ] {
            if !offered.contains(&strategy) {
                let names: Vec<String> = offered
                    .iter()
                    .map(|s| format!("`{}`", bazaar_cache::Strategy::from(*s)))
                    .collect();
                return Err(ConfigError(format!(
                    "`{key}` is `{}`, which this cache does not offer; expected {}",
                    bazaar_cache::Strategy::from(strategy),
                    names.join(" or ")
                )));
            }
        }
        if self.cache.products.l2 && self.cache.redis.url.is_empty() {
            return Err(ConfigError(
                "`cache.products.l2` is on but `cache.redis.url` is empty; set it to the shared Redis, e.g. redis://127.0.0.1:6379".into(),
            ));
        }
        if self.cache.redis.lock_ttl.is_zero() || self.cache.redis.timeout.is_zero() {
            return Err(ConfigError(
                "`cache.redis.lock_ttl` and `cache.redis.timeout` must be above zero, e.g. `2s` and `250ms`".into(),
            ));
        }
        for (key, rate) in [
            ("payments.decline_rate", self.payments.decline_rate),
            ("payments.timeout_rate", self.payments.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError(format!(
                    "`{key}` is {rate}; expected a share from 0 to 1, such as 0.05"
                )));
            }
        }
        let orders = &self.orders;
        if orders.reservation_ttl.is_zero()
            || orders.idempotency_ttl.is_zero()
            || orders.stale_after.is_zero()
            || orders.sweep_interval.is_zero()
        {
            return Err(ConfigError(
                "`orders.reservation_ttl`, `idempotency_ttl`, `stale_after` and `sweep_interval` must be above zero".into(),
            ));
        }
        if orders.stale_after <= self.payments.latency * 2 {
            return Err(ConfigError(format!(
                "`orders.stale_after` ({:?}) must exceed twice `payments.latency` ({:?}), or the sweeper would take over live checkouts",
                orders.stale_after, self.payments.latency
            )));
        }
        if !(1..=10_000).contains(&orders.max_quantity) || !(1..=1_000).contains(&orders.max_lines)
        {
            return Err(ConfigError(
                "`orders.max_quantity` must be from 1 to 10000 and `orders.max_lines` from 1 to 1000".into(),
            ));
        }
        if self.cache.views.flush_interval.is_zero() {
            return Err(ConfigError(
                "`cache.views.flush_interval` is 0; expected a duration such as `1s`".into(),
            ));
        }
        if self.http.request_timeout.is_zero() {
            return Err(ConfigError(
                "`http.request_timeout` is 0; expected a duration such as `30s`".into(),
            ));
        }
        self.validate_events()?;
        self.search.validate()?;
        bazaar_telemetry::logging::validate_filter(&self.log.filter)
            .map_err(|e| ConfigError(format!("`log.filter`: {e}")))?;
        Ok(())
    }

    fn validate_events(&self) -> Result<(), ConfigError> {
        let queue = &self.queue;
        if queue.backend == QueueBackend::Nats && queue.nats.url.is_empty() {
            return Err(ConfigError(
                "`queue.backend` is `nats` but `queue.nats.url` is empty; set it to the server, e.g. nats://127.0.0.1:4222".into(),
            ));
        }
        if !queue.nats.url.is_empty() {
            let servers_ok = queue.nats.url.split(',').all(|server| {
                let server = server.trim();
                ["nats://", "tls://", "ws://", "wss://"]
                    .iter()
                    .find_map(|scheme| server.strip_prefix(scheme))
                    .and_then(|rest| rest.rsplit('@').next())
                    .is_some_and(|host| !host.is_empty() && !host.contains('/'))
            });
            if !servers_ok {
                // The value is not echoed: a malformed URL may hold a password in clear.
                return Err(ConfigError(
                    "`queue.nats.url` is not a NATS server URL; expected nats://HOST:PORT (or tls://, ws://, wss://; several separated by commas), with any credentials as nats://USER:PASSWORD@HOST:PORT".into(),
                ));
            }
        }
        let name_ok = !queue.nats.stream.is_empty()
            && queue
                .nats
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(ConfigError(format!(
                "`queue.nats.stream` is `{}`; expected letters, digits, `_` and `-`, such as BAZAAR_EVENTS",
                queue.nats.stream
            )));
        }
        if !(1..=256).contains(&queue.nats.partitions) {
            return Err(ConfigError(format!(
                "`queue.nats.partitions` is {}; expected an integer from 1 to 256",
                queue.nats.partitions
            )));
        }
        if queue.dedupe_window.is_zero() {
            return Err(ConfigError(
                "`queue.dedupe_window` is 0; expected a duration such as `1h`".into(),
            ));
        }
        let events = &self.events;
        if events.relay_interval.is_zero() || !(1..=10_000).contains(&events.relay_batch) {
            return Err(ConfigError(
                "`events.relay_interval` must be above zero and `events.relay_batch` from 1 to 10000".into(),
            ));
        }
        if events.outbox_retention.is_zero() || events.processed_retention.is_zero() {
            return Err(ConfigError(
                "`events.outbox_retention` and `events.processed_retention` must be above zero"
                    .into(),
            ));
        }
        let consumers = &events.consumers;
        for (name, consumer) in [
            ("cache", &consumers.cache),
            ("tally", &consumers.tally),
            ("log", &consumers.log),
        ] {
            let key = format!("events.consumers.{name}");
            if !(1..=1_000).contains(&consumer.max_attempts) {
                return Err(ConfigError(format!(
                    "`{key}.max_attempts` is {}; expected an integer from 1 to 1000",
                    consumer.max_attempts
                )));
            }
            if consumer.base_delay.is_zero() || consumer.max_delay < consumer.base_delay {
                return Err(ConfigError(format!(
                    "`{key}.base_delay` must be above zero and `{key}.max_delay` at least as long"
                )));
            }
            if consumer.lease < Duration::from_millis(100) {
                return Err(ConfigError(format!(
                    "`{key}.lease` is {:?}; expected at least 100ms, such as `30s`",
                    consumer.lease
                )));
            }
            if !(1..=10_000).contains(&consumer.batch) {
                return Err(ConfigError(format!(
                    "`{key}.batch` is {}; expected an integer from 1 to 10000",
                    consumer.batch
                )));
            }
            if !(0.0..=1.0).contains(&consumer.fail_rate) {
                return Err(ConfigError(format!(
                    "`{key}.fail_rate` is {}; expected a share from 0 to 1",
                    consumer.fail_rate
                )));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, with secret values replaced by `"[redacted]"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("the configuration serialises to TOML");
        redact(&mut value);
        toml::to_string_pretty(&value).expect("a TOML value prints")
    }
}

/// Turns figment's error into one line per problem, naming the key, where the value came
/// from, and the form that was expected.
fn describe(error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = match &e.metadata {
                Some(m) if m.name.contains("environment") && !key.is_empty() => {
                    format!(
                        " (from environment variable BAZAAR_{})",
                        key.replace('.', "__").to_uppercase()
                    )
                }
                Some(m) => match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            let expected = expected_form(&key)
                .map(|form| format!(" (write it as {form})"))
                .unwrap_or_default();
            let key = if key.is_empty() {
                "<root>".to_owned()
            } else {
                key
            };
            format!("`{key}`{origin}: {}{expected}", e.kind)
        })
        .collect();
    ConfigError(lines.join("; "))
}

/// The accepted form of keys whose type alone does not say it.
fn expected_form(key: &str) -> Option<&'static str> {
    Some(match key {
        "http.listen" => "a socket address such as 127.0.0.1:8080",
        "http.request_timeout" | "http.shutdown_grace" | "store.busy_timeout" => {
            "a duration such as 30s, 500ms or 2m"
        }
        "store.durability" => "`full` or `normal`",
        "auth.access_ttl" | "auth.refresh_ttl" => "a duration such as 15m or 30days",
        "rate_limits.backend" => "`memory` or `redis`",
        "cache.products.policy" | "cache.users.policy" => "`lru`, `lfu` or `w-tinylfu`",
        "cache.products.strategy" | "cache.users.strategy" => {
            "`cache-aside`, `read-through` or `write-through`"
        }
        "cache.views.strategy" => "`write-back` or `write-through`",
        "cache.products.ttl"
        | "cache.products.negative_ttl"
        | "cache.products.stale_while_revalidate"
        | "cache.users.ttl"
        | "cache.views.flush_interval"
        | "cache.redis.lock_ttl"
        | "cache.redis.keep_stale"
        | "cache.redis.timeout" => "a duration such as 60s",
        "rate_limits.enabled" => "`true` or `false`",
        "orders.reservation_ttl"
        | "orders.idempotency_ttl"
        | "orders.stale_after"
        | "orders.sweep_interval"
        | "payments.latency" => "a duration such as 15m, 30s or 200ms",
        "payments.decline_rate" | "payments.timeout_rate" => "a number from 0 to 1",
        "log.format" => "`pretty` or `json`",
        "store.data_dir" => "a directory path",
        _ => return None,
    })
}

/// Last words of key names whose values are secrets (`api_key`, `jwt_secret`), wherever they
/// appear; `api_key_daily_quota` is not one.
const SECRET_WORDS: &[&str] = &["password", "secret", "token", "key", "credentials"];

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                let is_secret = key
                    .rsplit('_')
                    .next()
                    .is_some_and(|last| SECRET_WORDS.contains(&last));
                let has_userinfo = value
                    .as_str()
                    .is_some_and(|s| s.contains("://") && s.contains('@'));
                if is_secret || has_userinfo {
                    *value = toml::Value::String("[redacted]".into());
                } else {
                    redact(value);
                }
            }
        }
        // Lists of URLs (`store.postgres.shards`) keep their hosts and databases, which say
        // where each shard is, and lose their credentials.
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        toml::Value::String(text) if text.contains("://") => {
            *text = without_credentials(text);
        }
        _ => {}
    }
}

/// `url` with any user name and password replaced, for messages and logs.
pub fn without_credentials(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}[redacted]{}", &base[..scheme + 3], &base[at..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        // PostgreSQL URLs may carry the password as a parameter too.
        let params: Vec<&str> = query
            .split('&')
            .map(|param| {
                if param.to_ascii_lowercase().starts_with("password=") {
                    "password=[redacted]"
                } else {
                    param
                }
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bazaar.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(Some(&file), &Overrides::default())
    }

    #[test]
    fn currencies_are_iso_codes_checked_at_load_and_never_empty() {
        let codes = |c: &Config| -> Vec<String> {
            c.shop.currencies.iter().map(|c| c.to_string()).collect()
        };
        assert_eq!(codes(&Config::default()), ["USD", "EUR", "GBP"]);
        let config = load_toml("[shop]\ncurrencies = [\"JPY\", \"CHF\"]\n").unwrap();
        assert_eq!(codes(&config), ["JPY", "CHF"]);
        for bad in ["usd", "US", "EURO", "U$D"] {
            let error = load_toml(&format!("[shop]\ncurrencies = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("shop.currencies") && error.contains(bad),
                "{error}"
            );
        }
        let error = load_toml("[shop]\ncurrencies = []\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("shop.currencies"), "{error}");
    }

    #[test]
    fn trusted_proxies_are_cidr_blocks_parsed_at_load() {
        let config = load_toml(
            "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"2001:db8::/32\"]\n",
        )
        .unwrap();
        let nets: Vec<String> = config
            .http
            .trusted_proxies
            .iter()
            .map(|c| c.0.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"]);
        assert!(Config::default().http.trusted_proxies.is_empty());
        for bad in ["10.0.0.0/33", "localhost", "10.0.0/8"] {
            let error = load_toml(&format!("[http]\ntrusted_proxies = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("http.trusted_proxies") && error.contains(bad),
                "{error}"
            );
        }
    }

    #[test]
    fn the_failed_credential_class_is_checked_like_the_others() {
        let error =
            load_toml("[rate_limits]\nfailed_auth = { rate = 0, period = \"1m\", burst = 5 }\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("rate_limits.failed_auth"), "{error}");
        let error = load_toml("[rate_limits]\ngraphql_complexity_per_read = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("rate_limits.graphql_complexity_per_read"),
            "{error}"
        );
    }

    #[test]
    fn urls_lose_their_credentials_in_messages() {
        assert_eq!(
            without_credentials("redis://:hunter2@cache:6379/0"),
            "redis://[redacted]@cache:6379/0"
        );
        assert_eq!(
            without_credentials("postgres://db/bazaar_0?user=u&password=hunter2&sslmode=require"),
            "postgres://db/bazaar_0?user=u&password=[redacted]&sslmode=require"
        );
        assert_eq!(
            without_credentials("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn secrets_and_credentials_in_urls_are_redacted() {
        let mut value: toml::Value = toml::from_str(
            r#"
            [store]
            shards = 4
            postgres_url = "postgres://bazaar:hunter2@db:5432/bazaar"
            [auth]
            jwt_secret = "s3cr3t"
            api_key = "k"
            api_key_daily_quota = 5
            keyspace = "public"
            "#,
        )
        .unwrap();
        redact(&mut value);
        let text = toml::to_string(&value).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert!(text.contains("api_key = \"[redacted]\""), "{text}");
        assert!(text.contains("keyspace = \"public\""), "{text}");
        assert!(text.contains("api_key_daily_quota = 5"), "{text}");
        assert!(text.contains("shards = 4"), "{text}");
    }

    #[test]
    fn printing_the_configuration_redacts_every_postgres_shard_url() {
        let mut config = Config::default();
        config.store.backend = StoreBackend::Postgres;
        config.store.postgres.shards = vec![
            "postgres://bazaar:hunter2@db1:5432/bazaar_0".into(),
            "postgres://db2/bazaar_1?user=bazaar&password=hunter2".into(),
        ];
        let text = config.to_redacted_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("postgres://[redacted]@db1:5432/bazaar_0"),
            "{text}"
        );
        assert!(
            text.contains("postgres://db2/bazaar_1?user=bazaar&password=[redacted]"),
            "{text}"
        );
    }
}
