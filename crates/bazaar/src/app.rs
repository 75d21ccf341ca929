//! Building and running the server: `Application::build(config)` → `local_addr()` →
//! `run_until_stopped(shutdown)`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bazaar_api::gate::{Gate, RateLimits};
use bazaar_api::graphql::GraphqlLimits;
use bazaar_api::{ApiConfig, Services};
use bazaar_cache::{
    Cache, CacheConfig, CacheMetrics, Cached, Invalidator, PolicyKind, RedisInvalidation,
    RedisTier, TierSettings,
};
use bazaar_gateway::Gatekeeper;
use bazaar_gateway::ratelimit::{LimitClass, MemoryLimiter, RateLimiter, RedisLimiter};
use bazaar_gateway::tokens::AccessTokens;
use bazaar_shop::accounts::AccountsConfig;
use bazaar_shop::crypto::Passwords;
use bazaar_shop::events::{DeadLetterOps, FaultSwitch};
use bazaar_shop::payments::{SimulatedProvider, SimulatedSettings};
use bazaar_shop::{Accounts, ApiKeys, Catalog, Orders};
use bazaar_store::PlacementConfig;
use bazaar_store::postgres::PostgresConfig;
use bazaar_store::sqlite::{Durability, SqliteConfig};
use bazaar_store::{IdGenerator, ProductId, ProductWithVariants, Store, VariantId};
use bazaar_telemetry::Metrics;
use bazaar_worker::Workers;
use tokio::net::TcpListener;

use crate::config::{self, CacheStrategy, Config, LimitSetting, LimiterBackend};
use crate::node::{LeaseKeeper, NodeLease};
use crate::secrets::{self, Secrets};
use crate::workers::{Flusher, Pruner, Sweeper};

/// A server that is bound and ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Arc<Store>,
    payments: Arc<SimulatedProvider>,
    search: bazaar_shop::Search,
    /// The background work, started with the server: the view flusher, the order sweeper,
    /// the rate limiter's pruner and the node-id lease.
    workers: Workers,
    /// What the workers are started with.
    jobs: Vec<Arc<dyn bazaar_worker::Worker>>,
    /// The task receiving other processes' invalidations, if configured.
    subscription: Option<tokio::task::JoinHandle<()>>,
    /// The fault switch of each consumer this process runs.
    faults: BTreeMap<&'static str, FaultSwitch>,
    shutdown_grace: Duration,
}

/// Opens the store described by `config` (creating and migrating it if needed).
pub async fn open_store(config: &Config, metrics: &Metrics) -> anyhow::Result<Store> {
    let store = &config.store;
    let placement = PlacementConfig {
        kind: store.placement,
        vnodes: store.vnodes,
    };
    match store.backend {
        config::StoreBackend::Sqlite => {
            let sqlite = SqliteConfig {
                data_dir: store.data_dir.clone(),
                durability: match store.durability {
                    config::Durability::Full => Durability::Full,
                    config::Durability::Normal => Durability::Normal,
                },
                busy_timeout: store.busy_timeout,
                max_connections: store.max_connections,
                write_events: store.outbox,
            };
            Store::open_sqlite_placed(&sqlite, store.shards, placement, metrics)
                .await
                .with_context(|| format!("cannot open the store in {}", store.data_dir.display()))
        }
        config::StoreBackend::Postgres => {
            let postgres = PostgresConfig {
                shards: store.postgres.shards.clone(),
                max_connections: store.postgres.max_connections,
                connect_timeout: store.postgres.connect_timeout,
                statement_timeout: store.postgres.statement_timeout,
                write_events: store.outbox,
            };
            Store::open_postgres_placed(&postgres, placement, metrics)
                .await
                .with_context(|| {
                    let shards: Vec<String> = store
                        .postgres
                        .shards
                        .iter()
                        .map(|url| config::without_credentials(url))
                        .collect();
                    format!("cannot open the PostgreSQL store [{}]", shards.join(", "))
                })
        }
    }
}

/// The application services over an open store, with the keys from the key file.
#[derive(Debug)]
pub struct Core {
    pub catalog: Catalog,
    pub accounts: Accounts,
    pub api_keys: ApiKeys,
    pub orders: Orders,
    pub tokens: AccessTokens,
    /// The payment provider the orders use, for tests that count charges.
    pub payments: Arc<SimulatedProvider>,
}

