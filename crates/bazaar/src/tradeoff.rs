//! `bazaar lab tradeoff`: trade-offs of the design measured side by side, in one run.
//!
//! `sync-async` compares where side effects run. Every change writes its outbox event in its
//! transaction; with `events.side_effects = "async"` the request answers once it committed and
//! the relay and the consumers apply the effects after, and with `"sync"` the request also
//! applies every shared consumer's effect before it answers, and fails (503) if one fails.
//! The promise each makes is different — sync: an answered request's effects are done;
//! async: requests never wait for nor fail on a consumer — and so is the cost. To see both,
//! the command starts, for each of six scenarios (mode × the `tally` consumer healthy, flaky
//! or down), a fresh in-process server with its own data directory, loads it open-loop with
//! the ordering mix, and measures:
//!
//! - the checkouts (`buy` interactions) — latency, and how many failed, by status;
//! - the staleness window: for every event written during the load, the time from its commit
//!   (the outbox row's `created_at`) to its effect (the tally's record of it, `applied_at`) —
//!   read from the store after the run, every event exactly, not a histogram's buckets;
//! - what was still pending when the load stopped, and how long after it every outbox event
//!   was tallied (the per-type tally against every shard's outbox rows).
//!
//! "Down" takes the consumer away for exactly the load — its [`FaultSwitch`] at 1 — and
//! brings it back at its end; the retries are short (see [`RETRY_BASE`]) so that catch-up
//! measures the design rather than a five-minute backoff, and numerous enough that nothing
//! dead-letters in a run.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bazaar_lab::mix::{Mix, MixKind, Shop};
use bazaar_lab::{LabError, LoadSpec, Stop, Target, plot, workload};
use bazaar_shop::events::FaultSwitch;
use bazaar_store::Store;

use crate::Application;
use crate::config::{self, Config, SideEffects};
use crate::lab::{self, Finished, Meter};

/// The trade-offs `bazaar lab tradeoff` measures.
#[derive(Debug, clap::Subcommand)]
pub enum TradeoffCommand {
    /// Side effects applied in the request (sync) or after it (async), each with the `tally`
    /// consumer healthy, flaky and down: checkout latency and failures, staleness, catch-up.
    SyncAsync(SyncAsyncArgs),
    /// Adding a fifth shard to four under the ordering mix, placed by `hash mod N` and by the
    /// consistent hash ring: keys moved, time taken, and the load's errors and p99 meanwhile.
    Resharding(crate::resharding::ReshardingArgs),
}

/// Store and queue commits of the scenarios' servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Every commit fsynced before it is acknowledged (the default of `bazaar serve`).
    Full,
    /// WAL commits not fsynced (lost on power failure, never corrupted).
    Normal,
}

impl DurabilityArg {
    pub(crate) fn config(self) -> config::Durability {
        match self {
            Self::Full => config::Durability::Full,
            Self::Normal => config::Durability::Normal,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Normal => "normal",
        }
    }
}

/// `bazaar lab tradeoff sync-async`.
#[derive(Debug, clap::Args)]
pub struct SyncAsyncArgs {
    /// Arrivals per second of the ordering mix, in each scenario (open loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long each scenario's load lasts — and a down consumer stays down.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// The share of deliveries the flaky consumer fails, above 0 and at most 1.
    #[arg(long, default_value_t = 0.5)]
    pub flaky_rate: f64,
    /// Store and queue commits of each scenario's server.
    #[arg(long, value_enum, default_value = "full")]
    pub durability: DurabilityArg,
    /// Demo products each scenario's server is seeded with.
    #[arg(long, default_value_t = 300)]
    pub products: u64,
    /// Keep-alive connections of the load.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Accounts the mix signs up on each server; at least `--connections`.
    #[arg(long, default_value_t = 32)]
    pub shoppers: usize,
    /// The longest to wait after a load for every event to be tallied.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub catch_up_limit: Duration,
    /// Also append the table, with the command line, git revision and machine, to this
    /// Markdown file.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Draw an SVG chart: each scenario's checkout latency and staleness as bars.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print JSON instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// The lab servers' retries of a failed delivery: full jitter up to this, doubling per
/// attempt ([`RETRY_MAX`] at most) — short, so a consumer that comes back catches up within
/// about a second, not after the default backoff of up to five minutes.
pub const RETRY_BASE: Duration = Duration::from_millis(25);
/// The longest wait between two deliveries of a failing event on the lab servers.
pub const RETRY_MAX: Duration = Duration::from_secs(1);
/// Deliveries before an event is dead-lettered: the most the configuration allows; a run of
/// minutes retries an event about once a second, so nothing dead-letters.
pub const RETRY_ATTEMPTS: u32 = 1_000;

/// How often the store is read while waiting for the tally to catch up.
const POLL: Duration = Duration::from_millis(20);
/// The longest a fresh server may take to tally its seed events and the shoppers' sign-ups.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// Outbox rows and processed records read per page.
const PAGE: usize = 10_000;

/// Where side effects run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Async,
    Sync,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Sync => "sync",
        }
    }

    fn config(self) -> SideEffects {
        match self {
            Self::Async => SideEffects::Async,
            Self::Sync => SideEffects::Sync,
        }
    }
}

