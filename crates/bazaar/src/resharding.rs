//! `bazaar lab tradeoff resharding`: the seed's comparison of placements, measured.
//!
//! For each placement — `hash mod N` and the consistent hash ring — the command starts a
//! fresh in-process server on four SQLite shards with the same seeded catalog, signs the
//! ordering mix's shoppers up, and loads it open-loop. After a warm-up it adds a fifth shard
//! online (`bazaar_store::reshard::add_shard`, as `bazaar shards add` does) and stops the load
//! when the move is done, so the load's figures are the figures *during* the move. It reports
//! the keys moved (products and users) of those present, how long the move took, the longest
//! a write was held, and the load's errors and latency percentiles.
//!
//! What to expect: the ring moves about 1/5 of the keys, all to the new shard; `hash mod N`
//! moves about 4/5, between every pair of shards, so its move copies four times the rows and
//! holds the writes of four times the keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bazaar_lab::mix::{Mix, MixKind, Shop};
use bazaar_lab::{LabError, LoadSpec, Stop, Target, workload};
use bazaar_store::placement::PlacementKind;
use bazaar_store::reshard::{self, MoveOptions, MoveReport, Quiet};

use crate::Application;
use crate::app::open_store;
use crate::config::Config;
use crate::lab::{self, Finished, Meter};
use crate::tradeoff::DurabilityArg;