/// The longest "no such user" is remembered, whatever the user cache's TTL.
const NEGATIVE_TTL_CAP: Duration = Duration::from_secs(5);

/// What processes of one deployment share through `cache.redis.url`: invalidations over
/// pub/sub, and the L2 tier.
#[derive(Debug, Clone)]
pub struct SharedRedis {
    pub invalidation: RedisInvalidation,
    pub tier: RedisTier,
}

impl SharedRedis {
    /// Connects when `cache.redis.url` is set; `None` when caching stays in-process.
    pub async fn connect(config: &Config) -> anyhow::Result<Option<Self>> {
        let redis = &config.cache.redis;
        if redis.url.is_empty() {
            return Ok(None);
        }
        let unreachable = || {
            format!(
                "cannot reach the cache Redis at {}",
                config::without_credentials(&redis.url)
            )
        };
        let invalidation = RedisInvalidation::connect(&redis.url, &redis.channel)
            .await
            .with_context(unreachable)?;
        let settings = TierSettings {
            prefix: redis.prefix.clone(),
            lock_ttl: redis.lock_ttl,
            keep_stale: redis.keep_stale,
            timeout: redis.timeout,
            ..TierSettings::default()
        };
        let tier = RedisTier::connect(&redis.url, settings)
            .await
            .with_context(unreachable)?;
        Ok(Some(Self { invalidation, tier }))
    }
}

impl Core {
    /// The services without caches, for command-line tools, under `lease`'s generator number
    /// (see [`NodeLease`]: a tool writing beside a running server must not reuse its ids).
    pub fn build(config: &Config, store: &Arc<Store>, lease: &NodeLease) -> anyhow::Result<Self> {
        Self::build_full(config, store, None, None, lease.ids())
    }

    /// The services, with caches reporting into `cache_metrics` and shared through `redis`
    /// when given, minting ids with `ids`.
    pub fn build_full(
        config: &Config,
        store: &Arc<Store>,
        cache_metrics: Option<&CacheMetrics>,
        redis: Option<&SharedRedis>,
        ids: Arc<IdGenerator>,
    ) -> anyhow::Result<Self> {
        let invalidator = redis.map(|r| Arc::new(r.invalidation.clone()) as Arc<dyn Invalidator>);
        let secrets = Secrets::load_or_create(&secrets::path(config))?;
        let passwords = Passwords::new(config.auth.argon()).map_err(anyhow::Error::msg)?;
        let users = &config.cache.users;
        let user_cache = match (users.enabled, cache_metrics) {
            (true, Some(metrics)) => {
                let (ttl, negative_ttl) = (users.ttl, users.ttl.min(NEGATIVE_TTL_CAP));
                let cache_config =
                    CacheConfig::new("users", users.policy.into(), users.capacity, Some(ttl))
                        .with_expiry(move |u: &Option<_>| {
                            Some(if u.is_some() { ttl } else { negative_ttl })
                        });
                let cached = Cached::new(Cache::new(cache_config, metrics), users.strategy.into());
                Some(match &invalidator {
                    Some(invalidator) => cached.with_invalidator(invalidator.clone()),
                    None => cached,
                })
            }
            _ => None,
        };
        let accounts = Accounts::new(
            store.clone(),
            passwords,
            secrets.pii_cipher()?,
            secrets.blind_index()?,
            ids.clone(),
            AccountsConfig {
                refresh_ttl: config.auth.refresh_ttl,
            },
            user_cache,
        );
        let tokens = AccessTokens::new(
            &secrets.signing_keys()?,
            &config.auth.issuer,
            &config.auth.audience,
            config.auth.access_ttl,
        );
        let mut catalog =
            Catalog::new(store.clone(), ids.clone()).with_currencies(&config.shop.currencies);
        let products = &config.cache.products;
        if let (true, Some(metrics)) = (products.enabled, cache_metrics) {
            let (ttl, negative_ttl) = (products.ttl, products.negative_ttl);
            let cache_config = CacheConfig::new(
                "products",
                products.policy.into(),
                products.capacity,
                Some(ttl),
            )
            .with_expiry(move |p: &Option<Arc<ProductWithVariants>>| {
                Some(if p.is_some() { ttl } else { negative_ttl })
            })
            .with_stale_while_revalidate(products.stale_while_revalidate);
            let mut cached =
                Cached::new(Cache::new(cache_config, metrics), products.strategy.into());
            if let Some(redis) = redis {
                if products.l2 {
                    cached = cached.with_l2(redis.tier.clone(), metrics);
                }
                cached = cached.with_invalidator(Arc::new(redis.invalidation.clone()));
            }
            catalog = catalog.with_product_cache(cached);
        }
        if config.cache.views.strategy == CacheStrategy::WriteThrough {
            catalog = catalog.with_views_written_through();
        }
        let payments = Arc::new(SimulatedProvider::new(SimulatedSettings {
            latency: config.payments.latency,
            decline_rate: config.payments.decline_rate,
            timeout_rate: config.payments.timeout_rate,
        }));
        let mut orders = Orders::new(
            store.clone(),
            catalog.clone(),
            payments.clone(),
            secrets.pii_cipher()?,
            ids.clone(),
            config.orders.shop(),
        );
        if let Some(metrics) = cache_metrics {
            // A variant never moves to another product: cache the mapping without expiry,
            // but not its absence (the variant may be created a moment later).
            let variants = CacheConfig::new("variant_products", PolicyKind::Lru, 100_000, None)
                .with_expiry(|p: &Option<ProductId>| p.is_none().then_some(Duration::ZERO));
            orders = orders.with_variant_cache(Cache::<VariantId, _>::new(variants, metrics));
        }
        Ok(Self {
            catalog,
            api_keys: ApiKeys::new(store.clone(), ids, config.auth.api_key_daily_quota),
            accounts,
            orders,
            tokens,
            payments,
        })
    }
}