/// How the `tally` consumer behaves during the load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    /// Never fails.
    Healthy,
    /// Fails this share of deliveries.
    Flaky(f64),
    /// Fails every delivery until the load ends, then none.
    Down,
}

impl Health {
    fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Flaky(_) => "flaky",
            Self::Down => "down",
        }
    }

    /// The fail rate during the load.
    fn fail_rate(self) -> f64 {
        match self {
            Self::Healthy => 0.0,
            Self::Flaky(rate) => rate,
            Self::Down => 1.0,
        }
    }
}

/// One server, one load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    pub mode: Mode,
    pub consumer: Health,
}

impl Scenario {
    /// The six scenarios, in the order they run and are reported.
    fn all(flaky_rate: f64) -> Vec<Self> {
        [Mode::Async, Mode::Sync]
            .into_iter()
            .flat_map(|mode| {
                [Health::Healthy, Health::Flaky(flaky_rate), Health::Down]
                    .map(|consumer| Self { mode, consumer })
            })
            .collect()
    }

    fn label(self) -> String {
        format!("{} · {}", self.mode.name(), self.consumer.name())
    }
}

/// The commit → effect times of the events written during a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Staleness {
    /// Events written during the load.
    pub events: usize,
    /// Of those, how many were not applied when measuring ended (the catch-up limit passed):
    /// their lag counts as their age then, so the percentiles are lower bounds.
    pub unapplied: usize,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

/// The event an outbox row is, as the staleness needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimes {
    /// When its change committed (the outbox row's `created_at`), ms since the epoch.
    pub committed_ms: i64,
    /// When the consumer applied it, if it did.
    pub applied_ms: Option<i64>,
}

/// The nearest-rank `percentile` (0–100) of `sorted` (ascending); `None` if it is empty.
pub fn percentile(sorted: &[i64], percentile: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The staleness of the events committed from `from_ms` to `until_ms` (both included); an
/// event not applied counts as its age at `now_ms`.
pub fn staleness(events: &[EventTimes], from_ms: i64, until_ms: i64, now_ms: i64) -> Staleness {
    let mut unapplied = 0;
    let mut lags: Vec<i64> = events
        .iter()
        .filter(|e| (from_ms..=until_ms).contains(&e.committed_ms))
        .map(|e| {
            let applied = e.applied_ms.unwrap_or_else(|| {
                unapplied += 1;
                now_ms
            });
            (applied - e.committed_ms).max(0)
        })
        .collect();
    lags.sort_unstable();
    Staleness {
        events: lags.len(),
        unapplied,
        p50_ms: percentile(&lags, 50.0),
        p99_ms: percentile(&lags, 99.0),
        max_ms: lags.last().copied(),
    }
}

/// Events committed by `at_ms` and not applied by then.
pub fn pending_at(events: &[EventTimes], at_ms: i64) -> usize {
    events
        .iter()
        .filter(|e| e.committed_ms <= at_ms && e.applied_ms.is_none_or(|applied| applied > at_ms))
        .count()
}

/// What one scenario measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    /// Buys answered with 2xx.
    pub buys_ok: u64,
    /// Buys failed, by status (`"503"`, `"no response"`).
    pub buys_failed: BTreeMap<String, u64>,
    /// Of every answered buy, failed ones included.
    pub buy_p50: Option<Duration>,
    pub buy_p99: Option<Duration>,
    /// Other interactions of the mix that failed, by status.
    pub others_failed: BTreeMap<String, u64>,
    pub staleness: Staleness,
    /// Events written but not yet tallied when the load stopped.
    pub pending_at_end: usize,
    /// From the end of the load until every outbox event was tallied; `None`: not within
    /// `--catch-up-limit`.
    pub caught_up_after: Option<Duration>,
    /// Dead letters in the queue at the end (there should be none).
    pub dead_letters: u64,
    /// The whole load, every kind of interaction, as `bazaar lab run --json` shows a run.
    pub load: serde_json::Value,
}