/// `bazaar lab tradeoff resharding`.
#[derive(Debug, clap::Args)]
pub struct ReshardingArgs {
    /// Products each server is seeded with.
    #[arg(long, default_value_t = 20_000)]
    pub products: u64,
    /// Arrivals per second of the ordering mix during the move (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Load before the move starts, not measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// Slices of the hash circle moved one at a time.
    #[arg(long, default_value_t = reshard::DEFAULT_RANGES)]
    pub ranges: u32,
    /// Store and queue commits of each server.
    #[arg(long, value_enum, default_value = "normal")]
    pub durability: DurabilityArg,
    /// Keep-alive connections of the load.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Accounts the mix signs up on each server; at least `--connections`.
    #[arg(long, default_value_t = 32)]
    pub shoppers: usize,
    /// Also append the table, with the command line, git revision and machine, to this
    /// Markdown file.
    #[arg(long)]
    pub results: Option<std::path::PathBuf>,
    /// Print JSON instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// What one placement's move did, and what the load saw meanwhile.
#[derive(Debug)]
pub struct Outcome {
    pub placement: PlacementKind,
    pub report: MoveReport,
    pub load: bazaar_lab::Report,
}

fn validate(args: &ReshardingArgs, spec: &LoadSpec) -> Result<(), LabError> {
    spec.validate()?;
    if !(100..=1_000_000).contains(&args.products) {
        return Err(lab::spec_error(
            "products",
            format!("expected 100 to 1000000, found {}", args.products),
        ));
    }
    if !(1..=4096).contains(&args.ranges) {
        return Err(lab::spec_error(
            "ranges",
            format!("expected 1 to 4096, found {}", args.ranges),
        ));
    }
    lab::check_shoppers(args.shoppers, args.connections)?;
    Ok(())
}

/// One placement: a fresh server, the load, the move under it, the load stopped after.
async fn run_placement(
    placement: PlacementKind,
    args: &ReshardingArgs,
    spec: &LoadSpec,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("bazaar-resharding-")
        .tempdir()
        .context("cannot create a data directory")?;
    let mut config = Config::default();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.store.data_dir = dir.path().to_owned();
    config.store.shards = 4;
    config.store.placement = placement;
    config.store.durability = args.durability.config();
    config.queue.durability = args.durability.config();
    config.catalog.demo_products = args.products;
    config.rate_limits.enabled = false;
    eprintln!("{placement}: seeding {} products…", args.products);
    let app = Application::build(&config)
        .await
        .context("cannot start the server")?;
    let target = Target::parse(&format!("http://{}", app.local_addr())).await?;
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let products = workload::discover_products(&target, 10_000, "ordering").await?;
    let shop = Shop::prepare(&target, MixKind::Ordering, products, args.shoppers).await?;
    let mix = Mix::new(Arc::new(shop), MixKind::Ordering, 0.99, 0x5EED);

    let (stopper, stop) = Stop::new();
    let meter = Meter::new(&format!("{placement} (move under load)"));
    let load = {
        let target = target.clone();
        let spec = spec.clone();
        let meter = &meter;
        async move { bazaar_lab::run_observed(&target, &spec, mix, |p| meter.show(p), &stop).await }
    };
    let mover = async {
        tokio::time::sleep(args.warmup).await;
        let store = open_store(&config, &bazaar_telemetry::Metrics::new()).await?;
        let options = MoveOptions {
            ranges: args.ranges,
            ..MoveOptions::default()
        };
        let started = Instant::now();
        let report = reshard::add_shard(&store, &options, &Quiet).await;
        store.close().await;
        stopper.stop();
        let report = report.context("the move failed")?;
        tracing::debug!(took = ?started.elapsed(), "move done");
        Ok::<_, anyhow::Error>(report)
    };
    let (load, report) = tokio::join!(load, mover);
    meter.done();
    let _ = stop_server.send(());
    server
        .await
        .context("the server panicked")?
        .context("the server failed")?;
    Ok(Outcome {
        placement,
        report: report?,
        load: load?,
    })
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

/// The Markdown table, one row per placement.
pub fn table(outcomes: &[Outcome], args: &ReshardingArgs) -> String {
    let mut out = format!(
        "Adding a 5th shard to 4 under the ordering mix at {} req/s ({} products, {} ranges, \
         SQLite, durability {}): the load's figures cover the move.\n\n",
        args.rate,
        args.products,
        args.ranges,
        args.durability.name()
    );
    out += "| placement | keys moved | share moved | rows copied | move took | longest write hold | requests | errors | p50 ms | p99 ms | buy p99 ms |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n";
    for o in outcomes {
        let scanned: u64 = o.report.scanned.values().sum();
        let buy_p99 = o
            .load
            .kinds
            .get("buy")
            .filter(|b| b.answered() > 0)
            .map_or_else(|| "–".to_owned(), |b| ms(b.percentile(99.0)));
        out += &format!(
            "| {} | {} of {scanned} | {:.1}% | {} | {:.2} s | {} ms | {} | {} | {} | {} | {} |\n",
            o.placement,
            o.report.moved_of_scanned,
            o.report.moved_fraction() * 100.0,
            o.report.rows_copied,
            o.report.took.as_secs_f64(),
            ms(o.report.longest_fence),
            o.load.all.answered() + o.load.all.transport_errors,
            o.load.all.error_breakdown(),
            ms(o.load.percentile(50.0)),
            ms(o.load.percentile(99.0)),
            buy_p99,
        );
    }
    out
}

fn to_json(outcomes: &[Outcome], args: &ReshardingArgs) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "placement": o.placement.name(),
                "scanned": o.report.scanned,
                "moved_of_scanned": o.report.moved_of_scanned,
                "moved_fraction": o.report.moved_fraction(),
                "moved": o.report.moved,
                "caught_up": o.report.caught_up,
                "rows_copied": o.report.rows_copied,
                "took_seconds": o.report.took.as_secs_f64(),
                "longest_write_hold_ms": o.report.longest_fence.as_secs_f64() * 1000.0,
                "load": o.load.to_json(&format!("ordering mix during the move, {}", o.placement)),
            })
        })
        .collect();
    serde_json::json!({
        "tradeoff": "resharding",
        "settings": {
            "products": args.products,
            "rate": args.rate,
            "ranges": args.ranges,
            "connections": args.connections,
            "shoppers": args.shoppers,
        },
        "placements": rows,
    })
}

/// Runs `bazaar lab tradeoff resharding`.
pub async fn resharding(args: &ReshardingArgs) -> anyhow::Result<Finished> {
    let spec = LoadSpec {
        rate: args.rate,
        // Until the move is done (it stops the load); this is only the longest it may last.
        duration: Duration::from_secs(3_600),
        warmup: args.warmup,
        connections: args.connections,
        timeout: Duration::from_secs(30),
    };
    validate(args, &spec)?;
    let results = lab::open_results(args.results.as_deref())?;
    let mut outcomes = Vec::new();
    for placement in [PlacementKind::Modulo, PlacementKind::Ring] {
        outcomes.push(run_placement(placement, args, &spec).await?);
    }
    if args.json {
        println!("{:#}", to_json(&outcomes, args));
    } else {
        let out = table(&outcomes, args);
        print!("{out}");
        lab::record(results, &out)?;
    }
    Ok(Finished::Complete)
}