/// The rate limits, and the in-memory limiter to prune when that is the backend.
async fn rate_limits(config: &Config) -> anyhow::Result<(RateLimits, Option<Arc<MemoryLimiter>>)> {
    let limits = &config.rate_limits;
    let mut memory = None;
    let limiter: Arc<dyn RateLimiter> = match limits.backend {
        LimiterBackend::Memory => {
            let limiter = Arc::new(MemoryLimiter::default());
            memory = Some(limiter.clone());
            limiter
        }
        LimiterBackend::Redis => Arc::new(
            RedisLimiter::connect(&limits.redis_url, &limits.redis_prefix)
                .await
                .with_context(|| {
                    format!(
                        "cannot reach the rate limiter's Redis at {}",
                        config::without_credentials(&limits.redis_url)
                    )
                })?,
        ),
    };
    let class = |name: &str, setting: &LimitSetting| LimitClass {
        name: name.to_owned(),
        rate: setting.rate,
        period: setting.period,
        burst: setting.burst,
    };
    let limits = RateLimits {
        enabled: limits.enabled,
        limiter,
        read: class("read", &limits.read),
        write: class("write", &limits.write),
        auth: class("auth", &limits.auth),
        login_account: class("login", &limits.login_account),
        failed_auth: class("failed_auth", &limits.failed_auth),
        graphql_complexity_per_read: limits.graphql_complexity_per_read,
    };
    Ok((limits, memory))
}