impl Outcome {
    pub fn buys_failed_total(&self) -> u64 {
        self.buys_failed.values().sum()
    }
}

/// Failures of `figures` by status: 4xx/5xx answers and `no response`.
fn failures(figures: &bazaar_lab::Figures, into: &mut BTreeMap<String, u64>) {
    for (status, n) in figures.statuses.iter().filter(|(s, _)| **s >= 400) {
        *into.entry(status.to_string()).or_insert(0) += n;
    }
    if figures.transport_errors > 0 {
        *into.entry("no response".into()).or_insert(0) += figures.transport_errors;
    }
}

fn breakdown(failures: &BTreeMap<String, u64>) -> String {
    failures
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The settings a run used, for its table and JSON.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub shoppers: usize,
    pub products: u64,
    pub durability: &'static str,
    pub relay_interval: Duration,
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

/// The Markdown table of `outcomes`, with its legend and the servers' settings.
pub fn table(outcomes: &[Outcome], settings: &Settings) -> String {
    let mut out = String::from(
        "| mode | consumer | buys ok | failed | p50 ms | p99 ms | staleness p50 ms | staleness p99 ms | pending at end | caught up after |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let opt_ms = |d: Option<Duration>| d.map_or_else(|| "–".to_owned(), ms);
    for outcome in outcomes {
        let failed = match outcome.buys_failed_total() {
            0 => "0".to_owned(),
            n => format!("{n} ({})", breakdown(&outcome.buys_failed)),
        };
        let stale = &outcome.staleness;
        let bound = if stale.unapplied > 0 { "≥ " } else { "" };
        let lag = |v: Option<i64>| v.map_or_else(|| "–".to_owned(), |v| format!("{bound}{v}"));
        let caught_up = outcome.caught_up_after.map_or_else(
            || "not within the limit".to_owned(),
            |d| format!("{:.2} s", d.as_secs_f64()),
        );
        let consumer = match outcome.scenario.consumer {
            Health::Flaky(rate) => format!("flaky ({rate})"),
            other => other.name().to_owned(),
        };
        out += &format!(
            "| {} | {consumer} | {} | {failed} | {} | {} | {} | {} | {} | {caught_up} |\n",
            outcome.scenario.mode.name(),
            outcome.buys_ok,
            opt_ms(outcome.buy_p50),
            opt_ms(outcome.buy_p99),
            lag(stale.p50_ms),
            lag(stale.p99_ms),
            outcome.pending_at_end,
        );
    }
    out += "\nbuys: add to cart + checkout, one interaction; p50/p99 of every answered buy (failed ones \
            included), from its intended start. staleness: commit → tally of each event written \
            during the load, from the store's records. pending at end: events written but not yet \
            tallied when the load stopped. caught up after: from the end of the load until every \
            outbox event was tallied.\n";
    out += &format!(
        "\nEach scenario: a fresh in-process server ({} demo products, store and queue durability {}, \
         relay every {} ms) loaded with the ordering mix at {}/s for {} ({} connections, {} \
         shoppers). tally retries: full jitter from {} ms doubling to {} s, up to {} attempts (a run \
         dead-letters nothing). down: every tally attempt fails during the load, none after.\n",
        settings.products,
        settings.durability,
        settings.relay_interval.as_millis(),
        settings.rate,
        humantime::format_duration(settings.duration),
        settings.connections,
        settings.shoppers,
        RETRY_BASE.as_millis(),
        RETRY_MAX.as_secs(),
        RETRY_ATTEMPTS,
    );
    for outcome in outcomes {
        if !outcome.others_failed.is_empty() {
            out += &format!(
                "{}: other interactions failed too ({})\n",
                outcome.scenario.label(),
                breakdown(&outcome.others_failed)
            );
        }
        if outcome.dead_letters > 0 {
            out += &format!(
                "{}: {} event(s) dead-lettered\n",
                outcome.scenario.label(),
                outcome.dead_letters
            );
        }
    }
    out
}

fn to_json(outcomes: &[Outcome], settings: &Settings, interrupted: bool) -> serde_json::Value {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let scenarios: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "mode": o.scenario.mode.name(),
                "consumer": o.scenario.consumer.name(),
                "fail_rate": o.scenario.consumer.fail_rate(),
                "buys": {
                    "ok": o.buys_ok,
                    "failed": o.buys_failed_total(),
                    "failed_by_status": o.buys_failed,
                    "p50_ms": o.buy_p50.map(ms),
                    "p99_ms": o.buy_p99.map(ms),
                },
                "others_failed_by_status": o.others_failed,
                "staleness_ms": {
                    "events": o.staleness.events,
                    "unapplied": o.staleness.unapplied,
                    "p50": o.staleness.p50_ms,
                    "p99": o.staleness.p99_ms,
                    "max": o.staleness.max_ms,
                },
                "pending_at_end": o.pending_at_end,
                "caught_up_after_ms": o.caught_up_after.map(ms),
                "dead_letters": o.dead_letters,
                "load": o.load,
            })
        })
        .collect();
    serde_json::json!({
        "tradeoff": "sync-async",
        "settings": {
            "rate": settings.rate,
            "duration_seconds": settings.duration.as_secs_f64(),
            "connections": settings.connections,
            "shoppers": settings.shoppers,
            "products": settings.products,
            "durability": settings.durability,
            "relay_interval_ms": ms(settings.relay_interval),
            "retry": {
                "base_delay_ms": ms(RETRY_BASE),
                "max_delay_ms": ms(RETRY_MAX),
                "max_attempts": RETRY_ATTEMPTS,
            },
        },
        "scenarios": scenarios,
        "interrupted": interrupted,
    })
}

/// A scenario's server, running in this process.
struct Server {
    target: Target,
    store: Arc<Store>,
    tally: FaultSwitch,
    config: Config,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Deleted when the server is dropped.
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(scenario: Scenario, args: &SyncAsyncArgs) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bazaar-tradeoff-")
            .tempdir()
            .context("cannot create a data directory for a scenario's server")?;
        let mut config = Config::default();
        config.http.listen = ([127, 0, 0, 1], 0).into();
        config.store.data_dir = dir.path().to_owned();
        config.store.durability = args.durability.config();
        config.queue.durability = args.durability.config();
        config.catalog.demo_products = args.products;
        // The load comes from one address.
        config.rate_limits.enabled = false;
        config.events.side_effects = scenario.mode.config();
        let tally = &mut config.events.consumers.tally;
        tally.base_delay = RETRY_BASE;
        tally.max_delay = RETRY_MAX;
        tally.max_attempts = RETRY_ATTEMPTS;
        // Healthy while the shoppers sign up; the scenario's rate is switched on for the load.
        tally.fail_rate = 0.0;
        let app = Application::build(&config)
            .await
            .context("cannot start a scenario's server")?;
        let store = app.store();
        let tally = app
            .consumer_faults("tally")
            .context("the server runs no tally consumer")?;
        let target = Target::parse(&format!("http://{}", app.local_addr())).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            target,
            store,
            tally,
            config,
            stop,
            task,
            _dir: dir,
        })
    }

    /// Stops the server and counts the queue's dead letters.
    async fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(());
        self.task
            .await
            .context("a scenario's server panicked")?
            .context("a scenario's server failed")?;
        let queue = crate::events::open_queue(&self.config).await?;
        Ok(queue.dead_letters().len().await?)
    }
}

/// Every outbox row by type, the unpublished ones, and the tally, read now.
async fn caught_up(store: &Store) -> anyhow::Result<bool> {
    let mut written: BTreeMap<String, i64> = BTreeMap::new();
    for shard in store.shards() {
        if shard.outbox_backlog().await?.unpublished > 0 {
            return Ok(false);
        }
        let mut after = 0;
        loop {
            let rows = shard.outbox(after, PAGE).await?;
            for row in &rows {
                *written.entry(row.topic.clone()).or_insert(0) += 1;
            }
            match rows.last() {
                Some(last) if rows.len() == PAGE => after = last.id,
                _ => break,
            }
        }
    }
    let tallied: BTreeMap<String, i64> = store.directory().tally().await?.into_iter().collect();
    Ok(tallied == written)
}