impl Application {
    /// Opens and migrates the store, seeds the demo catalog if the store is empty, and binds
    /// the listener. Nothing is served until [`Application::run_until_stopped`].
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // Bound first: a server that cannot listen must not leave a fresh store, key file
        // and demo catalog behind.
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.http.listen))?;
        let metrics = Metrics::new();
        // Before the store: a queue that cannot be reached must not leave a fresh store, key
        // file and node lease behind.
        let queue = crate::events::open_queue(config).await?;
        let store = Arc::new(open_store(config, &metrics).await?);
        let lease =
            Arc::new(NodeLease::claim(store.clone(), config.node.id.map(|id| id.get())).await?);
        let node = node_name(&lease);
        let redis = SharedRedis::connect(config).await?;
        let core = Core::build_full(
            config,
            &store,
            Some(&CacheMetrics::register(&metrics)),
            redis.as_ref(),
            lease.ids(),
        )?;
        let demo = config.catalog.demo_products;
        if demo > 0 && store.count_products().await? == 0 {
            tracing::info!(products = demo, "store is empty; seeding the demo catalog");
            let seed = config.catalog.demo_seed;
            bazaar_shop::demo::seed(&store, &core.accounts, demo, seed, |_| {}).await?;
        }
        let subscription = match &redis {
            Some(redis) => {
                let (catalog, accounts) = (core.catalog.clone(), core.accounts.clone());
                let task = redis
                    .invalidation
                    .subscribe(move |cache, key| match cache {
                        "products" => match key.parse() {
                            Ok(id) => catalog.forget(id),
                            Err(_) => tracing::warn!(
                                key,
                                "ignoring an invalidation of a malformed product id"
                            ),
                        },
                        "users" => match key.parse() {
                            Ok(id) => accounts.forget(id),
                            Err(_) => tracing::warn!(
                                key,
                                "ignoring an invalidation of a malformed user id"
                            ),
                        },
                        other => tracing::warn!(
                            cache = other,
                            "ignoring an invalidation for an unknown cache"
                        ),
                    })
                    .await?;
                Some(task)
            }
            None => None,
        };
        let (limits, memory_limiter) = rate_limits(config).await?;
        let gate = Gate::new(
            Gatekeeper {
                tokens: core.tokens,
                accounts: core.accounts.clone(),
                api_keys: core.api_keys.clone(),
            },
            limits,
        );
        let mut jobs: Vec<Arc<dyn bazaar_worker::Worker>> = vec![
            Arc::new(LeaseKeeper(lease)),
            Arc::new(Flusher {
                catalog: core.catalog.clone(),
                interval: config.cache.views.flush_interval,
            }),
            Arc::new(Sweeper {
                orders: core.orders.clone(),
                interval: config.orders.sweep_interval,
            }),
        ];
        if let Some(limiter) = memory_limiter {
            jobs.push(Arc::new(Pruner(limiter)));
        }
        let events = crate::events::jobs(
            config,
            &store,
            &queue,
            Some(&core.catalog),
            &node,
            &metrics,
            crate::events::Role {
                shared: config.events.run_workers,
                cache: true,
            },
        )
        .await?;
        jobs.extend(events.workers);
        let search = crate::search::open(config, &store, &node, &metrics).await?;
        jobs.extend(crate::search::workers(config, &search, &store, &queue, &node).await?);
        let faults = events.faults;
        let workers = Workers::new(&metrics);
        let payments = core.payments.clone();
        let services = Services {
            catalog: core.catalog,
            accounts: core.accounts,
            api_keys: core.api_keys,
            orders: core.orders,
            search: search.search.clone(),
            gate,
            dead_letters: DeadLetterOps::new(queue),
            sync_effects: events.sync,
        };
        let api = ApiConfig {
            cors_origins: config.http.cors_origins.clone(),
            request_timeout: config.http.request_timeout,
            body_limit: config.http.body_limit,
            graphql: GraphqlLimits {
                max_depth: config.graphql.max_depth,
                max_complexity: config.graphql.max_complexity,
            },
            workers: workers.board(),
            trusted_proxies: config.http.trusted_proxies.iter().map(|c| c.0).collect(),
        };
        let router = bazaar_api::router(services, metrics, api);
        Ok(Self {
            listener,
            router,
            store,
            payments,
            search: search.search,
            workers,
            jobs,
            subscription,
            faults,
            shutdown_grace: config.http.shutdown_grace,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The store, for tests that inspect it.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// This process's search, for tests that wait for its index.
    pub fn search(&self) -> bazaar_shop::Search {
        self.search.clone()
    }

    /// The payment provider, for tests that count charges.
    pub fn payments(&self) -> Arc<SimulatedProvider> {
        self.payments.clone()
    }

    /// The fault switch of consumer `name` (`tally`, `cache`, `log`) — starting at its
    /// `events.consumers.<name>.fail_rate` and shared by its consumer group and the request
    /// path — or `None` if this process does not run it. Keep it across
    /// [`run_until_stopped`](Self::run_until_stopped) to fail the consumer and restore it
    /// while the server runs.
    pub fn consumer_faults(&self, name: &str) -> Option<FaultSwitch> {
        self.faults.get(name).cloned()
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives in-flight requests up to
    /// the configured grace period, and closes the store.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight requests");
            let _ = began_tx.send(());
        };
        // Connection info gives the rate limiter each client's address.
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(self.listener, service).with_graceful_shutdown(signal);
        let grace = self.shutdown_grace;
        let deadline = async move {
            if began_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let mut workers = self.workers;
        for job in self.jobs {
            workers.spawn(job);
        }
        tokio::select! {
            result = server.into_future() => result.context("the HTTP server failed")?,
            () = deadline => tracing::warn!(grace = ?grace, "in-flight requests outlived the grace period; dropping them"),
        }
        if let Some(subscription) = &self.subscription {
            subscription.abort();
        }
        // Each worker finishes the pass it is in and drains (the flusher's last flush: a
        // graceful stop loses no acknowledged view; the lease is given back).
        let overran = workers.stop(WORKER_DRAIN).await;
        if !overran.is_empty() {
            tracing::error!(?overran, "background work was cut short at shutdown");
        }
        self.store.close().await;
        tracing::info!("stopped; store closed");
        Ok(())
    }
}

/// `bazaar worker`: the outbox relay and the shared consumers, without an HTTP listener,
/// until `shutdown` resolves; then each worker finishes its pass and drains.
pub async fn run_worker(
    config: &Config,
    metrics_listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        ),
        None => None,
    };
    let queue = crate::events::open_queue(config).await?;
    let store = Arc::new(open_store(config, &metrics).await?);
    let lease = Arc::new(NodeLease::claim(store.clone(), config.node.id.map(|id| id.get())).await?);
    let node = node_name(&lease);
    let events = crate::events::jobs(
        config,
        &store,
        &queue,
        None,
        &node,
        &metrics,
        crate::events::Role {
            shared: true,
            cache: false,
        },
    )
    .await?;
    let mut workers = Workers::new(&metrics);
    workers.spawn(Arc::new(LeaseKeeper(lease)));
    let names: Vec<&str> = events.workers.iter().map(|w| w.name()).collect();
    println!("Bazaar worker {node} is running: {}", names.join(", "));
    let exporter = match metrics_listener {
        Some(listener) => {
            println!(
                "  Metrics             http://{}/metrics",
                listener.local_addr()?
            );
            let metrics = metrics.clone();
            let router = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                bazaar_telemetry::CONTENT_TYPE,
                            )],
                            metrics.render(),
                        )
                    }
                }),
            );
            Some(tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "the metrics listener failed");
                }
            }))
        }
        None => None,
    };
    println!("Press Ctrl-C to stop.");
    for job in events.workers {
        workers.spawn(job);
    }
    shutdown.await;
    tracing::info!("stopping: each worker finishes its pass and drains");
    let overran = workers.stop(WORKER_DRAIN).await;
    if !overran.is_empty() {
        tracing::error!(?overran, "background work was cut short at shutdown");
    }
    if let Some(exporter) = exporter {
        exporter.abort();
    }
    store.close().await;
    Ok(())
}

/// This process's name in leases and consumer groups: `node-{generator}`.
pub fn node_name(lease: &NodeLease) -> String {
    format!("node-{}", lease.ids().generator())
}

/// How long background work has, after the server stopped, to finish its pass and drain.
const WORKER_DRAIN: Duration = Duration::from_secs(10);

/// Listens for SIGINT (Ctrl-C) and SIGTERM and returns a future that resolves on the first.
///
/// The handlers are installed *now*, not when the future is first polled: a signal that
/// arrives between start-up and serving must stop the server gracefully rather than hit the
/// default action and kill it. Call it before announcing that the server is up.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let install = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::error!(%error, signal = name, "cannot listen for the signal");
                None
            }
        };
        let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
        let mut terminate = install(SignalKind::terminate(), "SIGTERM");
        async fn received(listener: &mut Option<Signal>) {
            match listener {
                Some(listener) => {
                    listener.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                () = received(&mut interrupt) => {},
                () = received(&mut terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