/// Waits until every outbox event is tallied: how long it took, or `None` past `limit` (or
/// at a stop).
async fn until_caught_up(
    store: &Store,
    limit: Duration,
    stop: &Stop,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    loop {
        if caught_up(store).await? {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= limit || stop.is_requested() {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every outbox event with its commit time and when `tally` applied it.
async fn event_times(store: &Store) -> anyhow::Result<Vec<EventTimes>> {
    let mut applied: HashMap<String, i64> = HashMap::new();
    let mut after = String::new();
    loop {
        let page = store.directory().processed("tally", &after, PAGE).await?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            after = last.clone();
        }
        applied.extend(page);
        if !full {
            break;
        }
    }
    let mut events = Vec::new();
    for shard in store.shards() {
        let mut after = 0;
        loop {
            let rows = shard.outbox(after, PAGE).await?;
            events.extend(rows.iter().map(|row| EventTimes {
                committed_ms: row.created_at_ms,
                applied_ms: applied.get(&row.event_id).copied(),
            }));
            match rows.last() {
                Some(last) if rows.len() == PAGE => after = last.id,
                _ => break,
            }
        }
    }
    Ok(events)
}

/// Runs one scenario: a fresh server, shoppers signed up and their events tallied, the
/// consumer switched to the scenario's health, the load, the consumer restored, catch-up.
async fn run_scenario(
    scenario: Scenario,
    args: &SyncAsyncArgs,
    spec: &LoadSpec,
    stop: &Stop,
) -> anyhow::Result<Outcome> {
    let label = scenario.label();
    eprintln!("{label}: starting a server, signing shoppers up…");
    let server = Server::start(scenario, args).await?;
    let products = workload::discover_products(&server.target, 10_000, "ordering").await?;
    let shop = Shop::prepare(&server.target, MixKind::Ordering, products, args.shoppers).await?;
    if until_caught_up(&server.store, SETTLE_LIMIT, stop)
        .await?
        .is_none()
        && !stop.is_requested()
    {
        anyhow::bail!(
            "{label}: the server did not tally its seed events and sign-ups within {}",
            humantime::format_duration(SETTLE_LIMIT)
        );
    }
    let mix = Mix::new(Arc::new(shop), MixKind::Ordering, 0.99, 0x5EED);
    let meter = Meter::new(&label);
    server.tally.set(scenario.consumer.fail_rate());
    let load_start = bazaar_shop::now_ms();
    let load = bazaar_lab::run_observed(&server.target, spec, mix, |p| meter.show(p), stop).await;
    let load_end = bazaar_shop::now_ms();
    // Back, whatever the scenario: a down consumer returns the moment the load ends.
    server.tally.set(0.0);
    meter.done();
    let load = load?;
    let caught_up_after = until_caught_up(&server.store, args.catch_up_limit, stop).await?;
    let events = event_times(&server.store).await?;
    let staleness = staleness(&events, load_start, load_end, bazaar_shop::now_ms());
    let pending_at_end = pending_at(&events, load_end);
    let dead_letters = server.stop().await?;

    let (mut buys_failed, mut others_failed) = (BTreeMap::new(), BTreeMap::new());
    let buys = load.kinds.get("buy");
    for (kind, figures) in &load.kinds {
        failures(
            figures,
            if *kind == "buy" {
                &mut buys_failed
            } else {
                &mut others_failed
            },
        );
    }
    let answered = buys.filter(|b| b.answered() > 0);
    Ok(Outcome {
        load: load.to_json(&format!("ordering mix, {label}")),
        scenario,
        buys_ok: buys.map_or(0, bazaar_lab::Figures::ok),
        buys_failed,
        buy_p50: answered.map(|b| b.percentile(50.0)),
        buy_p99: answered.map(|b| b.percentile(99.0)),
        others_failed,
        staleness,
        pending_at_end,
        caught_up_after,
        dead_letters,
    })
}

/// Checks every flag before any server starts; exit status 2 names the one that is wrong.
fn validate(args: &SyncAsyncArgs, spec: &LoadSpec) -> Result<(), LabError> {
    spec.validate()?;
    if !(args.flaky_rate > 0.0 && args.flaky_rate <= 1.0) {
        return Err(lab::spec_error(
            "flaky-rate",
            format!(
                "expected a share above 0 and at most 1, such as 0.5; found {}",
                args.flaky_rate
            ),
        ));
    }
    if !(1..=100_000).contains(&args.products) {
        return Err(lab::spec_error(
            "products",
            format!("expected 1 to 100000, found {}", args.products),
        ));
    }
    lab::check_shoppers(args.shoppers, args.connections)?;
    if args.catch_up_limit.is_zero() {
        return Err(lab::spec_error(
            "catch-up-limit",
            "must be above zero, e.g. 60s".into(),
        ));
    }
    Ok(())
}

/// Runs `bazaar lab tradeoff sync-async`: the six scenarios, then the table (or JSON), the
/// results entry and the chart. Ctrl-C stops the scenario running and reports those done.
pub async fn sync_async(args: &SyncAsyncArgs) -> anyhow::Result<Finished> {
    let spec = LoadSpec {
        rate: args.rate,
        duration: args.duration,
        warmup: Duration::ZERO,
        connections: args.connections,
        timeout: Duration::from_secs(30),
    };
    validate(args, &spec)?;
    let results = lab::open_results(args.results.as_deref())?;
    lab::check_plot(args.plot.as_deref())?;
    let settings = Settings {
        rate: args.rate,
        duration: args.duration,
        connections: args.connections,
        shoppers: args.shoppers,
        products: args.products,
        durability: args.durability.name(),
        relay_interval: Config::default().events.relay_interval,
    };
    let stop = lab::stop_on_ctrl_c();
    let mut outcomes = Vec::new();
    for scenario in Scenario::all(args.flaky_rate) {
        if stop.is_requested() {
            break;
        }
        outcomes.push(run_scenario(scenario, args, &spec, &stop).await?);
    }
    let interrupted = stop.is_requested();
    if let Some(path) = &args.plot {
        draw(path, &outcomes, &settings)?;
    }
    if args.json {
        println!("{:#}", to_json(&outcomes, &settings, interrupted));
    } else {
        let mut out = table(&outcomes, &settings);
        if interrupted {
            out += "\nstopped early (Ctrl-C): the scenarios not shown did not run\n";
        }
        print!("{out}");
        if !interrupted {
            lab::record(results, &out)?;
        }
    }
    Ok(if interrupted {
        Finished::Interrupted
    } else {
        Finished::Complete
    })
}

/// The chart: each scenario's checkout p50 and p99 beside its staleness p50, p99 and catch-up,
/// with how many buys failed of how many under its name.
fn draw(path: &std::path::Path, outcomes: &[Outcome], settings: &Settings) -> anyhow::Result<()> {
    let to_ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let categories: Vec<String> = outcomes
        .iter()
        .map(|o| {
            format!(
                "{}\n{}\n{}/{}",
                o.scenario.mode.name(),
                o.scenario.consumer.name(),
                o.buys_failed_total(),
                o.buys_ok + o.buys_failed_total()
            )
        })
        .collect();
    let bars = |name: &str, value: &dyn Fn(&Outcome) -> Option<f64>| plot::Bars {
        name: name.to_owned(),
        values: outcomes.iter().map(value).collect(),
    };
    let panels = [
        plot::Panel {
            title: "checkout (buy) latency; below: buys failed/all".into(),
            y_label: "latency".into(),
            bars: vec![
                bars("p50", &|o| o.buy_p50.map(to_ms)),
                bars("p99", &|o| o.buy_p99.map(to_ms)),
            ],
        },
        plot::Panel {
            title: "staleness (commit → tally) and catch-up".into(),
            y_label: "time".into(),
            bars: vec![
                bars("staleness p50", &|o| o.staleness.p50_ms.map(|v| v as f64)),
                bars("staleness p99", &|o| o.staleness.p99_ms.map(|v| v as f64)),
                bars("caught up after the load", &|o| {
                    o.caught_up_after.map(to_ms)
                }),
            ],
        },
    ];
    plot::bars(
        path,
        &format!(
            "sync vs async side effects: ordering mix at {}/s for {}, durability {}",
            settings.rate,
            humantime::format_duration(settings.duration),
            settings.durability
        ),
        &categories,
        &panels,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(committed_ms: i64, applied_ms: Option<i64>) -> EventTimes {
        EventTimes {
            committed_ms,
            applied_ms,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn staleness_counts_the_events_of_the_load_and_bounds_the_unapplied() {
        let events = [
            at(900, Some(950)), // before the load: not counted
            at(1_000, Some(1_004)),
            at(1_500, Some(1_510)),
            at(1_900, Some(4_900)), // applied after the load, during catch-up
            at(2_000, None),        // never applied: its age at "now"
            at(2_001, Some(2_002)), // after the load: not counted
        ];
        let stale = staleness(&events, 1_000, 2_000, 10_000);
        assert_eq!(
            stale,
            Staleness {
                events: 4,
                unapplied: 1,
                p50_ms: Some(10),
                p99_ms: Some(8_000),
                max_ms: Some(8_000),
            }
        );
        assert_eq!(staleness(&[], 0, 1, 2), Staleness::default());
        // An effect recorded a millisecond "before" its commit (clocks read apart) is no lag.
        assert_eq!(staleness(&[at(5, Some(4))], 0, 10, 10).max_ms, Some(0));
    }

    #[test]
    fn pending_are_the_events_committed_and_not_yet_applied_at_the_end() {
        let events = [
            at(900, Some(950)),
            at(1_900, Some(2_000)), // applied exactly at the end: done
            at(1_950, Some(2_500)),
            at(1_990, None),
            at(2_100, None), // after the end
        ];
        assert_eq!(pending_at(&events, 2_000), 2);
        assert_eq!(pending_at(&events, 800), 0);
    }

    fn outcome(scenario: Scenario, failed: &[(&str, u64)], caught_up: Option<u64>) -> Outcome {
        Outcome {
            scenario,
            buys_ok: 40,
            buys_failed: failed.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect(),
            buy_p50: Some(Duration::from_micros(4_500)),
            buy_p99: Some(Duration::from_millis(21)),
            others_failed: BTreeMap::new(),
            staleness: Staleness {
                events: 100,
                unapplied: usize::from(caught_up.is_none()),
                p50_ms: Some(40),
                p99_ms: Some(9_800),
                max_ms: Some(10_000),
            },
            pending_at_end: 12,
            caught_up_after: caught_up.map(Duration::from_millis),
            dead_letters: 0,
            load: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_table_has_a_row_per_scenario_with_failures_by_status_and_a_legend() {
        let settings = Settings {
            rate: 50.0,
            duration: Duration::from_secs(10),
            connections: 32,
            shoppers: 32,
            products: 300,
            durability: "full",
            relay_interval: Duration::from_millis(50),
        };
        let mut flaky = outcome(
            Scenario {
                mode: Mode::Sync,
                consumer: Health::Flaky(0.5),
            },
            &[("503", 7), ("no response", 1)],
            None,
        );
        flaky.others_failed.insert("409".into(), 2);
        let outcomes = [
            outcome(
                Scenario {
                    mode: Mode::Async,
                    consumer: Health::Down,
                },
                &[],
                Some(1_234),
            ),
            flaky,
        ];
        let table = table(&outcomes, &settings);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("| mode | consumer | buys ok | failed |"),
            "{table}"
        );
        assert_eq!(
            lines[2],
            "| async | down | 40 | 0 | 4.50 | 21.00 | 40 | 9800 | 12 | 1.23 s |"
        );
        assert_eq!(
            lines[3],
            "| sync | flaky (0.5) | 40 | 8 (503: 7, no response: 1) | 4.50 | 21.00 | ≥ 40 | ≥ 9800 | 12 | not within the limit |"
        );
        assert!(table.contains("staleness: commit → tally"), "{table}");
        assert!(
            table.contains("from 25 ms doubling to 1 s, up to 1000 attempts"),
            "{table}"
        );
        assert!(
            table.contains("sync · flaky: other interactions failed too (409: 2)"),
            "{table}"
        );
        let json = to_json(&outcomes, &settings, false);
        assert_eq!(json["scenarios"][1]["buys"]["failed"], 8);
        assert_eq!(json["scenarios"][0]["caught_up_after_ms"], 1_234.0);
        assert_eq!(
            json["scenarios"][1]["caught_up_after_ms"],
            serde_json::Value::Null
        );
        assert_eq!(json["settings"]["retry"]["max_attempts"], 1_000);
    }

    #[test]
    fn the_six_scenarios_run_async_first_each_healthy_flaky_then_down() {
        let labels: Vec<String> = Scenario::all(0.3).iter().map(|s| s.label()).collect();
        assert_eq!(
            labels,
            [
                "async · healthy",
                "async · flaky",
                "async · down",
                "sync · healthy",
                "sync · flaky",
                "sync · down"
            ]
        );
        assert_eq!(Scenario::all(0.3)[4].consumer.fail_rate(), 0.3);
        assert_eq!(Health::Down.fail_rate(), 1.0);
    }
}
